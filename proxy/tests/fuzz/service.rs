//! Layer 2: the real service. A proxy `Worker` with its accept loop and connection tasks, a
//! recording upstream, and the fuzz client all run in this thread on one `current_thread`
//! runtime (as a proxy worker does), over loopback sockets: `conn.rs` is written against
//! `TcpStream`, and loopback costs the harness nothing the proxy would not pay in production.
//!
//! Per case: one client connection writes the input (in random pieces), half-closes, and reads
//! until the proxy closes. The upstream parses what it receives with the referee, answers each
//! request with a response naming its sequence number (`X-Seq`), and records it. Checks:
//! - nothing panics, the connection ends by itself, the worker still serves afterwards;
//! - every upstream message parses cleanly and passes the forwarded-request checks, and nothing
//!   follows a complete request before it was answered (the proxy never pipelines upstream, so
//!   extra bytes are a smuggled request);
//! - response k on the client connection answers client request k (as the referee splits the
//!   client's bytes): its `X-Seq` names an upstream request with the same method, target and
//!   body bytes; so the upstream never sees more requests than the client sent, nor different
//!   ones, nor a body taken as a request;
//! - every forwarded request got its response through, and every response parses.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use proxy::config::{self, ServerIds};
use proxy::data::accept;
use proxy::data::worker::{Shared, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::LocalSet;

use crate::inputs::Rng;
use crate::oracle::{self, Framing, Msg, Next};
use crate::support::escape_quoted;

/// How long one case may take before it counts as a hang (the proxy's own timeouts are 2 s).
const CASE_TIMEOUT: Duration = Duration::from_secs(8);

/// One request as the upstream received it.
#[derive(Debug)]
struct Seen {
    case: u64,
    seq: u64,
    msg: Msg,
}

#[derive(Debug, Default)]
struct Upstream {
    /// The case whose client connection is open (requests are attributed to it).
    case: Cell<u64>,
    seq: Cell<u64>,
    seen: RefCell<Vec<Seen>>,
    problems: RefCell<Vec<(u64, String)>>,
}

impl Upstream {
    fn problem(&self, msg: String) {
        self.problems.borrow_mut().push((self.case.get(), msg));
    }
}

/// The response the upstream sends for request `seq`; varied framing, and once in a while a
/// reason-less status line, a non-ASCII reason or `Connection: close`.
fn response(seq: u64, head: bool) -> (Vec<u8>, bool) {
    let body = format!("r{seq}");
    let close = seq % 11 == 5;
    let conn = if close { "Connection: close\r\n" } else { "" };
    let status = match seq % 13 {
        3 => "200",
        7 => "200 Caf\u{e9}",
        _ => "200 OK",
    };
    let r = match seq % 4 {
        _ if head => format!("HTTP/1.1 {status}\r\nX-Seq: {seq}\r\nContent-Length: {}\r\n{conn}\r\n", body.len()),
        0 | 3 => format!("HTTP/1.1 {status}\r\nX-Seq: {seq}\r\nContent-Length: {}\r\n{conn}\r\n{body}", body.len()),
        1 => {
            format!("HTTP/1.1 {status}\r\nX-Seq: {seq}\r\nTransfer-Encoding: chunked\r\n{conn}\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
        }
        _ => format!("HTTP/1.1 204 No Content\r\nX-Seq: {seq}\r\n{conn}\r\n"),
    };
    (r.into_bytes(), close)
}

async fn upstream_conn(up: Rc<Upstream>, mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        loop {
            match oracle::request(&buf) {
                Next::Msg(m) => {
                    if buf.len() > m.len {
                        up.problem(format!(
                            "smuggled: {} byte(s) followed a complete request before it was answered: \"{}\"",
                            buf.len() - m.len,
                            escape_quoted(&buf[m.len..])
                        ));
                    }
                    for p in oracle::forwarded_request_problems(&m) {
                        up.problem(format!("upstream request: {p}: \"{}\"", escape_quoted(&m.head)));
                    }
                    let seq = up.seq.get() + 1;
                    up.seq.set(seq);
                    let (mut bytes, close) = response(seq, m.method == b"HEAD");
                    if m.one("expect").is_some() && seq.is_multiple_of(2) {
                        // An interim answer first (relayed to HTTP/1.1 clients only).
                        bytes.splice(0..0, b"HTTP/1.1 100 Continue\r\n\r\n".iter().copied());
                    }
                    buf.drain(..m.len);
                    up.seen.borrow_mut().push(Seen { case: up.case.get(), seq, msg: m });
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
                Next::Partial => break,
                Next::Bad(why) => {
                    up.problem(format!("the upstream received an invalid message ({why}): \"{}\"", escape_quoted(&buf)));
                    return;
                }
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return, // a partial message left at EOF is a request cut short
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn upstream_accept(up: Rc<Upstream>, l: TcpListener) {
    while let Ok((s, _)) = l.accept().await {
        tokio::task::spawn_local(upstream_conn(Rc::clone(&up), s));
    }
}

/// A proxy worker and a recording upstream in this thread's runtime.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    local: LocalSet,
    proxy: SocketAddr,
    upstream: SocketAddr,
    up: Rc<Upstream>,
    accept: tokio::task::JoinHandle<()>,
    next_case: u64,
    /// Interim responses the clients received (evidence that the path is exercised).
    interim: u64,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").field("proxy", &self.proxy).finish_non_exhaustive()
    }
}

impl Harness {
    pub fn start() -> Harness {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = LocalSet::new();
        let up = Rc::new(Upstream::default());
        let (proxy, upstream, accept) = local.block_on(&rt, async {
            let ul = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let up_addr = ul.local_addr().unwrap();
            tokio::task::spawn_local(upstream_accept(Rc::clone(&up), ul));
            // Small limits (as in adversarial.rs) so the limit paths are reachable; short
            // timeouts so a framing disagreement shows as a 504 quickly rather than a hang.
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
                 [limits]\nmax_request_line_bytes = 1024\nmax_request_head_bytes = 4096\nmax_headers = 20\n\
                 max_body_bytes = 1000\nheader_read_timeout = \"2s\"\nclient_idle_timeout = \"5s\"\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\
                 [upstreams.u]\nservers = [\"{up_addr}\"]\nresponse_header_timeout = \"2s\"\nconnect_timeout = \"1s\"\n"
            );
            let cfg = config::parse(Path::new("<fuzz>"), &text, &mut ServerIds::default()).unwrap();
            let worker = Worker::new(Shared::new(cfg.snapshot), 0);
            let pl = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = pl.local_addr().unwrap();
            (proxy, up_addr, tokio::task::spawn_local(accept::accept_loop(worker, pl, 0)))
        });
        Harness { rt, local, proxy, upstream, up, accept, next_case: 0, interim: 0 }
    }

    /// One client connection: writes `input` cut at `cuts` (yielding between pieces, so the
    /// proxy reads them separately), half-closes, reads until the proxy closes.
    fn exchange(&mut self, addr: SocketAddr, input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), String> {
        self.local.block_on(&self.rt, async move {
            let run = async {
                let mut c = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
                let _ = c.set_nodelay(true);
                let mut start = 0;
                for &end in cuts.iter().chain(std::iter::once(&input.len())) {
                    if c.write_all(&input[start..end]).await.is_err() {
                        break; // the proxy closed early (after an error): read what it said
                    }
                    start = end;
                    tokio::task::yield_now().await;
                }
                let _ = c.shutdown().await;
                let mut got = Vec::new();
                let mut reset = false;
                let mut chunk = [0u8; 8192];
                loop {
                    match c.read(&mut chunk).await {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                        Err(_) => {
                            reset = true;
                            break;
                        }
                    }
                }
                // Both directions are closed: an abortive close, so that most cases leave no
                // TIME_WAIT socket behind (a run opens ~100k loopback connections; Linux also
                // reuses TIME_WAIT ports on loopback by default, `net.ipv4.tcp_tw_reuse = 2`).
                let _ = c.set_zero_linger();
                Ok((got, reset))
            };
            match tokio::time::timeout(CASE_TIMEOUT, run).await {
                Ok(r) => r,
                Err(_) => Err(format!("the client connection was still open after {CASE_TIMEOUT:?} (input fully sent and half-closed)")),
            }
        })
    }

    /// Runs one case and checks it; `Ok(true)` when at least one request reached the upstream.
    pub fn check(&mut self, input: &[u8], cuts: &[usize]) -> Result<bool, String> {
        self.check_through(self.proxy, input, cuts)
    }

    /// Requests the upstream answered, and interim responses the clients got, so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.up.seq.get(), self.interim)
    }

    /// [`Harness::check`] with the client talking straight to the upstream: a "proxy" that
    /// relays bytes unchanged, which the checks must fail (see `service_checks_can_fail`).
    pub fn check_without_proxy(&mut self, input: &[u8]) -> Result<bool, String> {
        self.check_through(self.upstream, input, &[])
    }

    fn check_through(&mut self, addr: SocketAddr, input: &[u8], cuts: &[usize]) -> Result<bool, String> {
        self.next_case += 1;
        let case = self.next_case;
        self.up.case.set(case);
        let panics_before = crate::panics();
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let (got, reset) = self.exchange(addr, input, &cuts)?;
        // Let the upstream tasks see the proxy's closes (EOF on half-sent messages).
        self.local.block_on(&self.rt, async {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        });
        let mut problems = Vec::new();
        if crate::panics() != panics_before {
            problems.push(format!("panic in the proxy: {}", crate::last_panic()));
        }
        if self.accept.is_finished() {
            problems.push("the worker's accept loop ended".into());
        }
        problems.extend(self.up.problems.borrow_mut().drain(..).map(|(c, p)| if c == case { p } else { format!("(during case {c}) {p}") }));

        // The client's requests, as the referee splits the byte stream.
        let mut client = Vec::new();
        let mut rest = input;
        while let Next::Msg(m) = oracle::request(rest) {
            rest = &rest[m.len..];
            client.push(m);
        }
        let seen: Vec<Seen> = {
            let mut all = self.up.seen.borrow_mut();
            let (mine, others): (Vec<Seen>, Vec<Seen>) = all.drain(..).partition(|s| s.case == case);
            for s in others {
                problems.push(format!("upstream request #{} arrived outside its case ({})", s.seq, s.case));
            }
            mine
        };
        if seen.len() > client.len() {
            problems.push(format!("the upstream got {} requests, the client sent {} complete ones", seen.len(), client.len()));
        }

        // The client's responses: response k answers client request k.
        let mut rest = got.as_slice();
        let mut answered = Vec::new();
        let mut k = 0;
        while !rest.is_empty() {
            let head = client.get(k).is_some_and(|m| m.method == b"HEAD");
            let r = match oracle::response(rest, head) {
                Next::Msg(r) => r,
                Next::Partial if reset => break,
                Next::Partial => {
                    problems.push(format!("response {k} is cut short: \"{}\"", escape_quoted(rest)));
                    break;
                }
                Next::Bad(why) => {
                    problems.push(format!("response {k} does not parse ({why}): \"{}\"", escape_quoted(rest)));
                    break;
                }
            };
            rest = &rest[r.len..];
            if r.status < 200 {
                let http11 = client.get(k).is_some_and(|m| m.minor == 1);
                if r.status != 100 || !http11 {
                    problems.push(format!("interim response {} to client request {k} (HTTP/1.1: {http11})", r.status));
                }
                self.interim += 1;
                continue; // an interim response: request k's final response follows
            }
            match r.one("x-seq").and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()) {
                Some(seq) => match (seen.iter().find(|s| s.seq == seq), client.get(k)) {
                    (Some(s), Some(c)) => {
                        answered.push(seq);
                        let want_target = expected_target(&c.target);
                        if s.msg.method != c.method || s.msg.target != want_target || s.msg.body != c.body {
                            problems.push(format!(
                                "response {k} (upstream request #{seq}) answers a different request: upstream got {} {} body \"{}\"; client request {k} was {} {} body \"{}\"",
                                escape_quoted(&s.msg.method),
                                escape_quoted(&s.msg.target),
                                escape_quoted(&s.msg.body),
                                escape_quoted(&c.method),
                                escape_quoted(&c.target),
                                escape_quoted(&c.body)
                            ));
                        }
                        let body = if r.framing == Framing::Chunked { oracle::dechunk(&r.body) } else { r.body.clone() };
                        let want_body = if head || r.status == 204 { Vec::new() } else { format!("r{seq}").into_bytes() };
                        if body != want_body {
                            problems.push(format!(
                                "response {k}: body \"{}\", the upstream sent \"{}\"",
                                escape_quoted(&body),
                                escape_quoted(&want_body)
                            ));
                        }
                    }
                    (None, _) => problems.push(format!("response {k} carries X-Seq {seq}, not an upstream request of this case")),
                    (Some(_), None) => problems
                        .push(format!("response {k} answers upstream request #{seq} but the client sent only {} requests", client.len())),
                },
                None => {
                    // The proxy's own answer. The upstream is healthy: a gateway error means
                    // the proxy and the upstream disagreed about a message.
                    if r.status == 502 || r.status == 504 {
                        problems.push(format!("response {k}: {} from the proxy with a healthy upstream", r.status));
                    }
                    if !(400..600).contains(&r.status) {
                        problems.push(format!("response {k}: status {} without X-Seq", r.status));
                    }
                    let close = r.one("connection").is_some_and(|c| c.eq_ignore_ascii_case(b"close"));
                    if close && !rest.is_empty() {
                        problems.push(format!("bytes after a `Connection: close` response: \"{}\"", escape_quoted(rest)));
                        break;
                    }
                }
            }
            k += 1;
        }
        let forwarded: Vec<u64> = seen.iter().map(|s| s.seq).collect();
        if !reset && answered != forwarded {
            problems.push(format!("upstream requests {forwarded:?} were answered to the client as {answered:?}"));
        }
        if problems.is_empty() {
            Ok(!seen.is_empty())
        } else {
            Err(format!(
                "{}\n  client requests (referee): {}\n  client received: \"{}\"",
                problems.join("\n  "),
                client.len(),
                escape_quoted(&got)
            ))
        }
    }
}

/// The target the upstream must see for a client target (absolute-form → its path; `/` if
/// empty). No route in this harness strips a prefix.
fn expected_target(raw: &[u8]) -> Vec<u8> {
    if raw.first() == Some(&b'/') || raw == b"*" {
        return raw.to_vec();
    }
    let rest = raw.iter().position(|&b| b == b':').map_or(raw, |i| raw.get(i + 3..).unwrap_or(b""));
    let p = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let path = &rest[p..];
    if path.first() == Some(&b'/') { path.to_vec() } else { [b"/".as_slice(), path].concat() }
}

/// Where to cut the input between writes.
#[derive(Debug)]
pub struct Cuts(pub Vec<usize>);

pub fn cuts(rng: &mut Rng) -> Cuts {
    let n = match rng.below(4) {
        0 => 0,
        1 | 2 => 1 + rng.below(3),
        _ => 4 + rng.below(12),
    };
    Cuts((0..n).map(|_| rng.next() as usize).collect())
}
