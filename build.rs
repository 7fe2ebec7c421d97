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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PTX targets every kernel is compiled for (Ampere and Hopper). The driver
/// JIT-compiles the newest one not above the device's compute capability.
const ARCHS: [(&str, &str); 2] = [("compute_80", "sm_80"), ("compute_90", "sm_90")];

struct KernelDecl {
    /// `vd_<family>_<op>[_<variant>]`
    name: String,
    family: String,
}

struct Toolchain {
    lib_dir: PathBuf,
    include_dir: PathBuf,
    ptxas: Option<PathBuf>,
}

/// One kernel's resources for one arch, as ptxas reports them.
#[derive(Default, Clone)]
struct PtxasInfo {
    registers: u32,
    shared_bytes: u32,
    spill_store_bytes: u32,
    spill_load_bytes: u32,
    stack_bytes: u32,
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kernels_dir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
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
            compile_all_ptx(&nvrtc, tc, &kernels_dir, &families, &ptx_dir);
            times.push(("nvrtc", t.elapsed().as_secs_f64()));
            if let Some(ptxas) = &tc.ptxas {
                ptxas_version = Some(tool_version(ptxas));
                let t = std::time::Instant::now();
                ptxas_table = run_ptxas_all(ptxas, &families, &ptx_dir);
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

    let registry = generate_registry(
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
    build_emulation(&manifest, &out_dir, &families, &kernels);
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
fn variant_name(kernel: &str) -> String {
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

fn camel(family: &str) -> String {
    variant_name(&format!("vd_{family}"))
}

// ---------------------------------------------------------------- toolchain

/// `$VOXDIFF_CUDA_ROOT` when set (authoritative: a root without NVRTC means a
/// build without NVRTC), else the project's `.toolchain/cuda/nvidia/cu13`.
fn find_toolchain(manifest: &Path) -> Option<Toolchain> {
    let root = match std::env::var("VOXDIFF_CUDA_ROOT") {
        Ok(r) if !r.is_empty() => PathBuf::from(r),
        _ => manifest.join(".toolchain/cuda/nvidia/cu13"),
    };
    for lib in ["lib", "lib64"] {
        let lib_dir = root.join(lib);
        if nvrtc_path(&lib_dir).is_some() && root.join("include/cuda_bf16.h").exists() {
            let ptxas = root.join("bin/ptxas");
            return Some(Toolchain {
                lib_dir,
                include_dir: root.join("include"),
                ptxas: ptxas.exists().then_some(ptxas),
            });
        }
    }
    None
}

/// The versioned libnvrtc in `dir` (`libnvrtc.so.13`, or `libnvrtc.so`).
fn nvrtc_path(dir: &Path) -> Option<PathBuf> {
    let mut best = None;
    for entry in std::fs::read_dir(dir).ok()? {
        let p = entry.ok()?.path();
        let name = p.file_name()?.to_str()?.to_string();
        if name.starts_with("libnvrtc.so") {
            best = Some(p);
        }
    }
    best
}

fn tool_version(tool: &Path) -> String {
    let out = Command::new(tool)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", tool.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("release ").nth(1))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| text.trim().to_string())
}

/// The NVRTC C API, loaded at build time.
struct Nvrtc {
    _builtins: Option<libloading::Library>,
    lib: libloading::Library,
}

type NvrtcProgram = *mut std::ffi::c_void;

impl Nvrtc {
    fn load(lib_dir: &Path) -> Nvrtc {
        // libnvrtc dlopens libnvrtc-builtins by its soname; load it first from the
        // toolchain folder (RTLD_GLOBAL) so that lookup finds the loaded copy.
        let mut builtins = None;
        for entry in std::fs::read_dir(lib_dir).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if name.starts_with("libnvrtc-builtins.so") && !name.contains(".alt.") {
                let lib = unsafe {
                    libloading::os::unix::Library::open(
                        Some(&p),
                        libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                    )
                }
                .unwrap_or_else(|e| panic!("loading {}: {e}", p.display()));
                builtins = Some(libloading::Library::from(lib));
                break;
            }
        }
        let path = nvrtc_path(lib_dir).unwrap();
        let lib = unsafe { libloading::Library::new(&path) }
            .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
        Nvrtc {
            _builtins: builtins,
            lib,
        }
    }

    fn version(&self) -> String {
        let f: libloading::Symbol<unsafe extern "C" fn(*mut i32, *mut i32) -> i32> =
            unsafe { self.lib.get(b"nvrtcVersion\0") }.unwrap();
        let (mut major, mut minor) = (0, 0);
        unsafe { f(&mut major, &mut minor) };
        format!("{major}.{minor}")
    }

    /// Compiles `src` (named `name`) with `options`; Ok(PTX) or Err(log).
    fn compile(&self, src: &str, name: &str, options: &[String]) -> Result<String, String> {
        use std::ffi::{c_char, CString};
        type Create = unsafe extern "C" fn(
            *mut NvrtcProgram,
            *const c_char,
            *const c_char,
            i32,
            *const *const c_char,
            *const *const c_char,
        ) -> i32;
        type Compile = unsafe extern "C" fn(NvrtcProgram, i32, *const *const c_char) -> i32;
        type Size = unsafe extern "C" fn(NvrtcProgram, *mut usize) -> i32;
        type Get = unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> i32;
        type Destroy = unsafe extern "C" fn(*mut NvrtcProgram) -> i32;
        unsafe {
            let create: libloading::Symbol<Create> = self.lib.get(b"nvrtcCreateProgram\0").unwrap();
            let compile: libloading::Symbol<Compile> =
                self.lib.get(b"nvrtcCompileProgram\0").unwrap();
            let log_size: libloading::Symbol<Size> =
                self.lib.get(b"nvrtcGetProgramLogSize\0").unwrap();
            let get_log: libloading::Symbol<Get> = self.lib.get(b"nvrtcGetProgramLog\0").unwrap();
            let ptx_size: libloading::Symbol<Size> = self.lib.get(b"nvrtcGetPTXSize\0").unwrap();
            let get_ptx: libloading::Symbol<Get> = self.lib.get(b"nvrtcGetPTX\0").unwrap();
            let destroy: libloading::Symbol<Destroy> =
                self.lib.get(b"nvrtcDestroyProgram\0").unwrap();

            let c_src = CString::new(src).unwrap();
            let c_name = CString::new(name).unwrap();
            let mut prog: NvrtcProgram = std::ptr::null_mut();
            let rc = create(
                &mut prog,
                c_src.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            );
            assert_eq!(rc, 0, "nvrtcCreateProgram({name}) failed with {rc}");
            let c_opts: Vec<CString> = options
                .iter()
                .map(|o| CString::new(o.as_str()).unwrap())
                .collect();
            let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
            let rc = compile(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
            let mut n = 0usize;
            log_size(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            get_log(prog, log.as_mut_ptr() as *mut c_char);
            let log = String::from_utf8_lossy(&log[..n.saturating_sub(1)]).into_owned();
            let result = if rc != 0 {
                Err(log)
            } else {
                let mut n = 0usize;
                ptx_size(prog, &mut n);
                let mut ptx = vec![0u8; n.max(1)];
                get_ptx(prog, ptx.as_mut_ptr() as *mut c_char);
                Ok(String::from_utf8_lossy(&ptx[..n.saturating_sub(1)]).into_owned())
            };
            destroy(&mut prog);
            result
        }
    }
}

/// NVRTC options shared by the build and the run-time fallback (`src/backend/gpu/cuda.rs`).
fn nvrtc_options(arch: &str, include_dirs: &[&Path]) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
        "-DVD_NVRTC=1".to_string(),
    ];
    for d in include_dirs {
        o.push(format!("-I{}", d.display()));
    }
    o
}

fn compile_all_ptx(
    nvrtc: &Nvrtc,
    tc: &Toolchain,
    kernels_dir: &Path,
    families: &[(String, PathBuf)],
    ptx_dir: &Path,
) {
    let jobs: Vec<(&String, &PathBuf, &str)> = families
        .iter()
        .flat_map(|(f, p)| ARCHS.iter().map(move |(arch, _)| (f, p, *arch)))
        .collect();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(family, path, arch)| {
                s.spawn(move || {
                    let src = std::fs::read_to_string(path).unwrap();
                    let opts = nvrtc_options(arch, &[kernels_dir, &tc.include_dir]);
                    let name = format!("{family}.cu");
                    match nvrtc.compile(&src, &name, &opts) {
                        Ok(ptx) => {
                            std::fs::write(ptx_dir.join(format!("{family}.{arch}.ptx")), ptx)
                                .unwrap();
                            None
                        }
                        Err(log) => Some(format!(
                            "NVRTC failed to compile kernels/{family}.cu for {arch}:\n{log}"
                        )),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    if !errors.is_empty() {
        panic!("{}", errors.join("\n"));
    }
}

/// Runs `ptxas -v` on every family's PTX for its sm target and parses the report.
fn run_ptxas_all(
    ptxas: &Path,
    families: &[(String, PathBuf)],
    ptx_dir: &Path,
) -> BTreeMap<(String, &'static str), PtxasInfo> {
    let jobs: Vec<(String, &'static str, &'static str)> = families
        .iter()
        .flat_map(|(f, _)| ARCHS.iter().map(move |(arch, sm)| (f.clone(), *arch, *sm)))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(family, arch, sm)| {
                s.spawn(move || {
                    let ptx = ptx_dir.join(format!("{family}.{arch}.ptx"));
                    let cubin = ptx_dir.join(format!("{family}.{sm}.cubin"));
                    let out = Command::new(ptxas)
                        .arg("-v")
                        .arg(format!("-arch={sm}"))
                        .arg(&ptx)
                        .arg("-o")
                        .arg(&cubin)
                        .output()
                        .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
                    let log = String::from_utf8_lossy(&out.stderr).into_owned()
                        + &String::from_utf8_lossy(&out.stdout);
                    assert!(
                        out.status.success(),
                        "ptxas failed on kernels/{family}.cu ({sm}):\n{log}"
                    );
                    parse_ptxas(&log, sm)
                })
            })
            .collect();
        let mut table = BTreeMap::new();
        for h in handles {
            for (k, v) in h.join().unwrap() {
                table.insert(k, v);
            }
        }
        table
    })
}

/// Parses `ptxas -v` output:
/// ```text
/// ptxas info    : Compiling entry function 'vd_x' for 'sm_80'
/// ptxas info    : Function properties for vd_x
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 10 registers, used 0 barriers, 1024 bytes smem, 380 bytes cmem[0]
/// ```
fn parse_ptxas(log: &str, sm: &'static str) -> Vec<((String, &'static str), PtxasInfo)> {
    let mut out: Vec<((String, &'static str), PtxasInfo)> = Vec::new();
    let mut current: Option<usize> = None;
    let num_before = |line: &str, key: &str| -> Option<u32> {
        let pos = line.find(key)?;
        line[..pos].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap().to_string();
            out.push(((name, sm), PtxasInfo::default()));
            current = Some(out.len() - 1);
            continue;
        }
        let Some(i) = current else { continue };
        let info = &mut out[i].1;
        if line.contains("bytes stack frame") {
            info.stack_bytes = num_before(line, "bytes stack frame").unwrap_or(0);
            info.spill_store_bytes = num_before(line, "bytes spill stores").unwrap_or(0);
            info.spill_load_bytes = num_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used ") && line.contains("registers") {
            info.registers = num_before(line, "registers").unwrap_or(0);
            info.shared_bytes = num_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

// ----------------------------------------------------------------- registry

#[allow(clippy::too_many_arguments)]
fn generate_registry(
    kernels_dir: &Path,
    families: &[(String, PathBuf)],
    kernels: &[KernelDecl],
    ptx_dir: &Path,
    have_ptx: bool,
    nvrtc_version: Option<&str>,
    ptxas_version: Option<&str>,
    ptxas: &BTreeMap<(String, &str), PtxasInfo>,
) -> String {
    let mut s = String::new();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    writeln!(
        s,
        "// Generated by build.rs from kernels/*.cu. Do not edit."
    )
    .unwrap();
    writeln!(s).unwrap();
    writeln!(
        s,
        "/// NVRTC version the PTX was compiled with (None: sources only)."
    )
    .unwrap();
    writeln!(
        s,
        "pub const NVRTC_AT_BUILD: Option<&str> = {nvrtc_version:?};"
    )
    .unwrap();
    writeln!(
        s,
        "/// ptxas version that produced [`PTXAS`] (None: no report)."
    )
    .unwrap();
    writeln!(
        s,
        "pub const PTXAS_AT_BUILD: Option<&str> = {ptxas_version:?};"
    )
    .unwrap();
    writeln!(
        s,
        "/// The PTX targets, in the order of [`Family::ptx`]'s arch index."
    )
    .unwrap();
    let archs: Vec<&str> = ARCHS.iter().map(|a| a.0).collect();
    writeln!(
        s,
        "pub const PTX_ARCHS: [&str; {}] = {archs:?};",
        archs.len()
    )
    .unwrap();
    writeln!(
        s,
        "/// NVRTC options besides `--gpu-architecture` and `-I`."
    )
    .unwrap();
    let opts: Vec<String> = nvrtc_options("x", &[]).into_iter().skip(1).collect();
    writeln!(s, "pub const NVRTC_OPTIONS: &[&str] = &{opts:?};").unwrap();
    writeln!(
        s,
        "/// The headers of `kernels/` (name, text), embedded for the run-time NVRTC fallback."
    )
    .unwrap();
    let mut headers: Vec<PathBuf> = std::fs::read_dir(kernels_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cuh"))
        .collect();
    headers.sort();
    writeln!(s, "pub const HEADERS: &[(&str, &str)] = &[").unwrap();
    for h in &headers {
        let name = h.file_name().unwrap().to_str().unwrap();
        writeln!(s, "    ({name:?}, include_str!({})),", q(h)).unwrap();
    }
    writeln!(s, "];").unwrap();
    writeln!(s).unwrap();

    // Family
    writeln!(s, "/// A kernel family: one `kernels/<family>.cu`.").unwrap();
    writeln!(
        s,
        "#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]"
    )
    .unwrap();
    writeln!(s, "pub enum Family {{").unwrap();
    for (f, _) in families {
        writeln!(s, "    {},", camel(f)).unwrap();
    }
    writeln!(s, "}}\n\nimpl Family {{").unwrap();
    let all: Vec<String> = families
        .iter()
        .map(|(f, _)| format!("Family::{}", camel(f)))
        .collect();
    writeln!(
        s,
        "    pub const ALL: &'static [Family] = &[{}];",
        all.join(", ")
    )
    .unwrap();
    writeln!(s, "    /// The file stem, e.g. `elementwise`.").unwrap();
    writeln!(
        s,
        "    pub fn name(self) -> &'static str {{\n        match self {{"
    )
    .unwrap();
    for (f, _) in families {
        writeln!(s, "            Family::{} => {f:?},", camel(f)).unwrap();
    }
    writeln!(s, "        }}\n    }}").unwrap();
    writeln!(s, "    /// The CUDA source, embedded.").unwrap();
    writeln!(
        s,
        "    pub fn source(self) -> &'static str {{\n        match self {{"
    )
    .unwrap();
    for (f, p) in families {
        writeln!(
            s,
            "            Family::{} => include_str!({}),",
            camel(f),
            q(p)
        )
        .unwrap();
    }
    writeln!(s, "        }}\n    }}").unwrap();
    writeln!(
        s,
        "    /// PTX for `PTX_ARCHS[arch]`, when NVRTC was present at build time."
    )
    .unwrap();
    writeln!(
        s,
        "    pub fn ptx(self, arch: usize) -> Option<&'static str> {{\n        match (self, arch) {{"
    )
    .unwrap();
    if have_ptx {
        for (f, _) in families {
            for (i, (arch, _)) in ARCHS.iter().enumerate() {
                let p = ptx_dir.join(format!("{f}.{arch}.ptx"));
                writeln!(
                    s,
                    "            (Family::{}, {i}) => Some(include_str!({})),",
                    camel(f),
                    q(&p)
                )
                .unwrap();
            }
        }
    }
    writeln!(s, "            _ => None,\n        }}\n    }}\n}}\n").unwrap();

    // Kernel
    writeln!(
        s,
        "/// Every kernel entry point (`extern \"C\" __global__ void vd_*`)."
    )
    .unwrap();
    writeln!(
        s,
        "#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]"
    )
    .unwrap();
    writeln!(s, "pub enum Kernel {{").unwrap();
    for k in kernels {
        writeln!(s, "    /// `{}`", k.name).unwrap();
        writeln!(s, "    {},", variant_name(&k.name)).unwrap();
    }
    writeln!(s, "}}\n\nimpl Kernel {{").unwrap();
    let all: Vec<String> = kernels
        .iter()
        .map(|k| format!("Kernel::{}", variant_name(&k.name)))
        .collect();
    writeln!(
        s,
        "    pub const ALL: &'static [Kernel] = &[{}];",
        all.join(", ")
    )
    .unwrap();
    writeln!(
        s,
        "    /// The entry point's symbol, e.g. `vd_elementwise_fill_f32`."
    )
    .unwrap();
    writeln!(
        s,
        "    pub fn name(self) -> &'static str {{\n        match self {{"
    )
    .unwrap();
    for k in kernels {
        writeln!(
            s,
            "            Kernel::{} => {:?},",
            variant_name(&k.name),
            k.name
        )
        .unwrap();
    }
    writeln!(s, "        }}\n    }}").unwrap();
    writeln!(s, "    /// [`Kernel::name`] as a C string.").unwrap();
    writeln!(
        s,
        "    pub fn c_name(self) -> &'static std::ffi::CStr {{\n        match self {{"
    )
    .unwrap();
    for k in kernels {
        writeln!(
            s,
            "            Kernel::{} => c{:?},",
            variant_name(&k.name),
            k.name
        )
        .unwrap();
    }
    writeln!(s, "        }}\n    }}").unwrap();
    writeln!(
        s,
        "    pub fn family(self) -> Family {{\n        match self {{"
    )
    .unwrap();
    for k in kernels {
        writeln!(
            s,
            "            Kernel::{} => Family::{},",
            variant_name(&k.name),
            camel(&k.family)
        )
        .unwrap();
    }
    writeln!(s, "        }}\n    }}").unwrap();
    writeln!(s, "    /// Position in [`Kernel::ALL`].").unwrap();
    writeln!(
        s,
        "    pub fn index(self) -> usize {{\n        self as usize\n    }}"
    )
    .unwrap();
    writeln!(s, "    /// The emulation library's entry for this kernel.").unwrap();
    writeln!(
        s,
        "    pub(crate) fn emu_entry(self) -> EmuEntry {{\n        match self {{"
    )
    .unwrap();
    for k in kernels {
        writeln!(
            s,
            "            Kernel::{} => EmuEntry {{ call: vdemu_call_{n}, params: vdemu_params_{n} }},",
            variant_name(&k.name),
            n = k.name
        )
        .unwrap();
    }
    writeln!(s, "        }}\n    }}\n}}\n").unwrap();

    writeln!(
        s,
        "/// A kernel in the emulation library: `call(args)` runs one CUDA thread's body"
    )
    .unwrap();
    writeln!(
        s,
        "/// (unpacking `args` into the typed parameters); `params` reports the"
    )
    .unwrap();
    writeln!(
        s,
        "/// parameters' sizes and kinds as the C++ compiler sees them."
    )
    .unwrap();
    writeln!(s, "#[derive(Clone, Copy)]").unwrap();
    writeln!(s, "pub(crate) struct EmuEntry {{").unwrap();
    writeln!(
        s,
        "    pub call: unsafe extern \"C\" fn(*mut *mut std::ffi::c_void),"
    )
    .unwrap();
    writeln!(
        s,
        "    pub params: unsafe extern \"C\" fn(*mut u32, *mut u32, i32) -> i32,"
    )
    .unwrap();
    writeln!(s, "}}\n").unwrap();
    writeln!(s, "extern \"C\" {{").unwrap();
    for k in kernels {
        writeln!(
            s,
            "    fn vdemu_call_{}(args: *mut *mut std::ffi::c_void);",
            k.name
        )
        .unwrap();
        writeln!(
            s,
            "    fn vdemu_params_{}(sizes: *mut u32, kinds: *mut u32, cap: i32) -> i32;",
            k.name
        )
        .unwrap();
    }
    writeln!(s, "}}\n").unwrap();

    // ptxas table
    writeln!(
        s,
        "/// One kernel's resources on one target, as ptxas reported them at build time."
    )
    .unwrap();
    writeln!(s, "#[derive(Clone, Copy, Debug)]").unwrap();
    writeln!(s, "pub struct PtxasInfo {{").unwrap();
    writeln!(
        s,
        "    pub kernel: Kernel,\n    /// `sm_80` or `sm_90`\n    pub sm: &'static str,"
    )
    .unwrap();
    writeln!(s, "    pub registers: u32,\n    /// Static shared memory per block.\n    pub shared_bytes: u32,").unwrap();
    writeln!(s, "    pub spill_store_bytes: u32,\n    pub spill_load_bytes: u32,\n    pub stack_bytes: u32,\n}}\n").unwrap();
    writeln!(s, "/// Empty when ptxas was not found at build time.").unwrap();
    writeln!(s, "pub const PTXAS: &[PtxasInfo] = &[").unwrap();
    for k in kernels {
        for (_, sm) in ARCHS {
            if let Some(i) = ptxas.get(&(k.name.clone(), sm)) {
                writeln!(
                    s,
                    "    PtxasInfo {{ kernel: Kernel::{}, sm: {sm:?}, registers: {}, shared_bytes: {}, \
                     spill_store_bytes: {}, spill_load_bytes: {}, stack_bytes: {} }},",
                    variant_name(&k.name),
                    i.registers,
                    i.shared_bytes,
                    i.spill_store_bytes,
                    i.spill_load_bytes,
                    i.stack_bytes
                )
                .unwrap();
            }
        }
    }
    writeln!(s, "];").unwrap();
    s
}

// ---------------------------------------------------------------- emulation

/// The static library `voxdiff_emu`: the runtime plus one translation unit per
/// family (the family's `.cu` as C++17, then one thunk per entry point).
fn build_emulation(
    manifest: &Path,
    out_dir: &Path,
    families: &[(String, PathBuf)],
    kernels: &[KernelDecl],
) {
    assert!(
        std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64"),
        "the CUDA emulation's fiber switch is written for x86-64"
    );
    let kernels_dir = manifest.join("kernels");
    let gen_dir = out_dir.join("emu");
    std::fs::create_dir_all(&gen_dir).unwrap();
    let mut base = cc::Build::new();
    base.cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(&kernels_dir)
        .include(kernels_dir.join("emu"))
        .flag_if_supported("-fno-strict-aliasing")
        .flag_if_supported("-ftls-model=initial-exec")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-function")
        .flag_if_supported("-Wno-unknown-pragmas")
        // Probe every page of a large stack frame, so a fiber's stack overflow
        // always hits its guard page instead of jumping over it.
        .flag_if_supported("-fstack-clash-protection")
        .warnings(true);
    let mut files = vec![
        kernels_dir.join("emu/runtime.cpp"),
        kernels_dir.join("emu/warp.cpp"),
    ];
    for (family, path) in families {
        let mut tu = String::new();
        writeln!(
            tu,
            "// Generated by build.rs: kernels/{family}.cu for the CPU emulation."
        )
        .unwrap();
        writeln!(tu, "#include {:?}", path.display().to_string()).unwrap();
        for k in kernels.iter().filter(|k| &k.family == family) {
            writeln!(
                tu,
                "extern \"C\" void vdemu_call_{n}(void** args) {{ vd_emu::invoke(&{n}, args); }}",
                n = k.name
            )
            .unwrap();
            writeln!(
                tu,
                "extern \"C\" int vdemu_params_{n}(unsigned* sizes, unsigned* kinds, int cap) \
                 {{ return vd_emu::param_layout(&{n}, sizes, kinds, cap); }}",
                n = k.name
            )
            .unwrap();
        }
        let file = gen_dir.join(format!("{family}.emu.cpp"));
        std::fs::write(&file, tu).unwrap();
        files.push(file);
    }
    // One compiler per translation unit, NUM_JOBS at a time (cc alone compiles
    // them one after another), then one archive.
    let jobs: usize = std::env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2)
        .max(1);
    let mut objects = Vec::new();
    for batch in files.chunks(jobs) {
        let outs: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|f| {
                    let mut b = base.clone();
                    b.file(f);
                    s.spawn(move || b.compile_intermediates())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        objects.extend(outs.into_iter().flatten());
    }
    let mut archive = base.clone();
    archive.objects(&objects);
    archive.compile("voxdiff_emu");
}
