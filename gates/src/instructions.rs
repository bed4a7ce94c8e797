//! The instruction gate: user-space instructions per proxied request under callgrind.
//!
//! Runs `gates/benches/instructions.rs` (a gungraun library benchmark) with
//! `--output-format=json` and takes differences so that setup cancels out:
//! per request = (I(2N) − I(N)) / N for the direct and the proxied path, and the proxy's own
//! cost is proxied − direct. Instruction counts do not depend on machine load, so the limit
//! needs no noise margin.
//!
//! Setup belongs to the command: valgrind must be installed (the message says how); the
//! gungraun runner, which must be exactly the library's version, is installed into
//! `target/tools` with `cargo install` when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use serde_json::{Value, json};

use crate::contract::InstructionsGate;
use crate::error::chain;
use crate::exchange::{Outcome, VerifyError};
use crate::runner::{Options, Row, RunnerError, Status, error_row, which};

/// The gungraun version the bench is built with (see the workspace `Cargo.toml`).
pub const GUNGRAUN_VERSION: &str = "0.20.0";

/// What keeps the instruction gate from a figure: the tools, the bench, or counts that are not
/// evidence.
#[derive(Debug, thiserror::Error)]
pub enum InstructionsError {
    #[error("valgrind is not installed: apt-get install -y valgrind")]
    NoValgrind,
    #[error("cannot run cargo install")]
    CargoInstall(#[source] std::io::Error),
    /// `tools`: where it was to be installed.
    #[error(
        "gungraun-runner {GUNGRAUN_VERSION} is missing and could not be installed; run: cargo install gungraun-runner --version {GUNGRAUN_VERSION} --locked --root {}",
        tools.display()
    )]
    NoRunner { tools: PathBuf },
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("cannot run cargo bench")]
    CargoBench(#[source] std::io::Error),
    /// `why`: the line of the bench's stderr that names the failure (a panic, a failed
    /// verification), if any; `tail`: its last lines, joined with ` / `.
    #[error("cargo bench --bench instructions failed ({status}): {why} / {tail}")]
    BenchFailed { status: ExitStatus, why: String, tail: String },
    #[error("the bench wrote no outcome for {bench}: {}", path.display())]
    NoOutcomeFile { bench: String, path: PathBuf, source: std::io::Error },
    #[error("{}", path.display())]
    OutcomeJson { path: PathBuf, source: serde_json::Error },
    #[error("no outcome for {0}")]
    NoOutcome(String),
    #[error("no instruction count for {0} in the bench output")]
    NoCount(String),
    #[error(
        "{bench} ran {requests} requests of {body_bytes} bytes (proxied: {proxied}), the gate divides by {want_requests} of {want_body_bytes} bytes"
    )]
    Miscounted { bench: String, requests: u64, body_bytes: usize, proxied: bool, want_requests: u64, want_body_bytes: usize },
    #[error("{bench}")]
    Unverified { bench: String, source: VerifyError },
    #[error(
        "proxied {proxied:.0}/request vs direct {direct:.0}/request: a proxy cannot cost less than the direct path; the measurement is broken"
    )]
    CheaperThanDirect { proxied: f64, direct: f64 },
    /// A per-connection TLS figure whose floor did another handshake (suite, key exchange, full
    /// or resumed, session tickets): the ratio would compare two different things.
    #[error("{target_bench} did {target:?}, its floor {floor_bench} {floor:?}")]
    DifferentHandshakes { target_bench: String, target: Option<String>, floor_bench: String, floor: Option<String> },
    #[error("gungraun JSON")]
    GungraunJson(#[source] serde_json::Error),
    #[error("no Ir metric for {0} in gungraun's JSON")]
    NoIr(String),
    #[error("gungraun printed no JSON summary lines")]
    NoSummary,
}

pub fn gate(opts: &Options, g: &InstructionsGate, prefix: &str) -> Vec<Row> {
    let rows = g.all_rows();
    // One run of each bench group serves every row that names it (the contract checked that
    // they ask for the same request count), in the contract's order.
    let mut groups: Vec<&InstructionsGate> = Vec::new();
    let wanted = |group: &str| opts.instruction_groups.as_ref().is_none_or(|w| w.iter().any(|x| x == group));
    for (_, r) in &rows {
        if wanted(r.group()) && !groups.iter().any(|x| x.group() == r.group()) {
            groups.push(r);
        }
    }
    let mut out = Vec::new();
    for first in groups {
        let run = run_group(opts, first);
        for (suffix, r) in rows.iter().filter(|(_, r)| r.group() == first.group()) {
            let key = format!("{prefix}:instructions{suffix}");
            let judged = match &run {
                Ok((counts, Ok(outcomes))) => judge(r, counts, outcomes).map_err(|e| chain(&e)),
                Ok((_, Err(e))) | Err(e) => Err(chain(e)),
            };
            out.push(match judged {
                Ok(mut row) => {
                    row.key = key;
                    row
                }
                Err(e) => error_row(key, &r.metric, &r.unit, Some(r.hard_limit), e),
            });
        }
    }
    out
}

/// Finds `gungraun-runner` of the right version, installing it into `target/tools` if needed.
pub fn ensure_runner(root: &Path, verbose: bool) -> Result<PathBuf, InstructionsError> {
    let tools = root.join("target/tools");
    let local = tools.join("bin/gungraun-runner");
    let version_ok = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(GUNGRAUN_VERSION))
    };
    if version_ok(&local) {
        return Ok(tools.join("bin"));
    }
    eprintln!("gates: installing gungraun-runner {GUNGRAUN_VERSION} into {} (a few minutes, once)", tools.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(["install", "gungraun-runner", "--version", GUNGRAUN_VERSION, "--locked", "--root"])
        .arg(&tools)
        .env("CARGO_TARGET_DIR", root.join("target/tools-build"))
        .stdout(Stdio::null())
        .stderr(if verbose { Stdio::inherit() } else { Stdio::null() })
        .status()
        .map_err(InstructionsError::CargoInstall)?;
    if !status.success() || !version_ok(&local) {
        return Err(InstructionsError::NoRunner { tools });
    }
    Ok(tools.join("bin"))
}

/// Counts and outcomes of one run of a bench group; the outcomes may be missing (an error the
/// rows report) while the counts are there.
type GroupRun = (Vec<(String, f64)>, Result<Vec<(String, Outcome)>, InstructionsError>);

/// Runs the bench group of `g` once (its `requests` and `body_bytes`).
fn run_group(opts: &Options, g: &InstructionsGate) -> Result<GroupRun, InstructionsError> {
    if !which("valgrind") {
        return Err(InstructionsError::NoValgrind);
    }
    let bin_dir = ensure_runner(&opts.root, opts.verbose)?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let outcomes = crate::runner::scratch_dir("instructions")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&opts.root).args(["bench", "-p", "gates", "--bench", "instructions"]);
    opts.cargo_features(&mut cmd);
    opts.plant_env(&mut cmd);
    cmd.args(["--", "--output-format=json"])
        .env("PATH", path)
        .env("GATES_INSTR_REQUESTS", g.requests.to_string())
        .env("GATES_INSTR_BODY_BYTES", g.body_bytes.to_string())
        .env("GATES_INSTR_OUT", &outcomes)
        .env("GUNGRAUN_FILTER", format!("*::{}::*", g.group()))
        .stdout(Stdio::piped())
        .stderr(if opts.verbose { Stdio::inherit() } else { Stdio::piped() });
    let out = cmd.output().map_err(InstructionsError::CargoBench)?;
    let read = read_outcomes(&outcomes);
    let _ = std::fs::remove_dir_all(&outcomes);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // A failed verification names itself in a panic line; show it first.
        let why = err.lines().find(|l| l.contains("panicked") || l.contains(": status") || l.contains("verified")).unwrap_or("");
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        return Err(InstructionsError::BenchFailed {
            status: out.status,
            why: why.to_owned(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    let counts = parse_counts(&String::from_utf8_lossy(&out.stdout))?;
    Ok((counts, read))
}

/// The bench functions a gate reads: base and target at N and 2N, then the floor's if any.
fn benches(g: &InstructionsGate) -> Vec<String> {
    let mut names = Vec::new();
    for p in [Some(g.base()), Some(g.target()), g.floor.as_deref()].into_iter().flatten() {
        names.push(format!("{p}_n"));
        names.push(format!("{p}_2n"));
    }
    names
}

/// The outcome records the bench's teardowns wrote (every file in `dir`).
fn read_outcomes(dir: &Path) -> Result<Vec<(String, Outcome)>, InstructionsError> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json").map(str::to_owned)).collect())
        .unwrap_or_default();
    names
        .iter()
        .map(|name| {
            let p = dir.join(format!("{name}.json"));
            let text = std::fs::read_to_string(&p).map_err(|source| InstructionsError::NoOutcomeFile {
                bench: (*name).to_owned(),
                path: p.clone(),
                source,
            })?;
            let o: Outcome = serde_json::from_str(&text).map_err(|source| InstructionsError::OutcomeJson { path: p.clone(), source })?;
            Ok(((*name).to_owned(), o))
        })
        .collect()
}

/// The row from the bench's counts and outcomes. A count is accepted only when its run was
/// verified and used exactly the request count divided by; a proxy figure at or below the direct
/// path's is an ERROR (it did less than forward the requests).
pub fn judge(g: &InstructionsGate, counts: &[(String, f64)], outcomes: &[(String, Outcome)]) -> Result<Row, InstructionsError> {
    let get = |name: &str| {
        counts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or_else(|| InstructionsError::NoCount(name.to_owned()))
    };
    let names = benches(g);
    for (i, name) in names.iter().enumerate() {
        let o = outcomes.iter().find(|(n, _)| n == name).map(|(_, o)| o).ok_or_else(|| InstructionsError::NoOutcome(name.clone()))?;
        let want = if i % 2 == 0 { g.requests } else { 2 * g.requests };
        if o.requests != want || o.body_bytes != g.body_bytes || o.proxied != name.starts_with("proxied") {
            return Err(InstructionsError::Miscounted {
                bench: name.clone(),
                requests: o.requests,
                body_bytes: o.body_bytes,
                proxied: o.proxied,
                want_requests: want,
                want_body_bytes: g.body_bytes,
            });
        }
        o.verify().map_err(|source| InstructionsError::Unverified { bench: name.clone(), source })?;
    }
    // The target's handshakes and the floor's must be the same ones (runs without a handshake
    // per connection record none: `None` on both sides).
    if g.floor.is_some() {
        let handshake = |name: &String| outcomes.iter().find(|(n, _)| n == name).and_then(|(_, o)| o.handshake.clone());
        for (t, f) in [(&names[2], &names[4]), (&names[3], &names[5])] {
            let (target, floor) = (handshake(t), handshake(f));
            if target != floor {
                return Err(InstructionsError::DifferentHandshakes { target_bench: t.clone(), target, floor_bench: f.clone(), floor });
            }
        }
    }
    let (base, target) = (g.base(), g.target());
    let (d1, d2, p1, p2) = (get(&names[0])?, get(&names[1])?, get(&names[2])?, get(&names[3])?);
    let n = g.requests as f64;
    let direct = (d2 - d1) / n;
    let proxied = (p2 - p1) / n;
    let own = proxied - direct;
    if direct <= 0.0 || own <= 0.0 {
        return Err(InstructionsError::CheaperThanDirect { proxied, direct });
    }
    // The floor beside it, and the figure as a multiple of it.
    let floor = match (&g.floor, names.get(4), names.get(5)) {
        (Some(_), Some(f1), Some(f2)) => Some((get(f2)? - get(f1)?) / n - if g.floor_minus_base { direct } else { 0.0 }),
        _ => None,
    };
    let ratio = floor.filter(|f| *f > 0.0).map(|f| own / f);
    let ratio_ok = match (ratio, g.floor_ratio_limit) {
        (Some(r), Some(limit)) => r <= limit,
        (None, Some(_)) => false,
        _ => true,
    };
    let floor_note = match (floor, ratio, g.floor_ratio_limit) {
        (Some(f), Some(r), Some(limit)) => format!("; {r:.3}× the floor ({f:.0}/request; limit {limit}×)"),
        (Some(f), Some(r), None) => format!("; {r:.3}× the floor ({f:.0}/request)"),
        _ => String::new(),
    };
    Ok(Row {
        key: String::new(),
        metric: g.metric.clone(),
        unit: g.unit.clone(),
        measured: Some(own.round()),
        limit: Some(g.hard_limit),
        soft_limit_pct: g.soft_limit_pct,
        baseline: None,
        delta_pct: None,
        status: if own <= g.hard_limit && ratio_ok { Status::Pass } else { Status::Fail },
        note: format!(
            "{target} {proxied:.0}/request − {base} {direct:.0}/request (client, origin and proxy on one thread; every exchange verified){floor_note}"
        ),
        details: json!({
            "requests": g.requests,
            "base": base,
            "target": target,
            "direct_per_request": direct,
            "proxied_per_request": proxied,
            "floor_per_request": floor,
            "floor_ratio": ratio,
            "floor_ratio_limit": g.floor_ratio_limit,
            "floor_minus_base": g.floor_minus_base,
            "handshake": names.get(2).and_then(|t| outcomes.iter().find(|(n, _)| n == t)).and_then(|(_, o)| o.handshake.clone()),
            "raw": counts.iter().filter(|(n, _)| names.contains(n)).map(|(n, v)| (n.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "outcomes": outcomes.iter().map(|(n, o)| (n.clone(), json!(o))).collect::<serde_json::Map<_, _>>(),
            "gungraun": GUNGRAUN_VERSION,
        }),
    })
}

/// Instruction totals per benchmark function from gungraun's JSON lines.
fn parse_counts(stdout: &str) -> Result<Vec<(String, f64)>, InstructionsError> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value = serde_json::from_str(line).map_err(InstructionsError::GungraunJson)?;
        let name = v["function_name"].as_str().unwrap_or_default().to_owned();
        let Some(ir) = find_ir(&v) else { return Err(InstructionsError::NoIr(name)) };
        out.push((name, ir));
    }
    if out.is_empty() {
        return Err(InstructionsError::NoSummary);
    }
    Ok(out)
}

/// The total Ir of a benchmark: `profiles[0].data.total.metrics.Ir.values.new` (gungraun 0.20,
/// summary schema 7).
fn find_ir(v: &Value) -> Option<f64> {
    v["profiles"][0]["data"]["total"]["metrics"]["Ir"]["values"]["new"].as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> InstructionsGate {
        InstructionsGate {
            name: None,
            metric: "m".into(),
            unit: "u".into(),
            workload: "w".into(),
            requests: 100,
            body_bytes: 1024,
            hard_limit: 13_500.0,
            soft_limit_pct: Some(2.0),
            group: None,
            base: None,
            target: None,
            floor: None,
            floor_ratio_limit: None,
            floor_minus_base: false,
            rows: Vec::new(),
        }
    }

    fn outcome(name: &str, requests: u64) -> (String, Outcome) {
        let total = crate::exchange::WARMUP + requests;
        let o = Outcome {
            proxied: name.starts_with("proxied"),
            requests,
            warmup: crate::exchange::WARMUP,
            body_bytes: 1024,
            ok: total,
            origin_served: total,
            error: None,
            handshake: None,
        };
        (name.to_owned(), o)
    }

    fn counts(d1: f64, d2: f64, p1: f64, p2: f64) -> Vec<(String, f64)> {
        benches(&gate()).into_iter().zip([d1, d2, p1, p2]).collect()
    }

    fn outcomes() -> Vec<(String, Outcome)> {
        vec![outcome("direct_n", 100), outcome("direct_2n", 200), outcome("proxied_n", 100), outcome("proxied_2n", 200)]
    }

    #[test]
    fn verified_counts_give_the_proxys_own_cost() {
        let r = judge(&gate(), &counts(1e6, 1.5e6, 2e6, 4e6), &outcomes()).expect("row");
        // direct 5,000/request, proxied 20,000/request: own 15,000 > 13,500.
        assert_eq!(r.measured, Some(15_000.0));
        assert_eq!(r.status, Status::Fail);
        let r = judge(&gate(), &counts(1e6, 1.5e6, 2e6, 3.2e6), &outcomes()).expect("row");
        assert_eq!((r.measured, r.status), (Some(7_000.0), Status::Pass));
    }

    /// The old gate divided by the contract's N whatever the bench ran, and accepted any count.
    #[test]
    fn unverified_or_miscounted_runs_and_impossible_figures_are_errors() {
        let c = counts(1e6, 1.5e6, 2e6, 3.2e6);
        // The bench used another N than the gate divides by.
        let mut o = outcomes();
        o[3] = outcome("proxied_2n", 1000);
        assert!(judge(&gate(), &c, &o).is_err_and(|e| e.to_string().contains("divides by 200")));
        // A run whose exchanges failed (a 404 proxy).
        let mut o = outcomes();
        o[2].1.error = Some("status 404, expected 200".into());
        let e = judge(&gate(), &c, &o).expect_err("a 404 run accepted");
        assert!(matches!(&e, InstructionsError::Unverified { bench, .. } if bench == "proxied_n"), "{e:?}");
        assert!(chain(&e).starts_with("proxied_n: proxied run of 300 exchanges failed") && chain(&e).contains("404"), "{}", chain(&e));
        // An outcome missing.
        assert!(judge(&gate(), &c, &outcomes()[..3]).is_err());
        // A proxy cheaper than the direct path.
        assert!(judge(&gate(), &counts(1e6, 1.5e6, 2e6, 2.4e6), &outcomes()).is_err_and(|e| e.to_string().contains("broken")));
        // A count missing or zero.
        assert!(judge(&gate(), &counts(1e6, 1.5e6, 0.0, 3.2e6), &outcomes()).is_err());
    }

    /// Phase 2's shape: target − base beside a floor; the ratio to the floor is a limit of its own.
    #[test]
    fn a_figure_beside_a_floor_fails_above_its_ratio_limit() {
        let g = InstructionsGate {
            base: Some("proxied_clear".into()),
            target: Some("proxied_tls".into()),
            floor: Some("tls_floor".into()),
            floor_ratio_limit: Some(1.0),
            hard_limit: 1e9,
            ..gate()
        };
        let names = benches(&g);
        assert_eq!(names, ["proxied_clear_n", "proxied_clear_2n", "proxied_tls_n", "proxied_tls_2n", "tls_floor_n", "tls_floor_2n"]);
        let outcomes: Vec<_> = names.iter().enumerate().map(|(i, n)| outcome(n, if i % 2 == 0 { 100 } else { 200 })).collect();
        // TLS adds 1,000/request; the floor does it in 1,250: 0.8×, PASS.
        let c: Vec<_> = names.iter().cloned().zip([1e6, 2e6, 1.1e6, 2.2e6, 5e5, 6.25e5]).collect();
        let r = judge(&g, &c, &outcomes).expect("row");
        assert_eq!((r.measured, r.status), (Some(1_000.0), Status::Pass));
        // The floor does it in 800: 1.25×, FAIL though far below the hard limit.
        let c: Vec<_> = names.iter().cloned().zip([1e6, 2e6, 1.1e6, 2.2e6, 5e5, 5.8e5]).collect();
        let r = judge(&g, &c, &outcomes).expect("row");
        assert_eq!(r.status, Status::Fail, "{}", r.note);
        // A floor bench missing: no figure.
        assert!(judge(&g, &c[..5], &outcomes).is_err());
        // A floor between the same client and origin as the base: the base is taken off it too.
        // The target adds 1,000 over the base (10,000/request); the floor bench counts 11,250,
        // so the floor is 1,250: 0.8×.
        let g = InstructionsGate { floor_minus_base: true, ..g };
        let c: Vec<_> = names.iter().cloned().zip([1e6, 2e6, 1.1e6, 2.2e6, 5e5, 1.625e6]).collect();
        let r = judge(&g, &c, &outcomes).expect("row");
        assert_eq!((r.measured, r.status), (Some(1_000.0), Status::Pass), "{}", r.note);
        assert_eq!(r.details["floor_per_request"].as_f64(), Some(1_250.0));
    }

    /// A per-connection figure is compared with its floor only when both did the same handshakes.
    #[test]
    fn a_floor_that_did_another_handshake_is_refused() {
        let g = InstructionsGate {
            base: Some("proxied_clear_conn".into()),
            target: Some("proxied_tls_full".into()),
            floor: Some("tls_floor_full".into()),
            floor_ratio_limit: Some(1.0),
            hard_limit: 1e9,
            ..gate()
        };
        let names = benches(&g);
        let mut outcomes: Vec<_> = names.iter().enumerate().map(|(i, n)| outcome(n, if i % 2 == 0 { 100 } else { 200 })).collect();
        let full = Some("TLS 1.3 TLS13_AES_256_GCM_SHA384, X25519, Ed25519 certificate, full, 2 session tickets per connection".to_owned());
        for o in &mut outcomes[2..] {
            o.1.handshake.clone_from(&full);
        }
        let c: Vec<_> = names.iter().cloned().zip([1e6, 2e6, 1.1e6, 2.2e6, 5e5, 6.25e5]).collect();
        let r = judge(&g, &c, &outcomes).expect("row");
        assert_eq!(r.details["handshake"].as_str(), full.as_deref());
        outcomes[5].1.handshake = Some(full.as_deref().unwrap_or_default().replace("2 session", "1 session"));
        let e = judge(&g, &c, &outcomes).expect_err("another handshake accepted");
        assert!(matches!(e, InstructionsError::DifferentHandshakes { .. }), "{e}");
        assert!(e.to_string().starts_with("proxied_tls_full_2n did"), "{e}");
    }

    #[test]
    fn reads_ir_from_the_schema_7_summary() {
        let a = r#"{"function_name":"direct_n","profiles":[{"data":{"total":{"metrics":{"Ir":{"values":{"new":1200}}}}}}],"version":"7"}"#;
        let b = r#"{"function_name":"proxied_n","profiles":[{"data":{"total":{"metrics":{"Ir":{"values":{"new":900}}}}}}],"version":"7"}"#;
        let c = parse_counts(&format!("noise\n{a}\n{b}\n")).unwrap_or_default();
        assert_eq!(c, vec![("direct_n".to_owned(), 1200.0), ("proxied_n".to_owned(), 900.0)]);
        assert!(parse_counts("nothing").is_err());
        assert!(parse_counts(r#"{"function_name":"x","profiles":[]}"#).is_err());
    }
}
