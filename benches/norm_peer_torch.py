"""Peer measurement for benches/norm.rs: PyTorch CPU group norm forward + backward.

Same problem as the Rust bench: instance norm (groups = C = 32) with affine gamma/beta
on a 1x32x128x128x32 (N, D, H, W, C) fp32 tensor stored channels-last
(torch.channels_last_3d), 2 threads, activation identity or GELU (tanh form, a separate
op in PyTorch). Run it right before or after `cargo bench --bench norm` so both see the
same machine load:

    python benches/norm_peer_torch.py [repetitions] [channels_last|contiguous]

(`contiguous` stores NCDHW instead, the layout PyTorch's CPU kernels favour, for reference.)

Prints min and median milliseconds of forward and of forward + backward (x, gamma and
beta gradients).
"""
import sys
import time

import torch

torch.set_num_threads(2)
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
layout = sys.argv[2] if len(sys.argv) > 2 else "channels_last"
fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
N, C, D, H, W = 1, 32, 32, 128, 128
x0 = (torch.rand(N, C, D, H, W) * 5 - 2).contiguous(memory_format=fmt)
dy = (torch.rand(N, C, D, H, W) * 2 - 1).contiguous(memory_format=fmt)
gn = torch.nn.GroupNorm(C, C, eps=1e-5, affine=True)
acts = {
    "identity": lambda t: t,
    "gelu": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
}
for name, act in acts.items():
    fwd, total = [], []
    for i in range(reps + 3):
        x = x0.detach().requires_grad_(True)
        gn.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        y = act(gn(x))
        t1 = time.perf_counter()
        y.backward(dy)
        t2 = time.perf_counter()
        if i >= 3:  # warm-up
            fwd.append((t1 - t0) * 1e3)
            total.append((t2 - t0) * 1e3)
        del y
    fwd.sort()
    total.sort()
    print(
        f"torch {torch.__version__} {layout} {name}: fwd min {fwd[0]:.2f} med {fwd[len(fwd) // 2]:.2f} ms"
        f" | fwd+bwd min {total[0]:.2f} med {total[len(total) // 2]:.2f} ms"
    )
