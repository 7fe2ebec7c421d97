//! Body-part regression (Yan et al., "Unsupervised body part regression via
//! spatially self-ordering convolutional neural networks", 2018 — SSBR; and
//! DKFZ's bpreg): a VGG-style 2D network that gives every axial CT slice one
//! score, trained without labels so that scores increase from feet to head.
//!
//! ```text
//! slices [N,1,H,W,1]          N slices are the batch; each is a depth-1 volume
//!   block b = 0..B−1:         (conv 1×3×3 → ReLU) × len(blocks[b]), widths blocks[b]
//!                             → max pool [1,2,2] (ceil mode)
//!   conv 1×1×1 → head ch.     → ReLU
//!   global average pool       reduce_sum over (D,H,W) per (slice, channel), ÷ D·H·W → [N, head]
//!   linear head → 1           → scores [N, 1]
//! ```
//! The paper's network is VGG16's convolutional part (blocks
//! [64,64] [128,128] [256,256,256] [512,512,512] [512,512,512], the first
//! conv without bias as in bpreg) with a 512-channel 1×1 conv and a 512→1
//! linear layer ([`BprNetConfig::vgg16`]); the CPU default is a narrow one.
//!
//! The losses ([`bpr_loss`]) see the scores of `v` volumes × `m` equidistant
//! slices each, ordered from inferior to superior (slice j+1 lies
//! `gap` mm above slice j), as `[v, 1, 1, 1, m]`, and are compositions of
//! primitives (their gradients come from the autograd of each):
//! - order (SSBR): −mean log σ(s_{j+1} − s_j) = mean softplus(−Δ_j);
//! - distance (SSBR): mean SmoothL1_β(d_{j+1} − d_j), with
//!   d_j = Δ_j · unit / gap the score change per `gap_unit_mm` of distance,
//!   so volumes sampled with different gaps are held to one slope scale;
//! - heuristic (bpreg's order loss "h"): mean (σ(β·gap) − σ(α·Δ_j))²;
//! - region (a prior, not in the papers, used only when the volumes carry
//!   region numbers): slices of a volume of a higher region score above the
//!   top slice drawn from a lower one ([`region_loss`]). SSBR orders body
//!   regions through the anatomy that many volumes share; volumes that share
//!   none (a head CT and an abdominal CT) leave their relative order free.

use crate::autograd::{Graph, Var};
use crate::nn::{Conv, Linear, ParamBuilder, ParamStore};
use crate::ops::{Bcast, ConvSpec, Unary};
use crate::tensor::{DType, Shape};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// The slice network's widths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BprNetConfig {
    /// Conv widths per block; each block ends with a 2×2 max pool.
    pub blocks: Vec<Vec<usize>>,
    /// Channels of the 1×1 conv before the global average pool.
    pub head: usize,
}

impl Default for BprNetConfig {
    /// The narrow CPU default: 4 blocks of one conv each.
    fn default() -> Self {
        BprNetConfig {
            blocks: vec![vec![16], vec![32], vec![32], vec![64]],
            head: 64,
        }
    }
}

impl BprNetConfig {
    /// The paper's network: VGG16's convolutional part and a 512-wide head.
    pub fn vgg16() -> BprNetConfig {
        BprNetConfig {
            blocks: vec![
                vec![64, 64],
                vec![128, 128],
                vec![256, 256, 256],
                vec![512, 512, 512],
                vec![512, 512, 512],
            ],
            head: 512,
        }
    }
}

/// The slice-scoring network.
pub struct BprNet {
    pub cfg: BprNetConfig,
    blocks: Vec<Vec<Conv>>,
    head: Conv,
    out: Linear,
}

impl BprNet {
    pub fn new(pb: &mut ParamBuilder, cfg: BprNetConfig) -> Result<BprNet> {
        ensure!(
            !cfg.blocks.is_empty() && cfg.blocks.iter().all(|b| !b.is_empty()),
            "a BPR network needs at least one block and every block at least one conv, got {:?}",
            cfg.blocks
        );
        ensure!(
            cfg.blocks.iter().flatten().all(|&w| w >= 1) && cfg.head >= 1,
            "BPR widths must all be ≥ 1, got blocks {:?}, head {}",
            cfg.blocks,
            cfg.head
        );
        let mut cin = 1;
        let mut blocks = Vec::new();
        for (b, widths) in cfg.blocks.iter().enumerate() {
            let mut pb = pb.pp(format_args!("block.{b}"));
            let mut convs = Vec::new();
            for (i, &w) in widths.iter().enumerate() {
                // bpreg's first conv (VGG16's, replaced for one input channel) has no bias.
                let bias = b != 0 || i != 0;
                convs.push(Conv::new(&mut pb.pp(i), cin, w, ConvSpec::K133, bias)?);
                cin = w;
            }
            blocks.push(convs);
        }
        let head = Conv::new(&mut pb.pp("head"), cin, cfg.head, ConvSpec::K1, true)?;
        let out = Linear::new(&mut pb.pp("out"), cfg.head, 1)?;
        Ok(BprNet {
            cfg,
            blocks,
            head,
            out,
        })
    }

    /// The spatial reduction of the network: each block halves H and W
    /// (ceil mode), so any slice of at least 1×1 works; inputs are usually
    /// the configured crop.
    pub fn pools(&self) -> usize {
        self.blocks.len()
    }

    /// Scores `[N, 1]` of `slices` `[N, 1, H, W, 1]`.
    pub fn forward(&self, g: &mut Graph, ps: &ParamStore, slices: &Var) -> Result<Var> {
        let s = slices.shape();
        ensure!(
            s.rank() == 5 && s.d() == 1 && s.c() == 1,
            "BPR network: slices must be [N, 1, H, W, 1], got {s}"
        );
        let mut x = slices.clone();
        for convs in &self.blocks {
            for conv in convs {
                x = conv.forward(g, ps, &x)?;
                x = g.unary(&x, Unary::Relu)?;
            }
            x = g.maxpool(&x, [1, 2, 2])?;
        }
        x = self.head.forward(g, ps, &x)?;
        x = g.unary(&x, Unary::Relu)?;
        let [d, h, w] = x.shape().spatial();
        let sum = g.reduce_sum(&x, Bcast::SampleChannel)?; // [N, head], f32
        let mean = g.lincomb(&[(1.0 / (d * h * w) as f32, &sum)])?;
        self.out.forward(g, ps, &mean)
    }
}

/// Weights and shapes of the BPR losses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BprLossConfig {
    /// Weight of the order loss −mean log σ(s_{j+1} − s_j).
    pub order_weight: f32,
    /// Weight of the distance loss mean SmoothL1(d_{j+1} − d_j) (needs ≥ 3 slices).
    pub distance_weight: f32,
    /// β of the distance loss's SmoothL1 (in score units per `gap_unit_mm`).
    pub smooth_l1_beta: f32,
    /// The distance the score differences of the distance loss are normalised to, mm.
    pub gap_unit_mm: f32,
    /// Weight of bpreg's heuristic order loss (σ(β·gap) − σ(α·Δs))² (0 = off).
    pub heuristic_weight: f32,
    /// α of the heuristic loss (bpreg: 0.5).
    pub heuristic_alpha: f32,
    /// β of the heuristic loss, per mm (bpreg: 0.025).
    pub heuristic_beta: f32,
    /// Weight of the region loss (used when the volumes carry region numbers).
    pub region_weight: f32,
}

impl Default for BprLossConfig {
    fn default() -> Self {
        BprLossConfig {
            order_weight: 1.0,
            distance_weight: 1.0,
            smooth_l1_beta: 1.0,
            gap_unit_mm: 10.0,
            heuristic_weight: 0.0,
            heuristic_alpha: 0.5,
            heuristic_beta: 0.025,
            region_weight: 1.0,
        }
    }
}

/// The BPR loss of one step and its terms (each unweighted; absent when its
/// weight is 0).
pub struct BprLoss {
    pub total: Var,
    pub order: Option<Var>,
    pub distance: Option<Var>,
    pub heuristic: Option<Var>,
    pub region: Option<Var>,
}

/// The mean of every element of `x` (an f32 `[1]`).
fn mean_all(g: &mut Graph, x: &Var) -> Result<Var> {
    let n = x.shape().numel();
    let s = g.reduce_sum(x, Bcast::Scalar)?;
    g.lincomb(&[(1.0 / n as f32, &s)])
}

/// `x[.., 1..] − x[.., ..len−1]` along the last dim.
fn consecutive_diff(g: &mut Graph, x: &Var) -> Result<Var> {
    let len = x.shape().c();
    let hi = g.slice_c(x, 1, len - 1)?;
    let lo = g.slice_c(x, 0, len - 1)?;
    g.lincomb(&[(1.0, &hi), (-1.0, &lo)])
}

/// The BPR losses of `scores` `[v·m, 1]` (volume-major: the m slices of
/// volume 0 from inferior to superior, then volume 1's, …), the slices of
/// volume i being `gaps_mm[i]` apart, volume i of body region `regions[i]`
/// (empty: no region prior) (see the module doc).
pub fn bpr_loss(
    g: &mut Graph,
    scores: &Var,
    m: usize,
    gaps_mm: &[f32],
    regions: &[i64],
    cfg: &BprLossConfig,
) -> Result<BprLoss> {
    let v = gaps_mm.len();
    ensure!(
        m >= 2 && v >= 1 && scores.shape().numel() == v * m,
        "BPR loss: {} scores for {v} volumes × {m} slices (m ≥ 2)",
        scores.shape().numel()
    );
    ensure!(
        gaps_mm.iter().all(|&d| d.is_finite() && d > 0.0),
        "BPR loss: slice gaps must be positive, got {gaps_mm:?}"
    );
    let s = g.reshape(scores, Shape::ndhwc(v, 1, 1, 1, m))?;
    let delta = consecutive_diff(g, &s)?; // [v,1,1,1,m−1]
    let mut terms: Vec<(f32, Var)> = Vec::new();

    let order = if cfg.order_weight > 0.0 {
        let neg = g.lincomb(&[(-1.0, &delta)])?;
        let sp = g.unary(&neg, Unary::Softplus)?;
        let l = mean_all(g, &sp)?;
        terms.push((cfg.order_weight, l.clone()));
        Some(l)
    } else {
        None
    };

    let distance = if cfg.distance_weight > 0.0 {
        ensure!(
            m >= 3,
            "BPR distance loss: needs at least 3 slices per volume, got {m}"
        );
        let per_unit: Vec<f32> = gaps_mm.iter().map(|d| d / cfg.gap_unit_mm).collect();
        let gaps = g.constant(
            g.dev
                .upload(&per_unit, Shape::ndhwc(v, 1, 1, 1, 1), DType::F32)?,
        );
        let slope = g.binary(crate::ops::Binary::Div, &delta, &gaps)?;
        let dd = consecutive_diff(g, &slope)?;
        let h = g.unary(&dd, Unary::SmoothL1(cfg.smooth_l1_beta))?;
        let l = mean_all(g, &h)?;
        terms.push((cfg.distance_weight, l.clone()));
        Some(l)
    } else {
        None
    };

    let heuristic = if cfg.heuristic_weight > 0.0 {
        let p_obs: Vec<f32> = gaps_mm
            .iter()
            .map(|d| 1.0 / (1.0 + (-cfg.heuristic_beta * d).exp()))
            .collect();
        let p_obs = g.constant(
            g.dev
                .upload(&p_obs, Shape::ndhwc(v, 1, 1, 1, 1), DType::F32)?,
        );
        let a = g.lincomb(&[(cfg.heuristic_alpha, &delta)])?;
        let p_pred = g.unary(&a, Unary::Sigmoid)?;
        let diff = g.binary(crate::ops::Binary::Sub, &p_pred, &p_obs)?;
        let sq = g.unary(&diff, Unary::Square)?;
        let l = mean_all(g, &sq)?;
        terms.push((cfg.heuristic_weight, l.clone()));
        Some(l)
    } else {
        None
    };

    ensure!(
        regions.is_empty() || regions.len() == v,
        "BPR loss: {} region numbers for {v} volumes",
        regions.len()
    );
    let region = if cfg.region_weight > 0.0 && !regions.is_empty() {
        region_loss(g, scores, m, regions)?
    } else {
        None
    };
    if let Some(l) = &region {
        terms.push((cfg.region_weight, l.clone()));
    }

    ensure!(
        !terms.is_empty(),
        "BPR loss: every weight is 0 (loss.order_weight, loss.distance_weight, loss.heuristic_weight)"
    );
    let weighted: Vec<(f32, &Var)> = terms.iter().map(|(w, l)| (*w, l)).collect();
    let total = g.lincomb(&weighted)?;
    Ok(BprLoss {
        total,
        order,
        distance,
        heuristic,
        region,
    })
}

/// The region loss: for every pair of volumes a, b with
/// `regions[a] < regions[b]`, mean_j softplus(s_a,top − s_b,j) — every
/// slice drawn from b should score above the highest slice drawn from a
/// (the within-volume order losses then order the rest); averaged over the
/// pairs. None when no pair differs.
fn region_loss(g: &mut Graph, scores: &Var, m: usize, regions: &[i64]) -> Result<Option<Var>> {
    let v = regions.len();
    let row = g.reshape(scores, Shape::ndhwc(1, 1, 1, 1, v * m))?;
    let pairs: Vec<(usize, usize)> = (0..v)
        .flat_map(|a| (0..v).map(move |b| (a, b)))
        .filter(|&(a, b)| regions[a] < regions[b])
        .collect();
    let mut acc: Option<Var> = None;
    for &(a, b) in &pairs {
        let top_a = g.slice_c(&row, a * m + m - 1, 1)?;
        // As an f32 per-row value (reduce_sum over a row of one is a cast).
        let top_a = g.reduce_sum(&top_a, Bcast::Row)?;
        let slices_b = g.slice_c(&row, b * m, m)?;
        let margin = g.binary(crate::ops::Binary::Sub, &slices_b, &top_a)?;
        let neg = g.lincomb(&[(-1.0, &margin)])?;
        let sp = g.unary(&neg, Unary::Softplus)?;
        let l = mean_all(g, &sp)?;
        let w = 1.0 / pairs.len() as f32;
        acc = Some(match acc {
            None => g.lincomb(&[(w, &l)])?,
            Some(prev) => g.lincomb(&[(1.0, &prev), (w, &l)])?,
        });
    }
    Ok(acc)
}
