//! The position linear attention as one fused custom op
//! ([`crate::ops::custom`]): [`LinearAttention`] computes
//! `out_n = [vs + q̂_nᵀ KV] / [N + q̂_n·(ks + ε)]` from q, k `[B, D, H, W,
//! C_k]` and v `[B, D, H, W, C]` (the math is in [`super::attention`]),
//! [`LinearAttentionGrad`] its backward. Both are checked against the
//! composition of primitives on every backend (tests/linear_attention.rs).
//!
//! # Passes
//! With `KV = Σ_j k̂_j v_jᵀ` (`C_k × C`), `ks = Σ_j k̂_j`, `vs = Σ_j v_j` —
//! per sample, together the f32 *stats* `[B, S]`, `S = C_k·C + C_k + C`,
//! laid out `[KV row-major | ks | vs]`:
//! 1. stats: one pass over k and v;
//! 2. out: one pass over q, reading the stats of its sample.
//!
//! The backward, from g = dL/dout, per token n with `den_n` the denominator,
//! `dnum_n = g_n / den_n`, `dden_n = −g_n·out_n / den_n`:
//! 1. the q pass: `dq̂_n = KV·dnum_n + dden_n (ks + ε)`, `dq_n = (dq̂_n −
//!    q̂_n (q̂_n·dq̂_n)) / ‖q_n‖`; it also writes dnum (f32 `[B, N, C]`) and
//!    dden (f32 `[B, N]`);
//! 2. the stats pass again, over (q̂, dnum, dden): `dKV = Σ_n q̂_n dnum_nᵀ`,
//!    `dks = Σ_n dden_n q̂_n`, `dvs = Σ_n dnum_n`;
//! 3. the kv pass: `dk̂_j = dKV·v_j + dks`, `dk_j` as dq_n, and
//!    `dv_j = dKVᵀ k̂_j + dvs`.
//!
//! The dot `q̂·dq̂` is `Σ_c dnum_c (num_c − vs_c) + dden (den − N)` and
//! `k̂·dk̂` is `Σ_c v_c (dKVᵀk̂)_c + k̂·dks`, so each token pass is one sweep
//! over the channels with no per-token buffer.
//!
//! # GPU (`kernels/attention.cu`)
//! - `linear_stats[_bwd]`: grid (P parts of the tokens, G groups of
//!   entries, B), blocks of 256 threads: a thread owns 4 entries of S (one
//!   every `W` entries, W the slot width, a power of two in 32..=256) and one
//!   of `L = 256 / W` lanes over the tokens of its part; the lanes are
//!   summed in a fixed order through shared memory and each block writes
//!   f32 partials `[B, P, S]`, which `reduce_sum` (SampleChannel) adds in
//!   part order — no block waits on another, the same bits every run.
//!   P is chosen so the grid has ≈ 1024 blocks and a part ≥ 64 tokens.
//! - `linear_out`, `linear_bwd_q`, `linear_bwd_kv`: one warp per token (8
//!   per block of 256, ⌈B·N / 8⌉ blocks capped at 4096, grid-stride
//!   beyond), lanes over channels, the per-token dots by warp sums.
//!
//! Counted (e bytes per activation, N·B tokens, C_k ≪ C): forward reads
//! q, k, v once ((2C_k + C)·e per token) and writes out (C·e), ≈ 4·C_k·C
//! FLOPs per token; the backward reads dy, q, k, v and the f32 dnum once
//! more, writes dq, dk, dv and dnum, ≈ 10·C_k·C FLOPs per token.

use crate::backend::cpu::{view, view_mut, CpuBackend};
use crate::backend::gpu::device::KernelArgs;
use crate::backend::gpu::registry::Kernel;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::ops::custom::{self, CustomGrad, CustomOp};
use crate::ops::{Bcast, MemoryOps, ReduceOps};
use crate::tensor::{DType, Shape, Tensor};
use anyhow::{ensure, Result};

/// The forward: inputs (q, k, v), outputs (out, stats).
pub struct LinearAttention {
    pub eps: f32,
}

/// The backward: inputs (dy, q, k, v, stats), outputs (dq, dk, dv).
pub struct LinearAttentionGrad {
    pub eps: f32,
}

/// Samples, tokens per sample, q/k channels, v channels.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub b: usize,
    pub n: usize,
    pub ck: usize,
    pub c: usize,
}

impl Dims {
    /// Entries of one sample's stats: `C_k·C + C_k + C`.
    pub fn s(&self) -> usize {
        self.ck * self.c + self.ck + self.c
    }
    /// FLOPs of the forward (stats 2·C_k·C + out 2·C_k·C per token, plus the
    /// norms and denominators, ≈ 4·C_k per token).
    pub fn flops_fwd(&self) -> u64 {
        (self.b * self.n * (4 * self.ck * self.c + 6 * self.ck + 2 * self.c)) as u64
    }
    /// Fewest bytes of the forward: q, k, v read and out written once.
    pub fn bytes_fwd(&self, elem: usize) -> u64 {
        (self.b * self.n * (2 * self.ck + 2 * self.c) * elem) as u64
    }
}

/// The contract of the forward: q, k `[B, D, H, W, C_k]`, v `[B, D, H, W,
/// C]`, one dtype, no empty extent, ε finite and ≥ 0.
pub fn check_dims(q: &Tensor, k: &Tensor, v: &Tensor, eps: f32) -> Result<Dims> {
    ensure!(
        eps.is_finite() && eps >= 0.0,
        "linear attention: eps must be finite and ≥ 0, got {eps}"
    );
    let vs = v.shape();
    ensure!(
        vs.rank() == 5,
        "linear attention: v must be NDHWC, got shape {vs}"
    );
    ensure!(
        q.shape() == k.shape() && q.shape().rank() == 5 && q.shape().with_c(vs.c()) == vs,
        "linear attention: q {}, k {} and v {vs} must share [B, D, H, W] (q and k one shape)",
        q.shape(),
        k.shape()
    );
    ensure!(
        q.dtype() == k.dtype() && k.dtype() == v.dtype(),
        "linear attention: q, k, v must share a dtype, got {}, {}, {}",
        q.dtype().name(),
        k.dtype().name(),
        v.dtype().name()
    );
    ensure!(
        v.numel() > 0 && q.shape().c() > 0,
        "linear attention: q {} / v {vs} has an empty extent",
        q.shape()
    );
    Ok(Dims {
        b: vs.n(),
        n: vs.voxels(),
        ck: q.shape().c(),
        c: vs.c(),
    })
}

fn check_stats(stats: &Tensor, d: Dims, what: &str) -> Result<()> {
    ensure!(
        stats.shape() == Shape::new(&[d.b, d.s()]) && stats.dtype() == DType::F32,
        "{what}: stats must be f32 [{}, {}], got {} {}",
        d.b,
        d.s(),
        stats.dtype().name(),
        stats.shape()
    );
    Ok(())
}

impl CustomOp for LinearAttention {
    fn name(&self) -> String {
        "linear_attention".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        ensure!(
            inputs.len() == 3,
            "linear_attention: inputs (q, k, v), got {}",
            inputs.len()
        );
        check_dims(inputs[0], inputs[1], inputs[2], self.eps).map(|_| ())
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[0], inputs[1], inputs[2], self.eps)?;
        let q = view(inputs[0], "linear_attention: q")?;
        let k = view(inputs[1], "linear_attention: k")?;
        let v = view(inputs[2], "linear_attention: v")?;
        let stats = dev.out_uninit(Shape::new(&[d.b, d.s()]))?;
        view_mut(&stats).copy_from_slice(&cpu::stats(k, v, None, d));
        let out = dev.out_uninit(inputs[2].shape())?;
        cpu::out(q, view(&stats, "stats")?, view_mut(&out), d, self.eps);
        Ok(vec![out, stats])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[0], inputs[1], inputs[2], self.eps)?;
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
            dev.check(t, &format!("linear_attention: {what}"))?;
        }
        let bf16 = (v.dtype() == DType::BF16) as usize;
        let stats = gpu::stats(
            dev,
            [
                Kernel::AttentionLinearStatsF32,
                Kernel::AttentionLinearStatsBf16,
            ][bf16],
            k,
            v,
            None,
            d,
        )?;
        let out = dev.alloc(v.shape(), v.dtype())?;
        let kernel = [
            Kernel::AttentionLinearOutF32,
            Kernel::AttentionLinearOutBf16,
        ][bf16];
        let mut args = KernelArgs::new()
            .tensor(q)
            .tensor(&stats)
            .tensor(&out)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.ck as i32)
            .i32(d.c as i32)
            .f32(self.eps);
        dev.device()
            .launch(kernel, gpu::token_config(d), &mut args)?;
        Ok(vec![out, stats])
    }
}

impl CustomGrad for LinearAttention {
    fn backward(
        &self,
        dev: &dyn Backend,
        dy: &Tensor,
        inputs: &[Tensor],
        outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>> {
        let grad = LinearAttentionGrad { eps: self.eps };
        let ins = [dy, &inputs[0], &inputs[1], &inputs[2], &outputs[1]];
        let ds = custom::run(dev, &grad, &ins)?;
        Ok(ds.into_iter().map(Some).collect())
    }
}

impl CustomOp for LinearAttentionGrad {
    fn name(&self) -> String {
        "linear_attention_bwd".into()
    }
    fn check(&self, inputs: &[&Tensor]) -> Result<()> {
        ensure!(
            inputs.len() == 5,
            "linear_attention_bwd: inputs (dy, q, k, v, stats), got {}",
            inputs.len()
        );
        let d = check_dims(inputs[1], inputs[2], inputs[3], self.eps)?;
        let (dy, v) = (inputs[0], inputs[3]);
        ensure!(
            dy.shape() == v.shape() && dy.dtype() == v.dtype(),
            "linear_attention_bwd: dy ({} {}) and v ({} {}) differ",
            dy.dtype().name(),
            dy.shape(),
            v.dtype().name(),
            v.shape()
        );
        check_stats(inputs[4], d, "linear_attention_bwd")
    }
    fn cpu(&self, dev: &CpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[1], inputs[2], inputs[3], self.eps)?;
        let what = "linear_attention_bwd";
        let dy = view(inputs[0], what)?;
        let q = view(inputs[1], what)?;
        let k = view(inputs[2], what)?;
        let v = view(inputs[3], what)?;
        let stats = view(inputs[4], what)?;
        let dq = dev.out_uninit(inputs[1].shape())?;
        let mut dnum = vec![0f32; d.b * d.n * d.c];
        let mut dden = vec![0f32; d.b * d.n];
        cpu::bwd_q(
            dy,
            q,
            stats,
            view_mut(&dq),
            &mut dnum,
            &mut dden,
            d,
            self.eps,
        );
        let dstats = cpu::stats(q, &dnum, Some(&dden), d);
        let dk = dev.out_uninit(inputs[2].shape())?;
        let dv = dev.out_uninit(inputs[3].shape())?;
        cpu::bwd_kv(k, v, &dstats, view_mut(&dk), view_mut(&dv), d);
        Ok(vec![dq, dk, dv])
    }
    fn gpu(&self, dev: &GpuBackend, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let d = check_dims(inputs[1], inputs[2], inputs[3], self.eps)?;
        for (i, t) in inputs.iter().enumerate() {
            dev.check(t, &format!("linear_attention_bwd: input {i}"))?;
        }
        let (dy, q, k, v, stats) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
        let bf16 = (v.dtype() == DType::BF16) as usize;
        let dq = dev.alloc(q.shape(), q.dtype())?;
        let dnum = dev.alloc(Shape::new(&[d.b, d.n, d.c]), DType::F32)?;
        let dden = dev.alloc(Shape::new(&[d.b, d.n]), DType::F32)?;
        let kernel = [
            Kernel::AttentionLinearBwdQF32,
            Kernel::AttentionLinearBwdQBf16,
        ][bf16];
        let mut args = KernelArgs::new()
            .tensor(dy)
            .tensor(q)
            .tensor(stats)
            .tensor(&dq)
            .tensor(&dnum)
            .tensor(&dden)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.ck as i32)
            .i32(d.c as i32)
            .f32(self.eps);
        dev.device()
            .launch(kernel, gpu::token_config(d), &mut args)?;
        let dstats = gpu::stats(
            dev,
            [
                Kernel::AttentionLinearStatsBwdF32,
                Kernel::AttentionLinearStatsBwdBf16,
            ][bf16],
            q,
            &dnum,
            Some(&dden),
            d,
        )?;
        let dk = dev.alloc(k.shape(), k.dtype())?;
        let dv = dev.alloc(v.shape(), v.dtype())?;
        let kernel = [
            Kernel::AttentionLinearBwdKvF32,
            Kernel::AttentionLinearBwdKvBf16,
        ][bf16];
        let mut args = KernelArgs::new()
            .tensor(k)
            .tensor(v)
            .tensor(&dstats)
            .tensor(&dk)
            .tensor(&dv)
            .i64(d.b as i64)
            .i64(d.n as i64)
            .i32(d.ck as i32)
            .i32(d.c as i32);
        dev.device()
            .launch(kernel, gpu::token_config(d), &mut args)?;
        Ok(vec![dq, dk, dv])
    }
}

/// The CPU passes (module docs), f32 with a fixed summation order: sums
/// over tokens in chunks of [`cpu::CHUNK`], the chunks added in order.
mod cpu {
    use super::Dims;
    use rayon::prelude::*;

    pub const CHUNK: usize = 512;

    /// `1 / ‖row‖`.
    fn inv_norm(row: &[f32]) -> f32 {
        1.0 / row.iter().map(|x| x * x).sum::<f32>().sqrt()
    }

    /// Per sample: `[Σ â_n b_nᵀ | Σ â_n s_n | Σ b_n]` (â = a / ‖a‖, s = 1
    /// when absent), a with C_k and b with C channels.
    pub fn stats(a: &[f32], b: &[f32], s: Option<&[f32]>, d: Dims) -> Vec<f32> {
        let (ck, c, n, sz) = (d.ck, d.c, d.n, d.s());
        let chunks = n.div_ceil(CHUNK);
        let parts: Vec<Vec<f32>> = (0..d.b * chunks)
            .into_par_iter()
            .map(|job| {
                let (sample, chunk) = (job / chunks, job % chunks);
                let mut acc = vec![0f32; sz];
                let (kv, rest) = acc.split_at_mut(ck * c);
                let (ks, vs) = rest.split_at_mut(ck);
                let mut ah = vec![0f32; ck];
                for t in chunk * CHUNK..((chunk + 1) * CHUNK).min(n) {
                    let tok = sample * n + t;
                    let ar = &a[tok * ck..][..ck];
                    let br = &b[tok * c..][..c];
                    let r = inv_norm(ar);
                    let st = s.map_or(1.0, |s| s[tok]);
                    for i in 0..ck {
                        ah[i] = ar[i] * r;
                        ks[i] += ah[i] * st;
                        for (o, &bv) in kv[i * c..][..c].iter_mut().zip(br) {
                            *o += ah[i] * bv;
                        }
                    }
                    for (o, &bv) in vs.iter_mut().zip(br) {
                        *o += bv;
                    }
                }
                acc
            })
            .collect();
        crate::backend::cpu::sum_partials_in_order(&parts, chunks, d.b, sz)
    }

    /// `out_n = (vs + q̂_nᵀ KV) / (N + q̂_n·(ks + ε))`.
    pub fn out(q: &[f32], stats: &[f32], out: &mut [f32], d: Dims, eps: f32) {
        let (ck, c, n, sz) = (d.ck, d.c, d.n, d.s());
        out.par_chunks_mut(c).enumerate().for_each(|(tok, o)| {
            let st = &stats[tok / n * sz..][..sz];
            let (kv, ks, vs) = (&st[..ck * c], &st[ck * c..][..ck], &st[ck * c + ck..]);
            let qr = &q[tok * ck..][..ck];
            let r = inv_norm(qr);
            o.copy_from_slice(vs);
            let mut den = n as f32;
            for i in 0..ck {
                let qh = qr[i] * r;
                den += qh * (ks[i] + eps);
                for (o, &w) in o.iter_mut().zip(&kv[i * c..][..c]) {
                    *o += qh * w;
                }
            }
            let inv = 1.0 / den;
            o.iter_mut().for_each(|x| *x *= inv);
        });
    }

    /// The q pass of the backward: dq, dnum = g / den, dden = −g·out / den.
    #[allow(clippy::too_many_arguments)]
    pub fn bwd_q(
        dy: &[f32],
        q: &[f32],
        stats: &[f32],
        dq: &mut [f32],
        dnum: &mut [f32],
        dden: &mut [f32],
        d: Dims,
        eps: f32,
    ) {
        let (ck, c, n, sz) = (d.ck, d.c, d.n, d.s());
        dq.par_chunks_mut(ck)
            .zip(dnum.par_chunks_mut(c))
            .zip(dden.par_iter_mut())
            .enumerate()
            .for_each(|(tok, ((dq, dn), dd))| {
                let st = &stats[tok / n * sz..][..sz];
                let (kv, ks, vs) = (&st[..ck * c], &st[ck * c..][..ck], &st[ck * c + ck..]);
                let qr = &q[tok * ck..][..ck];
                let g = &dy[tok * c..][..c];
                let r = inv_norm(qr);
                // num − vs = q̂ᵀKV, accumulated into dn first.
                dn.fill(0.0);
                let mut qk = 0f32;
                for i in 0..ck {
                    let qh = qr[i] * r;
                    qk += qh * (ks[i] + eps);
                    for (o, &w) in dn.iter_mut().zip(&kv[i * c..][..c]) {
                        *o += qh * w;
                    }
                }
                let inv = 1.0 / (n as f32 + qk);
                let (mut g_out, mut dot) = (0f32, 0f32);
                for cc in 0..c {
                    let att = dn[cc];
                    let num = att + vs[cc];
                    let dnc = g[cc] * inv;
                    g_out += dnc * num;
                    dot += dnc * att;
                    dn[cc] = dnc;
                }
                let ddv = -g_out * inv;
                *dd = ddv;
                dot += ddv * qk;
                for i in 0..ck {
                    let qh = qr[i] * r;
                    let mut dqh = ddv * (ks[i] + eps);
                    for (&w, &x) in kv[i * c..][..c].iter().zip(dn.iter()) {
                        dqh += w * x;
                    }
                    dq[i] = (dqh - qh * dot) * r;
                }
            });
    }

    /// The kv pass of the backward: dk from `dk̂ = dKV·v + dks`, dv =
    /// `dKVᵀ k̂ + dvs`.
    pub fn bwd_kv(k: &[f32], v: &[f32], dstats: &[f32], dk: &mut [f32], dv: &mut [f32], d: Dims) {
        let (ck, c, n, sz) = (d.ck, d.c, d.n, d.s());
        dk.par_chunks_mut(ck)
            .zip(dv.par_chunks_mut(c))
            .enumerate()
            .for_each(|(tok, (dk, dv))| {
                let st = &dstats[tok / n * sz..][..sz];
                let (dkv, dks, dvs) = (&st[..ck * c], &st[ck * c..][..ck], &st[ck * c + ck..]);
                let kr = &k[tok * ck..][..ck];
                let vr = &v[tok * c..][..c];
                let r = inv_norm(kr);
                dv.copy_from_slice(dvs);
                let mut dot = 0f32;
                for i in 0..ck {
                    let kh = kr[i] * r;
                    let row = &dkv[i * c..][..c];
                    let mut dkh = dks[i];
                    for ((o, &w), &x) in dv.iter_mut().zip(row).zip(vr) {
                        *o += kh * w;
                        dkh += w * x;
                    }
                    dk[i] = dkh;
                    dot += kh * dkh;
                }
                for i in 0..ck {
                    dk[i] = (dk[i] - kr[i] * r * dot) * r;
                }
            });
    }
}

/// The GPU launches (module docs).
mod gpu {
    use super::*;
    use crate::backend::gpu::device::LaunchConfig;

    /// Threads per block of every attention kernel.
    pub const THREADS: usize = 256;
    /// Entries of S per thread in the stats kernel (`VD_ATTN_E`).
    pub const ENTRIES: usize = 4;
    /// Target blocks of the stats grid.
    pub const TARGET_BLOCKS: usize = 1024;
    /// Fewest tokens per part of the stats grid.
    pub const MIN_PART: usize = 64;

    /// One warp per token, 8 per block, capped at 4096 blocks.
    pub fn token_config(d: Dims) -> LaunchConfig {
        let blocks = (d.b * d.n).div_ceil(THREADS / 32).clamp(1, 4096);
        LaunchConfig::linear(blocks as u32, THREADS as u32)
    }

    /// The stats `[B, S]` of (a, b[, s]): partials `[B, P, S]` by `kernel`,
    /// then `reduce_sum` to SampleChannel.
    pub fn stats(
        dev: &GpuBackend,
        kernel: Kernel,
        a: &Tensor,
        b: &Tensor,
        s: Option<&Tensor>,
        d: Dims,
    ) -> Result<Tensor> {
        let sz = d.s();
        let width = sz.div_ceil(ENTRIES).next_power_of_two().clamp(32, THREADS);
        let groups = sz.div_ceil(width * ENTRIES);
        let max_parts = d.n.div_ceil(MIN_PART).max(1);
        let parts = TARGET_BLOCKS.div_ceil(groups * d.b).clamp(1, max_parts);
        let chunk = d.n.div_ceil(parts);
        let parts = d.n.div_ceil(chunk);
        ensure!(
            groups <= 65535 && d.b <= 65535,
            "linear attention: {} samples of {sz} stats exceed the grid",
            d.b
        );
        let part = dev.alloc(Shape::new(&[d.b, parts, sz]), DType::F32)?;
        let mut args = KernelArgs::new().tensor(a).tensor(b);
        if let Some(s) = s {
            args = args.tensor(s);
        }
        let mut args = args
            .tensor(&part)
            .i64(d.n as i64)
            .i32(d.ck as i32)
            .i32(d.c as i32)
            .i64(chunk as i64)
            .i32(width as i32);
        let cfg = LaunchConfig {
            grid: [parts as u32, groups as u32, d.b as u32],
            block: [THREADS as u32, 1, 1],
            shared_bytes: 0,
        };
        dev.device().launch(kernel, cfg, &mut args)?;
        dev.reduce_sum(&part, Bcast::SampleChannel)
    }
}
