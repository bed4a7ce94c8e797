//! The runner's own errors (what `main` prints), and [`Chain`]: an error with its causes on one
//! line.
//!
//! Each module that can fail has its error enum ([`crate::contract::ContractError`],
//! [`crate::runner::RunnerError`], ...). A variant's message says what failed at its level; the
//! underlying error (an `io::Error`, a TOML or JSON error) is its `source()`, not repeated in the
//! message, so [`Chain`] (`what failed: why`) is how one is shown, in a row's note as in `main`.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

use crate::baseline::BaselineError;
use crate::contract::ContractError;

/// What stops the runner before, or after, the gates run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--save-baseline with --plant: a baseline of a planted regression would hide it")]
    BaselineWithPlant,
    #[error("no contracts/phase*.toml under {}", .0.display())]
    NoContracts(PathBuf),
    /// `--instruction-groups` names a group no selected contract's instruction gate has.
    #[error("--instruction-groups: no instruction row of the selected contracts is measured by group {name:?} (known: {known})")]
    UnknownInstructionGroup { name: String, known: String },
    #[error("invalid contract")]
    Contract(#[from] ContractError),
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("cannot create {}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// The baseline could not be turned into JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// An error and each of its `source()`s, separated by `: ` (`/x/baseline.json: No such file or
/// directory (os error 2)`).
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`Chain`] as a string: the note of a row whose gate could not measure.
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_the_error_then_each_source() {
        let e = Error::Write { path: PathBuf::from("/x/latest.md"), source: std::io::Error::other("disk full") };
        assert_eq!(chain(&e), "cannot write /x/latest.md: disk full");
        assert_eq!(chain(&Error::NoContracts(PathBuf::from("/r"))), "no contracts/phase*.toml under /r");
    }
}
