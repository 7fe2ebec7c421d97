// Pointwise activations and their derivatives, shared by the pointwise and
// norm families. `act` is the index of `backend::Act` as the launchers pass it:
// 0 identity, 1 relu, 2 silu, 3 gelu (tanh form). Every branch on `act` is
// uniform across the grid.
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
