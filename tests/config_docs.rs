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
