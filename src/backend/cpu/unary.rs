//! The unary maps of [`crate::ops::Unary`] as types: each a value and a derivative in
//! f32, so the elementwise loops are monomorphised per map (no per-element
//! `match`) and vectorise where the map has no library call — see
//! [`dispatch_unary!`]. ReLU, SiLU and GELU are the [`Activation`]s the fused
//! norm uses.
//!
//! Derivatives at points where the function has none follow PyTorch: ReLU
//! 0 at 0, LeakyReLU α at 0, |x| 0 at 0, smooth L1 0 at 0; √x gives +∞ at 0
//! and ln x gives 1/0 = +∞ there. A NaN input gives NaN (so `dy · f'(x)`
//! propagates it).
use super::pointwise::{exp_f32, Activation};

/// A unary map: `f(x)` and `f'(x)`.
pub(super) trait UnaryMap: Sync {
    fn f(&self, x: f32) -> f32;
    fn df(&self, x: f32) -> f32;
}

/// An [`Activation`] as a unary map.
pub(super) struct Act<A>(std::marker::PhantomData<A>);

impl<A> Act<A> {
    pub fn new() -> Act<A> {
        Act(std::marker::PhantomData)
    }
}

impl<A: Activation + Sync> UnaryMap for Act<A> {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        A::f(x)
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        A::df(x)
    }
}

/// `x` for x > 0, `α·x` otherwise.
pub(super) struct LeakyRelu(pub f32);
/// `σ(x) = 1 / (1 + e^-x)`.
pub(super) struct Sigmoid;
pub(super) struct Tanh;
pub(super) struct Exp;
pub(super) struct Log;
/// `ln(1 + e^x)`.
pub(super) struct Softplus;
pub(super) struct Square;
pub(super) struct Sqrt;
pub(super) struct Abs;
/// `0.5·x²/β` for |x| < β, else `|x| − 0.5·β` (β ≥ 0).
pub(super) struct SmoothL1(pub f32);

/// The sign of x as ±1, 0 at 0, NaN for NaN.
#[inline(always)]
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        x * 0.0
    }
}

impl UnaryMap for LeakyRelu {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        if x > 0.0 {
            x
        } else {
            self.0 * x
        }
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        if x > 0.0 {
            1.0
        } else if x <= 0.0 {
            self.0
        } else {
            x
        }
    }
}

impl UnaryMap for Sigmoid {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        1.0 / (1.0 + exp_f32(-x))
    }
    /// `σ·(1 − σ)` with `1 − σ = e^-x·σ` (no cancellation for large x).
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        let e = exp_f32(-x);
        let s = 1.0 / (1.0 + e);
        e * s * s
    }
}

impl UnaryMap for Tanh {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x.tanh()
    }
    /// `1 − tanh² = 4e/(1 + e)²` with `e = e^{-2|x|}` (no cancellation).
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        let e = exp_f32(-2.0 * x.abs());
        4.0 * e / ((1.0 + e) * (1.0 + e))
    }
}

impl UnaryMap for Exp {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x.exp()
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        x.exp()
    }
}

impl UnaryMap for Log {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x.ln()
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        1.0 / x
    }
}

impl UnaryMap for Softplus {
    /// `max(x, 0) + ln(1 + e^-|x|)`: no overflow, no cancellation.
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x.max(0.0) + exp_f32(-x.abs()).ln_1p()
    }
    /// `σ(x)`.
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        Sigmoid.f(x)
    }
}

impl UnaryMap for Square {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x * x
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        2.0 * x
    }
}

impl UnaryMap for Sqrt {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x.sqrt()
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        0.5 / x.sqrt()
    }
}

impl UnaryMap for Abs {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        x.abs()
    }
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        sign(x)
    }
}

impl UnaryMap for SmoothL1 {
    #[inline(always)]
    fn f(&self, x: f32) -> f32 {
        let a = x.abs();
        if a < self.0 {
            0.5 * x * x / self.0
        } else {
            a - 0.5 * self.0
        }
    }
    /// `x/β` inside, `sign(x)` outside (the two agree at |x| = β).
    #[inline(always)]
    fn df(&self, x: f32) -> f32 {
        if x.abs() < self.0 {
            x / self.0
        } else {
            sign(x)
        }
    }
}

/// `dispatch_unary!(op, m => body)`: evaluate `body` with `m` bound to the
/// [`UnaryMap`] value of the runtime [`crate::ops::Unary`] `op`.
macro_rules! dispatch_unary {
    ($op:expr, $m:ident => $body:expr) => {{
        use $crate::backend::cpu::unary as u;
        use $crate::ops::Unary;
        match $op {
            Unary::Relu => {
                let $m = u::Act::<$crate::backend::cpu::pointwise::ReluAct>::new();
                $body
            }
            Unary::Silu => {
                let $m = u::Act::<$crate::backend::cpu::pointwise::SiluAct>::new();
                $body
            }
            Unary::Gelu => {
                let $m = u::Act::<$crate::backend::cpu::pointwise::GeluAct>::new();
                $body
            }
            Unary::LeakyRelu(alpha) => {
                let $m = u::LeakyRelu(alpha);
                $body
            }
            Unary::Sigmoid => {
                let $m = u::Sigmoid;
                $body
            }
            Unary::Tanh => {
                let $m = u::Tanh;
                $body
            }
            Unary::Exp => {
                let $m = u::Exp;
                $body
            }
            Unary::Log => {
                let $m = u::Log;
                $body
            }
            Unary::Softplus => {
                let $m = u::Softplus;
                $body
            }
            Unary::Square => {
                let $m = u::Square;
                $body
            }
            Unary::Sqrt => {
                let $m = u::Sqrt;
                $body
            }
            Unary::Abs => {
                let $m = u::Abs;
                $body
            }
            Unary::SmoothL1(beta) => {
                let $m = u::SmoothL1(beta);
                $body
            }
        }
    }};
}
pub(super) use dispatch_unary;
