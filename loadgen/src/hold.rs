//! `loadgen hold`: the resident memory a target process spends per idle keep-alive connection,
//! and whether it gives that memory back when the connections leave (issue 14).
//!
//! For each count N of `--connections` (in turn, in one invocation):
//! 1. settle (`--settle-before`), then read the target's RSS (**before**);
//! 2. open N connections at a bounded ramp (`--ramp`, connections per second) with at most
//!    `--concurrency` of them between connect and a verified response at any time; each sends ONE
//!    keep-alive GET and reads the whole response, which must be a `200` with its body read to the
//!    end (Content-Length or chunked), no bytes after it, and no `Connection: close`;
//! 3. leave every connection idle for `--settle`, read the RSS (**held**), then check that every
//!    connection is still open (the target did not close idle connections under the measurement);
//! 4. close them all, wait `--settle`, read the RSS (**after**).
//!
//! `kib_per_conn = (held − before) / n_ok`, `after_ratio = after / before`. RSS is `VmRSS` of
//! `/proc/PID/status`, summed over the target and all its descendants (nginx and HAProxy serve from
//! worker children), found by scanning `/proc/*/stat` for parent pids; pages shared between those
//! processes (the binary, shared libraries) are counted once per process, which moves `before`,
//! not the difference.
//!
//! Before the first count, one verified keep-alive exchange (then closed) checks that the target
//! answers at all, so a wrong port is one clear error and not N failures, and so the target's
//! first-request costs (its upstream connection, say) are paid before anything is measured.
//!
//! Every connection is verified: a count with any failure (by kind: connect, write, read,
//! timeout, status, not_keepalive, closed_while_held) is INVALID, and the exit code is 3 unless
//! `--allow-failures`. The open-file limit (`RLIMIT_NOFILE`) is raised to its hard limit at start;
//! a count above what it allows is refused up front.
//!
//! `https://` URLs (with `--ca FILE` or `--insecure`, `--sni`, `--resume` as in `run`): each
//! connection does its TLS handshake (ALPN `http/1.1`; full, or resumed from the client's session
//! cache), then the verified GET, then idles as a TLS connection; what the target spends per
//! idle TLS connection is measured. Full and resumed handshakes are counted per count; a failed
//! handshake is a `handshake` failure. The connections are closed without `close_notify` (FIN).
//!
//! `--http2`: each connection speaks HTTP/2 (the `h2` crate): ALPN `h2` over TLS on `https://`,
//! prior knowledge (h2c) on `http://`. It completes the preface and SETTINGS exchange, sends its
//! one GET on stream 1 and reads the whole response (a `200`, its body to the end), then idles as
//! an HTTP/2 connection with no stream open; the `h2` connection is driven by a task of its own
//! (it would answer a PING). A connection whose driver ended (the target closed it, or sent GOAWAY
//! and closed) while held is `closed_while_held`.
//!
//! `--http3` (`https://` only): each connection is QUIC (`quinn`, its own UDP socket, so the
//! target's `SO_REUSEPORT` workers share them as they share TCP connections) with HTTP/3 (`h3`):
//! TLS 1.3 as `run --http3` does it (full or resumed), the HTTP/3 control streams, one verified
//! GET on a request stream, then idle with no request stream open. The client PINGs every 10 s
//! (quinn's idle timeout is 30 s), so a held connection is idle but not timed out by the client. A
//! connection whose HTTP/3 driver ended while held (the target closed it) is `closed_while_held`;
//! closing sends CONNECTION_CLOSE at once (QUIC has no FIN).

use crate::body::{BodySkipper, Framing};
use crate::cli::{EXIT_INVALID, EXIT_USAGE, OnOff, parse_duration};
use crate::client::{Request, Target, parse_head};
use crate::report::rfc3339;
use crate::tls::{ClientSettings, Verify};
use crate::transport::{HandshakeKind, Stream};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Version of the `hold --json` layout; bump on any incompatible change.
pub const HOLD_SCHEMA_VERSION: u32 = 1;

/// File descriptors kept for everything but the held connections (runtime, stdio, the JSON file).
const FD_MARGIN: u64 = 64;
/// Buffer for one response (head and body are read through it; dropped once verified).
const RESPONSE_BUF: usize = 16 * 1024;

/// `loadgen hold` arguments.
#[derive(Args, Debug, Clone)]
pub struct HoldArgs {
    /// Target URL (http:// or https://IP-or-localhost[:port]/path): each connection sends one
    /// GET for it (over TLS after its handshake).
    #[arg(long)]
    pub url: String,
    /// https: verify the server's certificate against the PEM certificates of this file.
    #[arg(long, conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// https: accept any certificate for any name (NOT verified; said so in the report).
    #[arg(long)]
    pub insecure: bool,
    /// https: the server name sent as SNI and checked in the certificate (default: the URL's host).
    #[arg(long)]
    pub sni: Option<String>,
    /// https: keep a TLS session cache so connections resume (default on).
    #[arg(long, value_enum)]
    pub resume: Option<OnOff>,
    /// Process whose resident memory is measured (summed with all its descendants).
    #[arg(long)]
    pub pid: u32,
    /// Connection counts to hold, in turn (closing all between), e.g. 1000,10000.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub connections: Vec<usize>,
    /// Idle time before the held RSS is read, and again after closing before the after RSS.
    #[arg(long, default_value = "2.5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Idle time before the before RSS is read.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle_before: Duration,
    /// Connections opened per second, e.g. 2000/s (bounded, to keep the target's SYN queue from
    /// overflowing).
    #[arg(long, default_value = "2000/s", value_parser = parse_ramp)]
    pub ramp: f64,
    /// Most connections between connect and a verified response at any time.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Limit for each connection's connect + request + response.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Exit 0 even when a count had failed connections (the report still says INVALID).
    #[arg(long)]
    pub allow_failures: bool,
    /// Hold each connection part-way through a head: after its verified GET it sends a second
    /// request's head without the final CRLF (the target has read a partial head and waits for
    /// the rest). The target's header timeout must outlast the hold.
    #[arg(long)]
    pub partial_head: bool,
    /// Speak HTTP/2: ALPN h2 on https://, prior knowledge (h2c) on http://; each connection does
    /// its one verified GET on a stream, then idles with no stream open.
    #[arg(long, conflicts_with = "partial_head")]
    pub http2: bool,
    /// Speak HTTP/3 (QUIC, https:// only): each connection does its handshake and one verified
    /// GET on a request stream, then idles with no request stream open.
    #[arg(long, conflicts_with_all = ["partial_head", "http2"])]
    pub http3: bool,
}

/// `2000/s` or `2000`: connections per second, positive and finite.
pub fn parse_ramp(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let n = t.strip_suffix("/s").unwrap_or(t).trim();
    match n.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("'{s}' is not a rate of connections per second (e.g. 2000/s)")),
    }
}

/// Everything a hold run needs, validated.
#[derive(Clone, Debug)]
pub struct HoldConfig {
    pub target: Target,
    pub request: Request,
    pub pid: u32,
    pub counts: Vec<usize>,
    pub settle: Duration,
    pub settle_before: Duration,
    pub ramp: f64,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Held connections are part-way through a second head (`--partial-head`).
    pub partial_head: bool,
    /// TLS settings (`https://`); `None` for plain TCP.
    pub tls: Option<ClientSettings>,
    /// `--http2`.
    pub http2: bool,
    /// `--http3`.
    pub http3: bool,
}

impl HoldConfig {
    /// Validates the arguments (usage errors as one line).
    pub fn from_args(a: &HoldArgs) -> Result<HoldConfig, String> {
        let target = Target::parse(&a.url)?;
        let tls = if target.tls {
            let verify = match (&a.ca, a.insecure) {
                (Some(p), _) => crate::tls::read_ca(p).map_err(|e| format!("--ca {e}"))?,
                (None, true) => Verify::Insecure,
                (None, false) => return Err("an https:// URL needs --ca FILE (PEM roots) or --insecure (no verification)".into()),
            };
            let name = a.sni.as_deref().unwrap_or(&target.host);
            let server_name = crate::tls::server_name(name).map_err(|e| if a.sni.is_some() { format!("--sni: {e}") } else { e })?;
            Some(ClientSettings { server_name, verify, resume: a.resume != Some(OnOff::Off), h2: a.http2, early_data: false })
        } else {
            if a.ca.is_some() || a.insecure || a.sni.is_some() || a.resume.is_some() {
                return Err("--ca, --insecure, --sni and --resume need an https:// URL".into());
            }
            None
        };
        if a.http3 && tls.is_none() {
            return Err("--http3 needs an https:// URL (QUIC is always encrypted)".into());
        }
        if a.connections.is_empty() || a.connections.contains(&0) {
            return Err("--connections must be counts of at least 1, e.g. 1000,10000".into());
        }
        if a.pid == 0 {
            return Err("--pid must be a process id".into());
        }
        if a.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if a.timeout.is_zero() {
            return Err("--timeout must be positive".into());
        }
        let request = target.request("GET", &target.path, &[], b"");
        Ok(HoldConfig {
            target,
            request,
            pid: a.pid,
            counts: a.connections.clone(),
            settle: a.settle,
            settle_before: a.settle_before,
            ramp: a.ramp,
            concurrency: a.concurrency,
            timeout: a.timeout,
            partial_head: a.partial_head,
            tls,
            http2: a.http2,
            http3: a.http3,
        })
    }
}

/// Why a connection did not end up verified and idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    Connect = 0,
    Write = 1,
    Read = 2,
    Timeout = 3,
    /// A response other than 200.
    Status = 4,
    /// The response closes the connection (`Connection: close`, HTTP/1.0, body until close).
    NotKeepalive = 5,
    /// The target closed (or wrote to) the connection while it was held idle.
    ClosedWhileHeld = 6,
    /// `https://`: TCP connected but the TLS handshake failed.
    Handshake = 7,
}

impl FailKind {
    pub const ALL: [FailKind; 8] = [
        FailKind::Connect,
        FailKind::Write,
        FailKind::Read,
        FailKind::Timeout,
        FailKind::Status,
        FailKind::NotKeepalive,
        FailKind::ClosedWhileHeld,
        FailKind::Handshake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::Write => "write",
            FailKind::Read => "read",
            FailKind::Timeout => "timeout",
            FailKind::Status => "status",
            FailKind::NotKeepalive => "not_keepalive",
            FailKind::ClosedWhileHeld => "closed_while_held",
            FailKind::Handshake => "handshake",
        }
    }
}

/// A failed connection: the kind and a message for the first one of a count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fail {
    pub kind: FailKind,
    pub message: String,
}

fn fail(kind: FailKind, message: impl Into<String>) -> Fail {
    Fail { kind, message: message.into() }
}

/// What one count measured.
#[derive(Clone, Debug)]
pub struct CountResult {
    pub connections: usize,
    /// Connections verified and still open when the held RSS was read.
    pub n_ok: usize,
    pub failures: [u64; FailKind::ALL.len()],
    pub first_failure: Option<String>,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    pub rss_after_kib: u64,
    /// Processes summed (the target and its descendants) when the held RSS was read.
    pub processes: usize,
    /// Seconds from the first connect to the last verified response.
    pub open_s: f64,
    /// `https://`: the successful TLS handshakes of this count that were full, and resumed.
    pub tls_full: u64,
    pub tls_resumed: u64,
    pub before_at: SystemTime,
    pub held_at: SystemTime,
    pub after_at: SystemTime,
}

impl CountResult {
    pub fn failed(&self) -> u64 {
        self.failures.iter().sum()
    }

    /// Every connection verified and held.
    pub fn valid(&self) -> bool {
        self.failed() == 0 && self.n_ok == self.connections
    }

    /// (held − before) / n_ok, in KiB; `None` with no connection held.
    pub fn kib_per_conn(&self) -> Option<f64> {
        (self.n_ok > 0).then(|| (self.rss_held_kib as f64 - self.rss_before_kib as f64) / self.n_ok as f64)
    }

    /// after / before; `None` when before is 0.
    pub fn after_ratio(&self) -> Option<f64> {
        (self.rss_before_kib > 0).then(|| self.rss_after_kib as f64 / self.rss_before_kib as f64)
    }

    fn failure_text(&self) -> String {
        let parts: Vec<String> = FailKind::ALL
            .iter()
            .filter(|k| self.failures[**k as usize] > 0)
            .map(|k| format!("{} {}", k.name(), self.failures[*k as usize]))
            .collect();
        parts.join(", ")
    }
}

/// The result of a hold run.
#[derive(Clone, Debug)]
pub struct HoldOutcome {
    pub started: SystemTime,
    pub ended: SystemTime,
    /// The open-file limit after raising it.
    pub nofile: u64,
    /// The target's command line (from `/proc/PID/cmdline`).
    pub target_command: String,
    pub counts: Vec<CountResult>,
}

impl HoldOutcome {
    pub fn valid(&self) -> bool {
        self.counts.iter().all(CountResult::valid)
    }

    pub fn invalid_reasons(&self) -> Vec<String> {
        self.counts
            .iter()
            .filter(|c| !c.valid())
            .map(|c| {
                format!(
                    "{} of {} connections were not verified and held ({}){}",
                    c.connections - c.n_ok.min(c.connections),
                    c.connections,
                    c.failure_text(),
                    c.first_failure.as_deref().map(|m| format!("; first: {m}")).unwrap_or_default()
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Resident memory of a process tree
// ---------------------------------------------------------------------------------------------

/// `VmRSS` in KiB from the text of `/proc/PID/status` (`None` for processes without memory:
/// zombies, kernel threads).
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n = it.next()?.parse::<u64>().ok()?;
    match it.next() {
        Some("kB") | None => Some(n),
        Some(_) => None,
    }
}

/// (pid, parent pid) from the text of `/proc/PID/stat`. The command name sits in parentheses and
/// may itself contain spaces and parentheses, so the fields are read after the last `)`.
pub fn parse_stat_ppid(stat: &str) -> Option<(u32, u32)> {
    let (head, tail) = stat.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let mut f = tail.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((pid, ppid))
}

/// Every live descendant of `pid` (children, their children, ...), by scanning `/proc/*/stat`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(p) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            // A process may exit between the listing and the read: skip it.
            if let Some(pp) = std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| parse_stat_ppid(&s)) {
                parent_of.push(pp);
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parent_of {
            if parent == p && child != pid && !out.contains(&child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// Resident KiB of `pid` plus all its descendants, and how many processes were summed. The
/// target itself must be readable; a descendant that exits meanwhile counts 0.
pub fn tree_rss_kib(pid: u32) -> io::Result<(u64, usize)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("target pid {pid}: {path}: {e}")))?;
    let mut total = parse_vm_rss(&text).ok_or_else(|| io::Error::other(format!("target pid {pid}: no VmRSS in {path} (a zombie?)")))?;
    let kids = descendants(pid);
    for k in &kids {
        total += std::fs::read_to_string(format!("/proc/{k}/status")).ok().and_then(|s| parse_vm_rss(&s)).unwrap_or(0);
    }
    Ok((total, 1 + kids.len()))
}

/// The soft `Max open files` of `/proc/PID/limits`, if readable (`None` also for "unlimited").
fn target_nofile(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn target_command(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        // An unlimited hard limit cannot be the soft one (the kernel caps it at fs.nr_open):
        // keep the old soft limit then.
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?.0)
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// The TLS side of a hold run: one client config (so one session cache) for every connection.
#[derive(Clone)]
pub struct HoldTls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl HoldTls {
    pub fn new(s: &ClientSettings) -> Result<HoldTls, String> {
        Ok(HoldTls { connector: tokio_rustls::TlsConnector::from(crate::tls::client_config(s)?), name: s.server_name.clone() })
    }
}

/// Connects and, over TLS, completes the handshake (saying whether it was resumed).
async fn connect(addr: std::net::SocketAddr, tls: Option<&HoldTls>) -> Result<(Stream, Option<HandshakeKind>), Fail> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| fail(FailKind::Connect, format!("connect to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let Some(t) = tls else {
        return Ok((Stream::Tcp(tcp), None));
    };
    let s =
        t.connector.connect(t.name.clone(), tcp).await.map_err(|e| fail(FailKind::Handshake, format!("TLS handshake with {addr}: {e}")))?;
    let kind = match s.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => HandshakeKind::Resumed,
        _ => HandshakeKind::Full,
    };
    Ok((Stream::Tls(Box::new(s)), Some(kind)))
}

/// An open connection and how its TLS handshake went (`None`: cleartext).
type Opened = (Held, Option<HandshakeKind>);

/// A connection held idle: HTTP/1.1 (the stream itself), HTTP/2 (`--http2`) or HTTP/3
/// (`--http3`).
enum Held {
    H1(Stream),
    H2(H2Held),
    H3(H3Held),
}

/// The QUIC side of a `--http3` hold run: one client config (one session cache) for every
/// connection, and the counter that tells a resumed handshake.
pub struct H3Hold {
    config: quinn::ClientConfig,
    counts: Arc<crate::tls::QuicTlsCounts>,
    name: String,
}

impl H3Hold {
    pub fn new(s: &ClientSettings) -> Result<H3Hold, String> {
        let (config, counts) = crate::tls::quic_client_config(s)?;
        Ok(H3Hold { config, counts, name: s.server_name_str() })
    }
}

/// An idle HTTP/3 connection: its endpoint (UDP socket), request handle and driver task, which
/// sets `ended` when the connection ends. Dropping it closes the connection (CONNECTION_CLOSE).
struct H3Held {
    _send: h3::client::SendRequest<h3_quinn::OpenStreams, bytes::Bytes>,
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    driver: tokio::task::JoinHandle<()>,
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for H3Held {
    fn drop(&mut self) {
        self.driver.abort();
        self.conn.close(quinn::VarInt::from_u32(0x100), b"");
    }
}

/// A QUIC connection to `addr` from a UDP socket of its own, the HTTP/3 set-up, one verified GET
/// (`200`, body read to the end), then the connection left idle; with how the handshake went.
async fn open_h3(addr: std::net::SocketAddr, q: &H3Hold, url: &str) -> Result<(H3Held, HandshakeKind), Fail> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let bind: std::net::SocketAddr =
        if addr.is_ipv6() { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| fail(FailKind::Connect, format!("UDP socket: {e}")))?;
    let before = q.counts.tickets_taken.load(Ordering::Relaxed);
    let connecting = endpoint
        .connect_with(q.config.clone(), addr, &q.name)
        .map_err(|e| fail(FailKind::Connect, format!("QUIC connect to {addr}: {e}")))?;
    // The ClientHello was built inside `connect_with`: a ticket taken since is this one's.
    let kind = if q.counts.tickets_taken.load(Ordering::Relaxed) != before { HandshakeKind::Resumed } else { HandshakeKind::Full };
    let conn = connecting.await.map_err(|e| fail(FailKind::Handshake, format!("QUIC handshake with {addr}: {e}")))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| fail(FailKind::Handshake, format!("HTTP/3 set-up: {e}")))?;
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        flag.store(true, Ordering::SeqCst);
    });
    let held = H3Held { _send: send.clone(), conn, _endpoint: endpoint, driver, ended };
    let mut send = send;
    let req = http::Request::builder().method("GET").uri(url).body(()).map_err(|e| fail(FailKind::Write, format!("request: {e}")))?;
    let mut stream = send.send_request(req).await.map_err(|e| fail(FailKind::Write, format!("HTTP/3 request: {e}")))?;
    stream.finish().await.map_err(|e| fail(FailKind::Write, format!("HTTP/3 request: {e}")))?;
    let response = stream.recv_response().await.map_err(|e| fail(FailKind::Read, format!("HTTP/3 response: {e}")))?;
    if response.status() != 200 {
        return Err(fail(FailKind::Status, format!("status {} (200 expected)", response.status().as_u16())));
    }
    while stream.recv_data().await.map_err(|e| fail(FailKind::Read, format!("HTTP/3 response body: {e}")))?.is_some() {}
    Ok((held, kind))
}

/// An idle HTTP/2 connection: its request handle and the task driving the connection, which
/// sets `ended` when the connection ends. Dropping it closes the connection.
struct H2Held {
    _send: h2::client::SendRequest<bytes::Bytes>,
    driver: tokio::task::JoinHandle<()>,
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for H2Held {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The HTTP/2 preface and settings over `s`, one GET on a stream (a `200` with its body read to
/// the end, capacity released), then the connection left idle.
async fn open_h2(s: Stream, url: &str) -> Result<H2Held, Fail> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (send, conn) = h2::client::Builder::new()
        .enable_push(false)
        .handshake::<_, bytes::Bytes>(s)
        .await
        .map_err(|e| fail(FailKind::Handshake, format!("HTTP/2 preface and settings: {e}")))?;
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
        flag.store(true, Ordering::SeqCst);
    });
    let held = H2Held { _send: send.clone(), driver, ended };
    let mut send = send.ready().await.map_err(|e| fail(FailKind::Write, format!("HTTP/2 stream: {e}")))?;
    let req = http::Request::builder().method("GET").uri(url).body(()).map_err(|e| fail(FailKind::Write, format!("request: {e}")))?;
    let (response, _) = send.send_request(req, true).map_err(|e| fail(FailKind::Write, format!("HTTP/2 request: {e}")))?;
    let response = response.await.map_err(|e| fail(FailKind::Read, format!("HTTP/2 response: {e}")))?;
    if response.status() != 200 {
        return Err(fail(FailKind::Status, format!("status {} (200 expected)", response.status().as_u16())));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| fail(FailKind::Read, format!("HTTP/2 response body: {e}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(held)
}

/// Connects (and handshakes), sends `request`, reads and verifies the whole response; returns
/// the open, idle stream.
async fn open_one(
    addr: std::net::SocketAddr,
    tls: Option<HoldTls>,
    request: Arc<Request>,
    timeout: Duration,
    partial_head: bool,
    h2_url: Option<Arc<str>>,
    h3: Option<Arc<H3Hold>>,
) -> Result<Opened, Fail> {
    let opened = async {
        if let (Some(q), Some(url)) = (&h3, &h2_url) {
            let (held, kind) = open_h3(addr, q, url).await?;
            return Ok((Held::H3(held), Some(kind)));
        }
        let (mut s, kind) = connect(addr, tls.as_ref()).await?;
        if let Some(url) = &h2_url {
            return Ok((Held::H2(open_h2(s, url).await?), kind));
        }
        exchange(&mut s, &request).await?;
        if partial_head {
            // All of the next request's head but its final CRLF (the GET has no body: its bytes
            // are its head).
            let head = &request.bytes[..request.bytes.len().saturating_sub(2)];
            write_flush(&mut s, head).await.map_err(|e| fail(FailKind::Write, format!("write of the partial head: {e}")))?;
        }
        Ok((Held::H1(s), kind))
    };
    match tokio::time::timeout(timeout, opened).await {
        Ok(r) => r,
        Err(_) => Err(fail(FailKind::Timeout, format!("no complete response within {}", crate::report::fmt_dur(timeout)))),
    }
}

/// Writes all of `b` and flushes it out of rustls' buffer (a no-op for TCP).
async fn write_flush(s: &mut Stream, b: &[u8]) -> io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}

async fn exchange(s: &mut Stream, request: &Request) -> Result<(), Fail> {
    write_flush(s, &request.bytes).await.map_err(|e| fail(FailKind::Write, format!("write: {e}")))?;
    let mut buf = vec![0u8; RESPONSE_BUF];
    let (mut start, mut end) = (0usize, 0usize);
    let head = loop {
        match parse_head(&buf[start..end], request.head) {
            Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                start += h.len;
                continue;
            }
            Ok(Some(h)) => {
                start += h.len;
                break h;
            }
            Ok(None) => {}
            Err(c) => return Err(fail(FailKind::Read, format!("response head does not parse ({})", c.name()))),
        }
        if end == buf.len() {
            if start == 0 {
                return Err(fail(FailKind::Read, format!("response head larger than {RESPONSE_BUF} bytes")));
            }
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        end += read_some(s, &mut buf[end..], "before the response head was complete").await?;
    };
    if head.status != 200 {
        return Err(fail(FailKind::Status, format!("status {} (200 expected)", head.status)));
    }
    if head.close || head.framing == Framing::UntilClose {
        return Err(fail(FailKind::NotKeepalive, "the response closes the connection (Connection: close, HTTP/1.0 or no length)"));
    }
    let mut body = BodySkipper::new(head.framing);
    loop {
        let used = body.feed(&buf[start..end]).map_err(|_| fail(FailKind::Read, "malformed chunked body"))?;
        start += used;
        if body.is_done() {
            break;
        }
        start = 0;
        end = read_some(s, &mut buf, "before the body was complete").await?;
    }
    if start != end {
        return Err(fail(FailKind::Read, format!("{} bytes after the response", end - start)));
    }
    Ok(())
}

/// Reads at least one byte; EOF is a read failure.
async fn read_some(s: &mut Stream, buf: &mut [u8], when: &str) -> Result<usize, Fail> {
    match s.read(buf).await {
        Ok(0) => Err(fail(FailKind::Read, format!("connection closed {when}"))),
        Ok(n) => Ok(n),
        Err(e) => Err(fail(FailKind::Read, format!("read: {e}"))),
    }
}

/// Is a held connection still open and silent? (`Err` with the reason when not.) Over TLS the
/// TCP socket under it is read: any byte (a TLS record: data, an alert, `close_notify`) means the
/// target did not leave it idle.
fn still_open(h: &Held) -> Result<(), String> {
    let s = match h {
        Held::H1(s) => s,
        Held::H2(h) if h.ended.load(std::sync::atomic::Ordering::SeqCst) => {
            return Err("the target ended a held HTTP/2 connection".into());
        }
        Held::H2(_) => return Ok(()),
        Held::H3(h) if h.ended.load(std::sync::atomic::Ordering::SeqCst) => {
            return Err("the target ended a held HTTP/3 connection".into());
        }
        Held::H3(_) => return Ok(()),
    };
    let tcp = match s {
        Stream::Tcp(t) => t,
        Stream::Tls(t) => t.get_ref().0,
    };
    let mut b = [0u8; 1];
    match tcp.try_read(&mut b) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Ok(0) => Err("the target closed a held connection".into()),
        Ok(_) => Err("the target wrote to a held idle connection".into()),
        Err(e) => Err(format!("a held connection failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Runs every count of `cfg` against the target; `progress` gets a line per phase.
pub fn run(cfg: &HoldConfig, progress: &mut dyn Write) -> io::Result<HoldOutcome> {
    let started = SystemTime::now();
    let nofile = raise_nofile()?;
    let most = cfg.counts.iter().copied().max().unwrap_or(0) as u64;
    if most + FD_MARGIN > nofile {
        return Err(io::Error::other(format!(
            "holding {most} connections needs {} open files, but RLIMIT_NOFILE allows {nofile} (raised to the hard limit): \
             raise the hard limit (ulimit -Hn, /etc/security/limits.conf) or hold fewer connections",
            most + FD_MARGIN
        )));
    }
    // Fails early (and clearly) when the pid is wrong.
    tree_rss_kib(cfg.pid)?;
    if let Some(limit) = target_nofile(cfg.pid).filter(|&l| l < most) {
        let _ = writeln!(
            progress,
            "loadgen hold: warning: target pid {} may open at most {limit} files (RLIMIT_NOFILE): holding {most} connections will fail unless its workers raised theirs",
            cfg.pid
        );
    }
    let target_command = target_command(cfg.pid);
    // One TLS client config (and session cache) for the whole run.
    let tls = cfg.tls.as_ref().map(HoldTls::new).transpose().map_err(io::Error::other)?;
    let h3 = match (&cfg.tls, cfg.http3) {
        (Some(s), true) => Some(Arc::new(H3Hold::new(s).map_err(io::Error::other)?)),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let counts = rt.block_on(async {
        let request = Arc::new(cfg.request.clone());
        // One verified exchange first: a target that does not answer is one clear error, and its
        // first-request costs are paid before anything is measured.
        match open_one(cfg.target.addr, tls.clone(), request.clone(), cfg.timeout, false, h2_url(cfg), h3.clone()).await {
            Ok(s) => drop(s),
            Err(f) => {
                return Err(io::Error::other(format!(
                    "no verified keep-alive response from {} ({}): {}",
                    cfg.target.addr,
                    f.kind.name(),
                    f.message
                )));
            }
        }
        let mut out = Vec::with_capacity(cfg.counts.len());
        for &n in &cfg.counts {
            out.push(hold_count(cfg, n, tls.as_ref(), h3.as_ref(), &request, progress).await?);
        }
        Ok::<_, io::Error>(out)
    })?;
    Ok(HoldOutcome { started, ended: SystemTime::now(), nofile, target_command, counts })
}

/// `--http2` and `--http3`: the URL each connection's GET asks for (`None`: HTTP/1.1).
fn h2_url(cfg: &HoldConfig) -> Option<Arc<str>> {
    (cfg.http2 || cfg.http3).then(|| Arc::from(cfg.target.url()))
}

async fn hold_count(
    cfg: &HoldConfig,
    n: usize,
    tls: Option<&HoldTls>,
    h3: Option<&Arc<H3Hold>>,
    request: &Arc<Request>,
    progress: &mut dyn Write,
) -> io::Result<CountResult> {
    tokio::time::sleep(cfg.settle_before).await;
    let before_at = SystemTime::now();
    let (rss_before_kib, _) = tree_rss_kib(cfg.pid)?;
    let _ = writeln!(progress, "hold {n}: RSS before {rss_before_kib} KiB; opening at {:.0}/s", cfg.ramp);
    let mut failures = [0u64; FailKind::ALL.len()];
    let mut first_failure: Option<String> = None;
    let mut note = |f: &Fail| {
        failures[f.kind as usize] += 1;
        if first_failure.is_none() {
            first_failure = Some(format!("{}: {}", f.kind.name(), f.message));
        }
    };

    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(cfg.concurrency));
    let mut set: JoinSet<Result<Opened, Fail>> = JoinSet::new();
    for i in 0..n {
        let due = t0 + Duration::from_secs_f64(i as f64 / cfg.ramp);
        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
        let permit = sem.clone().acquire_owned().await.map_err(|e| io::Error::other(format!("semaphore: {e}")))?;
        let (addr, tls, req, timeout, partial) = (cfg.target.addr, tls.cloned(), request.clone(), cfg.timeout, cfg.partial_head);
        let (url, h3) = (h2_url(cfg), h3.cloned());
        set.spawn(async move {
            let r = open_one(addr, tls, req, timeout, partial, url, h3).await;
            drop(permit);
            r
        });
    }
    let mut held: Vec<Held> = Vec::with_capacity(n);
    let (mut tls_full, mut tls_resumed) = (0u64, 0u64);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok((s, kind))) => {
                match kind {
                    Some(HandshakeKind::Resumed) => tls_resumed += 1,
                    Some(_) => tls_full += 1,
                    None => {}
                }
                held.push(s);
            }
            Ok(Err(f)) => note(&f),
            Err(e) => note(&fail(FailKind::Read, format!("connection task: {e}"))),
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let _ = writeln!(progress, "hold {n}: {} verified in {open_s:.1}s; idle for {}", held.len(), crate::report::fmt_dur(cfg.settle));

    tokio::time::sleep(cfg.settle).await;
    let held_at = SystemTime::now();
    let (rss_held_kib, processes) = tree_rss_kib(cfg.pid)?;
    // After the reading: a connection the target closed before it did not count in it.
    let mut n_ok = 0;
    for s in &held {
        match still_open(s) {
            Ok(()) => n_ok += 1,
            Err(m) => note(&fail(FailKind::ClosedWhileHeld, m)),
        }
    }
    let _ = writeln!(progress, "hold {n}: RSS held {rss_held_kib} KiB ({processes} processes); closing");
    drop(held);

    tokio::time::sleep(cfg.settle).await;
    let after_at = SystemTime::now();
    let (rss_after_kib, _) = tree_rss_kib(cfg.pid)?;
    Ok(CountResult {
        connections: n,
        n_ok,
        failures,
        first_failure,
        rss_before_kib,
        rss_held_kib,
        rss_after_kib,
        processes,
        open_s,
        tls_full,
        tls_resumed,
        before_at,
        held_at,
        after_at,
    })
}

// ---------------------------------------------------------------------------------------------
// Reports
// ---------------------------------------------------------------------------------------------

/// Run metadata of `hold --json`.
#[derive(Debug, Serialize)]
pub struct HoldMeta {
    pub tool: &'static str,
    pub version: &'static str,
    pub subcommand: &'static str,
    pub command_line: Vec<String>,
    pub start_time: String,
    pub end_time: String,
    pub url: String,
    pub address: String,
    pub pid: u32,
    pub target_command: String,
    pub settle_s: f64,
    pub settle_before_s: f64,
    pub ramp_per_s: f64,
    pub concurrency: usize,
    pub timeout_s: f64,
    /// Held connections were part-way through a head (`--partial-head`).
    pub partial_head: bool,
    /// Held connections spoke HTTP/2 (`--http2`).
    pub http2: bool,
    /// Held connections spoke HTTP/3 over QUIC (`--http3`).
    pub http3: bool,
    pub nofile_limit: u64,
    /// TLS as configured (`null` for http://): the same fields as `run`'s `meta.tls`.
    pub tls: Option<crate::report::TlsMeta>,
}

/// One count in `hold --json`.
#[derive(Debug, Serialize)]
pub struct CountJson {
    pub connections: usize,
    pub n_ok: usize,
    pub valid: bool,
    pub failures: BTreeMap<&'static str, u64>,
    pub first_failure: Option<String>,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_conn: Option<f64>,
    pub after_ratio: Option<f64>,
    pub processes: usize,
    pub open_s: f64,
    /// `https://`: TLS handshakes of the held connections, full and resumed (`null` for http://).
    pub tls_handshakes: Option<BTreeMap<&'static str, u64>>,
    pub before_time: String,
    pub held_time: String,
    pub after_time: String,
}

/// The `hold --json` document.
#[derive(Debug, Serialize)]
pub struct HoldJson {
    pub schema_version: u32,
    pub meta: HoldMeta,
    pub valid: bool,
    pub invalid_reasons: Vec<String>,
    pub counts: Vec<CountJson>,
}

/// Builds the JSON document of a hold run.
pub fn hold_json(cfg: &HoldConfig, out: &HoldOutcome, command_line: &[String]) -> HoldJson {
    HoldJson {
        schema_version: HOLD_SCHEMA_VERSION,
        meta: HoldMeta {
            tool: "loadgen",
            version: env!("CARGO_PKG_VERSION"),
            subcommand: "hold",
            command_line: command_line.to_vec(),
            start_time: rfc3339(out.started),
            end_time: rfc3339(out.ended),
            url: cfg.target.url(),
            address: cfg.target.addr.to_string(),
            pid: cfg.pid,
            target_command: out.target_command.clone(),
            settle_s: cfg.settle.as_secs_f64(),
            settle_before_s: cfg.settle_before.as_secs_f64(),
            ramp_per_s: cfg.ramp,
            concurrency: cfg.concurrency,
            timeout_s: cfg.timeout.as_secs_f64(),
            partial_head: cfg.partial_head,
            http2: cfg.http2,
            http3: cfg.http3,
            nofile_limit: out.nofile,
            tls: cfg.tls.as_ref().map(|t| crate::report::TlsMeta {
                server_name: t.server_name_str(),
                verify: t.verify_label(),
                insecure: matches!(t.verify, Verify::Insecure),
                resume: t.resume,
                alpn_offered: vec![if cfg.http3 {
                    "h3"
                } else if cfg.http2 {
                    "h2"
                } else {
                    "http/1.1"
                }],
            }),
        },
        valid: out.valid(),
        invalid_reasons: out.invalid_reasons(),
        counts: out
            .counts
            .iter()
            .map(|c| CountJson {
                connections: c.connections,
                n_ok: c.n_ok,
                valid: c.valid(),
                failures: FailKind::ALL.iter().map(|k| (k.name(), c.failures[*k as usize])).collect(),
                first_failure: c.first_failure.clone(),
                rss_before_kib: c.rss_before_kib,
                rss_held_kib: c.rss_held_kib,
                rss_after_kib: c.rss_after_kib,
                kib_per_conn: c.kib_per_conn(),
                after_ratio: c.after_ratio(),
                processes: c.processes,
                open_s: c.open_s,
                tls_handshakes: cfg.tls.is_some().then(|| BTreeMap::from([("full", c.tls_full), ("resumed", c.tls_resumed)])),
                before_time: rfc3339(c.before_at),
                held_time: rfc3339(c.held_at),
                after_time: rfc3339(c.after_at),
            })
            .collect(),
    }
}

/// The human summary of a hold run.
pub fn human(cfg: &HoldConfig, out: &HoldOutcome) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "loadgen {} hold {}: pid {} ({}); ramp {:.0}/s, {} in flight, settle {}",
        env!("CARGO_PKG_VERSION"),
        cfg.target.url(),
        cfg.pid,
        if out.target_command.is_empty() { "?" } else { &out.target_command },
        cfg.ramp,
        cfg.concurrency,
        crate::report::fmt_dur(cfg.settle),
    );
    let _ = writeln!(
        s,
        "  {:>11} {:>8} {:>7} {:>12} {:>12} {:>12} {:>9} {:>8}  processes",
        "connections", "ok", "failed", "before KiB", "held KiB", "after KiB", "KiB/conn", "after÷"
    );
    for c in &out.counts {
        let _ = writeln!(
            s,
            "  {:>11} {:>8} {:>7} {:>12} {:>12} {:>12} {:>9} {:>8}  {}",
            c.connections,
            c.n_ok,
            c.failed(),
            c.rss_before_kib,
            c.rss_held_kib,
            c.rss_after_kib,
            c.kib_per_conn().map_or("—".into(), |v| format!("{v:.2}")),
            c.after_ratio().map_or("—".into(), |v| format!("{v:.3}")),
            c.processes
        );
    }
    if let Some(t) = &cfg.tls {
        let hs: Vec<String> = out.counts.iter().map(|c| format!("{} full + {} resumed", c.tls_full, c.tls_resumed)).collect();
        let _ = writeln!(
            s,
            "  tls         held connections handshook {}; server name {}, verify {}, resume {}",
            hs.join(", then "),
            t.server_name_str(),
            t.verify_label(),
            if t.resume { "on" } else { "off" }
        );
    }
    if out.valid() {
        let _ = writeln!(s, "  run         VALID (every connection verified and held)");
    } else {
        let _ = writeln!(s, "  run         INVALID");
        for r in out.invalid_reasons() {
            let _ = writeln!(s, "              - {r}");
        }
    }
    s
}

/// `loadgen hold`: runs and reports; returns the exit code (0, 1 runtime failure, 2 usage, 3 a
/// count had failed connections and `--allow-failures` was not given).
pub fn main(a: HoldArgs, argv: &[String]) -> i32 {
    let cfg = match HoldConfig::from_args(&a) {
        Ok(c) => c,
        Err(m) => {
            eprintln!("loadgen: {m}");
            return EXIT_USAGE;
        }
    };
    let out = match run(&cfg, &mut io::stderr()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: hold failed: {e}");
            return 1;
        }
    };
    print!("{}", human(&cfg, &out));
    let _ = io::stdout().flush();
    if let Some(p) = &a.json
        && let Err(e) = write_json(p, &hold_json(&cfg, &out, argv))
    {
        eprintln!("loadgen: {e}");
        return 1;
    }
    if out.valid() || a.allow_failures { 0 } else { EXIT_INVALID }
}

fn write_json(p: &Path, doc: &HoldJson) -> Result<(), String> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| format!("--json: {e}"))?;
    std::fs::write(p, text + "\n").map_err(|e| format!("--json {}: {e}", p.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    /// A tiny origin on a thread per connection: reads request heads, answers each with
    /// `response`, and keeps the connection until the client closes it.
    fn tiny_server(response: &'static [u8]) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                if r.get_mut().write_all(response).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        addr
    }

    fn cfg(addr: std::net::SocketAddr, counts: &[usize]) -> HoldConfig {
        let a = HoldArgs {
            url: format!("http://{addr}/x"),
            ca: None,
            insecure: false,
            sni: None,
            resume: None,
            pid: std::process::id(),
            connections: counts.to_vec(),
            settle: Duration::from_millis(50),
            settle_before: Duration::from_millis(10),
            ramp: 5000.0,
            concurrency: 16,
            timeout: Duration::from_secs(5),
            json: None,
            allow_failures: false,
            partial_head: false,
            http2: false,
            http3: false,
        };
        HoldConfig::from_args(&a).unwrap()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn fifty_connections_are_verified_held_and_measured() {
        let addr = tiny_server(OK);
        let c = cfg(addr, &[50, 20]);
        let out = run(&c, &mut io::sink()).unwrap();
        assert!(out.valid(), "{:?}", out.invalid_reasons());
        assert_eq!(out.counts.len(), 2);
        let r = &out.counts[0];
        assert_eq!((r.connections, r.n_ok, r.failed()), (50, 50, 0));
        assert!(r.rss_before_kib > 0 && r.rss_held_kib > 0 && r.rss_after_kib > 0, "{r:?}");
        assert!(r.kib_per_conn().is_some_and(f64::is_finite));
        assert!(r.after_ratio().is_some_and(|x| x > 0.0));
        assert!(r.processes >= 1);
        let j = serde_json::to_value(hold_json(&c, &out, &["loadgen".into(), "hold".into()])).unwrap();
        assert_eq!(j["schema_version"], HOLD_SCHEMA_VERSION);
        assert_eq!(j["meta"]["pid"], std::process::id());
        assert_eq!(j["meta"]["command_line"][1], "hold");
        assert!(j["meta"]["start_time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(j["valid"], true);
        let c0 = &j["counts"][0];
        assert_eq!(c0["n_ok"], 50);
        assert_eq!(c0["failures"]["connect"], 0);
        for k in ["rss_before_kib", "rss_held_kib", "rss_after_kib"] {
            assert!(c0[k].as_u64().is_some_and(|v| v > 0), "{k}: {c0}");
        }
        assert!(c0["kib_per_conn"].is_number() && c0["after_ratio"].is_number(), "{c0}");
        assert!(human(&c, &out).contains("VALID"));
    }

    #[test]
    fn a_partial_head_follows_the_verified_get_and_is_held() {
        // A server that answers the first head, then reports what else the client sent.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            for s in l.incoming().take(3) {
                let (Ok(mut s), tx) = (s, tx.clone()) else { continue };
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut b = [0u8; 512];
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&b[..n]),
                        }
                    }
                    let first = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let mut rest = got.split_off(first);
                    s.write_all(OK).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                        rest.extend_from_slice(&b[..n]);
                    }
                    let _ = tx.send(rest);
                });
            }
        });
        let mut c = cfg(addr, &[2]);
        c.partial_head = true;
        let out = run(&c, &mut io::sink()).unwrap();
        assert!(out.valid(), "{:?}", out.invalid_reasons());
        let head = String::from_utf8(c.request.bytes.clone()).unwrap();
        // The run's own first exchange (not held) sends nothing more; each held one a partial head.
        let mut tails: Vec<String> = (0..3).map(|_| String::from_utf8(rx.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap()).collect();
        tails.sort();
        assert_eq!(tails, ["".to_owned(), head[..head.len() - 2].to_owned(), head[..head.len() - 2].to_owned()]);
        let j = serde_json::to_value(hold_json(&c, &out, &["loadgen".into()])).unwrap();
        assert_eq!(j["meta"]["partial_head"], true);
    }

    #[test]
    fn a_refused_port_is_one_clear_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = run(&cfg(port, &[10]), &mut io::sink()).unwrap_err().to_string();
        assert!(e.contains("connect") && e.contains("refused") && e.contains(&port.to_string()), "{e}");
    }

    #[test]
    fn failures_are_counted_by_kind_and_make_the_run_invalid() {
        // Answers the first request (the check before the counts) with 200, then 503.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for (i, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b);
                    let resp: &[u8] = if i == 0 { OK } else { b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n" };
                    let _ = s.write_all(resp);
                    let _ = s.read(&mut b);
                });
            }
        });
        let out = run(&cfg(addr, &[5]), &mut io::sink()).unwrap();
        assert!(!out.valid());
        let r = &out.counts[0];
        assert_eq!((r.n_ok, r.failures[FailKind::Status as usize]), (0, 5));
        assert!(r.kib_per_conn().is_none());
        assert!(out.invalid_reasons()[0].contains("status 5"), "{:?}", out.invalid_reasons());

        let addr = tiny_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let e = run(&cfg(addr, &[3]), &mut io::sink()).unwrap_err().to_string();
        assert!(e.contains("not_keepalive"), "{e}");
    }

    #[test]
    fn proc_parsing() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t    1234 kB\nRssAnon: 1 kB\n"), Some(1234));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_stat_ppid("42 (a) b) c) S 7 42 42 0"), Some((42, 7)));
        assert_eq!(parse_stat_ppid("42 (nginx) S 1 42"), Some((42, 1)));
        assert_eq!(parse_stat_ppid("garbage"), None);
        assert_eq!(parse_ramp("2000/s"), Ok(2000.0));
        assert_eq!(parse_ramp("500"), Ok(500.0));
        assert!(parse_ramp("0/s").is_err() && parse_ramp("fast").is_err() && parse_ramp("inf").is_err());
    }

    #[test]
    fn descendants_are_summed() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let kids = descendants(std::process::id());
        let (rss, n) = tree_rss_kib(std::process::id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&child.id()), "{kids:?}");
        assert!(n >= 2 && rss > 0);
        assert!(tree_rss_kib(u32::MAX - 1).unwrap_err().to_string().contains("target pid"));
    }
}
