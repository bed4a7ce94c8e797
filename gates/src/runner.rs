//! Runs the gates of each contract and produces one row per measured figure.
//!
//! Measurements run in separate processes built by cargo with the requested features (the
//! gates' tests pass `planted-*` features to prove each gate can fail). Planted builds use their
//! own target directory so they never overwrite the binaries of a clean build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::baseline::Baseline;
use crate::contract::{AllocGate, Contract, LatencyGate};
use crate::scan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Fail,
    /// The gate could not measure (tool missing, harness broken, generator overloaded).
    Error,
    /// A control measured for context; it is expected to breach the limit, and does.
    Control,
    /// Shown for information, not gated.
    Info,
}

impl Status {
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Fail | Status::Error)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `phase1:alloc`, `phase1:alloc[hyper]`, ...
    pub key: String,
    pub metric: String,
    pub unit: String,
    pub measured: Option<f64>,
    pub limit: Option<f64>,
    /// Allowed rise against the baseline, in percent (from the contract).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soft_limit_pct: Option<f64>,
    pub baseline: Option<f64>,
    /// Percent change against the baseline.
    pub delta_pct: Option<f64>,
    pub status: Status,
    pub note: String,
    pub details: Value,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub phases: Option<Vec<u32>>,
    pub only: Option<Vec<String>>,
    /// Cargo features for the measured builds (`planted-alloc`, ...).
    pub features: Vec<String>,
    pub verbose: bool,
}

impl Options {
    pub fn wants(&self, gate: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|g| g == gate))
    }
}

/// Runs every selected gate of every selected contract.
pub fn run(opts: &Options, contracts: &[Contract], baseline: &Baseline) -> Vec<Row> {
    let mut rows = Vec::new();
    for c in contracts {
        if opts.phases.as_ref().is_some_and(|p| !p.contains(&c.phase)) {
            continue;
        }
        let prefix = format!("phase{}", c.phase);
        if let (Some(g), true) = (&c.gates.static_, opts.wants("static")) {
            rows.push(static_gate(opts, c, g, &prefix));
        }
        if let (Some(g), true) = (&c.gates.alloc, opts.wants("alloc")) {
            rows.extend(alloc_gate(opts, g, &prefix));
        }
        if let (Some(g), true) = (&c.gates.instructions, opts.wants("instructions")) {
            rows.extend(crate::instructions::gate(opts, g, &prefix));
        }
        if let (Some(g), true) = (&c.gates.latency, opts.wants("latency")) {
            rows.push(latency_gate(opts, g, &prefix));
        }
        if let (Some(g), true) = (&c.gates.syscalls, opts.wants("syscalls")) {
            rows.extend(crate::floor::syscalls_gate(opts, g, &prefix));
        }
        if let (Some(g), true) = (&c.gates.floor, opts.wants("floor")) {
            rows.extend(crate::floor::floor_gate(opts, g, &prefix));
        }
    }
    for r in &mut rows {
        baseline.apply(r);
    }
    rows
}

fn static_gate(opts: &Options, c: &Contract, g: &crate::contract::StaticGate, prefix: &str) -> Row {
    let mut row = Row {
        key: format!("{prefix}:static"),
        metric: g.metric.clone(),
        unit: g.unit.clone(),
        measured: None,
        limit: Some(g.hard_limit),
        soft_limit_pct: None,
        baseline: None,
        delta_pct: None,
        status: Status::Error,
        note: String::new(),
        details: Value::Null,
    };
    match scan::scan_contract(&opts.root, c, &opts.features) {
        Err(e) => row.note = e,
        Ok((violations, files)) => {
            let n = violations.len() as f64;
            row.measured = Some(n);
            row.status = if n <= g.hard_limit { Status::Pass } else { Status::Fail };
            row.note = match violations.first() {
                None => format!("{files} files scanned"),
                Some(v) => format!("{}:{}: {} ({}): {}", v.file.display(), v.line, v.item, v.prohibition, v.reason),
            };
            row.details = json!({
                "files_scanned": files,
                "violations": violations.iter().map(|v| json!({
                    "file": v.file.display().to_string(), "line": v.line, "prohibition": v.prohibition,
                    "item": v.item, "reason": v.reason,
                })).collect::<Vec<_>>(),
            });
        }
    }
    row
}

fn alloc_gate(opts: &Options, g: &AllocGate, prefix: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let exe = match cargo_build(opts, "gates", "alloc-probe") {
        Ok(p) => p,
        Err(e) => {
            rows.push(error_row(format!("{prefix}:alloc"), &g.metric, &g.unit, Some(g.hard_limit), e));
            return rows;
        }
    };
    let mut engines = vec!["native".to_owned()];
    engines.extend(g.report_engines.iter().cloned());
    for engine in engines {
        let key = if engine == "native" { format!("{prefix}:alloc") } else { format!("{prefix}:alloc[{engine}]") };
        let out = Command::new(&exe)
            .args(["--engine", &engine, "--requests", &g.requests.to_string(), "--warmup", &g.warmup.to_string()])
            .args(["--body-bytes", &g.body_bytes.to_string()])
            .stderr(Stdio::piped())
            .output();
        let parsed = out.map_err(|e| format!("cannot run {}: {e}", exe.display())).and_then(|o| {
            if o.status.success() {
                serde_json::from_slice::<Value>(&o.stdout).map_err(|e| format!("alloc-probe printed no JSON: {e}"))
            } else {
                Err(format!("alloc-probe failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
            }
        });
        let v = match parsed {
            Ok(v) => v,
            Err(e) => {
                rows.push(error_row(key, &g.metric, &g.unit, Some(g.hard_limit), e));
                continue;
            }
        };
        let measured = v["allocs_per_request"].as_f64();
        let control = v["control_allocs_per_request"].as_f64().unwrap_or(f64::NAN);
        let mut row = Row {
            key,
            metric: g.metric.clone(),
            unit: g.unit.clone(),
            measured,
            limit: Some(g.hard_limit),
            soft_limit_pct: g.soft_limit_pct,
            baseline: None,
            delta_pct: None,
            status: Status::Error,
            note: format!("{}; {} requests, {:.1} B/request", engine, g.requests, v["bytes_per_request"].as_f64().unwrap_or(0.0)),
            details: v.clone(),
        };
        let breach = measured.is_none_or(|m| m > g.hard_limit + 1e-9);
        row.status = if control != 0.0 {
            row.note = format!("the harness itself allocated {control:.3}/request on the direct path: figure not trustworthy");
            Status::Error
        } else if v["live_blocks_delta"].as_i64().is_some_and(|d| d.unsigned_abs() > 16) && engine == "native" {
            row.note = format!("live heap blocks grew by {} over the run: a leak", v["live_blocks_delta"]);
            Status::Fail
        } else if engine != "native" {
            if breach {
                Status::Control
            } else {
                row.note = format!("the {engine} control no longer breaches the limit: can this gate still see allocations?");
                Status::Error
            }
        } else if breach {
            Status::Fail
        } else {
            Status::Pass
        };
        rows.push(row);
    }
    rows
}

fn latency_gate(opts: &Options, g: &LatencyGate, prefix: &str) -> Row {
    let key = format!("{prefix}:latency");
    match measure_latency(opts, g) {
        Ok(row) => Row { key, ..row },
        Err(e) => error_row(key, &g.metric, &g.unit, Some(g.hard_limit), e),
    }
}

struct Round {
    direct_p99: f64,
    proxied_p99: f64,
    proxied_p999: f64,
    direct_p999: f64,
    valid: bool,
    proxied_errors: u64,
}

/// The processes a measured gate runs: the bundled upstream (CPU 0) and the release proxy with
/// one worker in front of it (CPU 1), pinned when the machine has two CPUs and `taskset`.
pub struct Stage {
    pub upstream: ChildGuard,
    pub upstream_addr: String,
    pub proxy: ChildGuard,
    pub proxy_addr: String,
    pub loadgen: PathBuf,
    pub pin: bool,
}

/// One open-loop loadgen run against `addr`.
pub struct LoadRun<'a> {
    pub addr: &'a str,
    pub rate: u64,
    pub connections: u32,
    pub duration: &'a str,
    pub warmup: &'a str,
}

impl Stage {
    /// Runs loadgen (pinned beside the upstream) with `extra` arguments, writing its JSON report
    /// to `json`, and returns that report. Invalid runs are reported, not refused.
    pub fn load(&self, run: &LoadRun<'_>, extra: &[&str], json: &Path) -> Result<Value, String> {
        let mut cmd = Command::new(&self.loadgen);
        cmd.args(["run", "--url", &format!("http://{}/", run.addr), "--rate", &run.rate.to_string()])
            .args(["--duration", run.duration, "--warmup", run.warmup, "--connections", &run.connections.to_string()])
            .args(extra)
            .arg("--json")
            .arg(json)
            .args(["--quiet", "--allow-invalid"]);
        if self.pin {
            cmd.args(["--cpus", "0"]);
        }
        let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().map_err(|e| format!("loadgen: {e}"))?;
        if !out.status.success() {
            return Err(format!("loadgen run failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
        let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("loadgen JSON: {e}"))
    }
}

/// Builds and starts the [`Stage`]; the proxy's config is written into `tmp`.
pub fn start_stage(opts: &Options, body_bytes: usize, tmp: &Path) -> Result<Stage, String> {
    let proxy = cargo_build(opts, "proxy", "proxy")?;
    let loadgen = cargo_build_plain(opts, "loadgen", "loadgen")?;
    let pin = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2 && which("taskset");

    let mut up_cmd = pinned(pin, "0", &loadgen);
    up_cmd.args(["upstream", "--listen", "127.0.0.1:0", "--body-bytes", &body_bytes.to_string()]);
    let (upstream, upstream_addr) = spawn_listening(up_cmd, "loadgen upstream")?;

    let cfg = tmp.join("proxy.toml");
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"{upstream_addr}\"]\nidle_pool_size = 256\n"
    );
    std::fs::write(&cfg, text).map_err(|e| format!("{}: {e}", cfg.display()))?;
    let mut px_cmd = pinned(pin, "1", &proxy);
    px_cmd.arg("--config").arg(&cfg).args(["--workers", "1"]);
    let (proxy, proxy_addr) = spawn_listening(px_cmd, "proxy")?;
    Ok(Stage { upstream, upstream_addr, proxy, proxy_addr, loadgen, pin })
}

fn measure_latency(opts: &Options, g: &LatencyGate) -> Result<Row, String> {
    let tmp = scratch_dir("latency")?;
    let stage = start_stage(opts, g.body_bytes, &tmp)?;
    let (up_addr, px_addr) = (&stage.upstream_addr, &stage.proxy_addr);

    let mut rounds = Vec::new();
    for r in 0..g.rounds {
        let order: [(&str, &str); 2] =
            if r % 2 == 0 { [("direct", up_addr), ("proxied", px_addr)] } else { [("proxied", px_addr), ("direct", up_addr)] };
        let mut res = [None, None];
        for (i, (what, addr)) in order.iter().enumerate() {
            let json = tmp.join(format!("round{r}-{what}.json"));
            let run = LoadRun { addr, rate: g.rate, connections: g.connections, duration: &g.duration, warmup: &g.warmup };
            let v = stage.load(&run, &["--max-lag", &g.max_lag], &json)?;
            res[i] = Some((*what, v));
        }
        let get = |w: &str| res.iter().flatten().find(|(n, _)| *n == w).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
        let (d, p) = (get("direct"), get("proxied"));
        let errors = |v: &Value| v["errors"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        rounds.push(Round {
            direct_p99: d["latency"]["corrected"]["p99_us"].as_f64().unwrap_or(f64::NAN),
            proxied_p99: p["latency"]["corrected"]["p99_us"].as_f64().unwrap_or(f64::NAN),
            direct_p999: d["latency"]["corrected"]["p99_9_us"].as_f64().unwrap_or(f64::NAN),
            proxied_p999: p["latency"]["corrected"]["p99_9_us"].as_f64().unwrap_or(f64::NAN),
            valid: d["valid"].as_bool() == Some(true) && p["valid"].as_bool() == Some(true),
            proxied_errors: errors(&p),
        });
    }
    let _ = std::fs::remove_dir_all(&tmp);

    let valid: Vec<&Round> = rounds.iter().filter(|r| r.valid).collect();
    let details = json!({
        "pinned": stage.pin,
        "rounds": rounds.iter().map(|r| json!({
            "direct_p99_us": r.direct_p99, "proxied_p99_us": r.proxied_p99,
            "direct_p99_9_us": r.direct_p999, "proxied_p99_9_us": r.proxied_p999,
            "valid": r.valid, "proxied_errors": r.proxied_errors,
        })).collect::<Vec<_>>(),
    });
    let mut row = Row {
        key: String::new(),
        metric: g.metric.clone(),
        unit: g.unit.clone(),
        measured: None,
        limit: Some(g.hard_limit),
        soft_limit_pct: g.soft_limit_pct,
        baseline: None,
        delta_pct: None,
        status: Status::Error,
        note: String::new(),
        details,
    };
    if valid.len() * 2 < rounds.len() || valid.is_empty() {
        row.note = format!(
            "the load generator fell behind its schedule in {} of {} rounds: machine too loaded to measure",
            rounds.len() - valid.len(),
            rounds.len()
        );
        return Ok(row);
    }
    let added = median(valid.iter().map(|r| r.proxied_p99 - r.direct_p99).collect());
    let added999 = median(valid.iter().map(|r| r.proxied_p999 - r.direct_p999).collect());
    let errors: u64 = rounds.iter().map(|r| r.proxied_errors).sum();
    row.measured = Some(added);
    row.note = format!(
        "median of {} rounds: P99 direct {:.0} µs, proxied {:.0} µs; P99.9 added {:.0} µs; {} errors",
        valid.len(),
        median(valid.iter().map(|r| r.direct_p99).collect()),
        median(valid.iter().map(|r| r.proxied_p99).collect()),
        added999,
        errors
    );
    row.status = if errors > g.errors_limit || added > g.hard_limit { Status::Fail } else { Status::Pass };
    Ok(row)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub fn error_row(key: String, metric: &str, unit: &str, limit: Option<f64>, note: String) -> Row {
    Row {
        key,
        metric: metric.to_owned(),
        unit: unit.to_owned(),
        measured: None,
        limit,
        soft_limit_pct: None,
        baseline: None,
        delta_pct: None,
        status: Status::Error,
        note,
        details: Value::Null,
    }
}

/// A child process killed when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits (10 s at most) for its `listening ADDR` line on stdout.
pub fn spawn_listening(mut cmd: Command, what: &str) -> Result<(ChildGuard, String), String> {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().ok_or_else(|| format!("{what}: no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(addr) = line.strip_prefix("listening ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(addr) => Ok((guard, addr)),
        Err(_) => Err(format!("{what} did not print `listening ADDR` within 10 s")),
    }
}

pub fn pinned(pin: bool, cpu: &str, exe: &Path) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", cpu]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

pub fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn scratch_dir(what: &str) -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let d = std::env::temp_dir().join(format!("gates-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    Ok(d)
}

/// Builds `bin` of `package` in release mode with the run's features; returns the executable.
pub fn cargo_build(opts: &Options, package: &str, bin: &str) -> Result<PathBuf, String> {
    build(opts, package, bin, &opts.features)
}

/// Same, without the planted features (tools such as loadgen).
pub fn cargo_build_plain(opts: &Options, package: &str, bin: &str) -> Result<PathBuf, String> {
    build(opts, package, bin, &[])
}

fn build(opts: &Options, package: &str, bin: &str, features: &[String]) -> Result<PathBuf, String> {
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&opts.root).args(["build", "--release", "-p", package, "--bin", bin, "--message-format=json-render-diagnostics"]);
    if !features.is_empty() {
        let mut sorted = features.to_vec();
        sorted.sort();
        cmd.args(["--features", &sorted.join(",")]);
        // Planted builds never overwrite the clean binaries.
        cmd.arg("--target-dir").arg(opts.root.join("target").join(format!("gates-{}", sorted.join("+"))));
    }
    let out =
        cmd.stderr(if opts.verbose { Stdio::inherit() } else { Stdio::piped() }).output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p {package} --bin {bin} failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        ));
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| format!("cargo built no executable named {bin}"))?;
    if opts.verbose {
        eprintln!("gates: built {} in {:.1}s", exe.display(), started.elapsed().as_secs_f64());
    }
    Ok(exe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_nan() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 1.0]), 1.0);
        assert!(median(vec![]).is_nan());
    }
}
