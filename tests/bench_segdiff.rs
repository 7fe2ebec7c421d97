//! `voxdiff bench --suite segdiff` at a tiny size: its cases run, and each
//! FLOP figure is the one its docs state from the network's counted
//! multiply-adds (the attention cores: from their heads, tokens and width).

use voxdiff::backend::cpu::CpuBackend;
use voxdiff::model::SegDiffNet;
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::pipeline::bench_segdiff::{attention_levels, net_config, run};

#[test]
fn the_segdiff_suite_runs_and_charges_the_counted_flops() {
    let cpu = CpuBackend::new();
    let r = run(&cpu, "cpu", 12, 2, true, 1).unwrap();
    let levels = attention_levels(&net_config("cpu").unwrap(), 12);
    // The cpu network attends at factor 4: 3 × 3 tokens, 2 heads of 32.
    assert_eq!(levels, vec![(9, 2, 32)]);
    assert_eq!(r.len(), 3 + 4 * levels.len());
    let mut ps = ParamStore::new(0);
    let net = SegDiffNet::new(
        &mut ParamBuilder::new(&mut ps, &cpu),
        net_config("cpu").unwrap(),
    )
    .unwrap();
    let m = net.macs(12, 12);
    let (g, d) = (m.condition as f64, m.denoise as f64);
    assert_eq!(r[0].flops, 2.0 * (3.0 * (g + d) - m.no_data_grad as f64));
    assert_eq!(r[1].flops, 2.0 * 2.0 * d);
    assert_eq!(r[2].flops, 2.0 * 2.0 * (g + 100.0 * d));
    for (i, &(t, h, w)) in levels.iter().enumerate() {
        let fwd = (4 * h * t * t * w) as f64;
        let cases = &r[3 + 4 * i..][..4];
        for (j, c) in cases.iter().enumerate() {
            assert!(
                c.name.contains(if j < 2 { "fused" } else { "composed" }),
                "{c:?}"
            );
            assert_eq!(c.flops, if j % 2 == 0 { fwd } else { 3.0 * fwd }, "{c:?}");
        }
    }
    for c in &r {
        assert!(c.median_ms > 0.0 && c.min_ms <= c.median_ms, "{c:?}");
    }
    assert!(run(&cpu, "gpu-sized", 12, 2, false, 1).is_err());
}
