//! A segmentation model as trained and run by the pipelines: the ImgX UNet
//! either as a diffusion denoiser or as the supervised baseline, its
//! parameters, and one training step's loss.

use super::seg_data::Example;
use super::train_loop::{StepKey, StepLoss, Trainable};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::diffusion::seg::{seg_loss, Denoiser, DiffusionConfig, SegDiffusion};
use crate::diffusion::Sampler;
use crate::model::{ImgxUnet, TimeConditioning, UnetConfig};
use crate::nn::{ParamBuilder, ParamStore};
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Which of the two systems a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Diffusion segmentation (ImgX-DiffSeg).
    Diffusion,
    /// The supervised UNet baseline (same network, no time input).
    Unet,
}

/// Network settings of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub channels: Vec<usize>,
    pub time_conditioning: TimeConditioning,
    /// Seed of the parameter initialisation.
    pub init_seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelKind::Diffusion,
            channels: vec![32, 64, 128, 256],
            time_conditioning: TimeConditioning::Film,
            init_seed: 0,
        }
    }
}

/// The ImgX UNet with its parameters, as a diffusion denoiser.
pub struct UnetDenoiser<'a> {
    pub net: &'a ImgxUnet,
    pub ps: &'a ParamStore,
}

/// The ImgX network's conditioning: the image concatenated with x_t.
impl Denoiser for UnetDenoiser<'_> {
    fn denoise(&self, g: &mut Graph, cond: &Var, x_t: &Var, t: &[f32]) -> Result<Var> {
        let input = g.concat_c(&[cond, x_t])?;
        self.net.forward(g, self.ps, &input, Some(t))
    }
}

/// A built segmentation model.
pub struct SegModel {
    pub cfg: ModelConfig,
    pub classes: usize,
    pub net: ImgxUnet,
    pub ps: ParamStore,
    pub diffusion: Option<SegDiffusion>,
}

impl SegModel {
    pub fn new(
        b: &dyn Backend,
        cfg: &ModelConfig,
        diff: &DiffusionConfig,
        classes: usize,
    ) -> Result<SegModel> {
        ensure!(
            classes >= 2,
            "a segmentation needs at least 2 classes (background + 1), got {classes}"
        );
        let tc = match cfg.kind {
            ModelKind::Diffusion => {
                ensure!(
                    cfg.time_conditioning != TimeConditioning::None,
                    "a diffusion model needs time conditioning (faithful or film)"
                );
                cfg.time_conditioning
            }
            ModelKind::Unet => TimeConditioning::None,
        };
        let mut ucfg = UnetConfig::imgx(classes, tc);
        ucfg.channels = cfg.channels.clone();
        let mut ps = ParamStore::new(cfg.init_seed);
        let net = ImgxUnet::new(&mut ParamBuilder::new(&mut ps, b), ucfg)?;
        let diffusion = match cfg.kind {
            ModelKind::Diffusion => Some(SegDiffusion::new(diff.clone())?),
            ModelKind::Unet => None,
        };
        Ok(SegModel {
            cfg: cfg.clone(),
            classes,
            net,
            ps,
            diffusion,
        })
    }

    /// Time steps of the diffusion (1 for the supervised model).
    pub fn timesteps(&self) -> usize {
        self.diffusion.as_ref().map_or(1, |d| d.steps())
    }

    /// The diffusion time step of training step `key`: uniform over 0..T.
    pub fn draw_t(&self, key: StepKey) -> usize {
        let mut z = key.seed ^ key.step.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x5851_F42D_4C95_7F2D;
        z = (z ^ (z >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        z = (z ^ (z >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        ((z ^ (z >> 32)) % self.timesteps() as u64) as usize
    }

    /// The training loss of one example, recorded on `g`. `image` is
    /// `[1,D,H,W,1]`, `mask` the one-hot target `[1,D,H,W,K]`; `t` is the
    /// diffusion step (ignored by the supervised model).
    pub fn loss(
        &self,
        g: &mut Graph,
        image: &Tensor,
        mask: &Tensor,
        t: usize,
        seed: u64,
        step: u64,
    ) -> Result<Var> {
        match &self.diffusion {
            Some(d) => {
                let den = UnetDenoiser {
                    net: &self.net,
                    ps: &self.ps,
                };
                d.loss(g, &den, image, mask, t, seed, step)
            }
            None => {
                let x = g.constant(image.clone());
                let logits = self.net.forward(g, &self.ps, &x, None)?;
                seg_loss(g, &logits, mask, 1.0, 1.0)
            }
        }
    }

    /// Per-class scores `[1,D,H,W,K]` for `image` `[1,D,H,W,1]` (argmax is the
    /// label): for the diffusion model, the mean over `samples` sampled x̂_0 of
    /// their one-hot argmax (a majority vote); for the supervised model, softmax.
    pub fn predict(
        &self,
        b: &dyn Backend,
        image: &Tensor,
        sampler: Sampler,
        steps: Option<usize>,
        samples: usize,
        seed: u64,
        mut on_step: impl FnMut(usize, usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        match &self.diffusion {
            Some(d) => {
                ensure!(samples >= 1, "at least one sample");
                let den = UnetDenoiser {
                    net: &self.net,
                    ps: &self.ps,
                };
                let mut votes: Option<Tensor> = None;
                for s in 0..samples {
                    let x0 = d.sample(
                        b,
                        &den,
                        image,
                        self.classes,
                        sampler,
                        steps,
                        seed.wrapping_add(s as u64),
                        |k, x| on_step(s, k, x),
                    )?;
                    let lab = b.argmax_c(&x0)?;
                    let oh = b.one_hot(&lab, self.classes, 1.0 / samples as f32, 0.0)?;
                    votes = Some(match votes {
                        None => oh,
                        Some(v) => b.lincomb(&[(1.0, &v), (1.0, &oh)])?,
                    });
                }
                Ok(votes.expect("samples >= 1"))
            }
            None => {
                let mut g = Graph::inference(b);
                let x = g.constant(image.clone());
                let logits = self.net.forward(&mut g, &self.ps, &x, None)?;
                Ok(b.softmax(&logits.t)?)
            }
        }
    }
}

/// `[1, D, H, W, C]`.
pub fn volume_shape(dims: [usize; 3], c: usize) -> Shape {
    Shape::ndhwc(1, dims[0], dims[1], dims[2], c)
}

/// Training on (image, label ids) patches: the diffusion loss at a drawn time
/// step, or the supervised CE + Dice.
impl Trainable for SegModel {
    type Batch = Example;
    fn params(&self) -> &ParamStore {
        &self.ps
    }
    fn loss(&self, g: &mut Graph, ex: &Example, key: StepKey) -> Result<StepLoss> {
        let dev = g.dev;
        let shape = volume_shape(ex.dims, 1);
        let image = dev.upload(&ex.image, shape, dev.act_dtype())?;
        let labels = dev.upload(&ex.labels, shape, dev.act_dtype())?;
        let mask = dev.one_hot(&labels, self.classes, 1.0, 0.0)?;
        let t = self.draw_t(key);
        let loss = self.loss(g, &image, &mask, t, key.seed, key.step)?;
        Ok(StepLoss {
            loss,
            log: vec![("t", t.into())],
        })
    }
}
