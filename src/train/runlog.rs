//! A run's log: one JSON object per line, appended and flushed as it goes,
//! so a killed run keeps everything it logged.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct RunLog {
    path: PathBuf,
    file: File,
}

impl RunLog {
    /// Open (append to) `path`.
    pub fn open(path: &Path) -> Result<RunLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open the run log", path.display()))?;
        Ok(RunLog {
            path: path.to_path_buf(),
            file,
        })
    }
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{record}")
            .with_context(|| format!("{}: write failed", self.path.display()))?;
        self.file.flush()?;
        Ok(())
    }
    /// All records of a log file (lines that fail to parse — a torn last line
    /// of a killed run — are skipped).
    pub fn read(path: &Path) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}
