//! Fused AdamW with global-norm gradient clipping, in place.
//!
//! Two passes over the gradients: (1) ‖g‖² over all slots, each slot in
//! parallel chunks summed in f64 and combined in slot then chunk order
//! (deterministic); (2) per element, in parallel chunks:
//! ```text
//! g' = g·c                     c = 1 if ‖g‖ < max_norm else max_norm / ‖g‖
//! m  = β1·m + (1 − β1)·g'
//! v  = β2·v + (1 − β2)·g'²
//! p  = p − lr·( (m / (1 − β1^t)) / (sqrt(v / (1 − β2^t)) + eps) + wd·p )
//! ```
//! (`wd·p` only where the slot has `decay`; p on the right is the old value).
use super::{check_same_shape, view, view_mut, CpuBackend};
use crate::ops::OptimOps;
use crate::ops::{AdamW, ParamSlot};
use crate::tensor::{Shape, Tensor};
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Check one slot: four distinct f32 host tensors of one shape.
fn check_slot(i: usize, s: &ParamSlot) -> Result<()> {
    let what = |t: &str| format!("adamw_step: slot {i} {t}");
    view(s.param, &what("param"))?;
    view(s.grad, &what("grad"))?;
    view(s.m, &what("m"))?;
    view(s.v, &what("v"))?;
    check_same_shape(s.param, s.grad, &what("param vs grad"))?;
    check_same_shape(s.param, s.m, &what("param vs m"))?;
    check_same_shape(s.param, s.v, &what("param vs v"))?;
    let all = [s.param, s.grad, s.m, s.v];
    for a in 0..4 {
        for b in a + 1..4 {
            ensure!(
                !all[a].same_storage(all[b]),
                "adamw_step: slot {i}: param, grad, m and v must be distinct tensors"
            );
        }
    }
    Ok(())
}

impl OptimOps for CpuBackend {
    fn adamw_step(&self, slots: &[ParamSlot], hp: &AdamW, lr: f32, step: u64) -> Result<Tensor> {
        ensure!(step >= 1, "adamw_step: step counts from 1, got 0");
        if let Some(mx) = hp.max_grad_norm {
            ensure!(
                mx > 0.0,
                "adamw_step: max_grad_norm must be positive, got {mx}"
            );
        }
        for (i, s) in slots.iter().enumerate() {
            check_slot(i, s)?;
        }
        // An in-place update must not see the same storage in two slots.
        for i in 0..slots.len() {
            for j in i + 1..slots.len() {
                let (a, c) = (&slots[i], &slots[j]);
                for x in [a.param, a.grad, a.m, a.v] {
                    for y in [c.param, c.grad, c.m, c.v] {
                        ensure!(
                            !x.same_storage(y),
                            "adamw_step: slots {i} and {j} share a tensor"
                        );
                    }
                }
            }
        }

        // Pass 1: the global norm.
        let mut sq = 0f64;
        for s in slots {
            let g = view(s.grad, "adamw_step: grad")?;
            let parts: Vec<f64> = g
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
                .collect();
            sq += parts.iter().sum::<f64>();
        }
        let norm = sq.sqrt();
        // A NaN norm takes the clipping branch, so it poisons every update.
        let clip = match hp.max_grad_norm {
            Some(mx) if norm < mx as f64 => 1.0,
            Some(mx) => (mx as f64 / norm) as f32,
            None => 1.0,
        };

        // Pass 2: the update.
        let t = step.min(i32::MAX as u64) as i32;
        let bc1 = (1.0 - (hp.beta1 as f64).powi(t)) as f32;
        let bc2 = (1.0 - (hp.beta2 as f64).powi(t)) as f32;
        let (b1, b2, eps) = (hp.beta1, hp.beta2, hp.eps);
        for s in slots {
            let g = view(s.grad, "adamw_step: grad")?;
            let p = view_mut(s.param);
            let m = view_mut(s.m);
            let v = view_mut(s.v);
            let wd = if s.decay { hp.weight_decay } else { 0.0 };
            p.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|((p, m), (v, g))| {
                    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                        let g = g * clip;
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        let mhat = *m / bc1;
                        let vhat = *v / bc2;
                        *p -= lr * (mhat / (vhat.sqrt() + eps) + wd * *p);
                    }
                });
        }
        let out = self.out_uninit(Shape::scalar())?;
        view_mut(&out)[0] = norm as f32;
        Ok(out)
    }
}
