//! `voxdiff bench --suite segdiff` at a tiny size: its cases run, and each
//! FLOP figure is the one its docs state from the network's counted
//! multiply-adds.

use voxdiff::backend::cpu::CpuBackend;
use voxdiff::model::SegDiffNet;
use voxdiff::nn::{ParamBuilder, ParamStore};
use voxdiff::pipeline::bench_segdiff::{net_config, run};

#[test]
fn the_segdiff_suite_runs_and_charges_the_counted_flops() {
    let cpu = CpuBackend::new();
    let r = run(&cpu, "cpu", 12, 2, true, 1).unwrap();
    assert_eq!(r.len(), 3);
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
    for c in &r {
        assert!(c.median_ms > 0.0 && c.min_ms <= c.median_ms, "{c:?}");
    }
    assert!(run(&cpu, "gpu-sized", 12, 2, false, 1).is_err());
}
