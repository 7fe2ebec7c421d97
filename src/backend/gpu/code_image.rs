//! Which compiled form of a kernel family the Cuda device loads.
//!
//! The build embeds, per family, a CUBIN (SASS, an ELF image) for each of
//! [`CUBIN_ARCHS`] and PTX for each of [`PTX_ARCHS`], both from NVRTC, plus the
//! source. At load the device tries, in order:
//!
//! 1. the CUBIN for the device's architecture: SASS for sm_XY runs on sm_XZ
//!    with Z ≥ Y (same major), so sm_80 serves sm_80..sm_89 and sm_90 serves
//!    sm_90. No JIT, nothing to compile at start-up. A CUBIN from NVRTC
//!    `M.m` needs a driver of CUDA `M.0` or newer (minor-version compatibility);
//! 2. the PTX of the newest target not above the device, JIT-compiled by the
//!    driver: needs a driver at least as new as the NVRTC that wrote it (PTX
//!    ISA 9.0 from NVRTC 13.0 needs a CUDA 13.0 driver);
//! 3. the embedded source, compiled at run time by the machine's NVRTC for the
//!    device's exact compute capability (an older driver usually comes with
//!    an NVRTC of its own age).
//!
//! [`plan`] is the pure part of that choice: from the device, the driver and
//! what the build embedded it gives the images worth trying, in order, and the
//! reason each one left out was refused. The loader (`cuda.rs`) tries them and
//! adds the reason any of them failed to load.

use super::registry::{CUBIN_ARCHS, NVRTC_AT_BUILD, PTX_ARCHS};

/// One compiled form of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeImage {
    /// The embedded CUBIN of `CUBIN_ARCHS[i]`.
    Cubin(usize),
    /// The embedded PTX of `PTX_ARCHS[i]`.
    Ptx(usize),
    /// The embedded source compiled by the machine's NVRTC at run time.
    RuntimeNvrtc,
}

/// What the build embedded: the CUBIN and PTX targets as compute capabilities
/// (`sm_80` → (8, 0)) and the NVRTC version that produced them (None: sources only).
#[derive(Clone, Debug)]
pub struct Embedded {
    pub cubins: Vec<(u32, u32)>,
    pub ptx: Vec<(u32, u32)>,
    pub nvrtc: Option<(u32, u32)>,
}

/// `"sm_86"` / `"compute_90"` → (8, 6) / (9, 0).
pub fn parse_arch(name: &str) -> Option<(u32, u32)> {
    let digits = name.rsplit('_').next()?;
    let v: u32 = digits.parse().ok()?;
    (v >= 10).then_some((v / 10, v % 10))
}

/// "13.0" → (13, 0).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

impl Embedded {
    /// What this binary embeds.
    pub fn built() -> Embedded {
        let nvrtc = NVRTC_AT_BUILD.and_then(parse_version);
        let archs = |names: &[&str]| -> Vec<(u32, u32)> {
            if nvrtc.is_none() {
                return Vec::new();
            }
            names.iter().filter_map(|n| parse_arch(n)).collect()
        };
        Embedded {
            cubins: archs(&CUBIN_ARCHS),
            ptx: archs(&PTX_ARCHS),
            nvrtc,
        }
    }
}

/// A driver version as `cuDriverGetVersion` reports it (13000 → "13.0").
pub fn driver_version_name(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// The images to try, best first, and why each embedded image left out was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub tries: Vec<CodeImage>,
    pub refused: Vec<String>,
}

/// The load order for a device of compute capability `device` under a driver
/// of version `driver` (`cuDriverGetVersion`: 1000·major + 10·minor).
pub fn plan(device: (u32, u32), driver: i32, emb: &Embedded) -> LoadPlan {
    let mut tries = Vec::new();
    let mut refused = Vec::new();
    let sm = |(a, b): (u32, u32)| format!("sm_{a}{b}");
    let dev = sm(device);
    let drv = driver_version_name(driver);
    match emb.nvrtc {
        None => refused.push(
            "the build had no NVRTC: no CUBIN or PTX is embedded, only the sources".to_string(),
        ),
        Some((major, minor)) => {
            // 1. CUBIN: same major, the highest minor not above the device's.
            let cubin = emb
                .cubins
                .iter()
                .enumerate()
                .filter(|(_, &(a, b))| a == device.0 && b <= device.1)
                .max_by_key(|(_, &(_, b))| b);
            match cubin {
                None => refused.push(format!(
                    "no CUBIN runs on {dev} (embedded: {})",
                    emb.cubins
                        .iter()
                        .map(|&a| sm(a))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(_) if driver < (major * 1000) as i32 => refused.push(format!(
                    "the CUBIN from NVRTC {major}.{minor} needs a CUDA {major}.0 driver or newer; \
                     this driver is CUDA {drv}"
                )),
                Some((i, _)) => tries.push(CodeImage::Cubin(i)),
            }
            // 2. PTX: the newest target not above the device.
            let ptx = emb
                .ptx
                .iter()
                .enumerate()
                .filter(|(_, &a)| a <= device)
                .max_by_key(|(_, &a)| a);
            match ptx {
                None => refused.push(format!("no embedded PTX targets {dev} or older")),
                Some(_) if driver < (major * 1000 + minor * 10) as i32 => refused.push(format!(
                    "the PTX from NVRTC {major}.{minor} needs a CUDA {major}.{minor} driver or \
                     newer; this driver is CUDA {drv}"
                )),
                Some((i, _)) => tries.push(CodeImage::Ptx(i)),
            }
        }
    }
    tries.push(CodeImage::RuntimeNvrtc);
    LoadPlan { tries, refused }
}

/// How an image is named in messages and in `voxdiff info`.
pub fn image_name(image: CodeImage) -> String {
    match image {
        CodeImage::Cubin(i) => format!("embedded {} CUBIN", CUBIN_ARCHS[i]),
        CodeImage::Ptx(i) => format!("embedded {} PTX", PTX_ARCHS[i]),
        CodeImage::RuntimeNvrtc => "source compiled by the machine's NVRTC".to_string(),
    }
}
