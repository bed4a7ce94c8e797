//! The stored baseline that soft limits compare against: `results/gates/baseline.json`,
//! written by `--save-baseline` and committed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runner::{Row, Status};

pub const SCHEMA_VERSION: u32 = 1;

/// A baseline that cannot be read, or that a run may not record.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(
        "{}: no baseline, so the soft limits cannot be checked; record one on a clean tree with --save-baseline (and commit it), or name another with --baseline FILE",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("{}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{}: schema_version {found} (expected {SCHEMA_VERSION})", path.display())]
    SchemaVersion { path: PathBuf, found: u32 },
    /// The rows (key, status) that did not pass.
    #[error("baseline not saved: every gate must pass first ({})", NotPassed(.0))]
    NotAllPassed(Vec<(String, Status)>),
    #[error("baseline not saved: no gate with a soft limit was run (e.g. --only instructions)")]
    NothingToSave,
}

/// `key is Status, ...`.
struct NotPassed<'a>(&'a [(String, Status)]);

impl fmt::Display for NotPassed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, status)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{key} is {status:?}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub schema_version: u32,
    pub commit: String,
    pub created: String,
    /// Row key → measured value.
    pub values: BTreeMap<String, f64>,
}

impl Baseline {
    /// Reads the baseline; a missing file is an error (soft limits would silently vanish).
    pub fn load(path: &Path) -> Result<Baseline, BaselineError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BaselineError::Missing(path.to_path_buf())
            } else {
                BaselineError::Read { path: path.to_path_buf(), source }
            }
        })?;
        let b: Baseline = serde_json::from_str(&text).map_err(|source| BaselineError::Json { path: path.to_path_buf(), source })?;
        if b.schema_version != SCHEMA_VERSION {
            return Err(BaselineError::SchemaVersion { path: path.to_path_buf(), found: b.schema_version });
        }
        Ok(b)
    }

    /// Fills the row's baseline and delta, and fails it when it rose past its soft limit. A row
    /// with a soft limit and a measurement but no baseline value is an ERROR: its soft limit
    /// cannot be checked.
    pub fn apply(&self, row: &mut Row) {
        let Some(m) = row.measured else { return };
        let Some(base) = self.values.get(&row.key).copied() else {
            if row.soft_limit_pct.is_some() && matches!(row.status, Status::Pass | Status::Fail) {
                row.status = Status::Error;
                row.note = format!(
                    "no baseline value for {}: the soft limit cannot be checked (record one with --save-baseline on a clean tree); {}",
                    row.key, row.note
                );
            }
            return;
        };
        row.baseline = Some(base);
        if base.abs() > f64::EPSILON {
            let delta = (m - base) / base * 100.0;
            row.delta_pct = Some(delta);
            if let Some(soft) = row.soft_limit_pct
                && delta > soft
                && row.status == Status::Pass
            {
                row.status = Status::Fail;
                row.note = format!("soft limit: +{delta:.2}% over the baseline (allowed +{soft}%); {}", row.note);
            }
        }
    }

    /// A new baseline from a run's rows, merged over `previous` (values of rows not run are
    /// kept). Refused unless every gated row of the run passed: a baseline taken from a failing,
    /// broken or noisy run would move the soft limits to where the regression is.
    pub fn from_rows(previous: Option<&Baseline>, rows: &[Row], commit: &str, created: &str) -> Result<Baseline, BaselineError> {
        let bad: Vec<(String, Status)> = rows
            .iter()
            .filter(|r| !matches!(r.status, Status::Pass | Status::Control | Status::Info))
            .map(|r| (r.key.clone(), r.status))
            .collect();
        if !bad.is_empty() {
            return Err(BaselineError::NotAllPassed(bad));
        }
        let mut values = previous.map(|p| p.values.clone()).unwrap_or_default();
        let mut saved = 0;
        for r in rows.iter().filter(|r| r.soft_limit_pct.is_some() && r.status == Status::Pass) {
            if let Some(m) = r.measured {
                values.insert(r.key.clone(), m);
                saved += 1;
            }
        }
        if saved == 0 {
            return Err(BaselineError::NothingToSave);
        }
        Ok(Baseline { schema_version: SCHEMA_VERSION, commit: commit.to_owned(), created: created.to_owned(), values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::error_row;

    #[test]
    fn soft_limit_turns_a_pass_into_a_fail() {
        let mut b = Baseline::default();
        b.values.insert("p:i".into(), 1000.0);
        let mut row = error_row("p:i".into(), "m", "u", Some(5000.0), String::new());
        row.soft_limit_pct = Some(2.0);
        row.status = Status::Pass;
        row.measured = Some(1010.0);
        b.apply(&mut row);
        assert_eq!(row.status, Status::Pass);
        assert_eq!(row.delta_pct.map(|d| (d * 10.0).round()), Some(10.0));
        row.measured = Some(1030.0);
        b.apply(&mut row);
        assert_eq!(row.status, Status::Fail);
    }

    fn row(key: &str, status: Status, soft: Option<f64>) -> Row {
        let mut r = error_row(key.into(), "m", "u", Some(5000.0), String::new());
        r.status = status;
        r.soft_limit_pct = soft;
        r.measured = Some(1000.0);
        r
    }

    /// The old runner read a missing baseline as an empty one: soft limits silently off.
    #[test]
    fn a_missing_baseline_is_refused_and_a_missing_value_is_an_error() {
        let e = Baseline::load(Path::new("/nonexistent/baseline.json")).expect_err("missing file accepted");
        assert!(matches!(e, BaselineError::Missing(_)), "{e:?}");
        assert!(e.to_string().starts_with("/nonexistent/baseline.json: no baseline") && e.to_string().contains("--save-baseline"), "{e}");
        let mut r = row("p:i", Status::Pass, Some(2.0));
        Baseline::default().apply(&mut r);
        assert_eq!(r.status, Status::Error, "{}", r.note);
        // Rows without a soft limit do not need a baseline.
        let mut r = row("p:a", Status::Pass, None);
        Baseline::default().apply(&mut r);
        assert_eq!(r.status, Status::Pass);
    }

    /// The old runner stored FAIL rows as the new baseline.
    #[test]
    fn a_baseline_is_saved_only_from_a_passing_run() {
        for bad in [Status::Fail, Status::Error, Status::Inconclusive] {
            let rows = [row("p:i", Status::Pass, Some(2.0)), row("p:l", bad, None)];
            assert!(Baseline::from_rows(None, &rows, "c", "t").is_err(), "{bad:?}");
        }
        let rows = [row("p:l", Status::Fail, None), row("p:i", Status::Pass, Some(2.0)), row("p:m", Status::Error, None)];
        let e = Baseline::from_rows(None, &rows, "c", "t").expect_err("a failing run saved");
        assert_eq!(e.to_string(), "baseline not saved: every gate must pass first (p:l is Fail, p:m is Error)");
        assert!(Baseline::from_rows(None, &[row("p:i", Status::Fail, Some(2.0))], "c", "t").is_err());
        assert!(Baseline::from_rows(None, &[row("p:s", Status::Pass, None)], "c", "t").is_err(), "nothing to save");
        let mut prev = Baseline::default();
        prev.values.insert("p:other".into(), 7.0);
        let b = Baseline::from_rows(Some(&prev), &[row("p:i", Status::Pass, Some(2.0)), row("p:c", Status::Control, None)], "c", "t")
            .expect("saved");
        assert_eq!(b.values.get("p:i"), Some(&1000.0));
        assert_eq!(b.values.get("p:other"), Some(&7.0), "values of gates not run are kept");
        assert!(!b.values.contains_key("p:c"));
    }
}
