//! Results for people and for machines: the human summary, `--json` and `--hlog`.
//!
//! The JSON report (`SCHEMA_VERSION`) keeps the run's command line, tool version, start time and
//! target next to the numbers, percentiles of each histogram, a per-second series and the whole
//! histograms (HdrHistogram V2 + deflate, base64: the format the HdrHistogram tools decode), so
//! runs can be merged and re-analysed later instead of averaging percentiles. `--hlog` writes an
//! HdrHistogram interval log (one corrected histogram per second; service-time histograms
//! tagged `service`) readable by `HistogramLogProcessor` and friends.

use crate::client::{Cause, ErrorKind};
use crate::run::{BusyPolicy, RunConfig, RunOutcome};
use crate::schedule::Arrival;
use crate::tls::Verify;
use crate::transport::HandshakeKind;
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::{Duration, SystemTime};

/// Version of the `--json` layout; bump on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Percentiles reported everywhere.
pub const QUANTILES: [(&str, f64); 5] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999), ("p99_99", 0.9999)];

/// A human duration from nanoseconds: `850µs`, `1.23ms`, `2.5s`.
pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1_000.0 {
        format!("{ns:.0}ns")
    } else if ns < 1_000_000.0 {
        format!("{:.0}µs", ns / 1e3)
    } else if ns < 1_000_000_000.0 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// RFC 3339 UTC timestamp with millisecond precision (`2024-02-29T12:34:56.789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub max_us: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1e3;
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0.0 } else { us(h.value_at_quantile(q)) };
        Self {
            count: h.len(),
            min_us: if empty { 0.0 } else { us(h.min()) },
            mean_us: if empty { 0.0 } else { h.mean() / 1e3 },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p99_9_us: q(0.999),
            p99_99_us: q(0.9999),
            max_us: if empty { 0.0 } else { us(h.max()) },
        }
    }
}

/// Run metadata: how the numbers were made.
#[derive(Debug, Serialize)]
pub struct Meta {
    pub tool: &'static str,
    pub version: &'static str,
    pub command_line: Vec<String>,
    pub start_time: String,
    pub url: String,
    pub address: String,
    pub mode: &'static str,
    pub arrival: &'static str,
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    /// The measured window: `duration_s` unless the run was stopped early.
    pub window_s: f64,
    pub stopped_early: bool,
    pub warmup_s: f64,
    pub threads: usize,
    pub connections: usize,
    pub max_connections: usize,
    pub busy_policy: &'static str,
    pub timeout_s: f64,
    pub max_lag_us: f64,
    pub cpus: Vec<usize>,
    pub targets: usize,
    /// The application protocol ("http/1.1", "h2" or "h3").
    pub protocol: &'static str,
    /// HTTP/2 and HTTP/3: concurrent streams per connection (`null` for HTTP/1.1).
    pub streams: Option<usize>,
    /// TLS as configured (`null` for http://).
    pub tls: Option<TlsMeta>,
    /// `--new-connection-every` (`null`: connections are kept; 1 with `--connect-rate`).
    pub new_connection_every: Option<u64>,
    /// `--connect-rate`: new connections per second, one request each (`target_rate` is the
    /// same number); `null` otherwise.
    pub connect_rate: Option<f64>,
}

/// The client's TLS settings.
#[derive(Debug, Serialize)]
pub struct TlsMeta {
    /// SNI (when a DNS name) and the name checked in the certificate.
    pub server_name: String,
    /// "ca FILE" or "insecure (certificate NOT verified)".
    pub verify: String,
    /// True when the certificate was not verified (`--insecure`).
    pub insecure: bool,
    /// Session cache on (`--resume on`).
    pub resume: bool,
    pub alpn_offered: Vec<&'static str>,
}

/// What the TLS handshakes of the run negotiated.
#[derive(Debug, Serialize)]
pub struct NegotiatedOut {
    pub version: &'static str,
    pub cipher_suite: &'static str,
    /// The ALPN protocol the server chose (`null`: none).
    pub alpn: Option<&'static str>,
    /// Handshakes that negotiated this (the whole run: pre-opened and warmup connections too).
    pub handshakes: u64,
}

/// Request counts.
#[derive(Debug, Serialize)]
pub struct Counts {
    /// Requests due inside the window (open loop: rate × duration, as dispatched).
    pub scheduled: u64,
    /// Of those, attempted before the window ended.
    pub sent_in_window: u64,
    /// Responses (any status) to requests due inside the window.
    pub responses: u64,
    /// Responses to requests sent inside the window (the achieved rate's numerator).
    pub achieved: u64,
    pub queued: u64,
    pub dropped: u64,
    pub unsent: u64,
    pub new_connections: u64,
}

/// One second of the series (by intended send time, from the start of the window).
#[derive(Debug, Serialize)]
pub struct SecondOut {
    pub second: usize,
    pub scheduled: u64,
    pub sent: u64,
    pub responses: u64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Whole histograms, serialized.
#[derive(Debug, Serialize)]
pub struct Histograms {
    pub encoding: &'static str,
    pub unit: &'static str,
    pub corrected: String,
    pub uncorrected: String,
    pub send_lag: String,
    pub handshake: String,
}

/// The `--json` document of a run.
#[derive(Debug, Serialize)]
pub struct RunJson {
    pub schema_version: u32,
    pub meta: Meta,
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
    pub target_rate: Option<f64>,
    pub sent_rate: f64,
    pub achieved_rate: f64,
    pub counts: Counts,
    pub status_codes: BTreeMap<String, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    pub error_causes: BTreeMap<&'static str, u64>,
    pub latency: BTreeMap<&'static str, Summary>,
    /// Connections set up for requests due in the window, by kind: "tcp" (plain connect),
    /// "full" and "resumed" (TLS or QUIC handshakes), "zero_rtt" (HTTP/3 `--early-data`). Their
    /// time is `latency.handshake`.
    pub handshakes: BTreeMap<&'static str, u64>,
    /// HTTP/3: full handshakes the thread's certificate count shows beyond those counted as
    /// full, i.e. offered resumptions the server refused (counted as "resumed" above, since
    /// which connection it was cannot be told); `null` for TCP, where each kind is exact.
    pub resumption_refused: Option<u64>,
    /// HTTP/3 `--early-data`: connections whose 0-RTT data the server refused (its requests
    /// failed); `null` without `--early-data`.
    pub early_data_rejected: Option<u64>,
    /// What the TLS handshakes negotiated (empty for http://).
    pub tls_negotiated: Vec<NegotiatedOut>,
    pub time_series: Vec<SecondOut>,
    pub histograms: Histograms,
}

/// Serializes a histogram as base64(V2 + deflate).
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    let mut s = V2DeflateSerializer::new();
    match s.serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(&buf),
        Err(_) => String::new(),
    }
}

/// Decodes what [`encode_hist`] produced.
pub fn decode_hist(s: &str) -> Option<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut io::Cursor::new(bytes)).ok()
}

/// Several histograms merged: what `loadgen hist` prints for each group.
#[derive(Debug, PartialEq, Serialize)]
pub struct Merged {
    /// Recorded values over every histogram of the group.
    pub count: u64,
    /// `value_at_quantile` of the merged histogram for each asked quantile, in the histograms'
    /// unit (nanoseconds for loadgen's); `None` when the group holds no value.
    pub quantiles: Vec<Option<u64>>,
    /// Highest recorded value (its bucket's highest equivalent value), `None` when empty.
    pub max: Option<u64>,
}

/// Merges each group of base64 histograms (as [`encode_hist`] writes them) and reads `quantiles`
/// off the merged histogram: percentiles of several runs without averaging percentiles. An
/// error names the group and the histogram that could not be decoded or added.
pub fn merge_groups(groups: &[Vec<String>], quantiles: &[f64]) -> Result<Vec<Merged>, String> {
    let mut out = Vec::with_capacity(groups.len());
    for (g, group) in groups.iter().enumerate() {
        // The first histogram's bounds and precision hold the merge (loadgen writes them all alike).
        let mut merged: Option<Histogram<u64>> = None;
        for (i, b64) in group.iter().enumerate() {
            let h = decode_hist(b64).ok_or_else(|| format!("group {g}, histogram {i}: not a base64 V2 HdrHistogram"))?;
            match merged.as_mut() {
                None => merged = Some(h),
                Some(m) => m.add(&h).map_err(|e| format!("group {g}, histogram {i}: {e:?}"))?,
            }
        }
        let merged = merged.filter(|m| !m.is_empty());
        out.push(Merged {
            count: merged.as_ref().map_or(0, Histogram::len),
            quantiles: quantiles.iter().map(|&q| merged.as_ref().map(|m| m.value_at_quantile(q))).collect(),
            max: merged.as_ref().map(Histogram::max),
        });
    }
    Ok(out)
}

/// Builds the JSON document of a run.
pub fn run_json(cfg: &RunConfig, out: &RunOutcome, command_line: &[String]) -> RunJson {
    let r = &out.rec;
    let mut status_codes = BTreeMap::new();
    for (code, &n) in r.status.iter().enumerate() {
        if n > 0 {
            status_codes.insert(code.to_string(), n);
        }
    }
    let errors = ErrorKind::ALL.iter().map(|&k| (k.name(), r.error(k))).collect();
    let error_causes = Cause::ALL.iter().map(|&c| (c.name(), r.cause(c))).collect();
    let mut latency = BTreeMap::new();
    latency.insert("corrected", Summary::of(&r.corrected));
    latency.insert("uncorrected", Summary::of(&r.uncorrected));
    latency.insert("send_lag", Summary::of(&r.send_lag));
    latency.insert("handshake", Summary::of(&r.handshake));
    let handshakes = HandshakeKind::ALL.iter().map(|&k| (k.name(), r.handshakes_of(k))).collect();
    let tls_negotiated = r
        .negotiated
        .iter()
        .map(|(n, c)| NegotiatedOut { version: n.version, cipher_suite: n.cipher_suite, alpn: n.alpn, handshakes: *c })
        .collect();
    let time_series = r
        .series()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sm = Summary::of(&s.hist);
            SecondOut {
                second: i,
                scheduled: s.scheduled,
                sent: s.sent,
                responses: s.responses,
                errors: s.errors,
                p50_us: sm.p50_us,
                p99_us: sm.p99_us,
                max_us: sm.max_us,
            }
        })
        .collect();
    let target_rate = (!cfg.closed).then_some(cfg.rate);
    RunJson {
        schema_version: SCHEMA_VERSION,
        meta: Meta {
            tool: "loadgen",
            version: env!("CARGO_PKG_VERSION"),
            command_line: command_line.to_vec(),
            start_time: rfc3339(out.started),
            url: cfg.target.url(),
            address: cfg.target.addr.to_string(),
            mode: if cfg.closed { "closed" } else { "open" },
            arrival: match (cfg.closed, cfg.arrival) {
                (true, _) => "closed",
                (false, Arrival::Constant) => "constant",
                (false, Arrival::Poisson) => "poisson",
            },
            target_rate,
            duration_s: cfg.duration.as_secs_f64(),
            window_s: out.window.as_secs_f64(),
            stopped_early: out.rec.stopped,
            warmup_s: cfg.warmup.as_secs_f64(),
            threads: cfg.threads,
            connections: cfg.connections,
            max_connections: cfg.max_connections,
            busy_policy: match cfg.policy {
                BusyPolicy::Queue => "queue",
                BusyPolicy::Drop => "drop",
            },
            timeout_s: cfg.timeout.as_secs_f64(),
            max_lag_us: cfg.max_lag.as_secs_f64() * 1e6,
            cpus: cfg.cpus.clone(),
            targets: cfg.requests.len(),
            protocol: protocol_name(cfg),
            streams: (cfg.http2 || cfg.http3).then_some(cfg.streams),
            tls: cfg.tls.as_ref().map(|t| TlsMeta {
                server_name: t.server_name_str(),
                verify: t.verify_label(),
                insecure: matches!(t.verify, Verify::Insecure),
                resume: t.resume,
                alpn_offered: vec![if cfg.http3 {
                    "h3"
                } else if t.h2 {
                    "h2"
                } else {
                    "http/1.1"
                }],
            }),
            new_connection_every: (cfg.new_connection_every > 0).then_some(cfg.new_connection_every),
            connect_rate: cfg.connect_rate.then_some(cfg.rate),
        },
        valid: out.validity.valid,
        invalid_reasons: out.validity.reasons.clone(),
        target_rate,
        sent_rate: out.sent_rate(),
        achieved_rate: out.achieved_rate(),
        counts: Counts {
            scheduled: r.scheduled,
            sent_in_window: r.sent_in_window,
            responses: r.responses,
            achieved: r.achieved,
            queued: r.queued,
            dropped: r.dropped,
            unsent: r.unsent,
            new_connections: r.new_conns,
        },
        status_codes,
        errors,
        error_causes,
        latency,
        handshakes,
        resumption_refused: cfg.http3.then(|| resumption_refused(r)),
        early_data_rejected: cfg.tls.as_ref().is_some_and(|t| t.early_data).then_some(r.early_data_rejected),
        tls_negotiated,
        time_series,
        histograms: Histograms {
            encoding: "HdrHistogram V2 compressed (deflate), base64",
            unit: "nanoseconds",
            corrected: encode_hist(&r.corrected),
            uncorrected: encode_hist(&r.uncorrected),
            send_lag: encode_hist(&r.send_lag),
            handshake: encode_hist(&r.handshake),
        },
    }
}

fn pct_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let mut s = String::new();
    for (name, q) in QUANTILES {
        let _ = write!(s, "{} {}  ", name.replace('_', "."), fmt_dur(Duration::from_nanos(h.value_at_quantile(q))));
    }
    let _ = write!(s, "max {}", fmt_dur(Duration::from_nanos(h.max())));
    s
}

/// The application protocol's name in the report.
fn protocol_name(cfg: &RunConfig) -> &'static str {
    if cfg.http3 {
        "h3"
    } else if cfg.http2 {
        "h2"
    } else {
        "http/1.1"
    }
}

/// HTTP/3: certificates verified beyond the handshakes counted as full (see the JSON field).
fn resumption_refused(r: &crate::stats::Recorder) -> u64 {
    r.cert_verifications.saturating_sub(r.full_handshakes_all)
}

/// `http/1.1 over TLSv1.3 TLS13_AES_256_GCM_SHA384 (alpn http/1.1); server name …, verify …`.
fn protocol_line(cfg: &RunConfig, out: &RunOutcome) -> String {
    let proto = if cfg.http2 || cfg.http3 {
        format!("{}, {} streams per connection,", protocol_name(cfg), cfg.streams)
    } else {
        "http/1.1".to_string()
    };
    let Some(t) = &cfg.tls else {
        return if cfg.http2 { format!("{proto} cleartext (h2c, prior knowledge)") } else { format!("{proto} (cleartext)") };
    };
    let mut s = format!("{proto} over {}", if cfg.http3 { "QUIC" } else { "TLS" });
    if out.rec.negotiated.is_empty() {
        s.push_str(" (no handshake completed)");
    }
    for (i, (n, c)) in out.rec.negotiated.iter().enumerate() {
        let sep = if i == 0 { " " } else { "; " };
        let _ = write!(s, "{sep}{} {} (alpn {}) ×{c}", n.version, n.cipher_suite, n.alpn.unwrap_or("none"));
    }
    let _ = write!(s, "; server name {}, verify {}, resume {}", t.server_name_str(), t.verify_label(), if t.resume { "on" } else { "off" });
    s
}

/// The human summary of a run.
pub fn human(cfg: &RunConfig, out: &RunOutcome) -> String {
    let r = &out.rec;
    let mut s = String::new();
    let mode = if cfg.closed {
        "closed loop".to_string()
    } else if cfg.connect_rate {
        format!(
            "open loop, {} connect rate {:.0} new connections/s (one request each)",
            if cfg.arrival == Arrival::Poisson { "poisson" } else { "constant" },
            cfg.rate
        )
    } else {
        format!("open loop, {} arrivals at {:.0} req/s", if cfg.arrival == Arrival::Poisson { "poisson" } else { "constant" }, cfg.rate)
    };
    let _ = writeln!(
        s,
        "loadgen {} {}: {mode}, {:.1}s (+{:.1}s warmup), {} thread(s), {}..{} connections",
        env!("CARGO_PKG_VERSION"),
        cfg.target.url(),
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.threads,
        if cfg.connect_rate { 0 } else { cfg.connections },
        if cfg.closed { cfg.connections } else { cfg.max_connections },
    );
    if out.rec.stopped {
        let _ = writeln!(s, "  stopped     early (SIGINT): {:.1}s of the window measured", out.window.as_secs_f64());
    }
    if out.validity.valid {
        let _ = writeln!(s, "  run         VALID");
    } else {
        let _ = writeln!(s, "  run         INVALID");
        for reason in &out.validity.reasons {
            let _ = writeln!(s, "              - {reason}");
        }
    }
    if cfg.closed {
        let _ = writeln!(s, "  rate        achieved {:.1} resp/s (closed loop: no target)", out.achieved_rate());
    } else {
        let _ = writeln!(
            s,
            "  rate        target {:.1}/s  sent {:.1}/s  achieved {:.1} resp/s",
            cfg.rate,
            out.sent_rate(),
            out.achieved_rate()
        );
    }
    if cfg.connect_rate {
        let _ = writeln!(
            s,
            "  requests    {} scheduled (a connection each), {} sent in window, {} responses; {} waited for one of the {} connections open at once, {} dropped, {} never sent",
            r.scheduled, r.sent_in_window, r.responses, r.queued, cfg.max_connections, r.dropped, r.unsent
        );
    } else {
        let _ = writeln!(
            s,
            "  requests    {} scheduled, {} sent in window, {} responses; {} waited for a connection, {} new connections, {} dropped, {} never sent",
            r.scheduled, r.sent_in_window, r.responses, r.queued, r.new_conns, r.dropped, r.unsent
        );
    }
    let _ = writeln!(s, "  protocol    {}", protocol_line(cfg, out));
    if cfg.tls.is_some() || cfg.new_connection_every > 0 || !r.handshake.is_empty() {
        let churn = match cfg.new_connection_every {
            _ if cfg.connect_rate => format!("new for every request at {:.0}/s (--connect-rate; none pre-opened)", cfg.rate),
            0 => "kept".to_string(),
            1 => "new for every request".to_string(),
            n => format!("new every {n} requests"),
        };
        let _ = writeln!(
            s,
            "  connections {churn}; set up in the window: {} tcp-only, {} full handshakes, {} resumed{}",
            r.handshakes_of(HandshakeKind::Tcp),
            r.handshakes_of(HandshakeKind::Full),
            r.handshakes_of(HandshakeKind::Resumed),
            match &cfg.tls {
                Some(t) if t.early_data =>
                    format!(", {} 0-RTT ({} refused by the server)", r.handshakes_of(HandshakeKind::ZeroRtt), r.early_data_rejected),
                _ => String::new(),
            }
        );
        let _ = writeln!(s, "  handshake   {}", pct_line(&r.handshake));
        if cfg.http3 && resumption_refused(r) > 0 {
            let _ = writeln!(
                s,
                "              {} offered resumptions were refused by the server (full handshakes, counted as resumed)",
                resumption_refused(r)
            );
        }
        let what = if cfg.http3 {
            "QUIC handshake + HTTP/3 set-up"
        } else if cfg.tls.is_some() {
            "TCP connect + TLS handshake"
        } else {
            "TCP connect"
        };
        let _ = writeln!(s, "              ({what} of each new connection; inside the corrected latency)");
    }
    let _ = writeln!(s, "  latency     {}", pct_line(&r.corrected));
    let _ = writeln!(s, "              (corrected: response time from the intended send time)");
    let _ = writeln!(s, "  service     {}", pct_line(&r.uncorrected));
    let _ = writeln!(s, "              (uncorrected: from the actual write; hides queueing)");
    if !cfg.closed {
        let _ = writeln!(s, "  send lag    {}", pct_line(&r.send_lag));
        let _ = writeln!(s, "              (generator lateness for requests that had a free connection)");
    }
    let mut codes = String::new();
    for (code, &n) in r.status.iter().enumerate() {
        if n > 0 {
            let _ = write!(codes, "{code}: {n}  ");
        }
    }
    let _ = writeln!(s, "  status      {}", if codes.is_empty() { "none" } else { codes.trim_end() });
    let mut errs = String::new();
    for k in ErrorKind::ALL {
        let _ = write!(errs, "{} {}  ", k.name(), r.error(k));
    }
    let mut causes = String::new();
    for c in Cause::ALL {
        if r.cause(c) > 0 {
            let _ = write!(causes, "{} {}  ", c.name(), r.cause(c));
        }
    }
    let _ = writeln!(s, "  errors      {}", errs.trim_end());
    if !causes.is_empty() {
        let _ = writeln!(s, "              (causes: {})", causes.trim_end());
    }
    s
}

/// Writes the HdrHistogram interval log of a run to `w`.
pub fn write_hlog<W: io::Write>(w: &mut W, cfg: &RunConfig, out: &RunOutcome) -> io::Result<()> {
    let mut ser = V2DeflateSerializer::new();
    let base = out.started + cfg.warmup;
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment(&format!(
            "loadgen {}: corrected latency (ns) per second by intended send time; tag=service is the uncorrected time",
            env!("CARGO_PKG_VERSION")
        ))
        .with_start_time(base)
        .with_base_time(base)
        .with_max_value_divisor(1e6)
        .begin_log_with(w, &mut ser)?;
    let err = |e| io::Error::other(format!("hlog: {e:?}"));
    for (i, sec) in out.rec.series().iter().enumerate() {
        log.write_histogram(&sec.hist, Duration::from_secs(i as u64), Duration::from_secs(1), None).map_err(err)?;
    }
    // Service time is only kept for the whole run: one tagged interval.
    let tag = Tag::new("service");
    log.write_histogram(&out.rec.uncorrected, Duration::ZERO, cfg.duration, tag).map_err(err)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn synthetic() -> (RunConfig, RunOutcome) {
        use crate::client::{ReqError, Target};
        use crate::stats::{Dispatch, Recorder};
        use std::time::Instant;
        let target = Target::parse("http://127.0.0.1:9/x").unwrap();
        let cfg = RunConfig {
            requests: vec![target.request("GET", "/x", &[], b"")],
            target,
            closed: false,
            rate: 100.0,
            arrival: Arrival::Constant,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            connections: 1,
            max_connections: 1,
            threads: 1,
            cpus: vec![],
            timeout: Duration::from_secs(1),
            policy: BusyPolicy::Queue,
            max_lag: Duration::from_millis(1),
            spin: Duration::ZERO,
            seed: 1,
            progress: false,
            tls: None,
            new_connection_every: 0,
            http2: false,
            http3: false,
            streams: 1,
            connect_rate: false,
        };
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0, t0 + cfg.duration);
        for i in 0..200u64 {
            let t = t0 + Duration::from_millis(i * 10);
            rec.on_scheduled(t, Some(Dispatch::Free));
            let res = if i == 7 { Err(ReqError { kind: ErrorKind::Read, cause: Cause::Reset }) } else { Ok(200) };
            rec.on_done(t, t, t + Duration::from_micros(100 + i), Dispatch::Free, res);
        }
        let mut out = RunOutcome { rec, started: UNIX_EPOCH, window: cfg.duration, validity: Default::default() };
        out.validity = crate::run::assess(&cfg, &out);
        (cfg, out)
    }

    /// The documented `--json` keys, so a rename is a deliberate schema change.
    #[test]
    fn json_schema_keys_and_values() {
        let (cfg, out) = synthetic();
        let v = serde_json::to_value(run_json(&cfg, &out, &["loadgen".into(), "run".into()])).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "schema_version",
            "meta",
            "valid",
            "invalid_reasons",
            "target_rate",
            "sent_rate",
            "achieved_rate",
            "counts",
            "status_codes",
            "errors",
            "error_causes",
            "latency",
            "handshakes",
            "tls_negotiated",
            "time_series",
            "histograms",
        ] {
            assert!(keys.contains(&k), "missing {k}");
        }
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["meta"]["start_time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["meta"]["url"], "http://127.0.0.1:9/x");
        assert_eq!(v["valid"], true, "{}", v["invalid_reasons"]);
        assert_eq!(v["counts"]["scheduled"], 200);
        assert_eq!(v["counts"]["responses"], 199);
        assert_eq!(v["status_codes"]["200"], 199);
        assert_eq!(v["errors"]["read"], 1);
        assert_eq!(v["error_causes"]["reset"], 1);
        assert_eq!(v["achieved_rate"], 99.5);
        let series = v["time_series"].as_array().unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[0]["scheduled"], 100);
        for k in ["corrected", "uncorrected", "send_lag", "handshake"] {
            let h = decode_hist(v["histograms"][k].as_str().unwrap()).unwrap();
            assert_eq!(h.len(), v["latency"][k]["count"].as_u64().unwrap(), "{k}");
        }
        let p99 = v["latency"]["corrected"]["p99_us"].as_f64().unwrap();
        assert!((296.0..=300.0).contains(&p99), "{p99}");
        let text = human(&cfg, &out);
        assert!(text.contains("VALID") && text.contains("200: 199") && text.contains("reset 1"), "{text}");
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn fmt_dur_units() {
        assert_eq!(fmt_dur(Duration::from_nanos(999)), "999ns");
        assert_eq!(fmt_dur(Duration::from_micros(850)), "850µs");
        assert_eq!(fmt_dur(Duration::from_micros(1234)), "1.23ms");
        assert_eq!(fmt_dur(Duration::from_millis(2500)), "2.50s");
    }

    #[test]
    fn merged_groups_read_percentiles_off_the_merged_histogram() {
        let enc = |vals: &[u64]| {
            let mut h = crate::stats::new_hist(3);
            for &v in vals {
                h.record(v).unwrap();
            }
            encode_hist(&h)
        };
        // 90 fast values in one run, 10 slow ones in the other: the merged P50 is fast, the
        // P99 slow (averaging the runs' P99s would say neither).
        let a = enc(&[10_000; 90]);
        let b = enc(&[5_000_000; 10]);
        let m = merge_groups(&[vec![a.clone(), b], vec![], vec![a]], &[0.5, 0.99]).unwrap();
        assert_eq!(m.len(), 3);
        let mut want = crate::stats::new_hist(3);
        want.record_n(10_000, 90).unwrap();
        want.record_n(5_000_000, 10).unwrap();
        assert_eq!(m[0].count, 100);
        assert_eq!(m[0].quantiles, vec![Some(want.value_at_quantile(0.5)), Some(want.value_at_quantile(0.99))]);
        assert!(m[0].quantiles[0].unwrap() < 10_010 && m[0].quantiles[1].unwrap() >= 5_000_000);
        assert_eq!(m[0].max, Some(want.max()));
        assert_eq!(m[1], Merged { count: 0, quantiles: vec![None, None], max: None });
        assert_eq!(m[2].count, 90);
        let e = merge_groups(&[vec![enc(&[1])], vec!["not base64".into()]], &[0.5]).unwrap_err();
        assert!(e.starts_with("group 1, histogram 0:"), "{e}");
    }

    #[test]
    fn histogram_round_trips_through_base64() {
        let mut h = crate::stats::new_hist(3);
        for v in [1_000u64, 50_000, 1_000_000, 100_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_hist(&encode_hist(&h)).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }
}
