//! The allocation gate: heap allocations per exchange under dhat (`alloc-probe`, the real data
//! plane in-process between an allocation-free client and origin), one row per request shape.
//!
//! Rows: `alloc` (the default shape, keep-alive GET, limit `hard_limit`), `alloc[<engine>]` for
//! each of `report_engines` on the default shape (controls: they must breach the limit), and
//! `alloc[<shape>]` for each `[[gates.alloc.shapes]]` entry (its own `hard_limit`; a limit above
//! 0 needs a `reason`, shown in the row's note). Each row is one probe process, so nothing one
//! shape leaves behind (tokio's internals, planted counters) reaches another. The HTTP/3 shapes'
//! client is a second process (`h3-client`, built beside the probe), so that dhat, which counts
//! the probe's process, counts the proxy's allocations only.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

use serde_json::Value;

use crate::contract::AllocGate;
use crate::error::chain;
use crate::runner::{Options, Row, Status, cargo_build, error_row};

/// Why an alloc row has no figure: a shape the contract gets wrong, or a probe that did not
/// report.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("contract: shape {0:?} is listed twice (or names the default shape or an engine)")]
    ShapeTwice(String),
    #[error("contract: shape {name:?} has hard_limit {hard_limit} but no reason: a limit above 0 must say why")]
    LimitWithoutReason { name: String, hard_limit: f64 },
    #[error("cannot run {}", exe.display())]
    Run { exe: PathBuf, source: std::io::Error },
    #[error("alloc-probe printed no JSON")]
    NoJson(#[source] serde_json::Error),
    #[error("alloc-probe failed ({status}): {stderr}")]
    Probe { status: ExitStatus, stderr: String },
}

/// The probe's name for the default shape (the keys of `[gates.alloc]` itself).
const DEFAULT_SHAPE: &str = "get";

/// One row to measure.
struct Run {
    key: String,
    shape: String,
    engine: String,
    limit: f64,
    reason: Option<String>,
    requests: u64,
    warmup: u64,
}

impl Run {
    fn is_control(&self) -> bool {
        self.engine != "native"
    }
}

/// Live heap blocks may differ by this much between the two ends of a run (the proxy's worker
/// and the harness settle first, so this is slack, not noise); beyond it the row is a leak.
const LEAK_SLACK: u64 = 16;

fn runs(g: &AllocGate, prefix: &str) -> (Vec<Run>, Vec<(String, AllocError)>) {
    let mut runs = Vec::new();
    let mut invalid = Vec::new();
    let default_shape = g.shape.as_deref().unwrap_or(DEFAULT_SHAPE);
    let default = |key: String, engine: &str| Run {
        key,
        shape: default_shape.to_owned(),
        engine: engine.to_owned(),
        limit: g.hard_limit,
        reason: None,
        requests: g.requests,
        warmup: g.warmup,
    };
    runs.push(default(format!("{prefix}:alloc"), "native"));
    for engine in &g.report_engines {
        runs.push(default(format!("{prefix}:alloc[{engine}]"), engine));
    }
    let mut seen: HashSet<&str> = g.report_engines.iter().map(String::as_str).collect();
    seen.insert(default_shape);
    for s in &g.shapes {
        let key = format!("{prefix}:alloc[{}]", s.name);
        let reason = s.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
        if !seen.insert(&s.name) {
            invalid.push((key, AllocError::ShapeTwice(s.name.clone())));
        } else if s.hard_limit != 0.0 && reason.is_none() {
            invalid.push((key, AllocError::LimitWithoutReason { name: s.name.clone(), hard_limit: s.hard_limit }));
        } else {
            runs.push(Run {
                key,
                shape: s.name.clone(),
                engine: "native".to_owned(),
                limit: s.hard_limit,
                reason: reason.map(str::to_owned),
                requests: s.requests.unwrap_or(g.requests),
                warmup: s.warmup.unwrap_or(g.warmup),
            });
        }
    }
    (runs, invalid)
}

pub fn gate(opts: &Options, g: &AllocGate, prefix: &str) -> Vec<Row> {
    let (runs, invalid) = runs(g, prefix);
    let mut rows: Vec<Row> = invalid.into_iter().map(|(key, e)| error_row(key, &g.metric, &g.unit, None, chain(&e))).collect();
    // The HTTP/3 shapes' client runs in a process of its own (`gates/src/bin/h3_client.rs`).
    let exes = cargo_build(opts, "gates", "alloc-probe").and_then(|p| Ok((p, cargo_build(opts, "gates", "h3-client")?)));
    let (exe, h3_client) = match exes {
        Ok(p) => p,
        Err(e) => {
            let note = chain(&e);
            rows.extend(runs.iter().map(|r| error_row(r.key.clone(), &g.metric, &g.unit, Some(r.limit), note.clone())));
            return rows;
        }
    };
    for run in runs {
        let mut cmd = Command::new(&exe);
        cmd.args(["--shape", &run.shape, "--engine", &run.engine])
            .args(["--requests", &run.requests.to_string(), "--warmup", &run.warmup.to_string()])
            .args(["--body-bytes", &g.body_bytes.to_string()])
            .arg("--h3-client")
            .arg(&h3_client)
            .stderr(Stdio::piped());
        opts.plant_env(&mut cmd);
        let out = cmd.output();
        let parsed = out.map_err(|source| AllocError::Run { exe: exe.clone(), source }).and_then(|o| {
            if o.status.success() {
                serde_json::from_slice::<Value>(&o.stdout).map_err(AllocError::NoJson)
            } else {
                Err(AllocError::Probe { status: o.status, stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned() })
            }
        });
        match parsed {
            Ok(v) => rows.push(judge(g, &run, v)),
            Err(e) => rows.push(error_row(run.key, &g.metric, &g.unit, Some(run.limit), chain(&e))),
        }
    }
    rows
}

/// The row for one probe report.
fn judge(g: &AllocGate, run: &Run, v: Value) -> Row {
    let measured = v["allocs_per_request"].as_f64();
    // `null`: the shape has no direct path (the probe says why in `control`).
    let control = v["control_allocs_per_request"].as_f64();
    let direct = match control {
        Some(c) => format!("direct path {c}"),
        None => format!("direct path {}", v["control"].as_str().unwrap_or("not measured")),
    };
    let mut note = format!(
        "{} {}; {} requests, {:.1} B/request; {direct}",
        run.engine,
        run.shape,
        run.requests,
        v["bytes_per_request"].as_f64().unwrap_or(0.0)
    );
    if let Some(reason) = &run.reason {
        note.push_str(&format!("; limit {}: {reason}", run.limit));
    }
    let breach = measured.is_none_or(|m| m > run.limit + 1e-9);
    let leak = v["live_blocks_delta"].as_i64().filter(|d| d.unsigned_abs() > LEAK_SLACK);
    let status = if !measured.is_some_and(|m| m.is_finite() && m >= 0.0) {
        note = format!("the probe reported no allocation count (allocs_per_request = {}): no figure, no verdict", v["allocs_per_request"]);
        Status::Error
    } else if control.is_some_and(|c| c != 0.0) {
        note = format!("the harness itself allocated {:.3}/request on the direct path: figure not trustworthy", control.unwrap_or(0.0));
        Status::Error
    } else if let (Some(d), false) = (leak, run.is_control()) {
        note = format!("live heap blocks grew by {d} over the run: a leak");
        Status::Fail
    } else if run.is_control() {
        if breach {
            Status::Control
        } else {
            note = format!("the {} control no longer breaches the limit: can this gate still see allocations?", run.engine);
            Status::Error
        }
    } else if breach {
        Status::Fail
    } else {
        Status::Pass
    };
    Row {
        key: run.key.clone(),
        metric: g.metric.clone(),
        unit: g.unit.clone(),
        measured,
        limit: Some(run.limit),
        soft_limit_pct: g.soft_limit_pct,
        baseline: None,
        delta_pct: None,
        status,
        note,
        details: v,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::contract::AllocShape;

    fn gate(shapes: Vec<AllocShape>) -> AllocGate {
        AllocGate {
            shape: None,
            metric: "m".into(),
            unit: "u".into(),
            workload: "w".into(),
            requests: 100,
            warmup: 10,
            body_bytes: 1024,
            hard_limit: 0.0,
            soft_limit_pct: None,
            report_engines: vec!["hyper".into()],
            shapes,
        }
    }

    fn shape(name: &str, hard_limit: f64, reason: Option<&str>) -> AllocShape {
        AllocShape { name: name.into(), hard_limit, reason: reason.map(str::to_owned), requests: Some(7), warmup: None }
    }

    #[test]
    fn rows_are_keyed_by_shape_and_a_limit_above_zero_needs_a_reason() {
        let g = gate(vec![
            shape("404", 0.0, None),
            shape("413", 7.0, Some("closes")),
            shape("431", 7.0, None),
            shape("404", 0.0, None),
            shape("get", 0.0, None),
        ]);
        let (runs, invalid) = runs(&g, "phase1");
        let keys: Vec<&str> = runs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["phase1:alloc", "phase1:alloc[hyper]", "phase1:alloc[404]", "phase1:alloc[413]"]);
        assert_eq!((runs[2].requests, runs[2].warmup), (7, 10));
        assert_eq!(runs[3].reason.as_deref(), Some("closes"));
        let bad: Vec<&str> = invalid.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(bad, ["phase1:alloc[431]", "phase1:alloc[404]", "phase1:alloc[get]"]);
        assert_eq!(invalid[0].1.to_string(), "contract: shape \"431\" has hard_limit 7 but no reason: a limit above 0 must say why");
        assert!(matches!(&invalid[2].1, AllocError::ShapeTwice(name) if name == "get"));
    }

    /// Phase 2's gate measures its own shape in the row `alloc` (`shape = "tls-get"`).
    #[test]
    fn the_gate_row_measures_the_contract_shape_and_it_cannot_be_listed_again() {
        let mut g = gate(vec![shape("tls-get", 0.0, None), shape("get", 0.0, None)]);
        g.shape = Some("tls-get".into());
        g.report_engines.clear();
        let (runs, invalid) = runs(&g, "phase2");
        assert_eq!((runs[0].key.as_str(), runs[0].shape.as_str()), ("phase2:alloc", "tls-get"));
        assert_eq!(runs.iter().filter(|r| r.shape == "get").count(), 1, "get is a shape like any other here");
        assert!(matches!(&invalid[..], [(k, AllocError::ShapeTwice(s))] if k == "phase2:alloc[tls-get]" && s == "tls-get"), "{invalid:?}");
    }

    #[test]
    fn judged_against_the_shape_limit_with_the_direct_path_as_the_guard() {
        let g = gate(Vec::new());
        let run = |limit: f64, engine: &str| Run {
            key: "k".into(),
            shape: "413".into(),
            engine: engine.into(),
            limit,
            reason: Some("r".into()),
            requests: 10,
            warmup: 1,
        };
        let report = |m: f64, control: Value| {
            serde_json::json!({"allocs_per_request": m, "bytes_per_request": 1.0, "live_blocks_delta": 0,
                "control_allocs_per_request": control, "control": "n/a: the proxy produces this response"})
        };
        assert_eq!(judge(&g, &run(7.0, "native"), report(7.0, Value::Null)).status, Status::Pass);
        assert_eq!(judge(&g, &run(7.0, "native"), report(8.0, Value::Null)).status, Status::Fail);
        assert_eq!(judge(&g, &run(7.0, "native"), report(7.0, 1.0.into())).status, Status::Error);
        assert_eq!(judge(&g, &run(0.0, "hyper"), report(29.0, 0.0.into())).status, Status::Control);
        assert_eq!(judge(&g, &run(0.0, "hyper"), report(0.0, 0.0.into())).status, Status::Error);
        let r = judge(&g, &run(7.0, "native"), report(7.0, Value::Null));
        assert!(r.note.contains("n/a: the proxy produces this response") && r.note.contains("limit 7: r"), "{}", r.note);
    }
}
