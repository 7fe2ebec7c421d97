//! The build's CUDA products: with `VOXDIFF_REQUIRE_NVRTC=1` (the test script
//! sets it after installing the toolchain) every kernel must have been compiled
//! by NVRTC for compute_80 and compute_90, and ptxas must report every kernel on
//! sm_80 and sm_90 without a single spilled byte. Without that variable and
//! without a toolchain the test says so and checks only what was built.

use voxdiff::backend::gpu::registry::{
    ptxas_info, Family, Kernel, NVRTC_AT_BUILD, PTXAS, PTXAS_AT_BUILD, PTX_ARCHS,
};

fn required() -> bool {
    std::env::var("VOXDIFF_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

#[test]
fn every_kernel_is_compiled_for_both_targets() {
    let Some(version) = NVRTC_AT_BUILD else {
        assert!(
            !required(),
            "VOXDIFF_REQUIRE_NVRTC=1 but the build found no NVRTC (run scripts/install-cuda-toolchain.sh \
             or set VOXDIFF_CUDA_ROOT, then rebuild)"
        );
        eprintln!("SKIPPED: built without NVRTC, no PTX to check (set VOXDIFF_REQUIRE_NVRTC=1 to require it)");
        return;
    };
    eprintln!("PTX compiled by NVRTC {version}");
    assert_eq!(PTX_ARCHS, ["compute_80", "compute_90"]);
    for &family in Family::ALL {
        for (i, arch) in PTX_ARCHS.iter().enumerate() {
            let ptx = family
                .ptx(i)
                .unwrap_or_else(|| panic!("kernels/{}.cu has no {arch} PTX", family.name()));
            let sm = arch.replace("compute_", "sm_");
            assert!(
                ptx.contains(&format!(".target {sm}")),
                "{}: {arch} PTX targets {sm}",
                family.name()
            );
            // PTX ISA 9.0 is what a CUDA 13.0 driver loads; a newer NVRTC would
            // emit PTX older drivers reject.
            let version = ptx
                .lines()
                .find_map(|l| l.trim().strip_prefix(".version "))
                .expect("a .version line");
            let (major, minor) = version.trim().split_once('.').expect("major.minor");
            let v = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
            assert!(
                v <= (9, 0),
                "{}: PTX ISA {version} needs a driver newer than CUDA 13.0",
                family.name()
            );
        }
    }
    for &k in Kernel::ALL {
        for i in 0..PTX_ARCHS.len() {
            let ptx = k.family().ptx(i).unwrap();
            assert!(
                ptx.contains(&format!(".entry {}(", k.name())),
                "{} is missing from the {} PTX",
                k.name(),
                PTX_ARCHS[i]
            );
        }
    }
}

#[test]
fn ptxas_reports_no_spills() {
    if PTXAS_AT_BUILD.is_none() {
        assert!(
            !required(),
            "VOXDIFF_REQUIRE_NVRTC=1 but ptxas did not run at build time"
        );
        eprintln!("SKIPPED: ptxas was not found at build time, no resource report to check");
        return;
    }
    let mut spills = Vec::new();
    for &k in Kernel::ALL {
        for sm in ["sm_80", "sm_90"] {
            let info = ptxas_info(k, sm)
                .unwrap_or_else(|| panic!("no ptxas report for {} on {sm}", k.name()));
            assert!(
                info.registers > 0 && info.registers <= 255,
                "{} on {sm}: {} registers",
                k.name(),
                info.registers
            );
            if info.spill_store_bytes > 0 || info.spill_load_bytes > 0 {
                spills.push(format!(
                    "{} on {sm}: {} bytes spill stores, {} bytes spill loads",
                    k.name(),
                    info.spill_store_bytes,
                    info.spill_load_bytes
                ));
            }
        }
    }
    assert_eq!(PTXAS.len(), 2 * Kernel::ALL.len());
    assert!(spills.is_empty(), "register spills:\n{}", spills.join("\n"));
}

#[test]
fn registry_names_follow_the_convention() {
    let mut seen = std::collections::HashSet::new();
    for &k in Kernel::ALL {
        let prefix = format!("vd_{}_", k.family().name());
        assert!(
            k.name().starts_with(&prefix),
            "{} is not {prefix}<op>",
            k.name()
        );
        assert!(seen.insert(k.name()), "{} twice", k.name());
        assert_eq!(k.c_name().to_str().unwrap(), k.name());
        assert_eq!(Kernel::ALL[k.index()], k);
        assert!(k.family().source().contains(k.name()));
    }
}

/// The ELF header fields of a CUDA image: (64-bit, e_machine, SM version).
/// CUDA ELF ABI version 8 (CUDA 13) keeps the SM in bits 8..15 of e_flags,
/// earlier ABIs in bits 0..7.
fn cubin_header(image: &[u8]) -> (bool, u16, u32) {
    assert!(
        image.len() > 64 && &image[..4] == b"\x7fELF",
        "not an ELF image"
    );
    let machine = u16::from_le_bytes([image[18], image[19]]);
    let flags = u32::from_le_bytes(image[48..52].try_into().unwrap());
    let sm = if image[8] >= 8 {
        (flags >> 8) & 0xFF
    } else {
        flags & 0xFF
    };
    (image[4] == 2, machine, sm)
}

#[test]
fn every_family_embeds_a_cubin_per_real_arch() {
    use voxdiff::backend::gpu::registry::CUBIN_ARCHS;
    if NVRTC_AT_BUILD.is_none() {
        assert!(
            !required(),
            "VOXDIFF_REQUIRE_NVRTC=1 but the build found no NVRTC"
        );
        eprintln!("SKIPPED: built without NVRTC, no CUBIN to check");
        return;
    }
    assert_eq!(CUBIN_ARCHS, ["sm_80", "sm_90"]);
    for &family in Family::ALL {
        for (i, arch) in CUBIN_ARCHS.iter().enumerate() {
            let image = family
                .cubin(i)
                .unwrap_or_else(|| panic!("kernels/{}.cu has no {arch} CUBIN", family.name()));
            let (elf64, machine, sm) = cubin_header(image);
            assert!(elf64, "{} {arch}: not a 64-bit ELF", family.name());
            assert_eq!(
                machine,
                190,
                "{} {arch}: e_machine is not EM_CUDA",
                family.name()
            );
            assert_eq!(
                format!("sm_{sm}"),
                *arch,
                "{}: the {arch} CUBIN is for another SM",
                family.name()
            );
            for k in Kernel::ALL.iter().filter(|k| k.family() == family) {
                let section = format!(".text.{}\0", k.name());
                assert!(
                    image
                        .windows(section.len())
                        .any(|w| w == section.as_bytes()),
                    "{} is missing from the {arch} CUBIN",
                    k.name()
                );
            }
        }
    }
}
