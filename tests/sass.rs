//! The SASS of the embedded CUBINs, disassembled with nvdisasm (installed by
//! scripts/install-cuda-toolchain.sh into .toolchain/nvdisasm; or
//! `$VOXDIFF_NVDISASM`): every tensor-core convolution kernel issues HMMA
//! (the mma.sync of its PTX became tensor-core instructions on sm_80 and
//! sm_90) and LDSM, the cp.async (pipelined) kernels LDGSTS, and the f32 and
//! helper kernels no HMMA.
//! With `VOXDIFF_REQUIRE_NVRTC=1` (the test script) a missing CUBIN or
//! nvdisasm fails the test; otherwise it says it skipped.

use std::path::PathBuf;
use std::process::Command;
use voxdiff::backend::gpu::registry::{Family, Kernel, CUBIN_ARCHS, NVRTC_AT_BUILD};

fn required() -> bool {
    std::env::var("VOXDIFF_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

fn nvdisasm() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("VOXDIFF_NVDISASM") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/.toolchain/nvdisasm/nvidia/cu13/bin/nvdisasm"
    ));
    p.exists().then_some(p)
}

/// The SASS of every function in `image`, by function name.
fn disassemble(tool: &PathBuf, image: &[u8], what: &str) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(format!("voxdiff-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{what}.cubin"));
    std::fs::write(&path, image).unwrap();
    let out = Command::new(tool)
        .arg("--print-code")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nvdisasm failed on {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Functions start at `.text.<name>:` labels.
    let mut funcs: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix(".text.").and_then(|r| r.strip_suffix(':')) {
            funcs.push((name.to_string(), String::new()));
        } else if let Some((_, body)) = funcs.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    funcs
}

/// Instructions of `sass` whose opcode starts with `op` (e.g. "HMMA").
fn count(sass: &str, op: &str) -> usize {
    sass.lines()
        .filter(|l| {
            // `/*0120*/  HMMA.16816.F32.BF16 R4, R8, R12, R4 ;` (maybe `@P0 ` first)
            let code = l.split("*/").nth(1).unwrap_or("").trim_start();
            let code = if code.starts_with('@') {
                code.split_once(' ').map_or("", |(_, r)| r.trim_start())
            } else {
                code
            };
            code.starts_with(op)
        })
        .count()
}

#[test]
fn tensor_core_kernels_issue_hmma_in_sass() {
    if NVRTC_AT_BUILD.is_none() {
        assert!(
            !required(),
            "VOXDIFF_REQUIRE_NVRTC=1 but the build had no NVRTC"
        );
        eprintln!("SKIPPED: built without NVRTC, no CUBIN to disassemble");
        return;
    }
    let Some(tool) = nvdisasm() else {
        assert!(
            !required(),
            "VOXDIFF_REQUIRE_NVRTC=1 but nvdisasm is missing (run scripts/install-cuda-toolchain.sh)"
        );
        eprintln!("SKIPPED: no nvdisasm (run scripts/install-cuda-toolchain.sh)");
        return;
    };
    let conv: Vec<Kernel> = Kernel::ALL
        .iter()
        .copied()
        .filter(|k| k.family() == Family::Conv3d)
        .collect();
    let mut checked = 0;
    for (i, arch) in CUBIN_ARCHS.iter().enumerate() {
        let image = Family::Conv3d.cubin(i).expect("the conv3d CUBIN");
        let funcs = disassemble(&tool, image, &format!("conv3d.{arch}"));
        for k in &conv {
            let sass = &funcs
                .iter()
                .find(|(n, _)| n == k.name())
                .unwrap_or_else(|| panic!("{} is missing from the {arch} SASS", k.name()))
                .1;
            let (hmma, ldsm, ldgsts) = (
                count(sass, "HMMA"),
                count(sass, "LDSM"),
                count(sass, "LDGSTS"),
            );
            let name = k.name();
            eprintln!("{arch} {name}: {hmma} HMMA, {ldsm} LDSM, {ldgsts} LDGSTS");
            let helper = ["_reduce", "_reduce_bf16", "_pack_weights", "_pad_channels"]
                .iter()
                .any(|s| name.ends_with(s));
            if helper {
                assert_eq!(hmma, 0, "{name} on {arch}: a helper kernel with HMMA");
            } else if name.ends_with("_f32") {
                assert_eq!(hmma, 0, "{name} on {arch}: an f32 kernel with HMMA");
            } else if name.ends_with("_bf16") {
                assert!(hmma > 0, "{name} on {arch}: no HMMA in the SASS");
                assert!(ldsm > 0, "{name} on {arch}: no LDSM in the SASS");
                checked += 1;
            }
            if ["_async_", "_fprop_", "_wgrad_pipe_"]
                .iter()
                .any(|p| name.contains(p))
            {
                assert!(
                    ldgsts > 0,
                    "{name} on {arch}: no LDGSTS (cp.async) in the SASS"
                );
            }
        }
    }
    assert!(
        checked >= 2 * 6,
        "only {checked} tensor-core kernels checked"
    );
}
