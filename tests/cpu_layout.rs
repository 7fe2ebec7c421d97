//! Layout ops of the CPU backend: channel concat/slice, crop/pad, nearest
//! upsampling and ceil-mode max pooling. Forward vs index-by-index references,
//! each backward vs finite differences of its forward, NaN, errors.
mod common;

use common::*;
use voxdiff::backend::prelude::*;
use voxdiff::tensor::{DType, Shape, Tensor};

/// Flat index of (n, d, h, w, c) in an NDHWC tensor of shape `s`.
fn at(s: Shape, n: usize, d: usize, h: usize, w: usize, c: usize) -> usize {
    (((n * s.d() + d) * s.h() + h) * s.w() + w) * s.c() + c
}

/// Every (n, d, h, w, c) of `s`, in memory order.
fn coords(s: Shape) -> Vec<[usize; 5]> {
    let mut v = Vec::with_capacity(s.numel());
    for n in 0..s.n() {
        for d in 0..s.d() {
            for h in 0..s.h() {
                for w in 0..s.w() {
                    for c in 0..s.c() {
                        v.push([n, d, h, w, c]);
                    }
                }
            }
        }
    }
    v
}

fn up(b: &dyn Backend, v: &[f32], s: Shape) -> Tensor {
    b.upload(v, s, DType::F32).unwrap()
}

/// Exact comparison: layout ops move values, they never round.
fn exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: element {i}: got {g}, want {w}");
    }
}

#[test]
fn concat_and_slice_match_reference() {
    let b = cpu();
    let mut rng = Rng::new(1);
    for (n, d, h, w) in [(1, 3, 5, 7), (2, 1, 3, 4)] {
        let cs = [1usize, 3, 5, 17];
        let parts: Vec<Vec<f32>> = cs
            .iter()
            .map(|&c| rng.vec(n * d * h * w * c, -1.0, 1.0))
            .collect();
        let shapes: Vec<Shape> = cs.iter().map(|&c| Shape::ndhwc(n, d, h, w, c)).collect();
        let ts: Vec<Tensor> = parts
            .iter()
            .zip(&shapes)
            .map(|(v, &s)| up(&b, v, s))
            .collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        let y = b.concat_c(&refs).unwrap();
        let total: usize = cs.iter().sum();
        let ys = Shape::ndhwc(n, d, h, w, total);
        assert_eq!(y.shape(), ys);
        let mut want = vec![0f32; ys.numel()];
        for [ni, di, hi, wi, c] in coords(ys) {
            let (mut part, mut cc) = (0, c);
            while cc >= cs[part] {
                cc -= cs[part];
                part += 1;
            }
            want[at(ys, ni, di, hi, wi, c)] = parts[part][at(shapes[part], ni, di, hi, wi, cc)];
        }
        let yv = b.download(&y).unwrap();
        exact(&format!("concat_c {ys}"), &yv, &want);

        // Slices give the parts back; and an arbitrary window.
        let mut start = 0;
        for (i, &c) in cs.iter().enumerate() {
            let s = b.slice_c(&y, start, c).unwrap();
            exact(
                &format!("slice_c part {i}"),
                &b.download(&s).unwrap(),
                &parts[i],
            );
            start += c;
        }
        let s = b.download(&b.slice_c(&y, 2, 9).unwrap()).unwrap();
        let sw: Vec<f32> = yv.chunks(total).flat_map(|r| r[2..11].to_vec()).collect();
        exact("slice_c [2, 11)", &s, &sw);
    }
}

/// concat's backward is slicing its gradient; slice's backward is placing the
/// gradient among zero channels (a concat with zeros).
#[test]
fn concat_and_slice_gradients_match_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(2);
    let (sa, sb) = (Shape::ndhwc(2, 1, 3, 5, 3), Shape::ndhwc(2, 1, 3, 5, 4));
    let a = rng.vec(sa.numel(), -1.0, 1.0);
    let bb = rng.vec(sb.numel(), -1.0, 1.0);
    let ys = sa.with_c(7);
    let g = rng.vec(ys.numel(), -1.0, 1.0);
    let gt = up(&b, &g, ys);
    let da = b.download(&b.slice_c(&gt, 0, 3).unwrap()).unwrap();
    let db = b.download(&b.slice_c(&gt, 3, 4).unwrap()).unwrap();
    let bt = up(&b, &bb, sb);
    let at_ = up(&b, &a, sa);
    let loss_a = |p: &[f32]| {
        dot(
            &g,
            &b.download(&b.concat_c(&[&up(&b, p, sa), &bt]).unwrap())
                .unwrap(),
        )
    };
    let loss_b = |p: &[f32]| {
        dot(
            &g,
            &b.download(&b.concat_c(&[&at_, &up(&b, p, sb)]).unwrap())
                .unwrap(),
        )
    };
    fd_check("concat da", &a, &da, loss_a, 20, 1e-2, 1e-3, 1e-4);
    fd_check("concat db", &bb, &db, loss_b, 20, 1e-2, 1e-3, 1e-4);

    let x = rng.vec(ys.numel(), -1.0, 1.0);
    let gs = rng.vec(sb.numel(), -1.0, 1.0);
    let gst = up(&b, &gs, sb);
    let zeros = b.zeros(sa, DType::F32).unwrap();
    let dx = b.download(&b.concat_c(&[&zeros, &gst]).unwrap()).unwrap();
    let loss = |p: &[f32]| {
        dot(
            &gs,
            &b.download(&b.slice_c(&up(&b, p, ys), 3, 4).unwrap())
                .unwrap(),
        )
    };
    fd_check("slice dx", &x, &dx, loss, 30, 1e-2, 1e-3, 1e-4);
}

#[test]
fn crop_and_pad_match_reference_and_are_adjoint() {
    let b = cpu();
    let mut rng = Rng::new(3);
    let xs = Shape::ndhwc(2, 5, 6, 7, 3);
    let x = rng.vec(xs.numel(), -1.0, 1.0);
    let xt = up(&b, &x, xs);
    let (origin, size) = ([1, 2, 3], [3, 4, 2]);
    let cs = xs.with_spatial(size);
    let y = b.crop(&xt, origin, size).unwrap();
    assert_eq!(y.shape(), cs);
    let mut want = vec![0f32; cs.numel()];
    for [n, d, h, w, c] in coords(cs) {
        want[at(cs, n, d, h, w, c)] = x[at(xs, n, d + origin[0], h + origin[1], w + origin[2], c)];
    }
    exact("crop", &b.download(&y).unwrap(), &want);

    // pad: zeros with the crop placed back at the origin.
    let yv = rng.vec(cs.numel(), -1.0, 1.0);
    let p = b.pad(&up(&b, &yv, cs), origin, xs.spatial()).unwrap();
    assert_eq!(p.shape(), xs);
    let mut want = vec![0f32; xs.numel()];
    for [n, d, h, w, c] in coords(cs) {
        want[at(xs, n, d + origin[0], h + origin[1], w + origin[2], c)] = yv[at(cs, n, d, h, w, c)];
    }
    exact("pad", &b.download(&p).unwrap(), &want);

    // Each is the other's backward.
    let g = rng.vec(cs.numel(), -1.0, 1.0);
    let dx = b
        .download(&b.pad(&up(&b, &g, cs), origin, xs.spatial()).unwrap())
        .unwrap();
    let loss = |p: &[f32]| {
        dot(
            &g,
            &b.download(&b.crop(&up(&b, p, xs), origin, size).unwrap())
                .unwrap(),
        )
    };
    fd_check("crop dx (= pad)", &x, &dx, loss, 40, 1e-2, 1e-3, 1e-4);
    let gx = rng.vec(xs.numel(), -1.0, 1.0);
    let dy = b
        .download(&b.crop(&up(&b, &gx, xs), origin, size).unwrap())
        .unwrap();
    let loss = |p: &[f32]| {
        dot(
            &gx,
            &b.download(&b.pad(&up(&b, p, cs), origin, xs.spatial()).unwrap())
                .unwrap(),
        )
    };
    fd_check("pad dy (= crop)", &yv, &dy, loss, 40, 1e-2, 1e-3, 1e-4);
}

#[test]
fn upsample_matches_reference_and_its_backward_fd() {
    let b = cpu();
    let mut rng = Rng::new(4);
    for (xs, f) in [
        (Shape::ndhwc(1, 3, 5, 7, 2), [2, 2, 2]),
        (Shape::ndhwc(2, 1, 3, 4, 5), [1, 2, 3]),
        (Shape::ndhwc(1, 2, 2, 3, 17), [3, 1, 2]),
    ] {
        let x = rng.vec(xs.numel(), -1.0, 1.0);
        let xt = up(&b, &x, xs);
        let y = b.upsample(&xt, f).unwrap();
        let ys = xs.with_spatial([xs.d() * f[0], xs.h() * f[1], xs.w() * f[2]]);
        assert_eq!(y.shape(), ys);
        let mut want = vec![0f32; ys.numel()];
        for [n, d, h, w, c] in coords(ys) {
            want[at(ys, n, d, h, w, c)] = x[at(xs, n, d / f[0], h / f[1], w / f[2], c)];
        }
        exact(
            &format!("upsample {xs} by {f:?}"),
            &b.download(&y).unwrap(),
            &want,
        );

        let g = rng.vec(ys.numel(), -1.0, 1.0);
        let dx = b.upsample_bwd(&up(&b, &g, ys), f).unwrap();
        assert_eq!(dx.shape(), xs);
        let dx = b.download(&dx).unwrap();
        let mut want = vec![0f64; xs.numel()];
        for [n, d, h, w, c] in coords(ys) {
            want[at(xs, n, d / f[0], h / f[1], w / f[2], c)] += g[at(ys, n, d, h, w, c)] as f64;
        }
        assert_close(&format!("upsample_bwd {xs}"), &dx, &want, 1e-6, 1e-6);
        let loss = |p: &[f32]| {
            dot(
                &g,
                &b.download(&b.upsample(&up(&b, p, xs), f).unwrap()).unwrap(),
            )
        };
        fd_check(
            &format!("upsample dx {xs}"),
            &x,
            &dx,
            loss,
            30,
            1e-2,
            1e-3,
            1e-4,
        );
    }
}

/// A reference max pool: window = stride, ceil mode; also the first argmax
/// in D, H, W scan order.
fn maxpool_ref(x: &[f32], xs: Shape, win: [usize; 3]) -> (Shape, Vec<f32>, Vec<usize>) {
    let ys = xs.with_spatial([
        xs.d().div_ceil(win[0]),
        xs.h().div_ceil(win[1]),
        xs.w().div_ceil(win[2]),
    ]);
    let mut y = vec![0f32; ys.numel()];
    let mut arg = vec![0usize; ys.numel()];
    for [n, od, oh, ow, c] in coords(ys) {
        let mut best: Option<(f32, usize)> = None;
        for d in od * win[0]..((od + 1) * win[0]).min(xs.d()) {
            for h in oh * win[1]..((oh + 1) * win[1]).min(xs.h()) {
                for w in ow * win[2]..((ow + 1) * win[2]).min(xs.w()) {
                    let i = at(xs, n, d, h, w, c);
                    if best.is_none_or(|(m, _)| x[i] > m) {
                        best = Some((x[i], i));
                    }
                }
            }
        }
        let (m, i) = best.unwrap();
        y[at(ys, n, od, oh, ow, c)] = m;
        arg[at(ys, n, od, oh, ow, c)] = i;
    }
    (ys, y, arg)
}

#[test]
fn maxpool_matches_reference_with_ceil_mode_and_ties() {
    let b = cpu();
    let mut rng = Rng::new(5);
    for (xs, win) in [
        (Shape::ndhwc(1, 3, 5, 7, 3), [2, 2, 2]),
        (Shape::ndhwc(2, 5, 4, 3, 5), [2, 3, 2]),
        (Shape::ndhwc(1, 1, 7, 7, 17), [1, 3, 3]),
        (Shape::ndhwc(2, 4, 4, 4, 1), [4, 4, 4]),
    ] {
        // Few distinct values: many ties, so "first maximum" matters.
        let x: Vec<f32> = (0..xs.numel())
            .map(|_| (rng.below(5) as f32) - 2.0)
            .collect();
        let xt = up(&b, &x, xs);
        let (ys, want, arg) = maxpool_ref(&x, xs, win);
        let y = b.maxpool(&xt, win).unwrap();
        assert_eq!(y.shape(), ys);
        exact(
            &format!("maxpool {xs} by {win:?}"),
            &b.download(&y).unwrap(),
            &want,
        );

        let g = rng.vec(ys.numel(), -1.0, 1.0);
        let dx = b
            .download(&b.maxpool_bwd(&up(&b, &g, ys), &xt, win).unwrap())
            .unwrap();
        let mut want_dx = vec![0f32; xs.numel()];
        for (o, &i) in arg.iter().enumerate() {
            want_dx[i] = g[o];
        }
        exact(&format!("maxpool_bwd {xs} by {win:?}"), &dx, &want_dx);
    }
}

#[test]
fn maxpool_backward_matches_finite_differences() {
    let b = cpu();
    let mut rng = Rng::new(6);
    let (xs, win) = (Shape::ndhwc(2, 3, 5, 7, 3), [2, 2, 3]);
    // Distinct values spaced well beyond the step: no argmax changes under a probe.
    let mut x: Vec<f32> = (0..xs.numel()).map(|i| i as f32 * 0.1).collect();
    for i in (1..x.len()).rev() {
        x.swap(i, rng.below(i + 1));
    }
    let (ys, _, _) = maxpool_ref(&x, xs, win);
    let g = rng.vec(ys.numel(), -1.0, 1.0);
    let xt = up(&b, &x, xs);
    let dx = b
        .download(&b.maxpool_bwd(&up(&b, &g, ys), &xt, win).unwrap())
        .unwrap();
    let loss = |p: &[f32]| {
        dot(
            &g,
            &b.download(&b.maxpool(&up(&b, p, xs), win).unwrap())
                .unwrap(),
        )
    };
    fd_check("maxpool dx", &x, &dx, loss, 80, 1e-2, 1e-3, 1e-4);
}

#[test]
fn maxpool_propagates_nan() {
    let b = cpu();
    let xs = Shape::ndhwc(1, 2, 2, 2, 2);
    let mut x = vec![1.0f32; xs.numel()];
    x[6] = f32::NAN; // voxel 3, channel 0 — not the first in its window
    x[9] = 5.0; // voxel 4, channel 1
    let xt = up(&b, &x, xs);
    let y = b.download(&b.maxpool(&xt, [2, 2, 2]).unwrap()).unwrap();
    assert!(y[0].is_nan(), "max over a NaN must be NaN: {y:?}");
    assert_eq!(y[1], 5.0);
    let dy = up(&b, &[0.25, 0.5], Shape::ndhwc(1, 1, 1, 1, 2));
    let dx = b
        .download(&b.maxpool_bwd(&dy, &xt, [2, 2, 2]).unwrap())
        .unwrap();
    assert_eq!(
        dx[6], 0.25,
        "the gradient goes to the NaN that made the max: {dx:?}"
    );
    assert_eq!(dx[9], 0.5);
    assert_eq!(dx.iter().filter(|&&v| v != 0.0).count(), 2);
}

#[test]
fn layout_errors() {
    let b = cpu();
    let mut rng = Rng::new(7);
    let x = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 4, 5, 6, 3), -1.0, 1.0);
    let other = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 4, 5, 7, 3), -1.0, 1.0);
    let e = b.concat_c(&[&x, &other]).unwrap_err().to_string();
    assert!(e.contains("concat_c"), "{e}");
    assert!(b.concat_c(&[]).is_err(), "concat of nothing");
    assert!(b.slice_c(&x, 2, 2).is_err(), "slice past the channels");
    assert!(b.slice_c(&x, 0, 0).is_err(), "empty slice");
    assert!(
        b.crop(&x, [1, 1, 1], [4, 1, 1]).is_err(),
        "crop past the end"
    );
    assert!(b.crop(&x, [0, 0, 0], [0, 1, 1]).is_err(), "empty crop");
    assert!(
        b.pad(&x, [1, 0, 0], [4, 5, 6]).is_err(),
        "pad target too small"
    );
    assert!(b.upsample(&x, [0, 1, 1]).is_err(), "zero factor");
    assert!(
        b.upsample_bwd(&x, [1, 2, 1]).is_err(),
        "dy extent not a multiple"
    );
    assert!(b.maxpool(&x, [1, 0, 1]).is_err(), "zero window");
    let dy_bad = rand_tensor(&b, &mut rng, Shape::ndhwc(1, 2, 3, 3, 2), -1.0, 1.0);
    assert!(
        b.maxpool_bwd(&dy_bad, &x, [2, 2, 2]).is_err(),
        "dy channels differ"
    );
    let flat = rand_tensor(&b, &mut rng, Shape::new(&[4, 3]), -1.0, 1.0);
    assert!(b.slice_c(&flat, 0, 1).is_err(), "not NDHWC");
}
