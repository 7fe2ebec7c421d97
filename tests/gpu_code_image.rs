//! The Cuda device's choice of compiled code (src/backend/gpu/code_image.rs)
//! as a pure function of the device's compute capability, the driver version
//! and what the build embedded: no GPU needed.

use voxdiff::backend::gpu::code_image::{parse_arch, plan, CodeImage, Embedded};
use voxdiff::backend::gpu::registry::{CUBIN_ARCHS, NVRTC_AT_BUILD, PTX_ARCHS};

fn full() -> Embedded {
    Embedded {
        cubins: vec![(8, 0), (9, 0)],
        ptx: vec![(8, 0), (9, 0)],
        nvrtc: Some((13, 0)),
    }
}

#[test]
fn a_current_driver_loads_the_cubin_of_the_device_arch_then_ptx() {
    use CodeImage::*;
    for (device, cubin, ptx) in [
        ((8, 0), 0, 0),
        ((8, 6), 0, 0), // sm_80 SASS runs on every 8.x
        ((8, 9), 0, 0),
        ((9, 0), 1, 1),
    ] {
        let p = plan(device, 13000, &full());
        assert_eq!(
            p.tries,
            [Cubin(cubin), Ptx(ptx), RuntimeNvrtc],
            "{device:?}"
        );
        assert!(p.refused.is_empty(), "{device:?}: {:?}", p.refused);
    }
    // A newer driver changes nothing.
    let p = plan((9, 0), 13020, &full());
    assert_eq!(p.tries, [Cubin(1), Ptx(1), RuntimeNvrtc]);
}

#[test]
fn a_newer_major_arch_gets_ptx_and_the_reason_no_cubin_runs() {
    for device in [(10, 0), (12, 0)] {
        let p = plan(device, 13000, &full());
        assert_eq!(p.tries, [CodeImage::Ptx(1), CodeImage::RuntimeNvrtc]);
        assert_eq!(p.refused.len(), 1);
        let why = &p.refused[0];
        assert!(
            why.contains("no CUBIN runs on sm_") && why.contains("sm_80, sm_90"),
            "{why}"
        );
    }
}

#[test]
fn a_driver_older_than_the_build_falls_to_run_time_nvrtc_with_both_reasons() {
    let p = plan((8, 6), 12040, &full());
    assert_eq!(p.tries, [CodeImage::RuntimeNvrtc]);
    assert_eq!(p.refused.len(), 2, "{:?}", p.refused);
    assert!(
        p.refused[0].contains("CUBIN") && p.refused[0].contains("CUDA 12.4"),
        "{:?}",
        p.refused
    );
    assert!(
        p.refused[1].contains("PTX") && p.refused[1].contains("CUDA 13.0 driver"),
        "{:?}",
        p.refused
    );
}

#[test]
fn ptx_needs_the_builds_minor_version_but_a_cubin_only_its_major() {
    let emb = Embedded {
        nvrtc: Some((13, 2)),
        ..full()
    };
    let p = plan((9, 0), 13000, &emb);
    assert_eq!(p.tries, [CodeImage::Cubin(1), CodeImage::RuntimeNvrtc]);
    assert!(p.refused[0].contains("CUDA 13.2 driver"), "{:?}", p.refused);
}

#[test]
fn a_build_without_nvrtc_compiles_at_run_time() {
    let emb = Embedded {
        cubins: vec![],
        ptx: vec![],
        nvrtc: None,
    };
    let p = plan((9, 0), 13000, &emb);
    assert_eq!(p.tries, [CodeImage::RuntimeNvrtc]);
    assert!(p.refused[0].contains("no NVRTC"), "{:?}", p.refused);
}

#[test]
fn what_this_binary_embeds() {
    assert_eq!(parse_arch("sm_86"), Some((8, 6)));
    assert_eq!(parse_arch("compute_90"), Some((9, 0)));
    assert_eq!(parse_arch("sm_100"), Some((10, 0)));
    let emb = Embedded::built();
    match NVRTC_AT_BUILD {
        Some(_) => {
            assert_eq!(emb.cubins.len(), CUBIN_ARCHS.len());
            assert_eq!(emb.ptx.len(), PTX_ARCHS.len());
            assert_eq!(emb.cubins, [(8, 0), (9, 0)]);
        }
        None => assert!(emb.cubins.is_empty() && emb.ptx.is_empty() && emb.nvrtc.is_none()),
    }
}
