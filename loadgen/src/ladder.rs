//! Max sustainable throughput: the highest rate whose corrected P99 stays under an SLO with no
//! errors, in a VALID open-loop run.
//!
//! `--rates a,b,c` runs the steps in ascending order and stops at the first failing one (load is
//! assumed monotonic: a system that fails at `b` is not trusted at `c`). `--search` doubles from
//! `--start-rate` until a step fails (or `--max-rate`), then bisects geometrically between the
//! last pass and the first failure until the bracket is narrower than `--precision`; if the start
//! rate fails it halves downwards instead. Each step is a full run with its own warmup.

use crate::report::{SCHEMA_VERSION, fmt_dur, rfc3339};
use crate::run::{RunConfig, RunOutcome, run};
use serde::Serialize;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

/// How the rates are chosen.
#[derive(Clone, Debug)]
pub enum LadderMode {
    Rates(Vec<f64>),
    Search { start: f64, max: f64, precision: f64 },
}

/// A ladder: the base run config (rate replaced per step), the SLO, the mode.
#[derive(Clone, Debug)]
pub struct LadderConfig {
    pub base: RunConfig,
    pub slo_p99: Duration,
    pub mode: LadderMode,
}

/// One step's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub rate: f64,
    pub pass: bool,
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
    pub sent_rate: f64,
    pub achieved_rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub errors: u64,
    /// Stopped early by Ctrl-C (never a pass).
    pub interrupted: bool,
}

/// The ladder's result.
#[derive(Clone, Debug, Serialize)]
pub struct LadderResult {
    pub steps: Vec<Step>,
    /// Highest passing rate, if any.
    pub best: Option<f64>,
}

/// Does a step pass: valid, no errors, at least one response, P99 within the SLO.
pub fn passes(out: &RunOutcome, slo: Duration) -> bool {
    let c = &out.rec.corrected;
    !out.rec.stopped
        && out.validity.valid
        && out.rec.total_errors() == 0
        && !c.is_empty()
        && c.value_at_quantile(0.99) <= crate::stats::ns(slo)
}

fn step(cfg: &LadderConfig, rate: f64, w: &mut dyn Write) -> io::Result<Step> {
    let mut rc = cfg.base.clone();
    rc.rate = rate;
    rc.closed = false;
    let out = run(&rc)?;
    let c = &out.rec.corrected;
    let q = |v: f64| if c.is_empty() { 0.0 } else { c.value_at_quantile(v) as f64 / 1e3 };
    let s = Step {
        rate,
        pass: passes(&out, cfg.slo_p99),
        valid: out.validity.valid,
        invalid_reasons: out.validity.reasons.clone(),
        sent_rate: out.sent_rate(),
        achieved_rate: out.achieved_rate(),
        p50_us: q(0.5),
        p99_us: q(0.99),
        max_us: if c.is_empty() { 0.0 } else { c.max() as f64 / 1e3 },
        errors: out.rec.total_errors(),
        interrupted: out.rec.stopped,
    };
    writeln!(
        w,
        "{:>12.0} {:>12.1} {:>10} {:>10} {:>10} {:>7} {:>7} {}",
        s.rate,
        s.achieved_rate,
        fmt_dur(Duration::from_nanos((s.p50_us * 1e3) as u64)),
        fmt_dur(Duration::from_nanos((s.p99_us * 1e3) as u64)),
        fmt_dur(Duration::from_nanos((s.max_us * 1e3) as u64)),
        s.errors,
        if s.valid { "yes" } else { "NO" },
        if s.interrupted {
            "interrupted"
        } else if s.pass {
            "pass"
        } else {
            "FAIL"
        },
    )?;
    w.flush()?;
    Ok(s)
}

/// Runs the ladder, printing one line per step to `w`.
pub fn ladder(cfg: &LadderConfig, w: &mut dyn Write) -> io::Result<LadderResult> {
    writeln!(
        w,
        "ladder: {} P99 SLO {}, {}s per step (+{}s warmup)",
        cfg.base.target.addr,
        fmt_dur(cfg.slo_p99),
        cfg.base.duration.as_secs_f64(),
        cfg.base.warmup.as_secs_f64()
    )?;
    writeln!(w, "{:>12} {:>12} {:>10} {:>10} {:>10} {:>7} {:>7} verdict", "rate", "achieved", "p50", "p99", "max", "errors", "valid")?;
    let mut steps = Vec::new();
    let best = choose(&cfg.mode, |r| {
        if crate::run::stop_requested() {
            // Ctrl-C: no more steps; what passed so far stands (an interrupted step does not
            // count, see `passes`: its run is stopped early and its window is short).
            return Ok(false);
        }
        let s = step(cfg, r, w)?;
        let pass = s.pass;
        steps.push(s);
        Ok(pass)
    })?;
    match best {
        Some(b) => writeln!(w, "max sustainable rate: {b:.0} req/s (P99 <= {}, no errors, valid run)", fmt_dur(cfg.slo_p99))?,
        None => writeln!(w, "max sustainable rate: none (no step passed)")?,
    }
    Ok(LadderResult { steps, best })
}

/// The `--json` document of a ladder.
#[derive(Debug, Serialize)]
pub struct LadderJson {
    pub schema_version: u32,
    pub kind: &'static str,
    pub tool: &'static str,
    pub version: &'static str,
    pub command_line: Vec<String>,
    pub end_time: String,
    pub url: String,
    pub slo_p99_us: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub max_sustainable_rate: Option<f64>,
    pub steps: Vec<Step>,
}

/// Most steps a search runs.
const MAX_STEPS: usize = 40;

/// Picks the rates to try (see the module docs) and returns the highest passing one.
/// `try_rate` runs one step and says whether it passed.
pub fn choose(mode: &LadderMode, mut try_rate: impl FnMut(f64) -> io::Result<bool>) -> io::Result<Option<f64>> {
    match mode {
        LadderMode::Rates(rates) => {
            let mut rates = rates.clone();
            rates.sort_by(f64::total_cmp);
            let mut best = None;
            for r in rates {
                if !try_rate(r)? {
                    break;
                }
                best = Some(r);
            }
            Ok(best)
        }
        LadderMode::Search { start, max, precision } => {
            // Bracket: `lo` passed, `hi` failed.
            let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
            let mut r = start.min(*max);
            let mut n = 0;
            while n < MAX_STEPS {
                n += 1;
                if try_rate(r)? {
                    lo = Some(r);
                    if hi.is_some() || r >= *max {
                        break;
                    }
                    r = (r * 2.0).min(*max);
                } else {
                    hi = Some(r);
                    if lo.is_some() || r < 2.0 {
                        break;
                    }
                    r = (r / 2.0).round();
                }
            }
            if let (Some(mut l), Some(mut h)) = (lo, hi) {
                while h / l > 1.0 + precision && n < MAX_STEPS {
                    let mid = (l * h).sqrt().round();
                    if mid <= l || mid >= h {
                        break;
                    }
                    n += 1;
                    if try_rate(mid)? {
                        l = mid;
                    } else {
                        h = mid;
                    }
                }
                lo = Some(l);
            }
            Ok(lo)
        }
    }
}

pub fn ladder_json(cfg: &LadderConfig, res: &LadderResult, argv: &[String]) -> LadderJson {
    LadderJson {
        schema_version: SCHEMA_VERSION,
        kind: "ladder",
        tool: "loadgen",
        version: env!("CARGO_PKG_VERSION"),
        command_line: argv.to_vec(),
        end_time: rfc3339(SystemTime::now()),
        url: format!("http://{}{}", cfg.base.target.authority, cfg.base.target.path),
        slo_p99_us: cfg.slo_p99.as_secs_f64() * 1e6,
        duration_s: cfg.base.duration.as_secs_f64(),
        warmup_s: cfg.base.warmup.as_secs_f64(),
        max_sustainable_rate: res.best,
        steps: res.steps.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// A system that sustains up to `cap` req/s; returns (best, rates tried).
    fn against(mode: LadderMode, cap: f64) -> (Option<f64>, Vec<f64>) {
        let mut tried = Vec::new();
        let best = choose(&mode, |r| {
            tried.push(r);
            Ok(r <= cap)
        })
        .unwrap();
        (best, tried)
    }

    #[test]
    fn rates_stop_at_the_first_failure() {
        let (best, tried) = against(LadderMode::Rates(vec![4000.0, 1000.0, 2000.0, 8000.0]), 3000.0);
        assert_eq!(best, Some(2000.0));
        assert_eq!(tried, vec![1000.0, 2000.0, 4000.0]);
    }

    #[test]
    fn search_doubles_then_bisects_to_the_precision() {
        let (best, tried) = against(LadderMode::Search { start: 1000.0, max: 1e6, precision: 0.05 }, 5000.0);
        let best = best.unwrap();
        assert!((5000.0 / 1.05..=5000.0).contains(&best), "{best} via {tried:?}");
        assert_eq!(&tried[..4], &[1000.0, 2000.0, 4000.0, 8000.0]);
        assert!(tried.len() <= 12, "{tried:?}");
    }

    #[test]
    fn search_goes_down_when_the_start_fails_and_respects_max() {
        let (best, _) = against(LadderMode::Search { start: 1000.0, max: 1e6, precision: 0.05 }, 300.0);
        let best = best.unwrap();
        assert!((300.0 / 1.05..=300.0).contains(&best), "{best}");
        let (best, tried) = against(LadderMode::Search { start: 1000.0, max: 3000.0, precision: 0.05 }, 1e9);
        assert_eq!(best, Some(3000.0));
        assert_eq!(tried, vec![1000.0, 2000.0, 3000.0]);
        let (best, _) = against(LadderMode::Search { start: 1000.0, max: 1e6, precision: 0.05 }, 0.5);
        assert_eq!(best, None);
    }
}
