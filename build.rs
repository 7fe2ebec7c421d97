//! Build script: the CUDA kernel registry, NVRTC → PTX, ptxas resource reports,
//! and the CPU emulation library.
//!
//! 1. Finds every `extern "C" __global__ void vd_<family>_<op>[_<variant>]` in
//!    `kernels/<family>.cu` and generates `$OUT_DIR/kernels.rs`: the `Kernel` and
//!    `Family` enums, the embedded sources (`include_str!`) and PTX per arch, and
//!    the ptxas table (registers, shared memory, spills per kernel and arch).
//! 2. When libnvrtc is found (`$VOXDIFF_CUDA_ROOT`, else `.toolchain/cuda/nvidia/cu13`
//!    from `scripts/install-cuda-toolchain.sh`), compiles every family for
//!    `compute_80` and `compute_90`; any compile error fails the build with NVRTC's
//!    log. Without NVRTC it prints a warning and embeds sources only (the CUDA
//!    device then compiles them at run time with the machine's NVRTC).
//! 3. When ptxas is found, assembles every PTX (`-v`, sm_80 / sm_90) and records
//!    each kernel's registers, shared memory and spill bytes.
//! 4. Compiles every `kernels/*.cu` as C++17 against `kernels/emu/cuda_emu.h`, plus
//!    the emulation runtime and a generated launch table (one `extern "C"` thunk
//!    per kernel that unpacks a `void**` argument array into the kernel's typed
//!    parameters), into the static library `voxdiff_emu`.
//!
//! NVRTC is loaded with `dlopen` (the `libloading` build-dependency): the library
//! lives in the project's toolchain folder, not on the system search path, and a
//! build without it must still succeed.

#[path = "build/emulation.rs"]
mod emulation;
#[path = "build/registry.rs"]
mod registry;
#[path = "build/toolchain.rs"]
mod toolchain;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toolchain::{find_toolchain, Nvrtc};

/// The PTX targets every kernel is compiled for (Ampere and Hopper). The driver
/// JIT-compiles the newest one not above the device's compute capability.
pub const ARCHS: [(&str, &str); 2] = [("compute_80", "sm_80"), ("compute_90", "sm_90")];

pub struct KernelDecl {
    /// `vd_<family>_<op>[_<variant>]`
    pub name: String,
    pub family: String,
}

/// One kernel's resources for one arch, as ptxas reports them.
#[derive(Default, Clone)]
pub struct PtxasInfo {
    pub registers: u32,
    pub shared_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub stack_bytes: u32,
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=VOXDIFF_CUDA_ROOT");
    let stamp = manifest.join(".toolchain/cuda/.voxdiff-toolchain-stamp");
    if stamp.exists() {
        println!("cargo:rerun-if-changed={}", stamp.display());
    }

    let families = list_families(&kernels_dir);
    let mut kernels = Vec::new();
    for (family, path) in &families {
        let src = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        kernels.extend(find_entry_points(family, path, &src));
    }
    {
        let mut seen = std::collections::HashSet::new();
        for k in &kernels {
            assert!(seen.insert(&k.name), "kernel {} is defined twice", k.name);
        }
    }

    let ptx_dir = out_dir.join("ptx");
    std::fs::create_dir_all(&ptx_dir).unwrap();
    let toolchain = find_toolchain(&manifest);
    // Wall time of each phase, written to $OUT_DIR/build-times.txt.
    let mut times: Vec<(&str, f64)> = Vec::new();
    let mut nvrtc_version = None;
    let mut ptxas_version = None;
    let mut ptxas_table: BTreeMap<(String, &str), PtxasInfo> = BTreeMap::new();
    match &toolchain {
        Some(tc) => {
            let nvrtc = Nvrtc::load(&tc.lib_dir);
            nvrtc_version = Some(nvrtc.version());
            let t = std::time::Instant::now();
            toolchain::compile_all_ptx(&nvrtc, tc, &kernels_dir, &families, &ptx_dir);
            times.push(("nvrtc", t.elapsed().as_secs_f64()));
            if let Some(ptxas) = &tc.ptxas {
                ptxas_version = Some(toolchain::tool_version(ptxas));
                let t = std::time::Instant::now();
                ptxas_table = toolchain::run_ptxas_all(ptxas, &families, &ptx_dir);
                times.push(("ptxas", t.elapsed().as_secs_f64()));
                for k in &kernels {
                    for (_, sm) in ARCHS {
                        assert!(
                            ptxas_table.contains_key(&(k.name.clone(), sm)),
                            "ptxas did not report kernel {} for {sm}",
                            k.name
                        );
                    }
                }
            } else {
                println!(
                    "cargo:warning=ptxas not found next to NVRTC in {}: no register/spill report",
                    tc.lib_dir.display()
                );
            }
        }
        None => println!(
            "cargo:warning=NVRTC not found (run scripts/install-cuda-toolchain.sh or set \
             VOXDIFF_CUDA_ROOT): embedding CUDA sources only, no PTX"
        ),
    }

    let registry = registry::generate_registry(
        &kernels_dir,
        &families,
        &kernels,
        &ptx_dir,
        toolchain.is_some(),
        nvrtc_version.as_deref(),
        ptxas_version.as_deref(),
        &ptxas_table,
    );
    std::fs::write(out_dir.join("kernels.rs"), registry).unwrap();

    let t = std::time::Instant::now();
    emulation::build_emulation(&manifest, &out_dir, &families, &kernels);
    times.push(("emulation library", t.elapsed().as_secs_f64()));
    let report: String = times
        .iter()
        .map(|(k, v)| format!("{k}: {v:.2} s\n"))
        .collect();
    std::fs::write(out_dir.join("build-times.txt"), report).unwrap();
}

// ------------------------------------------------------------------ sources

/// `(family, path)` of every `kernels/*.cu`, sorted by family.
fn list_families(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("cu") {
            let family = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                family
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
                "{}: a family name is lowercase letters and digits",
                path.display()
            );
            out.push((family, path));
        }
    }
    out.sort();
    out
}

/// Removes `//` and `/* */` comments (keeping newlines) so commented-out code is
/// not taken for an entry point.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            // copy string literals verbatim (`extern "C"`)
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                out.push(b[i] as char);
                i += 1;
            }
            out.push('"');
            i += 1;
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Entry points of one family: `extern "C" __global__ void [__launch_bounds__(..)] vd_<family>_...(`.
fn find_entry_points(family: &str, path: &Path, src: &str) -> Vec<KernelDecl> {
    let text = strip_comments(src);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("__global__") {
        let before = rest[..pos].trim_end();
        let after = &rest[pos + "__global__".len()..];
        rest = after;
        assert!(
            before.ends_with("extern \"C\""),
            "{}: every __global__ function is an extern \"C\" entry point (found one without)",
            path.display()
        );
        let mut s = after.trim_start();
        s = s
            .strip_prefix("void")
            .unwrap_or_else(|| panic!("{}: a __global__ function returns void", path.display()))
            .trim_start();
        if let Some(lb) = s.strip_prefix("__launch_bounds__") {
            let close = lb
                .find(')')
                .unwrap_or_else(|| panic!("{}: unterminated __launch_bounds__", path.display()));
            s = lb[close + 1..].trim_start();
        }
        let name: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let prefix = format!("vd_{family}_");
        assert!(
            name.starts_with(&prefix) && name.len() > prefix.len(),
            "{}: entry point `{name}` must be named {prefix}<op>[_<variant>]",
            path.display()
        );
        out.push(KernelDecl {
            name,
            family: family.to_string(),
        });
    }
    out
}

/// `vd_elementwise_lincomb_bf16` → `ElementwiseLincombBf16`.
pub fn variant_name(kernel: &str) -> String {
    kernel
        .trim_start_matches("vd_")
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            let first = c.next().unwrap().to_ascii_uppercase();
            std::iter::once(first).chain(c).collect::<String>()
        })
        .collect()
}

pub fn camel(family: &str) -> String {
    variant_name(&format!("vd_{family}"))
}
