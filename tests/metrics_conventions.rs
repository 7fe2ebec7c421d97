//! Metric conventions: the exact EDT against brute force, anisotropic
//! surface scores against the reference library, the ImgX voxel-counting
//! option, and the NaN rules for empty masks.

use voxdiff::metrics::edt::{squared_edt, squared_edt_brute};
use voxdiff::metrics::summary::Stat;
use voxdiff::metrics::surfel::SurfelTable;
use voxdiff::metrics::{class_metrics, MetricOptions, SurfaceConvention};

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn edt_is_exact_under_anisotropic_spacing() {
    let mut r = Lcg(3);
    for (dims, sp, density) in [
        ([7, 9, 11], [2.5, 0.8, 1.2], 0.03),
        ([1, 13, 5], [1.0, 3.0, 0.7], 0.1),
        ([6, 1, 8], [0.5, 1.0, 4.0], 0.2),
        ([5, 6, 7], [1.0, 1.0, 1.0], 0.002),
    ] {
        let n: usize = dims.iter().product();
        let mut f: Vec<bool> = (0..n).map(|_| r.next() < density).collect();
        f[n / 2] = true;
        let fast = squared_edt(&f, dims, sp);
        let slow = squared_edt_brute(&f, dims, sp);
        for i in 0..n {
            assert!(
                (fast[i] - slow[i]).abs() <= 1e-9 * slow[i].max(1.0),
                "{dims:?} voxel {i}: {} vs {}",
                fast[i],
                slow[i]
            );
        }
    }
    // No feature: +∞ everywhere.
    assert!(squared_edt(&[false; 8], [2, 2, 2], [1.0; 3])
        .iter()
        .all(|v| v.is_infinite()));
}

#[test]
fn surfel_table_symmetries() {
    let t = SurfelTable::get();
    let a = t.areas([1.0, 1.0, 1.0]);
    assert_eq!(a[0], 0.0);
    assert_eq!(a[255], 0.0);
    for c in 0..256 {
        assert!(
            (a[c] - a[255 - c]).abs() < 1e-12,
            "code {c} vs its complement"
        );
    }
    // One corner cut off: the triangle of three edge midpoints, √3/8.
    assert!((a[1] - 3f64.sqrt() / 8.0).abs() < 1e-12);
    // Two corners along an edge: a rectangle 1 × √2/2.
    assert!((a[3] - 0.5f64.sqrt()).abs() < 1e-12);
    // Four corners of a face: the unit square at mid-height.
    assert!((a[0b1111_0000] - 1.0).abs() < 1e-12);
    // Spacing scales a face-parallel square by the two other spacings.
    let s = t.areas([2.0, 3.0, 5.0]);
    assert!((s[0b1111_0000] - 15.0).abs() < 1e-12, "{}", s[0b1111_0000]);
}

/// The masks behind the reference values below: two ellipsoids and a
/// stray blob on a 20×24×18 grid.
fn masks() -> (Vec<bool>, Vec<bool>) {
    let (d, h, w) = (20, 24, 18);
    let mut g = Vec::new();
    let mut p = Vec::new();
    for z in 0..d {
        for y in 0..h {
            for x in 0..w {
                let (z, y, x) = (z as f64, y as f64, x as f64);
                g.push(
                    ((z - 10.0) / 6.0).powi(2)
                        + ((y - 12.0) / 8.0).powi(2)
                        + ((x - 9.0) / 5.0).powi(2)
                        <= 1.0,
                );
                p.push(
                    ((z - 9.5) / 5.5).powi(2)
                        + ((y - 13.0) / 8.5).powi(2)
                        + ((x - 8.0) / 5.5).powi(2)
                        <= 1.0
                        || ((z - 3.0) / 1.5).powi(2)
                            + ((y - 4.0) / 2.0).powi(2)
                            + ((x - 14.0) / 1.5).powi(2)
                            <= 1.0,
                );
            }
        }
    }
    (g, p)
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn anisotropic_scores_match_the_reference_library() {
    // Expected values computed with DeepMind's surface-distance 0.1
    // (compute_surface_distances with spacing (2.5, 0.8, 1.2), then
    // compute_surface_dice_at_tolerance, compute_robust_hausdorff(95 / 100),
    // the mean of compute_average_surface_distance) and
    // scipy.ndimage.center_of_mass × spacing, on the same masks.
    let (g, p) = masks();
    let opt = MetricOptions {
        tolerances_mm: vec![1.0, 2.0],
        convention: SurfaceConvention::DeepMind,
    };
    let m = class_metrics(&g, &p, [20, 24, 18], [2.5, 0.8, 1.2], &opt);
    assert_eq!((m.gt_voxels, m.pred_voxels), (983, 1089));
    close(m.dice, 0.803088803088803, "dice");
    close(m.nsd[0], 0.6656611240751383, "nsd 1 mm");
    close(m.nsd[1], 0.925780859878451, "nsd 2 mm");
    close(m.hd95, 4.996999099459595, "hd95");
    close(m.hd100, 9.761659694949419, "hd100");
    close(m.assd, 0.8101278191629613, "assd");
    close(m.centroid_mm, 2.00181919479257, "centroid");
    let sd = voxdiff::metrics::surface_distances(
        &g,
        &p,
        [20, 24, 18],
        [2.5, 0.8, 1.2],
        SurfaceConvention::DeepMind,
    );
    close(
        sd.gt_to_pred.iter().map(|x| x.1).sum(),
        1050.4354981703777,
        "gt surface area",
    );
    close(
        sd.pred_to_gt.iter().map(|x| x.1).sum(),
        1148.6144559293114,
        "pred surface area",
    );
}

#[test]
fn voxel_counting_option_follows_imgx() {
    // Expected values from ImgX-DiffSeg's formulas on the same masks:
    // edges = mask XOR binary_erosion(mask); distances by
    // scipy.ndimage.distance_transform_edt(sampling = spacing); HD95 = max of
    // the two np.percentile(·, 95); ASSD = max of the two means; NSD counts.
    let (g, p) = masks();
    let opt = MetricOptions {
        tolerances_mm: vec![1.0],
        convention: SurfaceConvention::VoxelCount,
    };
    let m = class_metrics(&g, &p, [20, 24, 18], [2.5, 0.8, 1.2], &opt);
    close(m.hd95, 2.5134199576606164, "hd95");
    close(m.assd, 1.2301261120474951, "assd");
    close(m.nsd[0], 0.5089058524173028, "nsd");
    close(m.hd100, 9.761659694949419, "hd100");
}

#[test]
fn empty_masks_follow_the_nan_rules() {
    let dims = [4, 4, 4];
    let empty = vec![false; 64];
    let mut one = vec![false; 64];
    one[21] = true;
    let opt = MetricOptions::default();
    let both = class_metrics(&empty, &empty, dims, [1.0; 3], &opt);
    assert!(both.dice.is_nan() && both.iou.is_nan() && both.nsd.iter().all(|v| v.is_nan()));
    assert!(both.hd95.is_nan() && both.assd.is_nan() && both.centroid_mm.is_nan());
    for (g, p) in [(&empty, &one), (&one, &empty)] {
        let m = class_metrics(g, p, dims, [1.0; 3], &opt);
        assert_eq!((m.dice, m.iou), (0.0, 0.0));
        assert!(m.nsd.iter().all(|&v| v == 0.0));
        assert!(m.hd95.is_nan() && m.hd100.is_nan() && m.assd.is_nan() && m.centroid_mm.is_nan());
    }
    let same = class_metrics(&one, &one, dims, [1.0; 3], &opt);
    assert_eq!(
        (
            same.dice,
            same.iou,
            same.hd95,
            same.hd100,
            same.assd,
            same.centroid_mm
        ),
        (1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    );
    assert!(same.nsd.iter().all(|&v| v == 1.0));
    // Summaries skip NaN and count.
    let s = Stat::of(&[0.5, f64::NAN, 1.0, f64::NAN]);
    assert_eq!((s.mean, s.sd, s.n, s.skipped), (0.75, 0.25, 2, 2));
    let none = Stat::of(&[f64::NAN]);
    assert!(none.mean.is_nan() && none.n == 0 && none.skipped == 1);
}
