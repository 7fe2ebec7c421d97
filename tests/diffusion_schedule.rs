//! Golden values of the ImgX-DiffSeg schedule and identities of the forward
//! process and its posterior.

use voxdiff::diffusion::schedule::{betas, even_indices, BetaSchedule, Schedule, Variance};

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

fn imgx() -> Schedule {
    Schedule::new(BetaSchedule::Linear, 1001, 1e-4, 0.02, 5).unwrap()
}

#[test]
fn five_step_schedule_matches_the_reference() {
    let s = imgx();
    close(
        "beta",
        &s.betas,
        &[1e-4, 0.478198, 0.850518, 0.957446, 0.987962],
        1e-5,
    );
    close(
        "alpha_cumprod",
        &s.alphas_cumprod,
        &[0.9999, 0.521750, 0.0779923, 0.00331891, 3.99520e-5],
        1e-5,
    );
    close(
        "posterior variance",
        &s.posterior_variance,
        &[0.0, 9.99891e-5, 0.441168, 0.885712, 0.984723],
        1e-5,
    );
    // The relative error of the smallest ᾱ too (1e-5 absolute is loose there).
    assert!((s.alphas_cumprod[4] / 3.99520e-5 - 1.0).abs() < 1e-4);
}

#[test]
fn resampling_keeps_alpha_cumprod_at_even_indices() {
    let full = Schedule::new(BetaSchedule::Linear, 1001, 1e-4, 0.02, 1001).unwrap();
    assert_eq!(even_indices(1001, 5), vec![0, 250, 500, 750, 1000]);
    let s = imgx();
    for (k, &i) in even_indices(1001, 5).iter().enumerate() {
        assert!((s.alphas_cumprod[k] - full.alphas_cumprod[i]).abs() < 1e-12);
    }
    // Respacing the 5-step schedule to 3 keeps ᾱ at steps 0, 2, 4.
    let r = s.respaced(&even_indices(5, 3)).unwrap();
    close(
        "respaced",
        &r.alphas_cumprod,
        &[
            s.alphas_cumprod[0],
            s.alphas_cumprod[2],
            s.alphas_cumprod[4],
        ],
        1e-12,
    );
}

#[test]
fn posterior_identities() {
    for s in [
        imgx(),
        Schedule::new(BetaSchedule::Cosine, 100, 0.0, 0.0, 100).unwrap(),
    ] {
        for t in 0..s.len() {
            let a = s.alphas_cumprod[t];
            let ap = s.alphas_cumprod_prev[t];
            let alpha = 1.0 - s.betas[t];
            // ᾱ_t = α_t ᾱ_{t−1}.
            assert!((a - alpha * ap).abs() < 1e-12);
            // The posterior mean of x_{t−1} is unbiased for q(x_{t−1} | x_0):
            // coef_start √ᾱ_t... E[x_{t−1}] = √ᾱ_{t−1} x_0 = cs x_0 + ct √ᾱ_t x_0.
            let lhs = s.posterior_coef_start[t] + s.posterior_coef_t[t] * a.sqrt();
            assert!(
                (lhs - ap.sqrt()).abs() < 1e-9,
                "t={t}: {lhs} vs {}",
                ap.sqrt()
            );
            // And its variance: Var[x_{t−1}] = ct² (1 − ᾱ_t) + σ² = 1 − ᾱ_{t−1}.
            let var = s.posterior_coef_t[t].powi(2) * (1.0 - a) + s.posterior_variance[t];
            assert!(
                (var - (1.0 - ap)).abs() < 1e-9,
                "t={t}: {var} vs {}",
                1.0 - ap
            );
            // x_0 from ε inverts q_sample.
            let (qa, qs) = s.q_coefs(t);
            let (ea, eb) = s.x0_from_eps_coefs(t);
            let (x0, eps) = (0.37, -1.3);
            let xt = qa * x0 + qs * eps;
            assert!((ea * xt - eb * eps - x0).abs() < 1e-9);
        }
        assert_eq!(
            s.sampling_variance(Variance::FixedLarge, 0),
            s.posterior_variance[1]
        );
        assert_eq!(s.sampling_variance(Variance::FixedLarge, 2), s.betas[2]);
        assert_eq!(
            s.sampling_variance(Variance::FixedSmall, 2),
            s.posterior_variance[2]
        );
    }
}

#[test]
fn beta_schedules_have_their_shapes() {
    let l = betas(BetaSchedule::Linear, 5, 0.1, 0.5);
    close("linear", &l, &[0.1, 0.2, 0.3, 0.4, 0.5], 1e-12);
    let q = betas(BetaSchedule::Quadratic, 3, 0.01, 0.09);
    close("quadratic", &q, &[0.01, 0.04, 0.09], 1e-12);
    let w = betas(BetaSchedule::Warmup10, 20, 0.01, 0.09);
    close("warmup10", &w[..2], &[0.01, 0.09], 1e-12);
    assert!(w[2..].iter().all(|&b| b == 0.09));
    let c = betas(BetaSchedule::Cosine, 1000, 0.0, 0.0);
    assert!(c.windows(2).all(|p| p[0] <= p[1] + 1e-12) && c[999] <= 0.999);
    assert!(Schedule::new(BetaSchedule::Linear, 10, 0.1, 0.2, 11).is_err());
    assert!(Schedule::from_betas(vec![0.1, 1.0]).is_err());
}
