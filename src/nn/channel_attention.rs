//! The two channel attentions as fused custom ops ([`crate::ops::custom`]):
//! [`ChannelLinear`] (the reference's ChannelLinearAttention) and [`Cam`]
//! (DANet's channel attention module) of x `[B, D, H, W, C]` (the math is in
//! [`super::attention`]), [`ChannelLinearGrad`] and [`CamGrad`] their
//! backwards. All four are checked against the composition of primitives
//! on every backend (tests/channel_attention.rs).
//!
//! # Channel linear attention
//! Per sample, with X the `[N, C]` tokens, x̂_n = x_n / ‖x_n‖, s_n = Σ_c x̂_nc
//! and v_n = Σ_c x_nc, the f32 *stats* `[B, C² + C]` are
//! `[P = Σ_n x̂_n x_nᵀ (row-major, P = (XᵀX̂)ᵀ) | t = Σ_n x̂_n (s_n + ε)]`:
//! 1. stats: one pass over x;
//! 2. out: `out_nj = (v_n + Σ_m x̂_nm P_mj) / (N + t_j)`, one pass over x.
//!
//! The backward, from g = dL/dout, with `den_j = N + t_j` and
//! `dn_nj = g_nj / den_j`:
//! 1. the gstats pass over (x, g): `[G = Σ_n x̂_n g_nᵀ | h = Σ_n v_n g_n]`;
//! 2. dstats (per sample, C² + C entries): `dP_mj = G_mj / den_j`,
//!    `dden_j = −(h_j + Σ_m P_mj G_mj) / den_j²` (= −Σ_n g_nj out_nj / den_j);
//! 3. the token pass: with `ds_n = Σ_j dden_j x̂_nj`,
//!    `dx̂_nm = Σ_j P_mj dn_nj + Σ_j dP_mj x_nj + dden_m (s_n + ε) + ds_n`,
//!    `dx_nj = Σ_c dn_nc + Σ_m x̂_nm dP_mj + (dx̂_nj − x̂_nj (x̂_n·dx̂_n)) / ‖x_n‖`,
//!    where `x̂·dx̂ = Σ_j dn_j (x̂ᵀP)_j + Σ_j x_j (x̂ᵀdP)_j + (2s + ε) ds` needs
//!    no per-token buffer.
//!
//! # CAM
//! Per sample: 1. the Gram pass `E = Σ_n x_n x_nᵀ`; 2. `A = softmax_rows(−E)`
//! (C rows of C, saved for the backward); 3. `out_n = A x_n`. The backward:
//! 1. `G = Σ_n g_n x_nᵀ` (the Gram pass over (g, x)), so `dA = G`;
//! 2. `r_c = Σ_m A_cm G_cm`, `dE_cm = −A_cm (G_cm − r_c)` (softmax of −E),
//!    `K = dE + dEᵀ`; 3. the token pass `dx_n = Aᵀ g_n + K x_n`.
//!
//! Every sum over tokens is deterministic: on the CPU in chunks of
//! [`cpu::CHUNK`] tokens added in order, on the GPU as f32 partials per part
//! of the tokens added by `reduce_sum` in part order (as
//! [`super::linear_attention`]).
//!
//! # GPU (`kernels/channelattn.cu`)
//! - `gram`, `linear_stats[_bwd]`: the per-sample sums, grid (P parts of the
//!   tokens, G groups of entries, B), blocks of 256 threads, each thread 4
//!   entries and one of `256 / W` lanes over its part's tokens, lanes summed
//!   in a fixed order through shared memory; partials `[B, P, S]`, then
//!   `reduce_sum` (SampleChannel). P is chosen so the grid has ≈ 1024 blocks
//!   and a part ≥ 64 tokens — the layout of the position attention's stats.
//! - `linear_dstats`, `cam_dgram`: one thread per entry of a sample's
//!   matrix; `cam_softmax`, `cam_rowdot`: one warp per row.
//! - `linear_out`, `linear_bwd`, `cam_out`, `cam_bwd`: one warp per token (8
//!   per block of 256, ⌈B·N / 8⌉ blocks capped at 4096, grid-stride beyond),
//!   lanes over the output channels, each an inner loop over C.
//!
//! Counted (e bytes per activation, B·N tokens): each forward reads x twice
//! and writes out once (3C·e per token) and does ≈ 4C² FLOPs per token
//! (C² + C f32 stats per sample); each backward reads x and g about twice
//! and writes dx (≈ 5C·e per token), ≈ 10C² FLOPs per token for the linear
//! attention and ≈ 6C² for CAM.

use crate::backend::cpu::{view, view_mut, CpuBackend};
use crate::backend::gpu::device::KernelArgs;
use crate::backend::gpu::registry::Kernel;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::ops::custom::{self, CustomGrad, CustomOp};
use crate::ops::{Bcast, MemoryOps, ReduceOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// The channel linear attention: input (x), outputs (out, stats).
pub struct ChannelLinear {
    pub eps: f32,
}

/// Its backward: inputs (dy, x, stats), output (dx).
pub struct ChannelLinearGrad {
    pub eps: f32,
}

/// DANet's CAM: input (x), outputs (out, A `[B, C²]`).
pub struct Cam;

/// Its backward: inputs (dy, x, A), output (dx).
pub struct CamGrad;

/// Samples, tokens per sample, channels.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub n: usize,
    pub c: usize,
}

impl Dims {
    /// Entries of one sample's C × C matrix.
    pub fn mat(&self) -> usize {
        self.c * self.c
    }
    /// Entries of one sample's linear-attention stats: `C² + C`.
    pub fn s_linear(&self) -> usize {
        self.c * self.c + self.c
    }
    /// FLOPs of either forward (≈ 2C² per token for the sums, 2C² for the
    /// output).
    pub fn flops_fwd(&self) -> u64 {
        (self.b * self.n * 4 * self.c * self.c) as u64
    }
    /// Fewest bytes of either forward: x read and out written once.
    pub fn bytes_fwd(&self, elem: usize) -> u64 {
        (self.b * self.n * 2 * self.c * elem) as u64
    }
}

/// The contract on x: NDHWC, no empty extent.
pub fn check_x(x: &Tensor, what: &str) -> Result<Dims> {
    let sh = x.shape();
    ensure!(sh.rank() == 5, "{what}: x must be NDHWC, got shape {sh}");
    ensure!(x.numel() > 0, "{what}: x {sh} has an empty extent");
    Ok(Dims {
        b: sh.n(),
        n: sh.voxels(),
        c: sh.c(),
    })
}

fn check_eps(eps: f32, what: &str) -> Result<()> {
    ensure!(
        eps.is_finite() && eps >= 0.0,
        "{what}: eps must be finite and ≥ 0, got {eps}"
    );
    Ok(())
}

/// The backward's contract: dy like x, `saved` f32 `[B, per]`.
fn check_bwd(inputs: &[&Tensor], per: impl Fn(Dims) -> usize, what: &str) -> Result<Dims> {
    ensure!(
        inputs.len() == 3,
        "{what}: inputs (dy, x, saved), got {}",
        inputs.len()
    );
    let (dy, x, saved) = (inputs[0], inputs[1], inputs[2]);
    let d = check_x(x, what)?;
    ensure!(
        dy.shape() == x.shape() && dy.dtype() == x.dtype(),
        "{what}: dy ({} {}) and x ({} {}) differ",
        dy.dtype().name(),
        dy.shape(),
        x.dtype().name(),
        x.shape()
    );
    ensure!(
        saved.shape() == Shape::new(&[d.b, per(d)]) && saved.dtype() == DType::F32,
        "{what}: the saved matrices must be f32 [{}, {}], got {} {}",
        d.b,
        per(d),
        saved.dtype().name(),
        saved.shape()
    );
    Ok(d)
}

impl CustomOp for ChannelLinear {
    fn name(&self) -> String {
        "channel_linear_attention".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        ensure!(
            inputs.len() == 1,
            "channel_linear_attention: input (x), got {}",
            inputs.len()
        );
        check_eps(self.eps, "channel_linear_attention")?;
        check_x(inputs[0], "channel_linear_attention").map(|_| ())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_x(inputs[0], "channel_linear_attention")?;
        let x = view(inputs[0], "channel_linear_attention: x")?;
        let stats = dev.out_uninit(Shape::new(&[d.b, d.s_linear()]))?;
        view_mut(&stats).copy_from_slice(&cpu::stats(x, x, cpu::Mode::Linear(self.eps), d));
        let out = dev.out_uninit(inputs[0].shape())?;
        cpu::linear_out(x, view(&stats, "stats")?, view_mut(&out), d);
        Ok(vec![out, stats])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_x(inputs[0], "channel_linear_attention")?;
        let x = inputs[0];
        dev.check(x, "channel_linear_attention: x")?;
        let bf16 = (x.dtype() == DType::BF16) as usize;
        let stats = gpu::stats(
            dev,
            [
                Kernel::ChannelattnLinearStatsF32,
                Kernel::ChannelattnLinearStatsBf16,
            ][bf16],
            x,
            None,
            d.s_linear(),
            Some(self.eps),
            d,
        )?;
        let out = dev.alloc(x.shape(), x.dtype())?;
        let kernel = [
            Kernel::ChannelattnLinearOutF32,
            Kernel::ChannelattnLinearOutBf16,
        ][bf16];
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&stats)
            .tensor(&out)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.c as i32);
        dev.device()
            .launch(kernel, gpu::warps(d.b * d.n), &mut args)?;
        Ok(vec![out, stats])
    }
}

impl CustomGrad for ChannelLinear {
    fn backward(
        &self,
        dev: &dyn Backend,
        dy: &Tensor,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>> {
        let grad = ChannelLinearGrad { eps: self.eps };
        let dx = custom::run(dev, &grad, &[dy, &inputs[0], &outputs[1]])?;
        Ok(dx.into_iter().map(Some).collect())
    }
}

impl CustomOp for ChannelLinearGrad {
    fn name(&self) -> String {
        "channel_linear_attention_bwd".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        check_eps(self.eps, "channel_linear_attention_bwd")?;
        check_bwd(inputs, |d| d.s_linear(), "channel_linear_attention_bwd").map(|_| ())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let what = "channel_linear_attention_bwd";
        let d = check_x(inputs[1], what)?;
        let dy = view(inputs[0], what)?;
        let x = view(inputs[1], what)?;
        let stats = view(inputs[2], what)?;
        let gstats = cpu::stats(x, dy, cpu::Mode::LinearBwd, d);
        let dstats = cpu::linear_dstats(stats, &gstats, d);
        let dx = dev.out_uninit(inputs[1].shape())?;
        cpu::linear_bwd(dy, x, stats, &dstats, view_mut(&dx), d, self.eps);
        Ok(vec![dx])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_x(inputs[1], "channel_linear_attention_bwd")?;
        for (i, t) in inputs.iter().enumerate() {
            dev.check(t, &format!("channel_linear_attention_bwd: input {i}"))?;
        }
        let (dy, x, stats) = (inputs[0], inputs[1], inputs[2]);
        let bf16 = (x.dtype() == DType::BF16) as usize;
        let gstats = gpu::stats(
            dev,
            [
                Kernel::ChannelattnLinearStatsBwdF32,
                Kernel::ChannelattnLinearStatsBwdBf16,
            ][bf16],
            x,
            Some(dy),
            d.s_linear(),
            None,
            d,
        )?;
        let dstats = dev.alloc(stats.shape(), DType::F32)?;
        let mut args = KernelArgs::new()
            .tensor(stats)
            .tensor(&gstats)
            .tensor(&dstats)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.c as i32);
        dev.device().launch(
            Kernel::ChannelattnLinearDstats,
            gpu::threads(d.b * d.s_linear()),
            &mut args,
        )?;
        let dx = dev.alloc(x.shape(), x.dtype())?;
        let kernel = [
            Kernel::ChannelattnLinearBwdF32,
            Kernel::ChannelattnLinearBwdBf16,
        ][bf16];
        let mut args = KernelArgs::new()
            .tensor(dy)
            .tensor(x)
            .tensor(stats)
            .tensor(&dstats)
            .tensor(&dx)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.c as i32)
            .f32(self.eps);
        dev.device()
            .launch(kernel, gpu::warps(d.b * d.n), &mut args)?;
        Ok(vec![dx])
    }
}

impl CustomOp for Cam {
    fn name(&self) -> String {
        "channel_attention_cam".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        ensure!(
            inputs.len() == 1,
            "channel_attention_cam: input (x), got {}",
            inputs.len()
        );
        check_x(inputs[0], "channel_attention_cam").map(|_| ())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_x(inputs[0], "channel_attention_cam")?;
        let x = view(inputs[0], "channel_attention_cam: x")?;
        let a = dev.out_uninit(Shape::new(&[d.b, d.mat()]))?;
        let mut e = cpu::stats(x, x, cpu::Mode::Gram, d);
        cpu::cam_softmax(&mut e, d);
        view_mut(&a).copy_from_slice(&e);
        let out = dev.out_uninit(inputs[0].shape())?;
        cpu::cam_out(x, view(&a, "A")?, view_mut(&out), d);
        Ok(vec![out, a])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_x(inputs[0], "channel_attention_cam")?;
        let x = inputs[0];
        dev.check(x, "channel_attention_cam: x")?;
        let bf16 = (x.dtype() == DType::BF16) as usize;
        let gram = [Kernel::ChannelattnGramF32, Kernel::ChannelattnGramBf16][bf16];
        let e = gpu::stats(dev, gram, x, Some(x), d.mat(), None, d)?;
        let a = dev.alloc(e.shape(), DType::F32)?;
        let mut args = KernelArgs::new()
            .tensor(&e)
            .tensor(&a)
            .i64(d.b as i64)
            .i32(d.c as i32);
        dev.device().launch(
            Kernel::ChannelattnCamSoftmax,
            gpu::warps(d.b * d.c),
            &mut args,
        )?;
        let out = dev.alloc(x.shape(), x.dtype())?;
        let kernel = [Kernel::ChannelattnCamOutF32, Kernel::ChannelattnCamOutBf16][bf16];
        let mut args = KernelArgs::new()
            .tensor(x)
            .tensor(&a)
            .tensor(&out)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.c as i32);
        dev.device()
            .launch(kernel, gpu::warps(d.b * d.n), &mut args)?;
        Ok(vec![out, a])
    }
}

impl CustomGrad for Cam {
    fn backward(
        &self,
        dev: &dyn Backend,
        dy: &Tensor,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>> {
        let dx = custom::run(dev, &CamGrad, &[dy, &inputs[0], &outputs[1]])?;
        Ok(dx.into_iter().map(Some).collect())
    }
}

impl CustomOp for CamGrad {
    fn name(&self) -> String {
        "channel_attention_cam_bwd".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        check_bwd(inputs, |d| d.mat(), "channel_attention_cam_bwd").map(|_| ())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let what = "channel_attention_cam_bwd";
        let d = check_x(inputs[1], what)?;
        let dy = view(inputs[0], what)?;
        let x = view(inputs[1], what)?;
        let a = view(inputs[2], what)?;
        let g = cpu::stats(dy, x, cpu::Mode::Gram, d);
        let k = cpu::cam_dgram(a, &g, d);
        let dx = dev.out_uninit(inputs[1].shape())?;
        cpu::cam_bwd(dy, x, a, &k, view_mut(&dx), d);
        Ok(vec![dx])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_x(inputs[1], "channel_attention_cam_bwd")?;
        for (i, t) in inputs.iter().enumerate() {
            dev.check(t, &format!("channel_attention_cam_bwd: input {i}"))?;
        }
        let (dy, x, a) = (inputs[0], inputs[1], inputs[2]);
        let bf16 = (x.dtype() == DType::BF16) as usize;
        let gram = [Kernel::ChannelattnGramF32, Kernel::ChannelattnGramBf16][bf16];
        let g = gpu::stats(dev, gram, dy, Some(x), d.mat(), None, d)?;
        let r = dev.alloc(Shape::new(&[d.b, d.c]), DType::F32)?;
        let mut args = KernelArgs::new()
            .tensor(a)
            .tensor(&g)
            .tensor(&r)
            .i64(d.b as i64)
            .i32(d.c as i32);
        dev.device().launch(
            Kernel::ChannelattnCamRowdot,
            gpu::warps(d.b * d.c),
            &mut args,
        )?;
        let k = dev.alloc(a.shape(), DType::F32)?;
        let mut args = KernelArgs::new()
            .tensor(a)
            .tensor(&g)
            .tensor(&r)
            .tensor(&k)
            .i64(d.b as i64)
            .i32(d.c as i32);
        dev.device().launch(
            Kernel::ChannelattnCamDgram,
            gpu::threads(d.b * d.mat()),
            &mut args,
        )?;
        let dx = dev.alloc(x.shape(), x.dtype())?;
        let kernel = [Kernel::ChannelattnCamBwdF32, Kernel::ChannelattnCamBwdBf16][bf16];
        let mut args = KernelArgs::new()
            .tensor(dy)
            .tensor(x)
            .tensor(a)
            .tensor(&k)
            .tensor(&dx)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.c as i32);
        dev.device()
            .launch(kernel, gpu::warps(d.b * d.n), &mut args)?;
        Ok(vec![dx])
    }
}

/// The CPU passes (module docs), f32 with a fixed summation order: sums
/// over tokens in chunks of [`CHUNK`](cpu::CHUNK), the chunks added in order.
mod cpu {
    use super::Dims;
    use rayon::prelude::*;

    pub const CHUNK: usize = 512;

    /// What the per-sample sums hold (as the kernels' MODE).
    #[derive(Clone, Copy)]
    pub enum Mode {
        /// `[Σ a bᵀ]`.
        Gram,
        /// `[Σ â bᵀ | Σ â (Σ â + ε)]`.
        Linear(f32),
        /// `[Σ â bᵀ | Σ b (Σ a)]`.
        LinearBwd,
    }

    /// The per-sample sums `[B, S]` of a and b `[B, N, C]` by `mode`.
    pub fn stats(a: &[f32], b: &[f32], mode: Mode, d: Dims) -> Vec<f32> {
        let (c, n, mat) = (d.c, d.n, d.mat());
        let sz = match mode {
            Mode::Gram => mat,
            _ => d.s_linear(),
        };
        let chunks = n.div_ceil(CHUNK);
        let parts: Vec<Vec<f32>> = (0..d.b * chunks)
            .into_par_iter()
            .map(|job| {
                let (sample, chunk) = (job / chunks, job % chunks);
                let mut acc = vec![0f32; sz];
                let (m, v) = acc.split_at_mut(mat);
                for t in chunk * CHUNK..((chunk + 1) * CHUNK).min(n) {
                    let tok = sample * n + t;
                    let ar = &a[tok * c..][..c];
                    let br = &b[tok * c..][..c];
                    let (r, sum) = match mode {
                        Mode::Gram => (1.0, 0.0),
                        _ => (
                            1.0 / ar.iter().map(|x| x * x).sum::<f32>().sqrt(),
                            ar.iter().sum::<f32>(),
                        ),
                    };
                    for (i, &ai) in ar.iter().enumerate() {
                        let ah = ai * r;
                        for (o, &bv) in m[i * c..][..c].iter_mut().zip(br) {
                            *o += ah * bv;
                        }
                    }
                    match mode {
                        Mode::Gram => {}
                        Mode::Linear(eps) => {
                            let w = sum * r + eps;
                            for (o, &x) in v.iter_mut().zip(ar) {
                                *o += x * r * w;
                            }
                        }
                        Mode::LinearBwd => {
                            for (o, &x) in v.iter_mut().zip(br) {
                                *o += x * sum;
                            }
                        }
                    }
                }
                acc
            })
            .collect();
        crate::backend::cpu::sum_partials_in_order(&parts, chunks, d.b, sz)
    }

    /// `1 / ‖row‖` and `Σ row`.
    fn norm_sum(row: &[f32]) -> (f32, f32) {
        let r = 1.0 / row.iter().map(|x| x * x).sum::<f32>().sqrt();
        (r, row.iter().sum())
    }

    /// `out_nj = (v_n + Σ_m x̂_nm P_mj) / (N + t_j)`.
    pub fn linear_out(x: &[f32], stats: &[f32], out: &mut [f32], d: Dims) {
        let (c, n, mat, sz) = (d.c, d.n, d.mat(), d.s_linear());
        out.par_chunks_mut(c).enumerate().for_each(|(tok, o)| {
            let st = &stats[tok / n * sz..][..sz];
            let (p, t) = st.split_at(mat);
            let xr = &x[tok * c..][..c];
            let (r, sum) = norm_sum(xr);
            o.fill(0.0);
            for (m, &xm) in xr.iter().enumerate() {
                for (o, &w) in o.iter_mut().zip(&p[m * c..][..c]) {
                    *o += xm * w;
                }
            }
            for (o, &tj) in o.iter_mut().zip(t) {
                *o = (sum + *o * r) / (n as f32 + tj);
            }
        });
    }

    /// `[dP | dden]` from stats `[P | t]` and gstats `[G | h]`.
    pub fn linear_dstats(stats: &[f32], gstats: &[f32], d: Dims) -> Vec<f32> {
        let (c, n, mat, sz) = (d.c, d.n, d.mat(), d.s_linear());
        let mut out = vec![0f32; d.b * sz];
        for s in 0..d.b {
            let (p, t) = stats[s * sz..][..sz].split_at(mat);
            let (g, h) = gstats[s * sz..][..sz].split_at(mat);
            let (dp, dden) = out[s * sz..][..sz].split_at_mut(mat);
            for (k, o) in dp.iter_mut().enumerate() {
                *o = g[k] / (n as f32 + t[k % c]);
            }
            for j in 0..c {
                let den = n as f32 + t[j];
                let mut acc = h[j];
                for m in 0..c {
                    acc += p[m * c + j] * g[m * c + j];
                }
                dden[j] = -acc / (den * den);
            }
        }
        out
    }

    /// The token pass of the linear backward (module docs).
    pub fn linear_bwd(
        dy: &[f32],
        x: &[f32],
        stats: &[f32],
        dstats: &[f32],
        dx: &mut [f32],
        d: Dims,
        eps: f32,
    ) {
        let (c, n, mat, sz) = (d.c, d.n, d.mat(), d.s_linear());
        dx.par_chunks_mut(c).enumerate().for_each(|(tok, dx)| {
            let (p, t) = stats[tok / n * sz..][..sz].split_at(mat);
            let (dp, dden) = dstats[tok / n * sz..][..sz].split_at(mat);
            let xr = &x[tok * c..][..c];
            let gr = &dy[tok * c..][..c];
            let (r, sum) = norm_sum(xr);
            let s = sum * r;
            let ds = dden.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>() * r;
            let dn: Vec<f32> = gr
                .iter()
                .zip(t)
                .map(|(g, tj)| g / (n as f32 + tj))
                .collect();
            // att = xᵀP, u = xᵀdP (without the 1/‖x‖).
            let (mut att, mut u) = (vec![0f32; c], vec![0f32; c]);
            for (m, &xm) in xr.iter().enumerate() {
                for j in 0..c {
                    att[j] += xm * p[m * c + j];
                    u[j] += xm * dp[m * c + j];
                }
            }
            let mut dot = 0f32;
            for j in 0..c {
                dot += dn[j] * att[j] + xr[j] * u[j];
            }
            let dot = dot * r + (2.0 * s + eps) * ds;
            let dv: f32 = dn.iter().sum();
            for j in 0..c {
                let mut dxh = dden[j] * (s + eps) + ds;
                for m in 0..c {
                    dxh += p[j * c + m] * dn[m] + dp[j * c + m] * xr[m];
                }
                dx[j] = dv + u[j] * r + (dxh - xr[j] * r * dot) * r;
            }
        });
    }

    /// `A = softmax_rows(−E)` in place.
    pub fn cam_softmax(e: &mut [f32], d: Dims) {
        e.par_chunks_mut(d.c).for_each(|row| {
            let lo = row.iter().cloned().fold(row[0], f32::min);
            let z: f32 = row.iter().map(|&v| (lo - v).exp()).sum();
            let rz = 1.0 / z;
            row.iter_mut().for_each(|v| *v = (lo - *v).exp() * rz);
        });
    }

    /// `out_n = A x_n`.
    pub fn cam_out(x: &[f32], a: &[f32], out: &mut [f32], d: Dims) {
        let (c, n, mat) = (d.c, d.n, d.mat());
        out.par_chunks_mut(c).enumerate().for_each(|(tok, o)| {
            let a = &a[tok / n * mat..][..mat];
            let xr = &x[tok * c..][..c];
            for (j, o) in o.iter_mut().enumerate() {
                *o = a[j * c..][..c].iter().zip(xr).map(|(w, v)| w * v).sum();
            }
        });
    }

    /// `K = dE + dEᵀ`, `dE_cm = −A_cm (G_cm − Σ_m' A_cm' G_cm')`.
    pub fn cam_dgram(a: &[f32], g: &[f32], d: Dims) -> Vec<f32> {
        let (c, mat) = (d.c, d.mat());
        let r: Vec<f32> = a
            .chunks(c)
            .zip(g.chunks(c))
            .map(|(a, g)| a.iter().zip(g).map(|(x, y)| x * y).sum())
            .collect();
        let mut k = vec![0f32; d.b * mat];
        for (e, o) in k.iter_mut().enumerate() {
            let (s, i, j) = (e / mat, e % mat / c, e % c);
            let (ij, ji) = (s * mat + i * c + j, s * mat + j * c + i);
            *o = -a[ij] * (g[ij] - r[s * c + i]) - a[ji] * (g[ji] - r[s * c + j]);
        }
        k
    }

    /// `dx_n = Aᵀ g_n + K x_n` (K symmetric).
    pub fn cam_bwd(dy: &[f32], x: &[f32], a: &[f32], k: &[f32], dx: &mut [f32], d: Dims) {
        let (c, n, mat) = (d.c, d.n, d.mat());
        dx.par_chunks_mut(c).enumerate().for_each(|(tok, o)| {
            let a = &a[tok / n * mat..][..mat];
            let k = &k[tok / n * mat..][..mat];
            let xr = &x[tok * c..][..c];
            let gr = &dy[tok * c..][..c];
            o.fill(0.0);
            for m in 0..c {
                let (gm, xm) = (gr[m], xr[m]);
                for ((o, &w), &kk) in o.iter_mut().zip(&a[m * c..][..c]).zip(&k[m * c..][..c]) {
                    *o += w * gm + kk * xm;
                }
            }
        });
    }
}

/// The GPU launches (module docs).
mod gpu {
    use super::*;
    use crate::backend::gpu::device::LaunchConfig;

    /// Threads per block of every channel attention kernel.
    pub const THREADS: usize = 256;
    /// Entries of S per thread in the sums kernels (`VD_CHATTN_E`).
    pub const ENTRIES: usize = 4;
    /// Target blocks of the sums grid.
    pub const TARGET_BLOCKS: usize = 1024;
    /// Fewest tokens per part of the sums grid.
    pub const MIN_PART: usize = 64;

    /// One warp per item (token or row), 8 per block, capped at 4096 blocks.
    pub fn warps(items: usize) -> LaunchConfig {
        let blocks = items.div_ceil(THREADS / 32).clamp(1, 4096);
        LaunchConfig::linear(blocks as u32, THREADS as u32)
    }

    /// One thread per entry, capped at 4096 blocks.
    pub fn threads(items: usize) -> LaunchConfig {
        let blocks = items.div_ceil(THREADS).clamp(1, 4096);
        LaunchConfig::linear(blocks as u32, THREADS as u32)
    }

    /// The per-sample sums `[B, sz]` of (a[, b]) by `kernel` (args `a, [b,]
    /// part, n, c, chunk, width[, eps]`): partials `[B, P, sz]`, then
    /// `reduce_sum` to SampleChannel.
    pub fn stats(
        dev: &GpuBackend,
        kernel: Kernel,
        a: &Tensor,
        b: Option<&Tensor>,
        sz: usize,
        eps: Option<f32>,
        d: Dims,
    ) -> Result<Tensor> {
        let width = sz.div_ceil(ENTRIES).next_power_of_two().clamp(32, THREADS);
        let groups = sz.div_ceil(width * ENTRIES);
        let max_parts = d.n.div_ceil(MIN_PART).max(1);
        let parts = TARGET_BLOCKS.div_ceil(groups * d.b).clamp(1, max_parts);
        let chunk = d.n.div_ceil(parts);
        let parts = d.n.div_ceil(chunk);
        ensure!(
            groups <= 65535 && d.b <= 65535,
            "channel attention: {} samples of {sz} sums exceed the grid",
            d.b
        );
        let part = dev.alloc(Shape::new(&[d.b, parts, sz]), DType::F32)?;
        let mut args = KernelArgs::new().tensor(a);
        if let Some(b) = b {
            args = args.tensor(b);
        }
        let mut args = args
            .tensor(&part)
            .i64(d.n as i64)
            .i32(d.c as i32)
            .i64(chunk as i64)
            .i32(width as i32);
        if let Some(eps) = eps {
            args = args.f32(eps);
        }
        let cfg = LaunchConfig {
            grid: [parts as u32, groups as u32, d.b as u32],
            block: [THREADS as u32, 1, 1],
            shared_bytes: 0,
        };
        dev.device().launch(kernel, cfg, &mut args)?;
        dev.reduce_sum(&part, Bcast::SampleChannel)
    }
}
