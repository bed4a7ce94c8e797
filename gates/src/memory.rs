//! The memory gate (issue 14): resident memory per idle keep-alive client connection, and whether
//! it goes back when the connections leave.
//!
//! The release proxy (1 worker, pinned on CPU 1, `--plant` passed through like every measured
//! gate) in front of the bundled upstream (CPU 0), with the contract's `proxy_config` appended to
//! its config (`limits.max_connections` above the largest count). `loadgen hold` (CPU 0) opens
//! each count of `connections` in turn, each connection sending one verified keep-alive GET and
//! then staying idle, and reads the proxy's RSS (VmRSS, summed with any descendants) before,
//! while held (after `settle` of idleness) and after closing them all (after `settle` again).
//!
//! Rows: `memory:per_conn@N` for each count, (held − before) / N in KiB against
//! `per_conn_kib_limit`, and `memory:after_release@N` for the largest count, after ÷ before
//! against `after_ratio_limit`. A count in which any connection failed (connect, read, a status
//! other than 200, closed while held, ...) is not a measurement of N connections: its rows are
//! ERROR, as are missing, zero or non-finite RSS figures and a negative per-connection figure.
//!
//! With `tls` (phase 2) the proxy's listener terminates TLS with a certificate made at start (the
//! syscall gate's TLS stage, [`start_stage_tls`]) and `loadgen hold` opens `https://` connections
//! trusting it (`--ca`, `--sni`): each does a full or resumed TLS handshake, then its verified
//! GET, then idles as a TLS connection. A count whose report does not say that every connection
//! handshook (full + resumed = N) is not a measurement of N TLS connections: ERROR.
//!
//! With `http2_connections` (phase 2, needs `tls`) the same proxy then holds idle HTTP/2
//! connections (`loadgen hold --http2`: ALPN h2, the preface and SETTINGS exchange, one verified
//! GET on a stream, then idle with no stream open): a warm-up crowd of `warmup`, then the counts
//! in turn, once per round. Rows `memory:http2@N` (KiB per idle HTTP/2 connection against
//! `http2_kib_limit`) and `memory:http2_after_release@<largest>` (after ÷ before against
//! `http2_after_ratio_limit`), judged as the rows above.
//!
//! With `http3_connections` (phase 3, needs `tls`: the listener also gets `http3 = true`) the
//! same proxy then holds idle HTTP/3 connections (`loadgen hold --http3`: QUIC from a UDP socket
//! per connection, TLS 1.3 with ALPN h3, the HTTP/3 control streams, one verified GET, then idle
//! with PINGs): a warm-up crowd of `warmup`, then the counts in turn, once per round. Rows
//! `memory:http3@N` and `memory:http3_after_release@<largest>`, as the HTTP/2 rows. A contract
//! whose `connections` is empty measures only these protocol rows (phase 3 does not rerun the
//! HTTP/1.1 and TLS rows of phases 1 and 2).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use serde_json::{Value, json};

use crate::contract::MemoryGate;
use crate::error::chain;
use crate::runner::{Options, Row, RunnerError, Stage, StageProtocol, Status, error_row, pinned, scratch_dir, start_stage_proto};

/// Why the memory gate measured nothing, or why a count is not a measurement; shown as every
/// row's note ([`chain`]).
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("contract: memory.connections must be counts of at least 1")]
    NoCounts,
    #[error("contract: memory.connections lists a count twice")]
    CountTwice,
    #[error("contract: memory.{0} must be a positive number")]
    NotPositive(&'static str),
    #[error("contract: memory.rounds must be at least 1")]
    NoRounds,
    #[error("contract: memory.settle {0:?}")]
    Settle(String, #[source] humantime::DurationError),
    #[error("raising RLIMIT_NOFILE")]
    RaiseNofile(#[source] std::io::Error),
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error(
        "the proxy may open at most {limit} files (RLIMIT_NOFILE, inherited from this runner): holding {largest} connections \
         needs {needed}; raise the soft limit (ulimit -n) before running the gates"
    )]
    ProxyNofile { limit: u64, largest: u64, needed: u64 },
    #[error("loadgen hold")]
    Spawn(#[source] std::io::Error),
    #[error("loadgen hold failed ({status}): {last}")]
    HoldFailed { status: ExitStatus, last: String },
    #[error("{}", .0.display())]
    ReadReport(PathBuf, #[source] std::io::Error),
    #[error("loadgen hold JSON")]
    Report(#[source] serde_json::Error),
    #[error("invalid: {missing} of {connections} connections were not verified and held ({note})")]
    Unverified { missing: u64, connections: u64, note: String },
    #[error("RSS {0} is missing, zero or not a number in loadgen hold's report")]
    Rss(&'static str),
    #[error("invalid: loadgen hold reports {handshakes} for {connections} connections, not a TLS handshake each")]
    NotTls { handshakes: String, connections: u64 },
    #[error("the TLS stage has no certificate for loadgen hold to trust")]
    NoCertificate,
    #[error("contract: memory.http2_connections needs tls = true (HTTP/2 by ALPN; the stage has no h2c listener)")]
    Http2WithoutTls,
    #[error("contract: memory.http3_connections needs tls = true (QUIC carries TLS 1.3; the listener is the TLS one with http3 = true)")]
    Http3WithoutTls,
    #[error("contract: memory measures nothing: list connections, http2_connections or http3_connections")]
    NothingToHold,
}

/// File descriptors the proxy needs beside the held connections (listener, upstream pool, epoll,
/// admin, log).
const PROXY_FD_MARGIN: u64 = 64;

/// What `loadgen hold` measured for one connection count (its `--json`, `counts[]`). Missing
/// figures are NaN, so the judging sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub connections: u64,
    /// Connections verified and still open when the held RSS was read.
    pub n_ok: u64,
    /// Failed connections, all kinds.
    pub failures: u64,
    /// `kind n, kind n; first: message` for the failures.
    pub failure_note: String,
    pub rss_before_kib: f64,
    pub rss_held_kib: f64,
    pub rss_after_kib: f64,
    /// `https://`: the held connections' TLS handshakes, (full, resumed); `None` when the report
    /// has none (cleartext).
    pub tls_handshakes: Option<(u64, u64)>,
}

impl Held {
    /// Every figure of the count `n` in a `loadgen hold` report, or `None` when it holds none.
    pub fn from_report(v: &Value, n: u64) -> Option<Held> {
        let c = v["counts"].as_array()?.iter().find(|c| c["connections"].as_u64() == Some(n))?;
        Held::from_count(c, n)
    }

    /// The figures of the report's `index`-th count, which must be a count of `n` (`None`
    /// otherwise: the report is not of the sequence the gate asked for).
    pub fn at(v: &Value, index: usize, n: u64) -> Option<Held> {
        Held::from_count(v["counts"].as_array()?.get(index)?, n)
    }

    fn from_count(c: &Value, n: u64) -> Option<Held> {
        if c["connections"].as_u64() != Some(n) {
            return None;
        }
        let kib = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
        let (mut failures, mut kinds) = (0, Vec::new());
        for (k, x) in c["failures"].as_object().into_iter().flatten() {
            let x = x.as_u64().unwrap_or(0);
            if x > 0 {
                failures += x;
                kinds.push(format!("{k} {x}"));
            }
        }
        let mut failure_note = kinds.join(", ");
        if let Some(first) = c["first_failure"].as_str() {
            failure_note = format!("{failure_note}; first: {first}");
        }
        let hs = &c["tls_handshakes"];
        let tls_handshakes = hs["full"].as_u64().zip(hs["resumed"].as_u64());
        Some(Held {
            connections: n,
            n_ok: c["n_ok"].as_u64().unwrap_or(0),
            failures,
            failure_note,
            rss_before_kib: kib("rss_before_kib"),
            rss_held_kib: kib("rss_held_kib"),
            rss_after_kib: kib("rss_after_kib"),
            tls_handshakes,
        })
    }

    /// The count is a measurement of `connections` idle connections (each a TLS connection that
    /// handshook, full or resumed, when `tls`), or why not.
    fn verified(&self, tls: bool) -> Result<(), MemoryError> {
        if self.failures > 0 || self.n_ok != self.connections {
            return Err(MemoryError::Unverified {
                missing: self.connections.saturating_sub(self.n_ok),
                connections: self.connections,
                note: if self.failure_note.is_empty() { "no failure reported".to_owned() } else { self.failure_note.clone() },
            });
        }
        if tls {
            let handshook = self.tls_handshakes.map(|(f, r)| f.saturating_add(r));
            if handshook != Some(self.connections) {
                return Err(MemoryError::NotTls {
                    handshakes: self
                        .tls_handshakes
                        .map_or_else(|| "no TLS handshakes".to_owned(), |(f, r)| format!("{f} full + {r} resumed handshakes")),
                    connections: self.connections,
                });
            }
        }
        Ok(())
    }

    /// ` (F full + R resumed handshakes)` for a TLS count, empty otherwise.
    fn handshakes_note(&self) -> String {
        self.tls_handshakes.map_or_else(String::new, |(f, r)| format!(" ({f} full + {r} resumed handshakes)"))
    }
}

fn positive(what: &'static str, x: f64) -> Result<f64, MemoryError> {
    if x.is_finite() && x > 0.0 { Ok(x) } else { Err(MemoryError::Rss(what)) }
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// The `per_conn@N` verdict: (status, KiB per connection, note).
pub fn judge_per_conn(limit: f64, n: u64, h: Option<&Held>) -> (Status, Option<f64>, String) {
    judge_per_conn_as(limit, n, h, "idle keep-alive connections", false)
}

/// [`judge_per_conn`] for connections held as `what` says (the note's wording); with `tls`, a
/// count is a measurement only when every connection handshook.
pub fn judge_per_conn_as(limit: f64, n: u64, h: Option<&Held>, what: &str, tls: bool) -> (Status, Option<f64>, String) {
    let Some(h) = h else {
        return (Status::Error, None, format!("loadgen hold reported no figures for {n} connections"));
    };
    let figures = h.verified(tls).and_then(|()| Ok((positive("before", h.rss_before_kib)?, positive("held", h.rss_held_kib)?)));
    let (before, held) = match figures {
        Ok(f) => f,
        Err(e) => return (Status::Error, None, chain(&e)),
    };
    let per = (held - before) / h.n_ok as f64;
    if !per.is_finite() || per < 0.0 {
        return (
            Status::Error,
            None,
            format!("RSS fell from {before:.0} to {held:.0} KiB while {n} connections were held: not a measurement"),
        );
    }
    let per = (per * 1000.0).round() / 1000.0;
    let note = format!(
        "RSS {:.1} MiB before, {:.1} MiB with {n} {what}{} (+{:.1} MiB: {per:.2} KiB each; limit {limit})",
        mib(before),
        mib(held),
        h.handshakes_note(),
        mib(held - before)
    );
    (if per <= limit { Status::Pass } else { Status::Fail }, Some(per), note)
}

/// The `after_release@N` verdict: (status, after ÷ before, note).
pub fn judge_after_release(limit: f64, n: u64, h: Option<&Held>) -> (Status, Option<f64>, String) {
    judge_after_release_as(limit, n, h, false)
}

/// [`judge_after_release`]; with `tls`, a count is a measurement only when every connection
/// handshook.
pub fn judge_after_release_as(limit: f64, n: u64, h: Option<&Held>, tls: bool) -> (Status, Option<f64>, String) {
    let Some(h) = h else {
        return (Status::Error, None, format!("loadgen hold reported no figures for {n} connections"));
    };
    let figures = h
        .verified(tls)
        .and_then(|()| Ok((positive("before", h.rss_before_kib)?, positive("held", h.rss_held_kib)?, positive("after", h.rss_after_kib)?)));
    let (before, held, after) = match figures {
        Ok(f) => f,
        Err(e) => return (Status::Error, None, chain(&e)),
    };
    let ratio = ((after / before) * 1000.0).round() / 1000.0;
    let note = format!(
        "RSS {:.1} MiB before {n} {}connections, {:.1} MiB held, {:.1} MiB after they closed ({:+.1} MiB kept; limit ×{limit})",
        mib(before),
        if tls { "TLS " } else { "" },
        mib(held),
        mib(after),
        mib(after - before)
    );
    (if ratio <= limit { Status::Pass } else { Status::Fail }, Some(ratio), note)
}

/// One verdict from every round's: an ERROR in any round is the row's; PASS when every round
/// passes, FAIL when every round fails, INCONCLUSIVE when they straddle the limit (the noise is as
/// large as the distance to it). The figure is the median round's (the lower middle of an even
/// number), its note that round's with every round's figure appended.
pub fn combine_rounds(rounds: Vec<(Status, Option<f64>, String)>) -> (Status, Option<f64>, String) {
    if let Some(e) = rounds.iter().find(|r| r.0 == Status::Error || r.1.is_none()) {
        return (Status::Error, None, e.2.clone());
    }
    if rounds.is_empty() {
        return (Status::Error, None, "no round was measured".to_owned());
    }
    let all = |s: Status| rounds.iter().all(|r| r.0 == s);
    let status = if all(Status::Pass) {
        Status::Pass
    } else if all(Status::Fail) {
        Status::Fail
    } else {
        Status::Inconclusive
    };
    let figures: Vec<String> = rounds.iter().map(|r| r.1.map_or_else(|| "-".to_owned(), |m| format!("{m}"))).collect();
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| rounds[a].1.partial_cmp(&rounds[b].1).unwrap_or(std::cmp::Ordering::Equal));
    let (_, measured, note) = &rounds[order[(order.len() - 1) / 2]];
    let verdict = if status == Status::Inconclusive { "rounds straddle the limit; " } else { "" };
    (status, *measured, format!("{note}; median of {} rounds ({verdict}{})", rounds.len(), figures.join(", ")))
}

/// The contract's figures make sense (else every row is an ERROR naming the key).
fn check_contract(g: &MemoryGate) -> Result<(), MemoryError> {
    if g.connections.is_empty() && g.http2_connections.is_empty() && g.http3_connections.is_empty() {
        return Err(MemoryError::NothingToHold);
    }
    // Each list: counts of at least 1, none twice (a row per count).
    for counts in [&g.connections, &g.http2_connections, &g.http3_connections] {
        if counts.contains(&0) {
            return Err(MemoryError::NoCounts);
        }
        let mut sorted = counts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != counts.len() {
            return Err(MemoryError::CountTwice);
        }
    }
    if !g.connections.is_empty() {
        for (k, v) in [("per_conn_kib_limit", g.per_conn_kib_limit), ("after_ratio_limit", g.after_ratio_limit)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(MemoryError::NotPositive(k));
            }
        }
    }
    if g.rounds == 0 {
        return Err(MemoryError::NoRounds);
    }
    if g.partial_head_connections.contains(&0) {
        return Err(MemoryError::NoCounts);
    }
    let positive_limit = g.partial_head_kib_limit.is_finite() && g.partial_head_kib_limit > 0.0;
    if !g.partial_head_connections.is_empty() && !positive_limit {
        return Err(MemoryError::NotPositive("partial_head_kib_limit"));
    }
    if !g.http2_connections.is_empty() {
        if g.http2_connections.contains(&0) {
            return Err(MemoryError::NoCounts);
        }
        if !g.tls {
            return Err(MemoryError::Http2WithoutTls);
        }
        for (k, v) in [("http2_kib_limit", g.http2_kib_limit), ("http2_after_ratio_limit", g.http2_after_ratio_limit)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(MemoryError::NotPositive(k));
            }
        }
    }
    if !g.http3_connections.is_empty() {
        if !g.tls {
            return Err(MemoryError::Http3WithoutTls);
        }
        for (k, v) in [("http3_kib_limit", g.http3_kib_limit), ("http3_after_ratio_limit", g.http3_after_ratio_limit)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(MemoryError::NotPositive(k));
            }
        }
    }
    humantime::parse_duration(g.settle.trim()).map_err(|e| MemoryError::Settle(g.settle.clone(), e))?;
    Ok(())
}

/// The soft `Max open files` of a process (`/proc/PID/limits`); `None` when unreadable or
/// unlimited.
fn nofile(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

const AFTER_METRIC: &str = "proxy RSS after the largest crowd of idle keep-alive connections closed ÷ RSS before it came";
const AFTER_METRIC_TLS: &str = "proxy RSS after the largest crowd of idle TLS keep-alive connections closed ÷ RSS before it came";
const AFTER_UNIT: &str = "ratio";
const PARTIAL_METRIC: &str = "proxy RSS per keep-alive client connection part-way through its next request head";
const HTTP2_METRIC: &str = "proxy RSS per idle HTTP/2 client connection over TLS (ALPN h2; preface, SETTINGS and one GET, then idle) ((held − before) ÷ connections; VmRSS)";
const HTTP2_AFTER_METRIC: &str = "proxy RSS after the largest crowd of idle HTTP/2 connections closed ÷ RSS before it came";

const HTTP3_METRIC: &str = "proxy RSS per idle HTTP/3 client connection (QUIC, TLS 1.3 with ALPN h3; the control streams and one GET, then idle) ((held − before) ÷ connections; VmRSS)";
const HTTP3_AFTER_METRIC: &str = "proxy RSS after the largest crowd of idle HTTP/3 connections closed ÷ RSS before it came";

/// What one `loadgen hold` run holds: plain keep-alive connections (HTTP/1.1, over TLS with
/// `tls`), connections part-way through a head, idle HTTP/2 or idle HTTP/3 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Keepalive,
    PartialHead,
    Http2,
    Http3,
}

/// The rows of one protocol held after a warm-up crowd (`http2`, `http3`): `<name>@N` per count and
/// `<name>_after_release@<largest>`.
struct ProtocolRows<'a> {
    name: &'static str,
    counts: &'a [u64],
    kib_limit: f64,
    after_ratio_limit: f64,
    metric: &'static str,
    after_metric: &'static str,
    /// How the notes call the held connections.
    what: &'static str,
}

impl ProtocolRows<'_> {
    fn largest(&self) -> u64 {
        self.counts.iter().copied().max().unwrap_or(0)
    }

    fn key(&self, prefix: &str, n: u64) -> String {
        format!("{prefix}:memory:{}@{n}", self.name)
    }

    fn after_key(&self, prefix: &str) -> String {
        format!("{prefix}:memory:{}_after_release@{}", self.name, self.largest())
    }

    fn errors(&self, prefix: &str, unit: &str, e: &str) -> Vec<Row> {
        let mut rows: Vec<Row> =
            self.counts.iter().map(|&n| error_row(self.key(prefix, n), self.metric, unit, Some(self.kib_limit), e.to_owned())).collect();
        if !self.counts.is_empty() {
            rows.push(error_row(self.after_key(prefix), self.after_metric, AFTER_UNIT, Some(self.after_ratio_limit), e.to_owned()));
        }
        rows
    }

    /// The rows from `report` (a warm-up crowd when `warmed`, then the counts once per round).
    fn rows(&self, prefix: &str, g: &MemoryGate, report: &Value, stage: &Value, warmed: usize) -> Vec<Row> {
        let rounds = g.rounds as usize;
        let per_round = self.counts.len();
        let at = |round: usize, i: usize| warmed + round * per_round + i;
        let counts = |i: usize| -> Value {
            Value::Array((0..rounds).map(|r| report["counts"].get(at(r, i)).cloned().unwrap_or(Value::Null)).collect())
        };
        let warmup = if warmed > 0 { report["counts"].get(0).cloned().unwrap_or(Value::Null) } else { Value::Null };
        let row =
            |key: String, metric: &str, unit: &str, limit: f64, (status, measured, note): (Status, Option<f64>, String), i: usize| Row {
                key,
                metric: metric.to_owned(),
                unit: unit.to_owned(),
                measured,
                limit: Some(limit),
                soft_limit_pct: None,
                baseline: None,
                delta_pct: None,
                status,
                note,
                details: json!({ "stage": stage, "settle": g.settle, "warmup": warmup, "rounds": counts(i), "hold_meta": report["meta"] }),
            };
        let held = |round: usize, i: usize, n: u64| Held::at(report, at(round, i), n);
        let mut rows = Vec::new();
        for (i, &n) in self.counts.iter().enumerate() {
            let verdicts = (0..rounds).map(|r| judge_per_conn_as(self.kib_limit, n, held(r, i, n).as_ref(), self.what, g.tls)).collect();
            rows.push(row(self.key(prefix, n), self.metric, &g.unit, self.kib_limit, combine_rounds(verdicts), i));
        }
        let largest = self.largest();
        if let Some(i) = self.counts.iter().position(|&c| c == largest) {
            let verdicts =
                (0..rounds).map(|r| judge_after_release_as(self.after_ratio_limit, largest, held(r, i, largest).as_ref(), g.tls)).collect();
            rows.push(row(self.after_key(prefix), self.after_metric, AFTER_UNIT, self.after_ratio_limit, combine_rounds(verdicts), i));
        }
        rows
    }
}

/// Runs `loadgen hold` (pinned beside the upstream) against the stage's proxy for `counts` in
/// turn, holding them as `how` says; returns its JSON report.
fn hold(stage: &Stage, g: &MemoryGate, tmp: &std::path::Path, name: &str, counts: &[u64], how: Hold) -> Result<Value, MemoryError> {
    let pid = stage.proxy.0.id();
    let json_path = tmp.join(name);
    let counts: Vec<String> = counts.iter().map(u64::to_string).collect();
    let mut cmd = pinned(stage.pin, "0", &stage.loadgen);
    let scheme = if g.tls { "https" } else { "http" };
    cmd.args(["hold", "--url", &format!("{scheme}://{}/", stage.proxy_addr), "--pid", &pid.to_string()]);
    if g.tls {
        // Full handshakes, then resumed ones from loadgen's session cache (its default).
        let (cert, _) = stage.tls.as_ref().ok_or(MemoryError::NoCertificate)?;
        cmd.arg("--ca").arg(cert).args(["--sni", crate::tlsclient::SERVER_NAME]);
    }
    cmd.args(["--connections", &counts.join(","), "--settle", &g.settle, "--allow-failures", "--json"]).arg(&json_path);
    match how {
        Hold::Keepalive => {}
        Hold::PartialHead => {
            cmd.arg("--partial-head");
        }
        Hold::Http2 => {
            cmd.arg("--http2");
        }
        Hold::Http3 => {
            cmd.arg("--http3");
        }
    }
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().map_err(MemoryError::Spawn)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        return Err(MemoryError::HoldFailed { status: out.status, last: last.to_owned() });
    }
    let text = std::fs::read_to_string(&json_path).map_err(|e| MemoryError::ReadReport(json_path.clone(), e))?;
    serde_json::from_str(&text).map_err(MemoryError::Report)
}

pub fn gate(opts: &Options, g: &MemoryGate, prefix: &str) -> Vec<Row> {
    let largest = g.connections.iter().copied().max().unwrap_or(0);
    let per_key = |n: u64| format!("{prefix}:memory:per_conn@{n}");
    let after_key = format!("{prefix}:memory:after_release@{largest}");
    let partial_key = |n: u64| format!("{prefix}:memory:partial_head@{n}");
    let h2 = ProtocolRows {
        name: "http2",
        counts: &g.http2_connections,
        kib_limit: g.http2_kib_limit,
        after_ratio_limit: g.http2_after_ratio_limit,
        metric: HTTP2_METRIC,
        after_metric: HTTP2_AFTER_METRIC,
        what: "idle HTTP/2 connections over TLS",
    };
    let h3 = ProtocolRows {
        name: "http3",
        counts: &g.http3_connections,
        kib_limit: g.http3_kib_limit,
        after_ratio_limit: g.http3_after_ratio_limit,
        metric: HTTP3_METRIC,
        after_metric: HTTP3_AFTER_METRIC,
        what: "idle HTTP/3 connections",
    };
    let after_metric = if g.tls { AFTER_METRIC_TLS } else { AFTER_METRIC };
    let errors = |e: MemoryError| -> Vec<Row> {
        let e = chain(&e);
        let mut rows: Vec<Row> =
            g.connections.iter().map(|&n| error_row(per_key(n), &g.metric, &g.unit, Some(g.per_conn_kib_limit), e.clone())).collect();
        if !g.connections.is_empty() {
            rows.push(error_row(after_key.clone(), after_metric, AFTER_UNIT, Some(g.after_ratio_limit), e.clone()));
        }
        for &n in &g.partial_head_connections {
            rows.push(error_row(partial_key(n), PARTIAL_METRIC, &g.unit, Some(g.partial_head_kib_limit), e.clone()));
        }
        rows.extend(h2.errors(prefix, &g.unit, &e));
        rows.extend(h3.errors(prefix, &g.unit, &e));
        rows
    };
    if let Err(e) = check_contract(g) {
        return errors(e);
    }
    let g = &MemoryGate { rounds: opts.memory_rounds.unwrap_or(g.rounds), ..g.clone() };
    let run = || -> Result<(Value, Value, Value, Value, Value), MemoryError> {
        let tmp = scratch_dir("memory")?;
        // The proxy inherits this runner's open-file limit: raise the soft limit to the hard one
        // first, as `loadgen hold` does for itself (a 1,024 default cannot hold 10,000).
        loadgen::hold::raise_nofile().map_err(MemoryError::RaiseNofile)?;
        // HTTP/3 rows: the TLS listener also serves HTTP/3 (its TCP side is unchanged).
        let protocol = if g.http3_connections.is_empty() { StageProtocol::Http1 } else { StageProtocol::H3 };
        let stage = start_stage_proto(opts, g.body_bytes, &tmp, &g.proxy_config, g.tls, protocol)?;
        let pid = stage.proxy.0.id();
        let largest = largest.max(g.partial_head_connections.iter().copied().max().unwrap_or(0)).max(h2.largest()).max(h3.largest());
        if let Some(limit) = nofile(pid).filter(|&l| l < largest + PROXY_FD_MARGIN) {
            return Err(MemoryError::ProxyNofile { limit, largest, needed: largest + PROXY_FD_MARGIN });
        }
        let report =
            if g.connections.is_empty() { Value::Null } else { hold(&stage, g, &tmp, "hold.json", &sequence(g), Hold::Keepalive)? };
        // Then the same proxy holds connections part-way through a head, the counts in turn,
        // once per round.
        let partial_counts: Vec<u64> = (0..g.rounds).flat_map(|_| g.partial_head_connections.iter().copied()).collect();
        let partial = if partial_counts.is_empty() {
            Value::Null
        } else {
            hold(&stage, g, &tmp, "partial.json", &partial_counts, Hold::PartialHead)?
        };
        // Then idle HTTP/2 connections, then idle HTTP/3 ones: each a warm-up crowd, then the
        // counts in turn, once per round.
        let h2_report = if g.http2_connections.is_empty() {
            Value::Null
        } else {
            hold(&stage, g, &tmp, "http2.json", &protocol_sequence(g, &g.http2_connections), Hold::Http2)?
        };
        let h3_report = if g.http3_connections.is_empty() {
            Value::Null
        } else {
            hold(&stage, g, &tmp, "http3.json", &protocol_sequence(g, &g.http3_connections), Hold::Http3)?
        };
        let _ = std::fs::remove_dir_all(&tmp);
        Ok((report, partial, h2_report, h3_report, json!({ "pinned": stage.pin, "proxy_pid": pid, "tls": g.tls })))
    };
    let (report, partial, h2_report, h3_report, stage) = match run() {
        Ok(r) => r,
        Err(e) => return errors(e),
    };
    let warmed = usize::from(g.warmup > 0);
    let per_round = g.connections.len();
    let counts = |n: u64| -> Value {
        let at = |i: usize| report["counts"].get(i).cloned().unwrap_or(Value::Null);
        let i = g.connections.iter().position(|&c| c == n).unwrap_or(0);
        Value::Array((0..g.rounds as usize).map(|r| at(warmed + r * per_round + i)).collect())
    };
    let warmup = if g.warmup > 0 { report["counts"].get(0).cloned().unwrap_or(Value::Null) } else { Value::Null };
    let details =
        |n: u64| json!({ "stage": stage, "settle": g.settle, "warmup": warmup, "rounds": counts(n), "hold_meta": report["meta"] });
    let row = |key: String, metric: &str, unit: &str, limit: f64, (status, measured, note): (Status, Option<f64>, String), n: u64| Row {
        key,
        metric: metric.to_owned(),
        unit: unit.to_owned(),
        measured,
        limit: Some(limit),
        soft_limit_pct: None,
        baseline: None,
        delta_pct: None,
        status,
        note,
        details: details(n),
    };
    // The report's counts in the order asked: the warm-up, then each round's counts in turn.
    let held = |round: usize, i: usize, n: u64| Held::at(&report, warmed + round * per_round + i, n);
    let rounds = g.rounds as usize;
    let mut rows = Vec::new();
    let idle = if g.tls { "idle TLS keep-alive connections" } else { "idle keep-alive connections" };
    for (i, &n) in g.connections.iter().enumerate() {
        let verdicts = (0..rounds).map(|r| judge_per_conn_as(g.per_conn_kib_limit, n, held(r, i, n).as_ref(), idle, g.tls)).collect();
        rows.push(row(per_key(n), &g.metric, &g.unit, g.per_conn_kib_limit, combine_rounds(verdicts), n));
    }
    if let Some(i) = g.connections.iter().position(|&c| c == largest) {
        let verdicts =
            (0..rounds).map(|r| judge_after_release_as(g.after_ratio_limit, largest, held(r, i, largest).as_ref(), g.tls)).collect();
        rows.push(row(after_key, after_metric, AFTER_UNIT, g.after_ratio_limit, combine_rounds(verdicts), largest));
    }
    let per_round = g.partial_head_connections.len();
    for (i, &n) in g.partial_head_connections.iter().enumerate() {
        let verdicts = (0..rounds)
            .map(|r| {
                let h = Held::at(&partial, r * per_round + i, n);
                judge_per_conn_as(g.partial_head_kib_limit, n, h.as_ref(), "connections part-way through a request head", g.tls)
            })
            .collect();
        let (status, measured, note) = combine_rounds(verdicts);
        let counts: Vec<Value> = (0..rounds).map(|r| partial["counts"].get(r * per_round + i).cloned().unwrap_or(Value::Null)).collect();
        rows.push(Row {
            key: partial_key(n),
            metric: PARTIAL_METRIC.to_owned(),
            unit: g.unit.clone(),
            measured,
            limit: Some(g.partial_head_kib_limit),
            soft_limit_pct: None,
            baseline: None,
            delta_pct: None,
            status,
            note,
            details: json!({ "stage": stage, "settle": g.settle, "rounds": counts, "hold_meta": partial["meta"] }),
        });
    }
    rows.extend(h2.rows(prefix, g, &h2_report, &stage, warmed));
    rows.extend(h3.rows(prefix, g, &h3_report, &stage, warmed));
    rows
}

/// The counts `loadgen hold` is asked to hold, in turn: the warm-up (when there is one), then
/// the contract's counts once per round.
pub fn sequence(g: &MemoryGate) -> Vec<u64> {
    protocol_sequence(g, &g.connections)
}

/// The HTTP/2 counts `loadgen hold --http2` is asked for: a warm-up crowd (as [`sequence`]),
/// then every round's counts in turn.
pub fn http2_sequence(g: &MemoryGate) -> Vec<u64> {
    protocol_sequence(g, &g.http2_connections)
}

/// A warm-up crowd of `warmup` (when there is one), then `counts` once per round.
fn protocol_sequence(g: &MemoryGate, counts: &[u64]) -> Vec<u64> {
    let warm = (g.warmup > 0).then_some(g.warmup);
    warm.into_iter().chain((0..g.rounds).flat_map(|_| counts.iter().copied())).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn held(n: u64, before: f64, held: f64, after: f64) -> Held {
        Held {
            connections: n,
            n_ok: n,
            failures: 0,
            failure_note: String::new(),
            rss_before_kib: before,
            rss_held_kib: held,
            rss_after_kib: after,
            tls_handshakes: None,
        }
    }

    #[test]
    fn per_conn_pass_and_fail_just_above_the_limit() {
        // 1,000 connections, +1,000 KiB: exactly 1.0 KiB each, at the limit: PASS.
        let (s, m, note) = judge_per_conn(1.0, 1000, Some(&held(1000, 8000.0, 9000.0, 8000.0)));
        assert_eq!((s, m), (Status::Pass, Some(1.0)), "{note}");
        // +1,010 KiB: 1.01 KiB each: FAIL.
        let (s, m, _) = judge_per_conn(1.0, 1000, Some(&held(1000, 8000.0, 9010.0, 8000.0)));
        assert_eq!((s, m), (Status::Fail, Some(1.01)));
        // What the proxy measured when the gate was written: ~25 KiB each.
        let (s, m, note) = judge_per_conn(1.0, 10000, Some(&held(10000, 30_000.0, 280_000.0, 270_000.0)));
        assert_eq!((s, m), (Status::Fail, Some(25.0)));
        assert!(note.contains("25.00 KiB each"), "{note}");
    }

    #[test]
    fn after_release_pass_and_fail_just_above_the_limit() {
        let (s, m, _) = judge_after_release(1.10, 10000, Some(&held(10000, 10_000.0, 20_000.0, 11_000.0)));
        assert_eq!((s, m), (Status::Pass, Some(1.1)));
        let (s, m, note) = judge_after_release(1.10, 10000, Some(&held(10000, 10_000.0, 20_000.0, 11_020.0)));
        assert_eq!((s, m), (Status::Fail, Some(1.102)), "{note}");
        assert!(note.contains("+1.0 MiB kept"), "{note}");
    }

    #[test]
    fn missing_zero_or_nan_figures_are_errors() {
        assert_eq!(judge_per_conn(1.0, 1000, None).0, Status::Error);
        assert_eq!(judge_after_release(1.1, 1000, None).0, Status::Error);
        for bad in [f64::NAN, 0.0, f64::INFINITY, -5.0] {
            let h = held(1000, bad, 9000.0, 8000.0);
            let (s, m, note) = judge_per_conn(1.0, 1000, Some(&h));
            assert_eq!((s, m), (Status::Error, None), "{bad}");
            assert!(note.contains("RSS before is missing, zero or not a number"), "{note}");
            assert_eq!(judge_after_release(1.1, 1000, Some(&h)).0, Status::Error, "{bad}");
            assert_eq!(judge_per_conn(1.0, 1000, Some(&held(1000, 8000.0, bad, 8000.0))).0, Status::Error, "{bad}");
            assert_eq!(judge_after_release(1.1, 1000, Some(&held(1000, 8000.0, 9000.0, bad))).0, Status::Error, "{bad}");
        }
        // RSS fell while the connections were held: not a figure that may pass.
        let (s, m, note) = judge_per_conn(1.0, 1000, Some(&held(1000, 9000.0, 8000.0, 8000.0)));
        assert_eq!((s, m), (Status::Error, None));
        assert!(note.contains("not a measurement"), "{note}");
    }

    #[test]
    fn a_count_with_failed_connections_is_invalid() {
        let h = Held {
            n_ok: 997,
            failures: 3,
            failure_note: "connect 3; first: connect: refused".into(),
            ..held(1000, 8000.0, 9000.0, 8000.0)
        };
        for (s, m, note) in [judge_per_conn(1.0, 1000, Some(&h)), judge_after_release(1.1, 1000, Some(&h))] {
            assert_eq!((s, m), (Status::Error, None));
            assert!(note.starts_with("invalid: 3 of 1000") && note.contains("connect 3"), "{note}");
        }
        // Fewer held than asked with no failure named is still not the measurement asked for.
        let h = Held { n_ok: 999, ..held(1000, 8000.0, 9000.0, 8000.0) };
        assert_eq!(judge_per_conn(1.0, 1000, Some(&h)).0, Status::Error);
    }

    #[test]
    fn figures_are_read_from_loadgen_holds_report() {
        let v = json!({"counts": [
            {"connections": 1000, "n_ok": 1000, "failures": {"connect": 0, "read": 0}, "first_failure": null,
             "rss_before_kib": 8000, "rss_held_kib": 33000, "rss_after_kib": 30000},
            {"connections": 10000, "n_ok": 9998, "failures": {"connect": 0, "closed_while_held": 2}, "first_failure": "closed_while_held: the target closed a held connection",
             "rss_before_kib": 30000}
        ]});
        assert_eq!(Held::from_report(&v, 1000), Some(held(1000, 8000.0, 33000.0, 30000.0)));
        let h = Held::from_report(&v, 10000).unwrap();
        assert_eq!((h.n_ok, h.failures), (9998, 2));
        assert!(h.rss_held_kib.is_nan());
        assert!(h.failure_note.contains("closed_while_held 2; first: closed_while_held"), "{}", h.failure_note);
        assert_eq!(Held::from_report(&v, 4000), None);
        assert_eq!(Held::from_report(&json!({}), 1000), None);
    }

    #[test]
    fn rounds_pass_or_fail_only_together() {
        let r = |s: Status, m: f64| (s, Some(m), format!("{m} KiB each"));
        let (s, m, note) = combine_rounds(vec![r(Status::Pass, 0.7), r(Status::Pass, 0.66), r(Status::Pass, 0.9)]);
        assert_eq!((s, m), (Status::Pass, Some(0.7)), "{note}");
        assert!(note.starts_with("0.7 KiB each; median of 3 rounds (0.7, 0.66, 0.9)"), "{note}");
        // A regression just above the limit fails in every round: FAIL, not a lucky pass.
        let (s, m, _) = combine_rounds(vec![r(Status::Fail, 1.05), r(Status::Fail, 1.02), r(Status::Fail, 1.2)]);
        assert_eq!((s, m), (Status::Fail, Some(1.05)));
        // One round on each side: neither a pass nor a fail.
        let (s, m, note) = combine_rounds(vec![r(Status::Pass, 0.98), r(Status::Fail, 1.03), r(Status::Pass, 0.99)]);
        assert_eq!((s, m), (Status::Inconclusive, Some(0.99)));
        assert!(note.contains("rounds straddle the limit"), "{note}");
        // One round that measured nothing makes the row an ERROR, whatever the others say.
        let (s, m, note) = combine_rounds(vec![r(Status::Pass, 0.7), (Status::Error, None, "invalid: 3 of 1000".into())]);
        assert_eq!((s, m, note.as_str()), (Status::Error, None, "invalid: 3 of 1000"));
        assert_eq!(combine_rounds(vec![]).0, Status::Error);
    }

    #[test]
    fn rounds_are_read_by_position_and_must_be_the_counts_asked() {
        let c = |n: u64, before: u64| json!({"connections": n, "n_ok": n, "failures": {}, "rss_before_kib": before, "rss_held_kib": before + n, "rss_after_kib": before});
        let v = json!({"counts": [c(1000, 5000), c(1000, 6000), c(10000, 6100), c(1000, 6200)]});
        assert_eq!(Held::at(&v, 0, 1000).map(|h| h.rss_before_kib), Some(5000.0));
        assert_eq!(Held::at(&v, 1, 1000).map(|h| h.rss_before_kib), Some(6000.0));
        assert_eq!(Held::at(&v, 2, 10000).map(|h| h.rss_before_kib), Some(6100.0));
        // A report out of step with the sequence asked for is not read as if it were.
        assert_eq!(Held::at(&v, 2, 1000), None);
        assert_eq!(Held::at(&v, 4, 1000), None);
    }

    #[test]
    fn a_tls_count_is_a_measurement_only_when_every_connection_handshook() {
        let tls = |full: u64, resumed: u64| Held { tls_handshakes: Some((full, resumed)), ..held(1000, 8000.0, 12_600.0, 8080.0) };
        let (s, m, note) = judge_per_conn_as(6.0, 1000, Some(&tls(74, 926)), "idle TLS keep-alive connections", true);
        assert_eq!((s, m), (Status::Pass, Some(4.6)), "{note}");
        assert!(note.contains("1000 idle TLS keep-alive connections (74 full + 926 resumed handshakes)"), "{note}");
        let (s, m, note) = judge_after_release_as(1.1, 1000, Some(&tls(74, 926)), true);
        assert_eq!((s, m), (Status::Pass, Some(1.01)), "{note}");
        assert!(note.contains("1000 TLS connections"), "{note}");
        // Fewer handshakes than connections, or none reported (a cleartext run): not a
        // measurement of N TLS connections.
        for h in [tls(70, 920), held(1000, 8000.0, 12_600.0, 8080.0)] {
            let (s, m, note) = judge_per_conn_as(6.0, 1000, Some(&h), "idle TLS keep-alive connections", true);
            assert_eq!((s, m), (Status::Error, None), "{note}");
            assert!(note.starts_with("invalid: loadgen hold reports"), "{note}");
            assert_eq!(judge_after_release_as(1.1, 1000, Some(&h), true).0, Status::Error);
        }
        // A cleartext gate does not ask for handshakes.
        assert_eq!(judge_per_conn(6.0, 1000, Some(&held(1000, 8000.0, 12_600.0, 8080.0))).0, Status::Pass);
        // Handshakes are read from loadgen hold's report.
        let v = json!({"counts": [{"connections": 1000, "n_ok": 1000, "failures": {}, "rss_before_kib": 8000,
            "rss_held_kib": 12600, "rss_after_kib": 8100, "tls_handshakes": {"full": 74, "resumed": 926}}]});
        assert_eq!(Held::at(&v, 0, 1000).and_then(|h| h.tls_handshakes), Some((74, 926)));
        let v = json!({"counts": [{"connections": 1000, "n_ok": 1000, "tls_handshakes": null}]});
        assert_eq!(Held::at(&v, 0, 1000).map(|h| h.tls_handshakes), Some(None));
    }

    #[test]
    fn the_contract_is_checked() {
        let g = MemoryGate {
            tls: false,
            metric: "m".into(),
            unit: "KiB/connection".into(),
            workload: "w".into(),
            connections: vec![1000, 10000],
            warmup: 1000,
            rounds: 3,
            partial_head_connections: vec![],
            partial_head_kib_limit: 0.0,
            http2_connections: vec![],
            http2_kib_limit: 0.0,
            http2_after_ratio_limit: 0.0,
            http3_connections: vec![],
            http3_kib_limit: 0.0,
            http3_after_ratio_limit: 0.0,
            per_conn_kib_limit: 1.0,
            after_ratio_limit: 1.1,
            settle: "2.5s".into(),
            body_bytes: 100,
            proxy_config: String::new(),
        };
        assert!(check_contract(&g).is_ok());
        assert!(check_contract(&MemoryGate { connections: vec![], ..g.clone() }).is_err());
        assert!(check_contract(&MemoryGate { connections: vec![10, 10], ..g.clone() }).is_err());
        assert!(check_contract(&MemoryGate { per_conn_kib_limit: f64::NAN, ..g.clone() }).is_err());
        assert!(check_contract(&MemoryGate { settle: "2.5".into(), ..g.clone() }).is_err());
        assert!(check_contract(&MemoryGate { rounds: 0, ..g.clone() }).is_err());
        assert!(check_contract(&MemoryGate { partial_head_connections: vec![1000], ..g.clone() }).is_err(), "no limit");
        assert!(check_contract(&MemoryGate { partial_head_connections: vec![1000], partial_head_kib_limit: 4.0, ..g.clone() }).is_ok());
        assert!(check_contract(&MemoryGate { partial_head_connections: vec![0], partial_head_kib_limit: 4.0, ..g.clone() }).is_err());
        assert_eq!(sequence(&g), [1000, 1000, 10000, 1000, 10000, 1000, 10000]);
        assert_eq!(sequence(&MemoryGate { warmup: 0, rounds: 1, ..g.clone() }), [1000, 10000]);
        let h2 = MemoryGate { http2_connections: vec![1000, 10000], http2_kib_limit: 12.0, http2_after_ratio_limit: 1.1, ..g.clone() };
        assert!(matches!(check_contract(&h2), Err(MemoryError::Http2WithoutTls)), "HTTP/2 rows need the TLS stage");
        assert!(check_contract(&MemoryGate { tls: true, ..h2.clone() }).is_ok());
        assert!(check_contract(&MemoryGate { tls: true, http2_kib_limit: 0.0, ..h2.clone() }).is_err(), "no limit");
        assert_eq!(http2_sequence(&h2), [1000, 1000, 10000, 1000, 10000, 1000, 10000]);
        assert!(http2_sequence(&g).len() == 1, "the warm-up alone when no HTTP/2 count is asked (never run)");
        let opts = Options {
            root: ".".into(),
            phases: None,
            only: None,
            plant: None,
            memory_rounds: None,
            instruction_groups: None,
            verbose: false,
        };
        let rows = gate(&opts, &MemoryGate { after_ratio_limit: 0.0, ..g.clone() }, "phase1");
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["phase1:memory:per_conn@1000", "phase1:memory:per_conn@10000", "phase1:memory:after_release@10000"]);
        assert!(rows.iter().all(|r| r.status == Status::Error && r.note.contains("after_ratio_limit")));

        // HTTP/3 rows alone (phase 3): no HTTP/1.1 count, so neither its limits nor its rows.
        let h3 = MemoryGate {
            tls: true,
            connections: vec![],
            per_conn_kib_limit: 0.0,
            after_ratio_limit: 0.0,
            http3_connections: vec![1000, 10000],
            http3_kib_limit: 120.0,
            http3_after_ratio_limit: 1.1,
            ..g.clone()
        };
        assert!(check_contract(&h3).is_ok());
        assert!(matches!(check_contract(&MemoryGate { tls: false, ..h3.clone() }), Err(MemoryError::Http3WithoutTls)));
        assert!(matches!(
            check_contract(&MemoryGate { http3_kib_limit: 0.0, ..h3.clone() }),
            Err(MemoryError::NotPositive("http3_kib_limit"))
        ));
        assert!(matches!(
            check_contract(&MemoryGate { http3_after_ratio_limit: f64::NAN, ..h3.clone() }),
            Err(MemoryError::NotPositive("http3_after_ratio_limit"))
        ));
        assert!(matches!(check_contract(&MemoryGate { http3_connections: vec![10, 10], ..h3.clone() }), Err(MemoryError::CountTwice)));
        assert!(matches!(check_contract(&MemoryGate { http3_connections: vec![0], ..h3.clone() }), Err(MemoryError::NoCounts)));
        assert!(matches!(check_contract(&MemoryGate { http3_connections: vec![], ..h3.clone() }), Err(MemoryError::NothingToHold)));
        assert_eq!(protocol_sequence(&h3, &h3.http3_connections), [1000, 1000, 10000, 1000, 10000, 1000, 10000]);
        let rows = gate(&opts, &MemoryGate { http3_kib_limit: -1.0, ..h3 }, "phase3");
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["phase3:memory:http3@1000", "phase3:memory:http3@10000", "phase3:memory:http3_after_release@10000"]);
        assert!(rows.iter().all(|r| r.status == Status::Error && r.note.contains("http3_kib_limit")), "{rows:?}");
    }
}
