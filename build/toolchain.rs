//! Build-time CUDA toolchain: finding it, NVRTC (dlopened through `libloading`:
//! the library lives in the project's toolchain folder, not on the system
//! search path, and a build without it must still succeed), and ptxas.

use super::{PtxasInfo, ARCHS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Toolchain {
    pub lib_dir: PathBuf,
    pub include_dir: PathBuf,
    pub ptxas: Option<PathBuf>,
}

/// `$VOXDIFF_CUDA_ROOT` when set (authoritative: a root without NVRTC means a
/// build without NVRTC), else the project's `.toolchain/cuda/nvidia/cu13`.
pub fn find_toolchain(manifest: &Path) -> Option<Toolchain> {
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

pub fn tool_version(tool: &Path) -> String {
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
pub struct Nvrtc {
    _builtins: Option<libloading::Library>,
    lib: libloading::Library,
}

type NvrtcProgram = *mut std::ffi::c_void;

impl Nvrtc {
    pub fn load(lib_dir: &Path) -> Nvrtc {
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

    pub fn version(&self) -> String {
        let f: libloading::Symbol<unsafe extern "C" fn(*mut i32, *mut i32) -> i32> =
            unsafe { self.lib.get(b"nvrtcVersion\0") }.unwrap();
        let (mut major, mut minor) = (0, 0);
        unsafe { f(&mut major, &mut minor) };
        format!("{major}.{minor}")
    }

    /// Compiles `src` (named `name`) with `options`; Ok((PTX, CUBIN)) or
    /// Err(log). The CUBIN is empty unless `--gpu-architecture` names a real
    /// architecture (`sm_XY`), for which NVRTC emits both.
    fn compile(
        &self,
        src: &str,
        name: &str,
        options: &[String],
    ) -> Result<(String, Vec<u8>), String> {
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
            let cubin_size: libloading::Symbol<Size> =
                self.lib.get(b"nvrtcGetCUBINSize\0").unwrap();
            let get_cubin: libloading::Symbol<Get> = self.lib.get(b"nvrtcGetCUBIN\0").unwrap();
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
                let ptx = String::from_utf8_lossy(&ptx[..n.saturating_sub(1)]).into_owned();
                let mut n = 0usize;
                cubin_size(prog, &mut n);
                let mut cubin = vec![0u8; n];
                if n > 0 {
                    get_cubin(prog, cubin.as_mut_ptr() as *mut c_char);
                }
                Ok((ptx, cubin))
            };
            destroy(&mut prog);
            result
        }
    }
}

/// NVRTC options shared by the build and the run-time fallback (`src/backend/gpu/cuda.rs`).
pub fn nvrtc_options(arch: &str, include_dirs: &[&Path]) -> Vec<String> {
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

/// Compiles every family for every entry of `ARCHS`: `{family}.{compute}.ptx`
/// and `{family}.{sm}.cubin` in `ptx_dir`.
pub fn compile_all_ptx(
    nvrtc: &Nvrtc,
    tc: &Toolchain,
    kernels_dir: &Path,
    families: &[(String, PathBuf)],
    ptx_dir: &Path,
) {
    let jobs: Vec<(&String, &PathBuf, &str, &str)> = families
        .iter()
        .flat_map(|(f, p)| ARCHS.iter().map(move |(arch, sm)| (f, p, *arch, *sm)))
        .collect();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|&(family, path, arch, sm)| {
                s.spawn(move || {
                    let src = std::fs::read_to_string(path).unwrap();
                    // The real architecture: NVRTC emits the PTX (`.target sm_XY`,
                    // the same as for compute_XY) and the CUBIN in one compile.
                    let opts = nvrtc_options(sm, &[kernels_dir, &tc.include_dir]);
                    let name = format!("{family}.cu");
                    match nvrtc.compile(&src, &name, &opts) {
                        Ok((_, cubin)) if cubin.is_empty() => Some(format!(
                            "NVRTC produced no CUBIN for kernels/{family}.cu ({sm})"
                        )),
                        Ok((ptx, cubin)) => {
                            std::fs::write(ptx_dir.join(format!("{family}.{arch}.ptx")), ptx)
                                .unwrap();
                            std::fs::write(ptx_dir.join(format!("{family}.{sm}.cubin")), cubin)
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
pub fn run_ptxas_all(
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
                    // Only the report is used; the embedded CUBIN is NVRTC's.
                    let cubin = ptx_dir.join(format!("{family}.{sm}.ptxas.cubin"));
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
