//! The adversarial case table (`tests/adversarial_cases.rs`) against any proxy address: this
//! project's proxy, nginx, HAProxy, Traefik. Run by `scripts/adversarial-peers.sh`, not by CI.
//!
//! ```text
//! adversarial_peers --proxy 127.0.0.1:P --upstream 127.0.0.1:U --name nginx --out nginx.json [--case NAME]
//! ```
//!
//! It binds the recording upstream on `--upstream` (the proxy under test must forward there, with
//! keep-alive), runs every row on a fresh client connection, and writes one JSON record per row:
//! the client's outcome (statuses, close, timeout), what the upstream received since the row began
//! (bytes, parsed requests, framing errors, whether the proxy closed that connection), and a
//! classification with a rank, so `scripts/adversarial_table.py` can compare proxies:
//!
//! | rank | upstream outcome |
//! |---|---|
//! | 3 | rejected: no complete request upstream (nothing, or a partial message and the connection cut) |
//! | 2 | forwarded: as many requests upstream as responses the client got, all well framed |
//! | 1 | loose: malformed bytes reached the upstream, or a request pipelined after a rejection went upstream |
//! | 0 | smuggled: the upstream parsed a request the client never got a response for |
//!
//! Rows are not compared byte for byte here (each proxy rewrites its own way; `cargo test` does the
//! exact check for this project): for a forwarded request the record shows the header lines the
//! proxy removed or added beyond what it does to a plain `GET` (the baseline).
//!
//! The upstream is shared by all rows (the proxy's pooled connections persist), so each row looks
//! only at bytes and requests that arrived after it started, and rows run one at a time.
#![allow(clippy::unwrap_used)] // reason: a test tool; the support module it includes unwraps on test states

/// The test support module (`tests/support`): the adversarial rows, the recording upstream, the
/// raw client, byte escaping.
#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};
use support::adversarial_cases::{Answer, Case, ResponseCase, SMUGGLE, bad_response_cases, request_tables};
use support::{Client, Reply, Upstream, UpstreamOpts, UpstreamRequest, escape, find, ok};

/// Wait for the first response: above the 2 s header timeout every target is configured with.
const FIRST_RESPONSE: Duration = Duration::from_secs(4);
/// Wait for any further response or the close after the first one.
const FOLLOW_UP: Duration = Duration::from_millis(600);
/// After the client side is done, let stray bytes reach the upstream.
const SETTLE: Duration = Duration::from_millis(250);
/// Target prefix on which the upstream answers with a row of `bad_response_cases`.
const BAD: &str = "/__bad/";

struct Args {
    proxy: SocketAddr,
    upstream: SocketAddr,
    name: String,
    out: String,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut proxy, mut upstream, mut name, mut out, mut only) = (None, None, None, None, None);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--proxy" => proxy = Some(val()?.parse().map_err(|e| format!("--proxy: {e}"))?),
            "--upstream" => upstream = Some(val()?.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--name" => name = Some(val()?),
            "--out" => out = Some(val()?),
            "--case" => only = Some(val()?),
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Args {
        proxy: proxy.ok_or("--proxy ADDR is required")?,
        upstream: upstream.ok_or("--upstream ADDR is required")?,
        name: name.ok_or("--name NAME is required")?,
        out: out.ok_or("--out FILE is required")?,
        only,
    })
}

/// A request split loosely (it may be malformed): request line, field lines, the rest. Lines are
/// split on CRLF only, so a bare LF or CR stays visible inside a line and a proxy that normalised
/// it shows up as a rewrite.
fn split_request(raw: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let (head, rest) = match find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => match find(raw, b"\n\n") {
            Some(i) => (&raw[..i], &raw[i + 2..]),
            None => (raw, &[][..]),
        },
    };
    let mut lines = Vec::new();
    let mut from = 0;
    while let Some(i) = find(&head[from..], b"\r\n") {
        lines.push(head[from..from + i].to_vec());
        from += i + 2;
    }
    lines.push(head[from..].to_vec());
    let first = lines.remove(0);
    (first, lines, rest.to_vec())
}

/// A field line compared with its name lowercased (HAProxy lowercases every name; that is not a
/// rewrite worth a note), the value exact.
fn norm(line: &[u8]) -> Vec<u8> {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    let mut v = line[..colon].to_ascii_lowercase();
    v.extend_from_slice(&line[colon..]);
    v
}

/// Lines of `a` not matched by a line of `b` (multiset difference, order of `a`).
fn minus(a: &[Vec<u8>], b: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut left: Vec<Option<Vec<u8>>> = b.iter().map(|l| Some(norm(l))).collect();
    let mut out = Vec::new();
    for l in a {
        let n = norm(l);
        match left.iter().position(|x| x.as_ref() == Some(&n)) {
            Some(i) => left[i] = None,
            None => out.push(l.clone()),
        }
    }
    out
}

/// What a proxy does to a plain request: the baseline that rewrites are reported against.
struct Baseline {
    added: Vec<Vec<u8>>,
    removed: Vec<Vec<u8>>,
}

/// How the forwarded request differs from what the client sent, beyond the baseline.
fn rewrites(sent: &[u8], got: &[u8], base: &Baseline) -> Vec<String> {
    let (sent_line, sent_fields, sent_body) = split_request(sent);
    let (got_line, got_fields, got_body) = split_request(got);
    let mut notes = Vec::new();
    if sent_line != got_line {
        notes.push(format!("line `{}`", escape(&got_line)));
    }
    for l in minus(&minus(&sent_fields, &got_fields), &base.removed) {
        notes.push(format!("-`{}`", escape(&l)));
    }
    for l in minus(&minus(&got_fields, &sent_fields), &base.added) {
        notes.push(format!("+`{}`", escape(&l)));
    }
    // `sent` is the row's request, without the pipelined `SMUGGLE` the runner appends.
    if sent_body != got_body {
        notes.push(format!("body `{}`", escape(&got_body)));
    }
    notes
}

/// What the client saw on one connection.
struct ClientSide {
    statuses: Vec<u16>,
    /// Bodies of the responses (the upstream answers with the request target).
    bodies: Vec<Vec<u8>>,
    closed: bool,
    timed_out: bool,
    error: Option<String>,
    /// Bytes that did not parse as a response (e.g. nginx answers an HTTP/0.9 request line with
    /// the bare body).
    unparsed: Vec<u8>,
}

fn client_exchange(proxy: SocketAddr, bytes: &[u8], method: &str) -> ClientSide {
    let mut c = Client::connect(proxy);
    let _ = c.try_send(bytes); // the proxy may close before reading everything
    let mut side =
        ClientSide { statuses: Vec::new(), bodies: Vec::new(), closed: false, timed_out: false, error: None, unparsed: Vec::new() };
    c.set_read_timeout(FIRST_RESPONSE);
    loop {
        match c.read_response_to(method) {
            Ok(r) => {
                side.statuses.push(r.status);
                side.bodies.push(r.body);
                c.set_read_timeout(FOLLOW_UP);
            }
            Err(e) => {
                if e.contains("read from proxy failed") {
                    side.timed_out = true;
                } else if e.starts_with("connection closed") {
                    side.closed = true;
                    if !e.ends_with("got:\n    ") {
                        side.error = Some(e); // closed mid-response
                        side.unparsed = c.pending().to_vec();
                    }
                } else {
                    side.error = Some(e);
                    let (rest, closed) = c.read_to_close();
                    side.unparsed = rest;
                    side.closed = closed;
                }
                return side;
            }
        }
    }
}

/// What arrived upstream since a mark.
struct Mark {
    bytes: Vec<usize>,
    requests: usize,
}

fn mark(up: &Upstream) -> Mark {
    Mark { bytes: up.received_all().iter().map(Vec::len).collect(), requests: up.requests().len() }
}

struct UpSide {
    /// (connection, new bytes) for every connection that received bytes since the mark.
    conns: Vec<(usize, Vec<u8>)>,
    requests: Vec<UpstreamRequest>,
    errors: Vec<(usize, String)>,
}

fn since(up: &Upstream, m: &Mark) -> UpSide {
    let all = up.received_all();
    let conns: Vec<(usize, Vec<u8>)> = all
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let from = m.bytes.get(i).copied().unwrap_or(0);
            (b.len() > from).then(|| (i, b[from..].to_vec()))
        })
        .collect();
    let touched: Vec<usize> = conns.iter().map(|(i, _)| *i).collect();
    let errors = up.errors().into_iter().filter(|(i, _)| touched.contains(i)).collect();
    UpSide { conns, requests: up.requests().split_off(m.requests), errors }
}

fn client_summary(c: &ClientSide) -> String {
    let mut parts: Vec<String> = c.statuses.iter().map(u16::to_string).collect();
    if c.error.is_some() {
        let first = c.unparsed.split(|&b| b == b'\n').next().unwrap_or_default();
        parts.push(format!("unparsable `{}`", escape(&first[..first.len().min(40)])));
    }
    if c.closed {
        parts.push("close".into());
    } else if c.timed_out && c.statuses.is_empty() {
        parts.push(format!("no answer in {}s", FIRST_RESPONSE.as_secs()));
    }
    parts.join(", ")
}

/// Classifies one request row. Returns (rank, upstream summary, rewrite notes).
fn classify(case: &Case, sent: &[u8], c: &ClientSide, u: &UpSide, up: &Upstream, base: &Baseline) -> (u8, String, Vec<String>) {
    // The upstream answers with the target as the body: a request is answered when the client
    // got that body (or bytes containing it, if they did not parse as a response).
    let answered = |t: &[u8]| c.bodies.iter().any(|b| b == t) || (!c.unparsed.is_empty() && find(&c.unparsed, t).is_some());
    let unanswered: Vec<&UpstreamRequest> = u.requests.iter().filter(|r| !answered(r.target.as_bytes())).collect();
    let smuggled_up = u.requests.iter().any(|r| r.target == "/smuggled");
    let first_is_error = c.statuses.first().is_none_or(|s| *s >= 400);
    // Rewrites of the row's own request (not of the pipelined one), found by its target.
    let (line, _, _) = split_request(sent);
    let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default().to_vec();
    let notes = match u.requests.iter().find(|r| r.target.as_bytes() == target.as_slice() || r.target != "/smuggled") {
        Some(r) => rewrites(sent, &r.raw, base),
        None => Vec::new(),
    };
    if !unanswered.is_empty() {
        let targets: Vec<&str> = unanswered.iter().map(|r| r.target.as_str()).collect();
        return (0, format!("SMUGGLED: upstream parsed {targets:?} with no response to the client"), notes);
    }
    if let Some((i, e)) = u.errors.first() {
        let rejected_by_upstream = c.bodies.iter().any(|b| b == b"upstream-rejected");
        let how = if rejected_by_upstream { ", its 400 relayed" } else { "" };
        return (1, format!("malformed bytes passed on (upstream conn {i}: {e}{how})"), notes);
    }
    if u.requests.is_empty() {
        if u.conns.is_empty() {
            return (3, "nothing".into(), notes);
        }
        let cut = u.conns.iter().all(|(i, _)| up.is_closed(*i));
        let n: usize = u.conns.iter().map(|(_, b)| b.len()).sum();
        return if cut {
            (3, format!("partial ({n} B), then cut"), notes)
        } else {
            // e.g. a head forwarded and the body still awaited: streaming, not an error.
            (2, format!("partial ({n} B), connection open"), notes)
        };
    }
    if smuggled_up && first_is_error && !matches!(case.answer, Answer::Relayed) {
        return (1, "rejected, but the pipelined request after it went upstream".into(), notes);
    }
    let what = if notes.is_empty() { "forwarded as-is" } else { "forwarded rewritten" };
    let extra = if u.requests.len() > 1 { format!(" (+{} pipelined)", u.requests.len() - 1) } else { String::new() };
    (2, format!("{what}{extra}"), notes)
}

fn expected_of(case: &Case) -> (u8, String) {
    match case.answer {
        Answer::Reject(statuses) => {
            let s: Vec<String> = statuses.iter().map(u16::to_string).collect();
            (3, format!("{} · nothing", s.join("/")))
        }
        Answer::Relayed => (2, "200 · forwarded".into()),
        Answer::StatusOrClose(s) => (3, format!("{s} or close · no complete request")),
    }
}

fn run_request_case(group: &str, case: &Case, proxy: SocketAddr, up: &Upstream, base: &Baseline) -> Value {
    let mut bytes = case.request.clone();
    if !matches!(case.answer, Answer::Relayed) {
        bytes.extend_from_slice(SMUGGLE);
    }
    let method = case.request.split(|&b| b == b' ').next().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
    let m = mark(up);
    let started = Instant::now();
    let c = client_exchange(proxy, &bytes, &method);
    thread::sleep(SETTLE);
    let u = since(up, &m);
    let (rank, upstream, notes) = classify(case, &case.request, &c, &u, up, base);
    let (expected_rank, expected) = expected_of(case);
    json!({
        "group": group,
        "name": case.name,
        "why": case.why,
        "expected": expected,
        "expected_rank": expected_rank,
        "request": escape(&bytes),
        "client": client_summary(&c),
        "client_statuses": c.statuses,
        "client_closed": c.closed,
        "client_error": c.error,
        "upstream": upstream,
        "rewrites": notes,
        "rank": rank,
        "upstream_received": u.conns.iter().map(|(i, b)| json!({"conn": i, "bytes": escape(b), "closed_by_proxy": up.is_closed(*i)})).collect::<Vec<_>>(),
        "upstream_requests": u.requests.iter().map(|r| json!({"conn": r.conn, "target": r.target, "raw": escape(&r.raw)})).collect::<Vec<_>>(),
        "upstream_errors": u.errors.iter().map(|(i, e)| json!({"conn": i, "error": e})).collect::<Vec<_>>(),
        "millis": started.elapsed().as_millis() as u64,
    })
}

fn run_response_case(case: &ResponseCase, proxy: SocketAddr, up: &Upstream) -> Value {
    let m = mark(up);
    let target = format!("{BAD}{}", case.name);
    let c = client_exchange(proxy, format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes(), "GET");
    thread::sleep(SETTLE);
    let bad_conn = up.requests().iter().rev().find(|r| r.target == target).map(|r| r.conn);
    // A second client: does its request go over the connection that carried the bad response?
    let after = format!("/after-{}", case.name);
    let c2 = client_exchange(proxy, format!("GET {after} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes(), "GET");
    thread::sleep(SETTLE);
    let u = since(up, &m);
    let after_conn = u.requests.iter().find(|r| r.target == after).map(|r| r.conn);
    let closed = bad_conn.is_some_and(|i| up.is_closed(i));
    let reused = bad_conn.is_some() && bad_conn == after_conn;
    // Relayed: the client got the upstream's status (the support client may fail to parse it).
    let relayed = c.statuses.first().is_some_and(|s| *s < 300) || (c.statuses.is_empty() && c.error.is_some());
    let next_clean = c2.statuses == [200] && c2.bodies.first().is_some_and(|b| b == after.as_bytes());
    let conn_fate = if reused {
        "connection reused for the next request"
    } else if closed {
        "connection closed"
    } else {
        "connection kept open, not reused"
    };
    let (rank, upstream) = if bad_conn.is_none() {
        (3, "the request never reached the upstream".to_string())
    } else if !next_clean {
        (0, format!("{conn_fate}; the NEXT client's response was wrong ({})", client_summary(&c2)))
    } else if c.statuses.is_empty() && c.timed_out {
        (2, format!("{conn_fate}; the client got no answer (left waiting)"))
    } else if relayed || reused {
        (1, format!("{conn_fate}; next request fine"))
    } else {
        (3, conn_fate.to_string())
    };
    let client = client_summary(&c);
    json!({
        "group": "bad_response",
        "name": case.name,
        "why": case.why,
        "expected": "502 (or cut) · connection closed, not reused",
        "expected_rank": 3,
        "request": format!("GET {target}; upstream answers: {}", escape(case.response)),
        "client": client,
        "client_statuses": c.statuses,
        "client_closed": c.closed,
        "client_error": c.error,
        "upstream": upstream,
        "rewrites": Vec::<String>::new(),
        "rank": rank,
        "next_request_client": client_summary(&c2),
        "bad_conn": bad_conn,
        "next_request_conn": after_conn,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("adversarial_peers: {e}");
            return ExitCode::from(2);
        }
    };
    let responses = bad_response_cases();
    let bad: Vec<(String, &'static [u8])> = responses.iter().map(|c| (format!("{BAD}{}", c.name), c.response)).collect();
    // Idle timeout above the run's length: pooled connections must stay served between rows.
    let opts = UpstreamOpts { reject_malformed: true, idle_timeout: Some(Duration::from_secs(900)), ..UpstreamOpts::default() };
    let up = match Upstream::start_on(args.upstream, opts, move |req| match bad.iter().find(|(t, _)| *t == req.target) {
        Some((_, response)) => Reply::Send(response.to_vec()),
        None => Reply::Send(ok(req.target.as_bytes())),
    }) {
        Ok(up) => up,
        Err(e) => {
            eprintln!("adversarial_peers: cannot bind the upstream on {}: {e}", args.upstream);
            return ExitCode::from(2);
        }
    };

    // Baseline: what this proxy does to a plain GET.
    let plain = b"GET /baseline HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let m = mark(&up);
    let c = client_exchange(args.proxy, plain, "GET");
    thread::sleep(SETTLE);
    let u = since(&up, &m);
    let Some(seen) = u.requests.first() else {
        eprintln!("adversarial_peers: {}: a plain GET did not reach the upstream (client got: {})", args.name, client_summary(&c));
        return ExitCode::from(1);
    };
    let (_, sent_fields, _) = split_request(plain);
    let (_, got_fields, _) = split_request(&seen.raw);
    let base = Baseline { added: minus(&got_fields, &sent_fields), removed: minus(&sent_fields, &got_fields) };

    let mut rows = Vec::new();
    for (group, cases) in &request_tables() {
        for case in cases {
            if args.only.as_deref().is_some_and(|o| o != case.name) {
                continue;
            }
            let row = run_request_case(group, case, args.proxy, &up, &base);
            eprintln!(
                "{:<10} {:<48} {:<16} {}",
                args.name,
                case.name,
                row["client"].as_str().unwrap_or(""),
                row["upstream"].as_str().unwrap_or("")
            );
            rows.push(row);
        }
    }
    for case in &responses {
        if args.only.as_deref().is_some_and(|o| o != case.name) {
            continue;
        }
        let row = run_response_case(case, args.proxy, &up);
        eprintln!(
            "{:<10} {:<48} {:<16} {}",
            args.name,
            case.name,
            row["client"].as_str().unwrap_or(""),
            row["upstream"].as_str().unwrap_or("")
        );
        rows.push(row);
    }

    let record = json!({
        "schema_version": 1,
        "target": args.name,
        "proxy": args.proxy.to_string(),
        "upstream": args.upstream.to_string(),
        "baseline": {
            "sent": escape(plain),
            "received": escape(&seen.raw),
            "added": base.added.iter().map(|l| escape(l)).collect::<Vec<_>>(),
            "removed": base.removed.iter().map(|l| escape(l)).collect::<Vec<_>>(),
        },
        "cases": rows,
    });
    let text = match serde_json::to_string_pretty(&record) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("adversarial_peers: json: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = std::fs::write(&args.out, text + "\n") {
        eprintln!("adversarial_peers: cannot write {}: {e}", args.out);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
