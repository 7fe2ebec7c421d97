//! Every kernel entry point is executed: one sweep over every op of the GPU
//! backend (both activation dtypes, every convolution path) on the emulator,
//! then the emulator's launch counters are checked against the kernel
//! registry. The per-family tests check the values; this test proves that no
//! entry point is left out of them. (Self-test kernels run in tests/emu_*.)

use std::sync::Arc;
use voxdiff::backend::gpu::emu::{launches, Emu};
use voxdiff::backend::gpu::registry::{Family, Kernel};
use voxdiff::backend::gpu::GpuBackend;
use voxdiff::backend::{Act, AdamW, Backend, ConvSpec, NormArgs, ParamSlot};
use voxdiff::tensor::{DType, Shape, Tensor};

fn rand(b: &dyn Backend, shape: Shape, dtype: DType, seed: u64) -> Tensor {
    b.randn(shape, dtype, seed, 0).unwrap()
}

/// One small case of every op of the Backend trait.
fn sweep(b: &GpuBackend) {
    let act = b.act_dtype();
    let f32_ = DType::F32;
    let sh = |c| Shape::ndhwc(1, 3, 5, 7, c);

    // Convolutions: every path (odd and multiple-of-8 channels pick the
    // register loader or the cp.async pipeline; transposed = scatter).
    for (spec, cin, cout) in [
        (ConvSpec::K3, 3, 5),
        (ConvSpec::K3, 8, 16),
        (ConvSpec::DOWN2, 8, 8),
        (ConvSpec::UP2, 3, 5),
        (ConvSpec::UP2, 8, 16),
        (ConvSpec::K1, 5, 3),
    ] {
        let x = rand(b, sh(cin), act, 1);
        let w = rand(b, spec.weight_shape(cin, cout), f32_, 2);
        let bias = rand(b, Shape::new(&[cout]), f32_, 3);
        let y = b.conv3d(&x, &w, Some(&bias), spec).unwrap();
        let dy = rand(b, y.shape(), act, 4);
        b.conv3d_dgrad(&dy, &w, x.shape(), spec).unwrap();
        b.conv3d_wgrad(&x, &dy, spec, true).unwrap();
    }

    // Dense layers.
    let xv = rand(b, Shape::new(&[2, 6]), f32_, 5);
    let wv = rand(b, Shape::new(&[6, 4]), f32_, 6);
    let bv = rand(b, Shape::new(&[4]), f32_, 7);
    let yv = b.linear(&xv, &wv, Some(&bv)).unwrap();
    b.linear_dgrad(&yv, &wv).unwrap();
    b.linear_wgrad(&xv, &yv, true).unwrap();

    // Norm with every epilogue part, both channel paths (8 and odd).
    for c in [8, 5] {
        let x = rand(b, sh(c), act, 8);
        let gamma = rand(b, Shape::new(&[c]), f32_, 9);
        let beta = rand(b, Shape::new(&[c]), f32_, 10);
        let s = rand(b, Shape::new(&[1, c]), f32_, 11);
        let h = rand(b, Shape::new(&[1, c]), f32_, 12);
        let r = rand(b, sh(c), act, 13);
        let args = NormArgs {
            groups: c,
            eps: 1e-5,
            gamma: Some(&gamma),
            beta: Some(&beta),
            film: Some((&s, &h)),
            residual: Some(&r),
            act: Act::Gelu,
        };
        let o = b.norm_fwd(&x, &args).unwrap();
        b.norm_bwd(&x, &x, &o.stats, &args).unwrap();
        for a in [Act::Relu, Act::Silu, Act::Gelu] {
            b.act(&x, a).unwrap();
            b.act_bwd(&x, &x, a).unwrap();
        }
        b.add_nc(&x, &s).unwrap();
        b.sum_spatial(&x).unwrap();
        let y = b.concat_c(&[&x, &r]).unwrap();
        b.slice_c(&y, 1, c).unwrap();
        let cr = b.crop(&x, [1, 1, 1], [2, 3, 4]).unwrap();
        b.pad(&cr, [1, 1, 1], [3, 5, 7]).unwrap();
        let up = b.upsample(&x, [1, 2, 2]).unwrap();
        b.upsample_bwd(&up, [1, 2, 2]).unwrap();
        let mp = b.maxpool(&x, [2, 2, 2]).unwrap();
        b.maxpool_bwd(&mp, &x, [2, 2, 2]).unwrap();
        b.lincomb(&[(1.0, &x), (2.0, &r)]).unwrap();
        b.cast(&x, f32_).unwrap();
        b.cast(&b.cast(&x, DType::BF16).unwrap(), f32_).unwrap();
        b.fill(&x, 0.5).unwrap();
    }

    // Segmentation heads and losses.
    let k = 3;
    let logits = rand(b, sh(k), act, 14);
    let labels = b
        .upload(
            &(0..105).map(|i| (i % k) as f32).collect::<Vec<_>>(),
            sh(1),
            f32_,
        )
        .unwrap();
    let t = b.one_hot(&labels, k, 1.0, 0.0).unwrap();
    // Labels stored in bf16 (class ids up to 256 are exact there).
    b.one_hot(&b.cast(&labels, DType::BF16).unwrap(), k, 1.0, 0.0)
        .unwrap();
    let p = b.softmax(&logits).unwrap();
    b.softmax_bwd(&p, &p).unwrap();
    b.argmax_c(&logits).unwrap();
    let one = b.upload(&[1.0], Shape::scalar(), f32_).unwrap();
    b.cross_entropy(&logits, &t).unwrap();
    b.cross_entropy_bwd(&logits, &t, &one).unwrap();
    let (_, sums) = b.dice_loss(&p, &t).unwrap();
    b.dice_loss_bwd(&p, &t, &sums, &one).unwrap();
    b.mse(&logits, &p).unwrap();
    b.mse_bwd(&logits, &p, &one).unwrap();
    let x0 = b.lincomb(&[(2.0, &p), (-1.0, &t)]).unwrap();
    let l = b.scaled_to_logits(&x0, 1e-5).unwrap();
    b.scaled_to_logits_bwd(&l, &x0, 1e-5).unwrap();
    b.scalar_lincomb(&[(0.5, &one), (2.0, &one)]).unwrap();

    // The optimiser over two tensors.
    let params: Vec<Tensor> = (0..2)
        .map(|i| rand(b, Shape::new(&[7 + i]), f32_, 20 + i as u64))
        .collect();
    let grads: Vec<Tensor> = (0..2)
        .map(|i| rand(b, Shape::new(&[7 + i]), f32_, 30 + i as u64))
        .collect();
    let zeros: Vec<Tensor> = (0..4)
        .map(|i| b.zeros(Shape::new(&[7 + i / 2]), f32_).unwrap())
        .collect();
    let slots: Vec<ParamSlot> = (0..2)
        .map(|i| ParamSlot {
            param: &params[i],
            grad: &grads[i],
            m: &zeros[2 * i],
            v: &zeros[2 * i + 1],
            decay: i == 0,
        })
        .collect();
    b.adamw_step(&slots, &AdamW::default(), 1e-3, 1).unwrap();
    rand(b, sh(2), DType::BF16, 40);
    rand(b, sh(2), DType::F32, 41);
}

#[test]
fn every_kernel_entry_point_is_executed() {
    for act in [DType::F32, DType::BF16] {
        sweep(&GpuBackend::with_act_dtype(Arc::new(Emu::new()), act));
    }
    let missing: Vec<&str> = Kernel::ALL
        .iter()
        .filter(|k| k.family() != Family::Selftest && launches(**k) == 0)
        .map(|k| k.name())
        .collect();
    assert!(missing.is_empty(), "kernels no op reached: {missing:?}");
}
