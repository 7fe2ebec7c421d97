//! The configuration reference in docs/training.md is real: its TOML parses
//! into a valid configuration, and the defaults it states are the code's.

use voxdiff::pipeline::seg_config::SegConfig;

fn doc_toml() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/training.md")).unwrap();
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
}

#[test]
fn the_documented_configuration_parses() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config_docs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("doc.toml");
    std::fs::write(&path, doc_toml()).unwrap();
    let cfg = SegConfig::load(Some(&path), &[]).unwrap();
    // Relative data paths resolve against the config's folder.
    assert_eq!(cfg.data.images, vec![dir.join("ct.nii.gz")]);
    assert_eq!(cfg.infer.patch, Some([64, 64, 64]));
}

#[test]
fn the_documented_defaults_are_the_code_defaults() {
    let d = SegConfig::default();
    let doc: toml::Table = toml::from_str(&doc_toml()).unwrap();
    // Every section the doc shows, except the example-specific data and
    // inference choices, states the defaults.
    for section in ["model", "diffusion", "train"] {
        let shown: toml::Value = doc[section].clone();
        let code: toml::Value = toml::Value::try_from(&d).unwrap()[section].clone();
        same(&shown, &code, section);
    }
}

/// Equal TOML values, floats to f32 precision (some fields are f32 in code).
fn same(a: &toml::Value, b: &toml::Value, at: &str) {
    use toml::Value::*;
    match (a, b) {
        (Table(x), Table(y)) => {
            let kx: Vec<_> = x.keys().collect();
            let ky: Vec<_> = y.keys().collect();
            assert_eq!(
                kx, ky,
                "docs/training.md [{at}]: fields differ from the code's"
            );
            for k in x.keys() {
                same(&x[k], &y[k], &format!("{at}.{k}"));
            }
        }
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                same(p, q, &format!("{at}[{i}]"));
            }
        }
        (Float(_) | Integer(_), Float(_) | Integer(_)) => {
            let f = |v: &toml::Value| v.as_float().or(v.as_integer().map(|i| i as f64)).unwrap();
            let (p, q) = (f(a), f(b));
            assert!(
                (p - q).abs() <= 1e-6 * p.abs().max(q.abs()),
                "docs/training.md {at}: {p} vs default {q}"
            );
        }
        _ => assert_eq!(a, b, "docs/training.md {at}"),
    }
}

/// A section that gives some keys takes the others from the system's own
/// defaults, not from the section type's: a SegDiff file that sets only the
/// steps keeps SegDiff's learning-rate schedule and checkpoint interval.
#[test]
fn keys_a_section_leaves_out_take_the_systems_defaults() {
    use voxdiff::pipeline::segdiff_config::SegDiffConfig;
    use voxdiff::pipeline::train_loop::TrainConfig;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("config_defaults");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("segdiff.toml");
    std::fs::write(&path, "system = \"segdiff\"\n[train]\nsteps = 3\n").unwrap();
    let cfg = SegDiffConfig::load(Some(&path), &[]).unwrap();
    let system = SegDiffConfig::default().train;
    // The premise: the system's defaults are not the generic ones.
    assert_ne!(system.lr, TrainConfig::default().lr);
    assert_ne!(
        system.checkpoint_every,
        TrainConfig::default().checkpoint_every
    );
    assert_eq!(cfg.train.steps, 3);
    assert_eq!(cfg.train.lr, system.lr);
    assert_eq!(cfg.train.checkpoint_every, system.checkpoint_every);
    // The same through --set on the defaults.
    let cfg = SegDiffConfig::load(None, &["train.steps=3".to_string()]).unwrap();
    assert_eq!((cfg.train.steps, cfg.train.lr), (3, system.lr));
}
