//! Label remapping through a class-map file.
//!
//! A class map turns the ids of a label map (e.g. TotalSegmentator's 117
//! "total" ids) into training classes `1..=K` (0 is background). Three JSON
//! shapes are read:
//!
//! 1. voxdiff's own: `{"classes": [{"name": "spleen", "ids": [1]}, ...],
//!    "unmapped": "background" | "error"}` — class t is entry t−1;
//! 2. an ordered name list plus a name → id (or ids) object, in any keys, e.g.
//!    `{"btcv_index_order": ["spleen", ...], "btcv_name_to_totalseg_total_id":
//!    {"spleen": 1, ...}}` — class t is the t-th name;
//! 3. an id → name object such as MSD's `"labels"`: `{"0": "background",
//!    "1": "liver"}` — the non-zero ids in increasing order become 1..=K; also
//!    found under a `"labels"` key (an MSD dataset.json, the sidecar
//!    `voxdiff segment` writes next to a mask).
//!
//! Source ids not in the map become background unless the map says
//! `"unmapped": "error"` (or [`ClassMap::strict`] is set), in which case the
//! first such voxel is reported with its id and position.

use super::volume::Volume;
use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct ClassMap {
    /// Name of class t at index t − 1.
    pub names: Vec<String>,
    /// Source ids of class t at index t − 1.
    pub source_ids: Vec<Vec<i64>>,
    /// Unlisted source ids are an error instead of background.
    pub strict: bool,
    /// Where it was read from (for messages).
    pub path: Option<PathBuf>,
}

impl ClassMap {
    pub fn num_classes(&self) -> usize {
        self.names.len()
    }

    pub fn read(path: impl AsRef<Path>) -> Result<ClassMap> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read class map", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: class map is not valid JSON", path.display()))?;
        let mut m =
            ClassMap::from_json(&v).with_context(|| format!("{}: class map", path.display()))?;
        m.path = Some(path.to_path_buf());
        Ok(m)
    }

    pub fn from_json(v: &Value) -> Result<ClassMap> {
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("expected a JSON object"))?;
        // An MSD dataset.json, or the sidecar `voxdiff segment` writes: the
        // id → name object sits under "labels".
        if let Some(labels) = obj.get("labels").filter(|l| l.is_object()) {
            return ClassMap::from_json(labels);
        }
        let strict = match obj.get("unmapped").and_then(|u| u.as_str()) {
            None | Some("background") => false,
            Some("error") => true,
            Some(other) => bail!("\"unmapped\" must be \"background\" or \"error\", got {other:?}"),
        };
        let ids_of = |val: &Value, what: &str| -> Result<Vec<i64>> {
            match val {
                Value::Number(n) => Ok(vec![n
                    .as_i64()
                    .ok_or_else(|| anyhow!("{what}: id {n} is not an integer"))?]),
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_i64()
                            .ok_or_else(|| anyhow!("{what}: id {x} is not an integer"))
                    })
                    .collect(),
                other => bail!("{what}: expected an id or a list of ids, got {other}"),
            }
        };
        let (names, source_ids) =
            if let Some(classes) = obj.get("classes").and_then(|c| c.as_array()) {
                let mut names = Vec::new();
                let mut ids = Vec::new();
                for (t, c) in classes.iter().enumerate() {
                    let name = c
                        .get("name")
                        .and_then(|n| n.as_str())
                        .ok_or_else(|| anyhow!("classes[{t}] has no \"name\""))?;
                    let i = c
                        .get("ids")
                        .ok_or_else(|| anyhow!("classes[{t}] ({name}) has no \"ids\""))?;
                    names.push(name.to_string());
                    ids.push(ids_of(i, name)?);
                }
                (names, ids)
            } else if let (Some(order), Some(map)) = (
                obj.values().find_map(|x| {
                    x.as_array()
                        .filter(|a| !a.is_empty() && a.iter().all(|s| s.is_string()))
                }),
                obj.values()
                    .find_map(|x| x.as_object().filter(|o| !o.is_empty())),
            ) {
                let mut names = Vec::new();
                let mut ids = Vec::new();
                for n in order {
                    let name = n.as_str().unwrap();
                    let i = map.get(name).ok_or_else(|| {
                        anyhow!("class {name:?} of the name list has no id in the id map")
                    })?;
                    names.push(name.to_string());
                    ids.push(ids_of(i, name)?);
                }
                (names, ids)
            } else if !obj.is_empty()
                && obj
                    .iter()
                    .all(|(k, x)| k.parse::<i64>().is_ok() && x.is_string())
            {
                let mut by_id: BTreeMap<i64, String> = BTreeMap::new();
                for (k, x) in obj {
                    by_id.insert(k.parse().unwrap(), x.as_str().unwrap().to_string());
                }
                by_id.remove(&0);
                let names = by_id.values().cloned().collect();
                let ids = by_id.keys().map(|&k| vec![k]).collect();
                (names, ids)
            } else {
                bail!(
                    "unrecognised layout: expected {{\"classes\": [...]}}, a name list with a \
                 name → id object, or an id → name object"
                );
            };
        ensure!(!names.is_empty(), "no classes");
        let mut seen = BTreeMap::new();
        for (t, ids) in source_ids.iter().enumerate() {
            ensure!(!ids.is_empty(), "class {:?} lists no source id", names[t]);
            for &id in ids {
                ensure!(
                    id != 0,
                    "class {:?} maps source id 0 (background)",
                    names[t]
                );
                if let Some(prev) = seen.insert(id, t) {
                    bail!(
                        "source id {id} is listed for both {:?} and {:?}",
                        names[prev],
                        names[t]
                    );
                }
            }
        }
        Ok(ClassMap {
            names,
            source_ids,
            strict,
            path: None,
        })
    }

    /// A lookup table from source id to class for ids in `0..=max_id`.
    fn table(&self, max_id: i64) -> Vec<i32> {
        let mut t = vec![-1i32; max_id as usize + 1];
        t[0] = 0;
        for (c, ids) in self.source_ids.iter().enumerate() {
            for &id in ids {
                if id >= 0 && id <= max_id {
                    t[id as usize] = c as i32 + 1;
                }
            }
        }
        t
    }

    /// Remap a label map to classes 0..=K. Non-integer or negative values are
    /// errors; unlisted ids are background, or an error when strict.
    pub fn remap(&self, vol: &Volume) -> Result<Volume> {
        let map_name = self
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the class map".into());
        let mut max_id = 0i64;
        for (i, &v) in vol.data.iter().enumerate() {
            if v.fract() != 0.0 || !v.is_finite() || v < 0.0 {
                let [_, h, w] = vol.dims;
                bail!(
                    "{}: label value {v} at voxel (d,h,w)=({}, {}, {}) is not a non-negative integer class id",
                    vol.name(), i / (h * w), (i / w) % h, i % w
                );
            }
            max_id = max_id.max(v as i64);
        }
        ensure!(
            max_id < 1 << 24,
            "{}: label id {max_id} is too large",
            vol.name()
        );
        let table = self.table(max_id);
        let mut out = Vec::with_capacity(vol.numel());
        for (i, &v) in vol.data.iter().enumerate() {
            let c = table[v as usize];
            if c < 0 {
                if self.strict {
                    let [_, h, w] = vol.dims;
                    bail!(
                        "{}: label id {} at voxel (d,h,w)=({}, {}, {}) is not in class map {}",
                        vol.name(),
                        v,
                        i / (h * w),
                        (i / w) % h,
                        i % w,
                        map_name
                    );
                }
                out.push(0.0);
            } else {
                out.push(c as f32);
            }
        }
        Ok(vol.with_data(out))
    }
}

/// The distinct non-zero integer ids present in a label map, sorted.
pub fn present_ids(vol: &Volume) -> Vec<i64> {
    let mut seen = std::collections::BTreeSet::new();
    for &v in &vol.data {
        if v != 0.0 && v.is_finite() {
            seen.insert(v as i64);
        }
    }
    seen.into_iter().collect()
}
