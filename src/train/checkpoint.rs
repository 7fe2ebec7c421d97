//! Checkpoints: parameters, optimiser moments and run metadata in one
//! safetensors file, written to a temporary file and renamed into place so a
//! run killed mid-write never leaves a broken checkpoint behind.
//!
//! Tensor names: `param/<name>`, `adam_m/<name>`, `adam_v/<name>` (f32,
//! parameter shapes). Metadata (strings): `format` = `voxdiff-checkpoint-1`,
//! `step` (optimiser updates applied), `extra` (JSON chosen by the caller:
//! config, RNG position, …).

use crate::backend::Backend;
use crate::nn::ParamStore;
use crate::tensor::Tensor;
use crate::train::Optimizer;
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "voxdiff-checkpoint-1";

/// What a checkpoint restores besides the tensors.
pub struct Checkpoint {
    pub step: u64,
    pub extra: serde_json::Value,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Write `path` atomically: parameters of `ps`, the moments of `opt` (if
/// given), the step and `extra`.
pub fn save(
    path: &Path,
    b: &dyn Backend,
    ps: &ParamStore,
    opt: Option<&Optimizer>,
    extra: &serde_json::Value,
) -> Result<()> {
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, e) in ps.entries.iter().enumerate() {
        let dims = e.t.shape().dims().to_vec();
        blobs.push((
            format!("param/{}", e.name),
            dims.clone(),
            f32_bytes(&b.download(&e.t)?),
        ));
        if let Some(o) = opt {
            blobs.push((
                format!("adam_m/{}", e.name),
                dims.clone(),
                f32_bytes(&b.download(&o.m[i])?),
            ));
            blobs.push((
                format!("adam_v/{}", e.name),
                dims,
                f32_bytes(&b.download(&o.v[i])?),
            ));
        }
    }
    let views: Vec<(String, TensorView)> = blobs
        .iter()
        .map(|(n, s, d)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d)?)))
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("step".to_string(), opt.map_or(0, |o| o.step).to_string());
    meta.insert("extra".to_string(), extra.to_string());
    let bytes = safetensors::serialize(views, Some(meta))?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Restore parameters (and, if `opt` is given, moments and step) from `path`
/// into an already built model. Every parameter must be present with its shape.
pub fn load(
    path: &Path,
    b: &dyn Backend,
    ps: &ParamStore,
    opt: Option<&mut Optimizer>,
) -> Result<Checkpoint> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    ensure!(
        meta.get("format").map(String::as_str) == Some(FORMAT),
        "{}: not a voxdiff checkpoint (format {:?})",
        path.display(),
        meta.get("format")
    );
    let read = |name: &str, like: &Tensor| -> Result<Vec<f32>> {
        let v = st
            .tensor(name)
            .with_context(|| format!("{}: missing tensor {name}", path.display()))?;
        ensure!(
            v.dtype() == Dtype::F32,
            "{}: {name} is {:?}, expected F32",
            path.display(),
            v.dtype()
        );
        ensure!(
            v.shape() == like.shape().dims(),
            "{}: {name} has shape {:?}, the model expects {:?}",
            path.display(),
            v.shape(),
            like.shape().dims()
        );
        let vals: Vec<f32> = bytemuck::pod_collect_to_vec(v.data());
        if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: {name} holds a non-finite value at element {i}",
                path.display()
            );
        }
        Ok(vals)
    };
    for e in &ps.entries {
        b.write(&e.t, &read(&format!("param/{}", e.name), &e.t)?)?;
    }
    let step: u64 = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{}: bad step metadata", path.display()))?;
    if let Some(o) = opt {
        for (i, e) in ps.entries.iter().enumerate() {
            b.write(&o.m[i], &read(&format!("adam_m/{}", e.name), &e.t)?)?;
            b.write(&o.v[i], &read(&format!("adam_v/{}", e.name), &e.t)?)?;
        }
        o.step = step;
    }
    let extra = meta
        .get("extra")
        .map(|s| serde_json::from_str(s))
        .transpose()
        .with_context(|| format!("{}: bad extra metadata", path.display()))?
        .unwrap_or(serde_json::Value::Null);
    Ok(Checkpoint { step, extra })
}
