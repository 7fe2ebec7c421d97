//! What every system's run configuration shares: the TOML file with its
//! relative data paths resolved against the file's folder, `--set
//! section.field=value` overrides (the value is TOML: `--set train.steps=200`,
//! `--set data.spacing=[5.0,5.0,5.0]`, `--set model.kind="unet"`), range
//! checks that name the key, and the command-line arguments of a `train`
//! command ([`RunArgs`]: a new run, or `--resume` from the run folder's own
//! configuration).

use super::run::{self as run_dir, absolute};
use super::train_loop::TrainSummary;
use crate::backend::Backend;
use anyhow::{bail, ensure, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A system's run configuration. Its `Default` is the system's own
/// defaults, which fill whatever a file leaves out ([`load`]).
pub trait RunConfig: Serialize + DeserializeOwned + Default {
    /// What its errors call it ("configuration", "BPR configuration").
    const KIND: &'static str;
    /// The keys of its `[data]` table that hold file or folder paths (a
    /// string or an array of strings).
    const PATH_KEYS: &'static [&'static str];
    /// Check every setting against its range, naming the key.
    fn validate(&self) -> Result<()>;
    /// Every data path with its key, for [`super::run::locate_data`].
    fn data_paths_mut(&mut self) -> Vec<(String, &mut PathBuf)>;
    /// Replace each folder of scans among the data paths by the scans in it
    /// ([`expand_nifti_folders`]), before [`RunConfig::validate`]; systems
    /// whose data is a list of files only keep theirs as given.
    fn expand_folders(&mut self) -> Result<()> {
        Ok(())
    }

    fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// Read `path` (if any), apply `overrides`, validate. Relative data paths in
/// the file resolve against the file's folder, those given in `overrides`
/// against the working directory; both are stored absolute (see
/// [`super::run`]). A key a section leaves out takes the system's default
/// (`C::default()`, [`fill_sections`]), not the section type's own: a
/// SegDiff file with a `[train]` table of two keys keeps SegDiff's
/// learning-rate schedule.
pub fn load<C: RunConfig>(path: Option<&Path>, overrides: &[String]) -> Result<C> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let mut doc: toml::Table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read config", p.display()))?;
            let mut doc: toml::Table =
                toml::from_str(&text).with_context(|| format!("{}: invalid TOML", p.display()))?;
            let folder = p.parent().unwrap_or(Path::new(""));
            resolve_paths(&mut doc, C::PATH_KEYS, &absolute(folder, &cwd));
            doc
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        apply_override(&mut doc, o)?;
    }
    // What is still relative came from the command line.
    resolve_paths(&mut doc, C::PATH_KEYS, &cwd);
    fill_sections::<C>(&mut doc)?;
    let kind = C::KIND;
    let origin = || match (path, overrides.is_empty()) {
        (Some(p), true) => format!("{}: bad {kind}", p.display()),
        (Some(p), false) => format!(
            "{}: bad {kind} (with the command-line settings {})",
            p.display(),
            overrides.join(", ")
        ),
        (None, false) => format!(
            "bad {kind} (the defaults with the command-line settings {})",
            overrides.join(", ")
        ),
        (None, true) => format!("bad default {kind}"),
    };
    let mut cfg: C = toml::Value::Table(doc).try_into().with_context(origin)?;
    cfg.expand_folders().with_context(origin)?;
    cfg.validate().with_context(origin)?;
    Ok(cfg)
}

/// Fill the keys each section (top-level table) of `doc` leaves out with
/// the system's defaults, `C::default()`. Sections `doc` does not have are
/// left out: the deserialiser takes them whole from the same defaults. A
/// key is filled only where the section's type has a default of its own
/// (what the deserialiser would otherwise put there): an optional key the
/// type leaves empty stays empty when left out — a run's saved
/// `config.toml` writes an empty option by leaving it out — and a section
/// whose type requires its keys still requires them. A value that is itself
/// a table inside a section (`train.lr`, `train.adamw`) is one setting:
/// given, it replaces the default whole.
pub fn fill_sections<C: RunConfig>(doc: &mut toml::Table) -> Result<()> {
    let system = match toml::Value::try_from(C::default())
        .context("cannot write the default configuration")?
    {
        toml::Value::Table(t) => t,
        _ => bail!("the default configuration is not a table"),
    };
    for (name, default) in &system {
        let (Some(toml::Value::Table(section)), toml::Value::Table(default)) =
            (doc.get(name), default)
        else {
            continue;
        };
        if default.keys().all(|k| section.contains_key(k)) {
            continue;
        }
        // The section as its type fills it when it is given empty.
        let mut probe = system.clone();
        probe.insert(name.clone(), toml::Value::Table(toml::Table::new()));
        let Ok(typed) = toml::Value::Table(probe).try_into::<C>() else {
            continue;
        };
        let Ok(toml::Value::Table(mut typed)) = toml::Value::try_from(typed) else {
            continue;
        };
        let Some(toml::Value::Table(type_default)) = typed.remove(name) else {
            continue;
        };
        let Some(toml::Value::Table(section)) = doc.get_mut(name) else {
            continue;
        };
        for (key, value) in default {
            if type_default.contains_key(key) && !section.contains_key(key) {
                section.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// `paths` with every folder that holds NIfTI files (`.nii`, `.nii.gz`)
/// replaced by those files, sorted by name; files, and folders without NIfTI
/// files (a DICOM series), stay as they are. `key` names the setting in
/// errors.
pub fn expand_nifti_folders(key: &str, paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut scans: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("{key}: {}: cannot list the folder", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| {
                let name = f.file_name().map(|n| n.to_string_lossy().to_lowercase());
                f.is_file() && name.is_some_and(|n| n.ends_with(".nii") || n.ends_with(".nii.gz"))
            })
            .collect();
        if scans.is_empty() {
            out.push(p.clone());
        } else {
            scans.sort();
            out.extend(scans);
        }
    }
    Ok(out)
}

/// Apply one `path.to.field=value` override to a TOML document.
pub fn apply_override(doc: &mut toml::Table, spec: &str) -> Result<()> {
    let (path, value) = spec
        .split_once('=')
        .with_context(|| format!("--set {spec}: expected section.field=value"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    ensure!(
        keys.iter().all(|k| !k.is_empty()),
        "--set {spec}: empty key in {path:?}"
    );
    // The value is TOML; a bare word that is not valid TOML is taken as a string.
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
    {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(value.trim().to_string()),
    };
    let mut table = doc;
    for k in &keys[..keys.len() - 1] {
        let entry = table
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {spec}: {k} is not a section"),
        };
    }
    table.insert(keys[keys.len() - 1].to_string(), parsed);
    Ok(())
}

/// Make the relative paths under `doc.data.<keys>` absolute against `base`
/// ([`super::run::absolute`]). Values of the wrong type are left for the
/// deserialiser to report.
fn resolve_paths(doc: &mut toml::Table, keys: &[&str], base: &Path) {
    let Some(toml::Value::Table(data)) = doc.get_mut("data") else {
        return;
    };
    let fix = |v: &mut toml::Value| {
        if let toml::Value::String(s) = v {
            *s = absolute(Path::new(s.as_str()), base)
                .to_string_lossy()
                .into_owned();
        }
    };
    for key in keys {
        match data.get_mut(*key) {
            Some(toml::Value::Array(a)) => a.iter_mut().for_each(fix),
            Some(v) => fix(v),
            None => {}
        }
    }
}

/// Range checks: each failed check adds a line naming the key, the range and
/// the value; [`Checks::finish`] reports them all at once.
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    /// Every failed check, one per line, or Ok.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            bail!("{}", self.0.join("\n"))
        }
    }
    pub fn require(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }
    /// A finite number > 0.
    pub fn positive(&mut self, key: &str, v: f64) {
        self.require(v.is_finite() && v > 0.0, || {
            format!("{key} must be a finite number > 0, got {v}")
        });
    }
    /// A finite number ≥ 0.
    pub fn non_negative(&mut self, key: &str, v: f64) {
        self.require(v.is_finite() && v >= 0.0, || {
            format!("{key} must be a finite number ≥ 0, got {v}")
        });
    }
    /// In [0, 1] (`closed`) or [0, 1).
    pub fn fraction(&mut self, key: &str, v: f64, closed: bool) {
        let ok = v >= 0.0 && if closed { v <= 1.0 } else { v < 1.0 };
        self.require(ok, || {
            format!(
                "{key} must be in [0, 1{}, got {v}",
                if closed { "]" } else { ")" }
            )
        });
    }
    /// An integer ≥ `min`.
    pub fn at_least(&mut self, key: &str, v: u64, min: u64) {
        self.require(v >= min, || format!("{key} must be ≥ {min}, got {v}"));
    }
}

/// The arguments every `voxdiff train <system>` command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// TOML configuration (the system's page in docs/); without it, the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any field: --set train.steps=500 --set data.size=64
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run folder (created; must not hold a checkpoint unless --resume).
    #[arg(long)]
    pub run: PathBuf,
    /// Continue the run in --run from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Shortcut for --set train.steps=N.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Shortcut for --set train.max_minutes=M.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// auto, cpu, emu, cuda, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// The configuration of the run: with `--resume`, the run folder's own
    /// (its data found again where it moved); else `--config` or the
    /// defaults. Overrides apply in order: `shortcuts` (a command's own
    /// `--set` shortcuts), `--steps`, `--minutes`, then every `--set`.
    pub fn config<C: RunConfig>(&self, shortcuts: &[String]) -> Result<C> {
        let mut overrides = shortcuts.to_vec();
        if let Some(s) = self.steps {
            overrides.push(format!("train.steps={s}"));
        }
        if let Some(m) = self.minutes {
            overrides.push(format!("train.max_minutes={m:?}"));
        }
        overrides.extend(self.set.iter().cloned());
        if !self.resume {
            return load(self.config.as_deref(), &overrides);
        }
        let mut cfg: C = load(Some(&run_dir::config_to_resume(&self.run)?), &overrides)?;
        for note in run_dir::locate_data(cfg.data_paths_mut(), &self.run)? {
            eprintln!("{note}");
        }
        Ok(cfg)
    }

    /// The whole of a `train` command: load its configuration, train it with
    /// `train_run` on the selected device, print the summary.
    pub fn train<C: RunConfig>(
        &self,
        train_run: impl FnOnce(&dyn Backend, &C, &Path, bool, bool) -> Result<TrainSummary>,
    ) -> Result<()> {
        let cfg: C = self.config(&[])?;
        let dev = crate::backend::select(&self.device)?;
        let s = train_run(dev.as_ref(), &cfg, &self.run, self.resume, !self.quiet)?;
        self.print_summary(&s);
        Ok(())
    }

    /// The line a finished `train` command prints.
    pub fn print_summary(&self, s: &TrainSummary) {
        println!(
            "trained {} steps in {:.1} s; loss {} → {}; run folder {}",
            s.steps_done,
            s.seconds,
            s.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
            s.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            self.run.display()
        );
    }
}
