//! The stored baseline that soft limits compare against: `results/gates/baseline.json`,
//! written by `--save-baseline` and committed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::runner::{Row, Status};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub schema_version: u32,
    pub commit: String,
    pub created: String,
    /// Row key → measured value.
    pub values: BTreeMap<String, f64>,
}

impl Baseline {
    pub fn load(path: &Path) -> Result<Baseline, String> {
        match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Baseline::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
            Ok(text) => {
                let b: Baseline = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                if b.schema_version != SCHEMA_VERSION {
                    return Err(format!("{}: schema_version {} (expected {SCHEMA_VERSION})", path.display(), b.schema_version));
                }
                Ok(b)
            }
        }
    }

    /// Fills the row's baseline and delta, and fails it when it rose past its soft limit.
    pub fn apply(&self, row: &mut Row) {
        let (Some(base), Some(m)) = (self.values.get(&row.key).copied(), row.measured) else { return };
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

    pub fn from_rows(rows: &[Row], commit: &str, created: &str) -> Baseline {
        let values = rows
            .iter()
            .filter(|r| matches!(r.status, Status::Pass | Status::Fail))
            .filter_map(|r| r.measured.map(|m| (r.key.clone(), m)))
            .collect();
        Baseline { schema_version: SCHEMA_VERSION, commit: commit.to_owned(), created: created.to_owned(), values }
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
}
