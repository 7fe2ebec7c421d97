//! The backward of each recorded op: read the output's gradient, call the
//! backend's backward methods, accumulate into the inputs' gradients.

use super::Node;
use crate::backend::Backend;
use crate::ops::NormArgs;
use crate::tensor::Tensor;
use anyhow::Result;

/// Add `g` into slot `id` of `grads` (nothing when `id` is None: an untracked input).
pub(super) fn acc(
    b: &dyn Backend,
    grads: &mut [Option<Tensor>],
    id: Option<usize>,
    g: Tensor,
) -> Result<()> {
    let Some(id) = id else { return Ok(()) };
    grads[id] = Some(match grads[id].take() {
        None => g,
        Some(prev) => b.lincomb(&[(1.0, &prev), (1.0, &g)])?,
    });
    Ok(())
}

/// Run the backward of one node.
pub(super) fn node(b: &dyn Backend, node: Node, grads: &mut [Option<Tensor>]) -> Result<()> {
    let out = match &node {
        Node::Conv { out, .. }
        | Node::Linear { out, .. }
        | Node::Norm { out, .. }
        | Node::Act { out, .. }
        | Node::LinComb { out, .. }
        | Node::AddNc { out, .. }
        | Node::Concat { out, .. }
        | Node::SliceC { out, .. }
        | Node::Crop { out, .. }
        | Node::Upsample { out, .. }
        | Node::MaxPool { out, .. }
        | Node::Softmax { out, .. }
        | Node::CrossEntropy { out, .. }
        | Node::Dice { out, .. }
        | Node::Mse { out, .. }
        | Node::ScalarLinComb { out, .. }
        | Node::ScaledToLogits { out, .. } => *out,
    };
    // An output nobody used downstream of the loss has no gradient.
    let Some(dy) = grads[out].take() else {
        return Ok(());
    };
    match node {
        Node::Conv {
            x,
            w,
            b: bias,
            x_t,
            w_t,
            x_shape,
            spec,
            ..
        } => {
            if let (Some(_), Some(w_t)) = (x, &w_t) {
                let dx = b.conv3d_dgrad(&dy, w_t, x_shape, spec)?;
                acc(b, grads, x, dx)?;
            }
            if w.is_some() || bias.is_some() {
                // The saved input exists whenever the weight is tracked; a
                // tracked bias with an untracked weight only needs Σ dy.
                if let Some(x_t) = &x_t {
                    let (dw, db) = b.conv3d_wgrad(x_t, &dy, spec, bias.is_some())?;
                    acc(b, grads, w, dw)?;
                    if let Some(db) = db {
                        acc(b, grads, bias, db)?;
                    }
                } else if bias.is_some() {
                    let s = b.sum_spatial(&dy)?;
                    let db = column_sum(b, &s)?;
                    acc(b, grads, bias, db)?;
                }
            }
        }
        Node::Linear {
            x,
            w,
            b: bias,
            x_t,
            w_t,
            ..
        } => {
            if let (Some(_), Some(w_t)) = (x, &w_t) {
                acc(b, grads, x, b.linear_dgrad(&dy, w_t)?)?;
            }
            if w.is_some() || bias.is_some() {
                if let Some(x_t) = &x_t {
                    let (dw, db) = b.linear_wgrad(x_t, &dy, bias.is_some())?;
                    acc(b, grads, w, dw)?;
                    if let Some(db) = db {
                        acc(b, grads, bias, db)?;
                    }
                } else if bias.is_some() {
                    acc(b, grads, bias, column_sum(b, &dy)?)?;
                }
            }
        }
        Node::Norm {
            x,
            gamma,
            beta,
            film,
            residual,
            x_t,
            stats,
            groups,
            eps,
            act,
            ..
        } => {
            let args = NormArgs {
                groups,
                eps,
                gamma: gamma.as_ref().map(|g| &g.1),
                beta: beta.as_ref().map(|g| &g.1),
                film: film.as_ref().map(|f| (&f.1, &f.3)),
                residual: residual.as_ref().map(|r| &r.1),
                act,
            };
            let g = b.norm_bwd(&dy, &x_t, &stats, &args)?;
            acc(b, grads, x, g.dx)?;
            if let (Some((id, _)), Some(dg)) = (gamma, g.dgamma) {
                acc(b, grads, id, dg)?;
            }
            if let (Some((id, _)), Some(db)) = (beta, g.dbeta) {
                acc(b, grads, id, db)?;
            }
            if let (Some((sid, _, hid, _)), Some((ds, dh))) = (film, g.dfilm) {
                acc(b, grads, sid, ds)?;
                acc(b, grads, hid, dh)?;
            }
            if let (Some((id, _)), Some(dr)) = (residual, g.dresidual) {
                acc(b, grads, id, dr)?;
            }
        }
        Node::Act { x, x_t, act, .. } => {
            acc(b, grads, Some(x), b.act_bwd(&dy, &x_t, act)?)?;
        }
        Node::LinComb { terms, .. } => {
            for (c, id) in terms {
                if id.is_some() {
                    let g = if c == 1.0 {
                        dy.clone()
                    } else {
                        b.lincomb(&[(c, &dy)])?
                    };
                    acc(b, grads, id, g)?;
                }
            }
        }
        Node::AddNc { x, v, .. } => {
            if v.is_some() {
                acc(b, grads, v, b.sum_spatial(&dy)?)?;
            }
            acc(b, grads, x, dy)?;
        }
        Node::Concat { parts, .. } => {
            let mut start = 0;
            for (id, c) in parts {
                if id.is_some() {
                    acc(b, grads, id, b.slice_c(&dy, start, c)?)?;
                }
                start += c;
            }
        }
        Node::SliceC { x, start, c_in, .. } => {
            // Scatter back: zeros around the slice, built by concatenation.
            let sh = dy.shape();
            let mut parts: Vec<Tensor> = Vec::new();
            if start > 0 {
                parts.push(b.zeros(sh.with_c(start), dy.dtype())?);
            }
            parts.push(dy.clone());
            let after = c_in - start - sh.c();
            if after > 0 {
                parts.push(b.zeros(sh.with_c(after), dy.dtype())?);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            let dx = if refs.len() == 1 {
                dy.clone()
            } else {
                b.concat_c(&refs)?
            };
            acc(b, grads, Some(x), dx)?;
        }
        Node::Crop {
            x, origin, full, ..
        } => {
            acc(b, grads, Some(x), b.pad(&dy, origin, full)?)?;
        }
        Node::Upsample { x, factor, .. } => {
            acc(b, grads, Some(x), b.upsample_bwd(&dy, factor)?)?;
        }
        Node::MaxPool { x, x_t, window, .. } => {
            acc(b, grads, Some(x), b.maxpool_bwd(&dy, &x_t, window)?)?;
        }
        Node::Softmax { x, p_t, .. } => {
            acc(b, grads, Some(x), b.softmax_bwd(&dy, &p_t)?)?;
        }
        Node::CrossEntropy {
            logits,
            logits_t,
            target_t,
            ..
        } => {
            let g = b.cross_entropy_bwd(&logits_t, &target_t, &dy)?;
            acc(b, grads, Some(logits), g)?;
        }
        Node::Dice {
            p,
            p_t,
            target_t,
            sums,
            ..
        } => {
            let g = b.dice_loss_bwd(&p_t, &target_t, &sums, &dy)?;
            acc(b, grads, Some(p), g)?;
        }
        Node::Mse {
            a, b: bb, a_t, b_t, ..
        } => {
            let ga = b.mse_bwd(&a_t, &b_t, &dy)?;
            if bb.is_some() {
                acc(b, grads, bb, b.lincomb(&[(-1.0, &ga)])?)?;
            }
            acc(b, grads, a, ga)?;
        }
        Node::ScaledToLogits { x, x_t, eps, .. } => {
            acc(b, grads, Some(x), b.scaled_to_logits_bwd(&dy, &x_t, eps)?)?;
        }
        Node::ScalarLinComb { terms, .. } => {
            for (c, id) in terms {
                if id.is_some() {
                    acc(b, grads, id, b.scalar_lincomb(&[(c, &dy)])?)?;
                }
            }
        }
    }
    Ok(())
}

/// Σ over rows of an `[M, N]` f32 matrix, as `[N]`: a product with a ones vector.
fn column_sum(b: &dyn Backend, m: &Tensor) -> Result<Tensor> {
    let rows = m.shape().dims()[0];
    let cols = m.numel() / rows;
    let m2 = m.reshape(crate::tensor::Shape::new(&[rows, cols]));
    let ones = b.upload(
        &vec![1.0; rows],
        crate::tensor::Shape::new(&[1, rows]),
        m.dtype(),
    )?;
    let s = b.linear(&ones, &m2, None)?;
    Ok(s.reshape(crate::tensor::Shape::new(&[cols])))
}
