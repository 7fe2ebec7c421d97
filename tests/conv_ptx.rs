//! The PTX of the convolution kernels as a test artefact: which kernels run on
//! tensor cores and cp.async, and that the K loops of the pipelined kernels do
//! no integer division (an integer `div`/`rem` costs tens of instructions; the
//! loop must advance by adds and test validity with a mask).

use voxdiff::backend::gpu::registry::{Family, Kernel, NVRTC_AT_BUILD, PTX_ARCHS};

/// false (after saying so) when the build had no NVRTC and none is required.
fn have_ptx() -> bool {
    if NVRTC_AT_BUILD.is_none() {
        assert!(
            std::env::var("VOXDIFF_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
            "VOXDIFF_REQUIRE_NVRTC=1 but the build had no NVRTC"
        );
        eprintln!("SKIPPED: built without NVRTC, no PTX to inspect");
        return false;
    }
    true
}

/// The PTX of `k`'s entry function on target `arch`.
fn entry(k: Kernel, arch: usize) -> &'static str {
    let ptx = k.family().ptx(arch).unwrap();
    let start = ptx
        .find(&format!(".entry {}(", k.name()))
        .unwrap_or_else(|| panic!("{} missing from the PTX", k.name()));
    let body = &ptx[start..];
    &body[..body[1..].find(".entry ").map_or(body.len(), |e| e + 1)]
}

fn conv_kernels() -> Vec<Kernel> {
    Kernel::ALL
        .iter()
        .copied()
        .filter(|k| k.family() == Family::Conv3d)
        .collect()
}

/// The pipelined kernels (16-byte cp.async, multi-stage, no division in the K loop).
fn pipelined(k: Kernel) -> bool {
    k.name().contains("_fprop_")
        || k.name().contains("_async_")
        || k.name().contains("_wgrad_pipe_")
}

/// GEMM kernels: everything of the family but the helpers around them.
fn gemm(k: Kernel) -> bool {
    !["_reduce", "_reduce_bf16", "_pack_weights", "_pad_channels"]
        .iter()
        .any(|s| k.name().ends_with(s))
}

/// The bf16 GEMM kernels run on tensor cores: their PTX (both targets) holds
/// mma.sync m16n8k16 and ldmatrix, the f32 kernels' does not; the pipelined
/// kernels load through cp.async, the others do not.
#[test]
fn bf16_kernels_use_tensor_cores_in_ptx() {
    if !have_ptx() {
        return;
    }
    let conv: Vec<Kernel> = conv_kernels().into_iter().filter(|&k| gemm(k)).collect();
    assert!(conv.len() >= 12, "{} GEMM kernels", conv.len());
    for k in conv {
        for (arch, arch_name) in PTX_ARCHS.iter().enumerate() {
            let body = entry(k, arch);
            let tensor_cores = body.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
                && body.contains("ldmatrix.sync.aligned.m8n8.x4");
            let async_copies = body.contains("cp.async.cg.shared.global");
            assert_eq!(
                async_copies,
                pipelined(k),
                "{} on {arch_name}: cp.async present = {async_copies}",
                k.name()
            );
            assert_eq!(
                tensor_cores,
                k.name().ends_with("_bf16"),
                "{} on {arch_name}: tensor-core instructions present = {tensor_cores}",
                k.name()
            );
        }
    }
}

/// Integer divisions and remainders inside the loops of `body` that contain
/// an mma.sync: each backward branch `bra L` closes the loop from label `L:`
/// to it. Returns the offending instructions.
fn divisions_in_mma_loops(body: &str) -> (usize, Vec<String>) {
    let lines: Vec<&str> = body.lines().map(str::trim).collect();
    let mut labels = std::collections::HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_suffix(':') {
            if name.starts_with('$') {
                labels.insert(name.to_string(), i);
            }
        }
    }
    let mut loops = 0;
    let mut found = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let Some(target) = l
            .split_whitespace()
            .skip_while(|w| !w.starts_with("bra"))
            .nth(1)
            .map(|t| t.trim_end_matches(';'))
        else {
            continue;
        };
        let Some(&start) = labels.get(target) else {
            continue;
        };
        if start > i {
            continue;
        }
        let region = &lines[start..=i];
        if !region.iter().any(|l| l.starts_with("mma.sync")) {
            continue;
        }
        loops += 1;
        for l in region {
            let op = l.split_whitespace().next().unwrap_or("");
            let op = if op.starts_with('@') {
                l.split_whitespace().nth(1).unwrap_or("")
            } else {
                op
            };
            let int_div = (op.starts_with("div.") || op.starts_with("rem."))
                && [".s32", ".u32", ".s64", ".u64"]
                    .iter()
                    .any(|t| op.ends_with(t));
            if int_div {
                found.push(l.to_string());
            }
        }
    }
    (loops, found)
}

#[test]
fn pipelined_k_loops_do_no_integer_division() {
    if !have_ptx() {
        return;
    }
    let pipes: Vec<Kernel> = conv_kernels()
        .into_iter()
        .filter(|&k| pipelined(k))
        .collect();
    assert!(pipes.len() >= 6, "{} pipelined kernels", pipes.len());
    for k in pipes {
        for (arch, arch_name) in PTX_ARCHS.iter().enumerate() {
            let (loops, divs) = divisions_in_mma_loops(entry(k, arch));
            assert!(
                loops > 0,
                "{} on {arch_name}: no loop around the mma found",
                k.name()
            );
            assert!(
                divs.is_empty(),
                "{} on {arch_name}: integer division in the K loop: {divs:?}",
                k.name()
            );
        }
    }
    // The detector finds the divisions of the general register loader (its
    // index mapping divides by the stride), so it is not blind.
    let (loops, divs) = divisions_in_mma_loops(entry(Kernel::Conv3dGatherBf16, 1));
    assert!(loops > 0 && !divs.is_empty(), "{loops} loops, {divs:?}");
}
