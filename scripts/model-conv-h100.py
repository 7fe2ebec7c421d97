#!/usr/bin/env python3
"""Modelled H100 time of the convolution passes of the paper's training step.

The step: the ImgX UNet 32/64/128/256 (src/model/imgx_unet.rs) on
1x32x128x128, 15 input channels (image + 14-class noisy mask), 14 outputs,
diffusion with recycling = two forwards (one without tape) and one backward
(data gradient of every conv but the stem's, weight gradient of every conv).

Model, per GEMM launch (inputs below, each to be checked on the first GPU):
  compute = executed FLOPs / (PEAK * min(F_MMA, ISSUE_BUDGET / I) * waves)
  memory  = (bytes read + written) / BW
  time    = max(compute, memory)
- executed FLOPs count the tile padding: an N tile wider than Cout, K padded
  to the step, M padded to the tile;
- I = issued instructions per HMMA in the kernel's K loop, counted statically
  from the SASS of the embedded CUBIN (sm_90; nvdisasm, loop body from the
  loop label to its backward branch / HMMA in it);
- ISSUE_BUDGET: an SM sub-partition issues one warp instruction per clock and
  the H100's dense bf16 peak is one m16n8k16 per SM per clock, so a warp may
  issue 4 instructions per HMMA at peak; mma.sync (not wgmma) is assumed to
  reach at most F_MMA of the peak;
- waves: blocks / (ceil(blocks / (SMS * resident)) * SMS * resident), with
  `resident` blocks per SM from the dynamic shared memory per block.
Launch overheads, the split-K reductions, channel padding and weight packing
(each memory-bound, < 2 % of the conv bytes here) are left out.

Run: python3 scripts/model-conv-h100.py
"""
import math

PEAK = 989e12  # H100 SXM dense bf16 tensor FLOP/s (spec)
F_MMA = 0.67  # fraction of PEAK mma.sync reaches (assumption)
ISSUE_BUDGET = 4.0  # instructions per HMMA per warp at peak
BW = 3.0e12  # bytes/s
SMS = 132
SMEM = 227 * 1024  # dynamic shared memory per SM

# I (instructions per HMMA: static instructions of the K loop body / HMMA in
# it, sm_90 SASS of the embedded CUBIN) and the tile of each kernel; `smem` is
# the dynamic (or static) shared memory per block.
NEW = {
    "fprop_128x32": dict(I=171 / 32, bm=128, bn=32, smem=69120),
    "fprop_128x64": dict(I=222 / 64, bm=128, bn=64, smem=82944),
    "fprop_64x64": dict(I=158 / 32, bm=64, bn=64, smem=55296),
    "wgrad_128x32": dict(I=209 / 16, bm=128, bn=32, smem=45056),
    "wgrad_64x64": dict(I=160 / 16, bm=64, bn=64, smem=36864),
    "scatter_async": dict(I=90 / 8, bm=64, bn=64, smem=20480),
}
OLD = {
    "gather_async": dict(I=241 / 8, bm=64, bn=64, smem=20480),
    "gather_reg": dict(I=670 / 4, bm=64, bn=64, smem=6144),
    "wgrad_reg": dict(I=395 / 4, bm=64, bn=64, smem=7168),
    "scatter_async": dict(I=90 / 8, bm=64, bn=64, smem=20480),
    "scatter_reg": dict(I=670 / 4, bm=64, bn=64, smem=6144),
}


def gemm_time(k, m, n, kk, kk_exec, bytes_moved, groups=1, split=None):
    """Seconds and useful FLOPs of an M x N x K GEMM on kernel k (K executed:
    kk_exec) repeated over `groups` grid slices; K split over blocks by the
    launcher's rule `split` ("fprop": to one block per SM, at least 8 steps of
    32 per split; "wgrad": to 4 blocks per SM, at least 4 steps per split)."""
    mt, nt = math.ceil(m / k["bm"]), math.ceil(n / k["bn"])
    blocks = mt * nt * groups
    splits = 1
    if split == "fprop" and blocks < SMS:
        splits = max(1, min(math.ceil(SMS / blocks), math.ceil(kk_exec / 64) // 4))
    elif split == "wgrad":
        splits = max(1, min(math.ceil(4 * SMS / blocks), math.ceil(kk_exec / (32 * 4))))
    blocks *= splits
    resident = max(1, min(8, SMEM // k["smem"]))
    waves = math.ceil(blocks / (SMS * resident))
    wave_eff = blocks / (waves * SMS * resident)
    flops_exec = 2.0 * mt * k["bm"] * nt * k["bn"] * kk_exec * groups
    # A partial last wave idles SMs; with several resident blocks per SM a
    # block per SM already keeps the tensor cores busy (min(1, 4 x)).
    rate = PEAK * min(F_MMA, ISSUE_BUDGET / k["I"]) * min(1.0, wave_eff * 4)
    work = bytes_moved + (2 * splits * m * n * 4 * groups if splits > 1 else 0)
    return max(flops_exec / rate, work / BW), 2.0 * m * n * kk * groups


def layers():
    """(name, spec, in voxels, out voxels, cin, cout, count in the network)."""
    v = [32 * 128 * 128 // 8**i for i in range(5)]
    c = [32, 32, 64, 128, 256]  # level channels (level 0 = stem resolution)
    out = [("stem", "k3", v[0], v[0], 15, 32, 1)]
    out.append(("stem block", "k3", v[0], v[0], 32, 32, 2))
    chans = [32, 64, 128, 256]
    for i, ch in enumerate(chans):
        prev = 32 if i == 0 else chans[i - 1]
        out.append((f"down{i}", "down", v[i], v[i + 1], prev, ch, 1))
        out.append((f"down{i} block", "k3", v[i + 1], v[i + 1], ch, ch, 2))
    dec = [32, 32, 64, 128]
    prev = 256
    for j, ch in enumerate(reversed(dec)):
        lvl = 3 - j
        out.append((f"up{j}", "up", v[lvl + 1], v[lvl], prev, ch, 1))
        out.append((f"up{j} block", "k3", v[lvl], v[lvl], ch, ch, 2))
        prev = ch
    out.append(("head", "k1", v[0], v[0], 32, 14, 1))
    return out


def passes(new):
    """Seconds and useful FLOPs of forward, dgrad, wgrad per layer kind."""
    K = NEW if new else OLD
    rows = []
    for name, spec, vin, vout, cin, cout, count in layers():
        taps = {"k3": 27, "k1": 1, "down": 8, "up": 8}[spec]
        act = 2  # bf16 bytes
        xb, yb, wb = vin * cin * act, vout * cout * act, taps * cin * cout * 4
        pad = lambda c: -(-c // 8) * 8  # noqa: E731
        kstep = lambda k: -(-k // 32) * 32  # noqa: E731
        t = {}
        # forward
        if spec == "up":  # scatter: per tap, M = in voxels, K = Cin
            kern = K["scatter_async"] if cin % 8 == 0 or new else K["scatter_reg"]
            t["fwd"] = gemm_time(kern, vin, cout, cin, kstep(pad(cin)), xb + yb + wb, taps)
        else:
            if new:
                kern = K["fprop_128x32"] if cout <= 32 else (
                    K["fprop_128x64"] if math.ceil(vout / 128) * math.ceil(cout / 64) >= SMS else K["fprop_64x64"])
                kexec = -(-taps * pad(cin) // 64) * 64
            else:
                kern = K["gather_async"] if cin % 8 == 0 else K["gather_reg"]
                kexec = -(-taps * cin // 16) * 16
            t["fwd"] = gemm_time(kern, vout, cout, taps * cin, kexec, xb + yb + wb,
                                 split="fprop" if new else None)
        # data gradient (GEMM input dy with Cout channels, output dx)
        if name != "stem":
            if spec in ("down", "k1"):  # kernel == stride: scatter, K = Cout
                kern = K["scatter_async"] if cout % 8 == 0 or new else K["scatter_reg"]
                t["dgrad"] = gemm_time(kern, vout, cin, cout, kstep(pad(cout)), xb + yb + wb, taps)
            else:
                if new:
                    kern = K["fprop_128x32"] if cin <= 32 else (
                        K["fprop_128x64"] if math.ceil(vin / 128) * math.ceil(cin / 64) >= SMS else K["fprop_64x64"])
                    kexec = -(-taps * pad(cout) // 64) * 64
                else:
                    kern = K["gather_async"] if cout % 8 == 0 else K["gather_reg"]
                    kexec = -(-taps * cout // 16) * 16
                t["dgrad"] = gemm_time(kern, vin, cin, taps * cout, kexec, xb + yb + wb,
                                       split="fprop" if new else None)
        # weight gradient: M = taps * Cin (per tap group for "up"), N = Cout, K = voxels
        groups, mrows, kvox = (taps, pad(cin), vin) if spec == "up" else (1, taps * pad(cin), vout)
        if new:
            kern = K["wgrad_128x32"] if pad(cout) <= 32 else K["wgrad_64x64"]
        else:
            kern = K["wgrad_reg"]
        t["wgrad"] = gemm_time(kern, mrows, cout, kvox, kvox, xb + yb + wb, groups, split="wgrad")
        rows.append((name, count, t))
    return rows


def report():
    for label, new in (("before (old kernels)", False), ("after (pipelined kernels)", True)):
        tot = {"fwd": 0.0, "dgrad": 0.0, "wgrad": 0.0}
        flops = 0.0
        for name, count, t in passes(new):
            for p, (sec, fl) in t.items():
                mult = 2 if p == "fwd" else 1  # two forwards per recycling step
                tot[p] += sec * count * mult
                flops += fl * count * mult
        step = sum(tot.values())
        print(f"{label}: forward x2 {tot['fwd']*1e3:.2f} ms, dgrad {tot['dgrad']*1e3:.2f} ms, "
              f"wgrad {tot['wgrad']*1e3:.2f} ms; conv passes {step*1e3:.2f} ms for "
              f"{flops/1e9:.0f} GFLOP ({flops/step/1e12:.0f} TFLOP/s, {flops/step/PEAK*100:.0f} % of peak)")


if __name__ == "__main__":
    report()
    print("per layer (after), ms per pass:")
    for name, count, t in passes(True):
        cells = ", ".join(f"{p} {sec*1e3:.3f}" for p, (sec, _) in t.items())
        print(f"  {name:12s} x{count}: {cells}")
