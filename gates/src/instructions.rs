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
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::contract::InstructionsGate;
use crate::runner::{Options, Row, Status, error_row, which};

/// The gungraun version the bench is built with (see the workspace `Cargo.toml`).
pub const GUNGRAUN_VERSION: &str = "0.20.0";

pub fn gate(opts: &Options, g: &InstructionsGate, prefix: &str) -> Vec<Row> {
    let key = format!("{prefix}:instructions");
    match measure(opts, g) {
        Ok(mut row) => {
            row.key = key;
            vec![row]
        }
        Err(e) => vec![error_row(key, &g.metric, &g.unit, Some(g.hard_limit), e)],
    }
}

/// Finds `gungraun-runner` of the right version, installing it into `target/tools` if needed.
pub fn ensure_runner(root: &Path, verbose: bool) -> Result<PathBuf, String> {
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
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if !status.success() || !version_ok(&local) {
        return Err(format!(
            "gungraun-runner {GUNGRAUN_VERSION} is missing and could not be installed; run: cargo install gungraun-runner --version {GUNGRAUN_VERSION} --locked --root {}",
            tools.display()
        ));
    }
    Ok(tools.join("bin"))
}

fn measure(opts: &Options, g: &InstructionsGate) -> Result<Row, String> {
    if !which("valgrind") {
        return Err("valgrind is not installed: apt-get install -y valgrind".to_owned());
    }
    let bin_dir = ensure_runner(&opts.root, opts.verbose)?;
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&opts.root).args(["bench", "-p", "gates", "--bench", "instructions"]);
    if !opts.features.is_empty() {
        let mut f = opts.features.clone();
        f.sort();
        cmd.args(["--features", &f.join(",")]);
        cmd.arg("--target-dir").arg(opts.root.join("target").join(format!("gates-{}", f.join("+"))));
    }
    cmd.args(["--", "--output-format=json"])
        .env("PATH", path)
        .env("GATES_INSTR_REQUESTS", g.requests.to_string())
        .env("GATES_INSTR_BODY_BYTES", g.body_bytes.to_string())
        .stdout(Stdio::piped())
        .stderr(if opts.verbose { Stdio::inherit() } else { Stdio::piped() });
    let out = cmd.output().map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "cargo bench --bench instructions failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let counts = parse_counts(&String::from_utf8_lossy(&out.stdout))?;
    let get = |name: &str| {
        counts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| format!("no instruction count for {name} in the bench output"))
    };
    let (d1, d2, p1, p2) = (get("direct_n")?, get("direct_2n")?, get("proxied_n")?, get("proxied_2n")?);
    let n = g.requests as f64;
    let direct = (d2 - d1) / n;
    let proxied = (p2 - p1) / n;
    let own = proxied - direct;
    Ok(Row {
        key: String::new(),
        metric: g.metric.clone(),
        unit: g.unit.clone(),
        measured: Some(own.round()),
        limit: Some(g.hard_limit),
        soft_limit_pct: g.soft_limit_pct,
        baseline: None,
        delta_pct: None,
        status: if own <= g.hard_limit { Status::Pass } else { Status::Fail },
        note: format!("proxied {proxied:.0}/request − direct {direct:.0}/request (client, origin and proxy on one thread)"),
        details: json!({
            "requests": g.requests,
            "direct_per_request": direct,
            "proxied_per_request": proxied,
            "raw": { "direct_n": d1, "direct_2n": d2, "proxied_n": p1, "proxied_2n": p2 },
            "gungraun": GUNGRAUN_VERSION,
        }),
    })
}

/// Instruction totals per benchmark function from gungraun's JSON lines.
fn parse_counts(stdout: &str) -> Result<Vec<(String, f64)>, String> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("gungraun JSON: {e}"))?;
        let name = v["function_name"].as_str().unwrap_or_default().to_owned();
        let ir = find_ir(&v).ok_or_else(|| format!("no Ir metric for {name} in gungraun's JSON"))?;
        out.push((name, ir));
    }
    if out.is_empty() {
        return Err("gungraun printed no JSON summary lines".to_owned());
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
