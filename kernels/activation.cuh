// Pointwise activations and their derivatives, shared by the pointwise and
// norm families. `act` is the index of `ops::Act` as the launchers pass it:
// 0 identity, 1 relu, 2 silu, 3 gelu (tanh form); the norm's epilogue uses
// these. The unary maps of the pointwise family (`ops::Unary`) extend the
// same codes (vd_unary below). Every branch on a code is uniform across the
// grid.
#pragma once
#include "common.cuh"

#define VD_ACT_IDENTITY 0
#define VD_ACT_RELU 1
#define VD_ACT_SILU 2
#define VD_ACT_GELU 3

// √(2/π) and the cubic coefficient of the tanh-form GELU.
#define VD_GELU_A 0.7978845608f
#define VD_GELU_B 0.044715f

// Clamp to [-10, 10]; NaN passes through. At |x| = 10 the GELU gate σ(2y) is
// already 1 (or e^-87) in f32, and exp(-2y) stays finite.
VD_DEVICE float vd_act_clamp10(float x) { return x > 10.0f ? 10.0f : (x < -10.0f ? -10.0f : x); }

// act(x):
//   relu  max(x, 0)              (NaN passes through)
//   silu  x·σ(x) = x / (1 + e^-x)
//   gelu  0.5·x·(1 + tanh(y)), y = √(2/π)(x + 0.044715x³), computed as x·σ(2y)
//         (the same function: 1 + tanh y = 2σ(2y)), free of cancellation for x < 0.
VD_DEVICE float vd_act(int act, float x) {
    if (act == VD_ACT_RELU) return x < 0.0f ? 0.0f : x;
    if (act == VD_ACT_SILU) return x / (1.0f + expf(fminf(-x, 88.0f)));
    if (act == VD_ACT_GELU) {
        const float xc = vd_act_clamp10(x);
        const float y = VD_GELU_A * (xc + VD_GELU_B * xc * xc * xc);
        return x / (1.0f + expf(-2.0f * y));
    }
    return x;
}

// act'(x):
//   relu  1 for x > 0, 0 for x ≤ 0 (NaN for NaN)
//   silu  σ·(1 + x·(1 − σ)) with 1 − σ = e^-x·σ (e^-x capped at e^88 so e·σ stays finite)
//   gelu  s + x·s·(1 − s)·2y', s = σ(2y), 1 − s = e·s with e = e^-2y,
//         y' = √(2/π)(1 + 3·0.044715x²)
VD_DEVICE float vd_act_grad(int act, float x) {
    if (act == VD_ACT_RELU) return x > 0.0f ? 1.0f : (x <= 0.0f ? 0.0f : x);
    if (act == VD_ACT_SILU) {
        const float e = expf(fminf(-x, 88.0f));
        const float s = 1.0f / (1.0f + e);
        return s * (1.0f + x * (e * s));
    }
    if (act == VD_ACT_GELU) {
        const float xc = vd_act_clamp10(x);
        const float x2 = xc * xc;
        const float y = VD_GELU_A * (xc + VD_GELU_B * x2 * xc);
        const float dy = VD_GELU_A * (1.0f + 3.0f * VD_GELU_B * x2);
        const float e = expf(-2.0f * y);
        const float s = 1.0f / (1.0f + e);
        return s + xc * s * (e * s) * (2.0f * dy);
    }
    return 1.0f;
}

// ------------------------------------------------------------ unary maps
// The maps of `ops::Unary`, indexed as the launchers pass them (`op`; `p` is
// the parameter of the two that have one): 1..3 are the activations above,
// then the codes below. Derivatives where the function has none follow
// PyTorch (LeakyReLU α at 0, |x| and smooth L1 0 at 0); NaN in, NaN out.
#define VD_UNARY_LEAKY_RELU 4
#define VD_UNARY_SIGMOID 5
#define VD_UNARY_TANH 6
#define VD_UNARY_EXP 7
#define VD_UNARY_LOG 8
#define VD_UNARY_SOFTPLUS 9
#define VD_UNARY_SQUARE 10
#define VD_UNARY_SQRT 11
#define VD_UNARY_ABS 12
#define VD_UNARY_SMOOTH_L1 13

// ±1 by sign, 0 at 0, NaN for NaN.
VD_DEVICE float vd_sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x * 0.0f); }

// f(x):
//   leaky_relu  x for x > 0, p·x otherwise
//   sigmoid     1 / (1 + e^-x)
//   softplus    max(x, 0) + ln(1 + e^-|x|)   (no overflow, no cancellation)
//   smooth_l1   0.5·x²/p for |x| < p, else |x| − 0.5·p   (p = β ≥ 0)
VD_DEVICE float vd_unary(int op, float p, float x) {
    switch (op) {
    case VD_UNARY_LEAKY_RELU: return x > 0.0f ? x : p * x;
    case VD_UNARY_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case VD_UNARY_TANH: return tanhf(x);
    case VD_UNARY_EXP: return expf(x);
    case VD_UNARY_LOG: return logf(x);
    case VD_UNARY_SOFTPLUS: return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x)));
    case VD_UNARY_SQUARE: return x * x;
    case VD_UNARY_SQRT: return sqrtf(x);
    case VD_UNARY_ABS: return fabsf(x);
    case VD_UNARY_SMOOTH_L1: return fabsf(x) < p ? 0.5f * x * x / p : fabsf(x) - 0.5f * p;
    default: return vd_act(op, x);
    }
}

// f'(x):
//   sigmoid     σ·(1 − σ) as e·σ² with e = e^-x capped at e^88 (no cancellation;
//               the cap is written so that NaN passes)
//   softplus    σ(x)
//   tanh        1 − tanh² as 4e/(1 + e)², e = e^{-2|x|} (no cancellation)
//   sqrt        0.5 / √x (+∞ at 0)      log  1 / x
//   smooth_l1   x/p for |x| < p, else sign(x)
VD_DEVICE float vd_unary_grad(int op, float p, float x) {
    switch (op) {
    case VD_UNARY_LEAKY_RELU: return x > 0.0f ? 1.0f : (x <= 0.0f ? p : x);
    case VD_UNARY_SIGMOID:
    case VD_UNARY_SOFTPLUS: {
        const float nx = -x;
        const float e = expf(nx > 88.0f ? 88.0f : nx);
        const float s = 1.0f / (1.0f + e);
        return op == VD_UNARY_SIGMOID ? e * s * s : s;
    }
    case VD_UNARY_TANH: {
        const float e = expf(-2.0f * fabsf(x));
        return 4.0f * e / ((1.0f + e) * (1.0f + e));
    }
    case VD_UNARY_EXP: return expf(x);
    case VD_UNARY_LOG: return 1.0f / x;
    case VD_UNARY_SQUARE: return 2.0f * x;
    case VD_UNARY_SQRT: return 0.5f / sqrtf(x);
    case VD_UNARY_ABS: return vd_sign(x);
    case VD_UNARY_SMOOTH_L1: return fabsf(x) < p ? x / p : vd_sign(x);
    default: return vd_act_grad(op, x);
    }
}
