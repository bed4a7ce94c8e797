//! Command-line interface: argument types, validation into configs, dispatch, exit codes.
//!
//! Exit codes: 0 success; 1 runtime failure (bind, I/O, writing a report); 2 usage error (one
//! line on stderr); 3 the run was INVALID (see `run`), or no ladder step passed. `--allow-invalid`
//! turns 3 into 0 for `run` (the report still says INVALID). 130 after Ctrl-C: the window ends
//! at the interrupt and the partial report (and `--json`/`--hlog`) is still written.

use crate::client::{Request, Target};
use crate::ladder::{self, LadderConfig, LadderMode};
use crate::relay::{self, RelayConfig};
use crate::report;
use crate::run::{self, BusyPolicy, RunConfig};
use crate::schedule::Arrival;
use crate::sys;
use crate::tls::{self, ClientSettings, ServerCert, Verify};
use crate::upstream::{self, UpstreamConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit code of a usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code of an invalid run (or a ladder where no step passed).
pub const EXIT_INVALID: i32 = 3;
/// Exit code after Ctrl-C (128 + SIGINT); the partial report is still written.
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Open-loop HTTP/1.1 and HTTP/2 load generator (latency from intended send time), benchmark upstream and byte relay"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Send load at a fixed rate (open loop) or as fast as possible (--closed); report latency.
    Run(RunArgs),
    /// Find the highest rate whose P99 stays under an SLO with no errors.
    Ladder(LadderArgs),
    /// A minimal fast HTTP/1.1 and HTTP/2 origin (plain or --tls; h2c and ALPN h2 detected) answering 200 with a fixed body.
    Upstream(UpstreamArgs),
    /// A byte relay (no HTTP parsing): the CPU floor for any proxy on this machine (--tls: terminates TLS, relays the plaintext;
    /// --h2 and --h3: the HTTP/2 and HTTP/3 floors).
    Relay(RelayArgs),
    /// Merge the base64 histograms of `--json` reports and print their percentiles as JSON.
    ///
    /// Reads a JSON array of groups from stdin, each an array of histograms (strings as in a
    /// report's `histograms`); prints one line, a JSON array with one object per group:
    /// {"count": N, "quantiles": [..], "max": V} (values in the histograms' unit, ns; null when
    /// the group holds no value).
    Hist(HistArgs),
    /// Hold N idle keep-alive connections; report the target's resident memory per connection.
    Hold(crate::hold::HoldArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrivalArg {
    Constant,
    Poisson,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyArg {
    /// Wait for a connection; the wait counts in latency.
    Queue,
    /// Do not send; count as dropped.
    Drop,
}

/// Options shared by `run` and `ladder`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Target URL (http:// or https://, IP-or-localhost[:port]/path).
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
    /// https: keep a TLS session cache so new connections resume (default on).
    #[arg(long, value_enum)]
    pub resume: Option<OnOff>,
    /// Close each connection after N responses, so the next request opens a new one (and, over
    /// TLS, handshakes: full or resumed); 1 = a new connection per request. Default: keep them.
    #[arg(long, value_name = "N")]
    pub new_connection_every: Option<u64>,
    /// HTTP/2 (h2 crate): ALPN h2 on https://, prior knowledge (h2c) on http://.
    #[arg(long)]
    pub http2: bool,
    /// HTTP/3 (QUIC by quinn, h3): https:// only, UDP to the URL's port; TLS 1.3 with
    /// TLS13_AES_128_GCM_SHA256, no 0-RTT.
    #[arg(long, conflicts_with = "http2")]
    pub http3: bool,
    /// --http3: send requests in 0-RTT on resumed connections (before the handshake completes),
    /// when the server's ticket allows it. Off by default: 0-RTT requests can be replayed.
    #[arg(long, requires = "http3")]
    pub early_data: bool,
    /// --http2/--http3: concurrent streams per connection (request slots; the busy policy applies
    /// when every stream of every connection is busy).
    #[arg(long, value_name = "N")]
    pub streams: Option<usize>,
    /// Connections opened before the run (per run, split over threads).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Open loop: grow up to this many connections when all are busy (default: --connections).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// What happens to a due request when all connections are busy at --max-connections.
    #[arg(long, value_enum, default_value_t = BusyArg::Queue)]
    pub on_busy: BusyArg,
    /// Inter-arrival distribution (open loop).
    #[arg(long, value_enum, default_value_t = ArrivalArg::Constant)]
    pub arrival: ArrivalArg,
    /// Generator threads, each with its own single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin generator threads to these CPUs (thread k on the k-th, round robin), e.g. 0 or 0,1.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Extra request header 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body of N bytes ('x').
    #[arg(long, conflicts_with = "body")]
    pub body_bytes: Option<usize>,
    /// Request body as given.
    #[arg(long)]
    pub body: Option<String>,
    /// File of request targets, one per line: '[METHOD] URL-or-/path' (same host as --url).
    #[arg(long)]
    pub targets: Option<PathBuf>,
    /// Per-request timeout (connect + write + response).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Largest tolerated generator send lag (P99) before the run is INVALID.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub max_lag: Duration,
    /// Wake this long before each send time and busy-wait the rest: less send lag, more CPU.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub spin: Duration,
    /// Seed for --arrival poisson.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Target rate in requests per second (open loop; required unless --closed or --connect-rate).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Handshake-rate test: open this many new connections per second on the open-loop
    /// schedule; each connects (and handshakes over TLS), sends one request, reads the response
    /// and closes. Nothing is pre-opened; at most --max-connections (default --connections) are
    /// open at once, the busy policy applies beyond.
    #[arg(long, value_name = "R", conflicts_with_all = ["rate", "closed", "new_connection_every"])]
    pub connect_rate: Option<f64>,
    /// Measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load applied before the window, not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Closed loop: each connection sends its next request when the previous response arrived.
    #[arg(long, conflicts_with_all = ["rate", "connect_rate"])]
    pub closed: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HdrHistogram interval log here.
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Exit 0 even when the run is INVALID (the report still says so).
    #[arg(long)]
    pub allow_invalid: bool,
    /// No progress line, even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LadderArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Rates to try in order, e.g. 1000,2000,4000 (stops at the first failing step).
    #[arg(long, value_delimiter = ',', conflicts_with = "search", required_unless_present = "search")]
    pub rates: Vec<f64>,
    /// Search: double from --start-rate until a step fails, then bisect.
    #[arg(long)]
    pub search: bool,
    /// P99 (corrected) that a step must not exceed.
    #[arg(long, value_parser = parse_duration)]
    pub slo_p99: Duration,
    /// First rate of --search.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Highest rate --search tries.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// --search stops when the bracket is narrower than this fraction.
    #[arg(long, default_value_t = 0.05)]
    pub precision: f64,
    /// Measured window of each step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warmup of each step.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpstreamArgs {
    /// Address to listen on (port 0: any free port; the real one is printed).
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Response body size.
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// Hold each response this long.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Stall period (with --stall-for).
    #[arg(long, default_value = "0s", value_parser = parse_duration, requires = "stall_for")]
    pub stall_every: Duration,
    /// Hold all responses for this long once per --stall-every.
    #[arg(long, default_value = "0s", value_parser = parse_duration, requires = "stall_every")]
    pub stall_for: Duration,
    /// Server threads (SO_REUSEPORT listeners).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin server threads to these CPUs.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Serve over TLS (certificate generated at start unless --cert/--key are given); ALPN h2
    /// or http/1.1, the client's choice.
    #[arg(long)]
    pub tls: bool,
    /// Serve HTTP/1.1 only: no h2c preface detection, no ALPN h2 (an origin without HTTP/2).
    #[arg(long)]
    pub http1_only: bool,
    /// --tls: also serve HTTP/3 (QUIC) on the same port number over UDP, same certificate.
    #[arg(long, requires = "tls", conflicts_with = "http1_only")]
    pub http3: bool,
    /// --http3: accept 0-RTT requests (tickets allow early data; requests are served as they
    /// arrive, before the handshake completes).
    #[arg(long, requires = "http3")]
    pub early_data: bool,
    /// gRPC-shaped responses: content-type application/grpc and trailers grpc-status: 0,
    /// grpc-message: ok after every body (HTTP/2: a trailing HEADERS frame; HTTP/1.1: a chunked
    /// body with that trailer section, whatever the request's TE).
    #[arg(long)]
    pub trailers: bool,
    /// --tls: write the generated certificate (PEM) here, for clients' --ca.
    #[arg(long, requires = "tls", conflicts_with = "cert")]
    pub cert_out: Option<PathBuf>,
    /// --tls: serve this certificate chain (PEM) instead of a generated one (with --key).
    #[arg(long, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// --tls: the private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("secure").args(["tls", "h3"]).multiple(true)))]
#[command(group(clap::ArgGroup::new("streams").args(["h2", "h3"])))]
pub struct RelayArgs {
    /// Address to listen on (port 0: any free port; the real one is printed).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Address to relay every connection to.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// Relay threads (SO_REUSEPORT listeners).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pin relay threads to these CPUs.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    /// Terminate TLS from clients (ALPN http/1.1) and relay the plaintext to the cleartext
    /// upstream: the TLS floor. Certificate generated at start unless --cert/--key are given.
    #[arg(long)]
    pub tls: bool,
    /// --tls or --h3: write the generated certificate (PEM) here, for clients' --ca.
    #[arg(long, requires = "secure", conflicts_with = "cert")]
    pub cert_out: Option<PathBuf>,
    /// --tls or --h3: serve this certificate chain (PEM) instead of a generated one (with --key).
    #[arg(long, requires_all = ["secure", "key"])]
    pub cert: Option<PathBuf>,
    /// --tls or --h3: the private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Relay HTTP/3: serve HTTP/3 over QUIC (TLS 1.3, ALPN h3; certificate as with --tls) on UDP
    /// at --listen's address and send each request stream over one h2c connection to the
    /// upstream per client connection (headers, body and trailers as they are): the HTTP/3 floor.
    #[arg(long, conflicts_with = "tls")]
    pub h3: bool,
    /// Relay HTTP/2: serve h2c (prior knowledge; with --tls, h2 by ALPN) and send each stream
    /// over one multiplexed h2c connection to the upstream per client connection (headers,
    /// body and trailers as they are): the floor of an HTTP/2 proxy built on the `h2` crate.
    #[arg(long)]
    pub h2: bool,
    /// --h2 or --h3: send each stream to the upstream as one HTTP/1.1 request on a keep-alive
    /// connection from a pool per client connection (a new one when all are busy) instead of
    /// over h2c: the floor of a proxy relaying HTTP/2 (HTTP/3) clients to an HTTP/1.1 origin.
    #[arg(long, requires = "streams")]
    pub upstream_http1: bool,
}

#[derive(Args, Debug)]
pub struct HistArgs {
    /// Quantiles to read off each merged histogram, e.g. 0.5,0.99,0.999.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.9,0.99,0.999,0.9999")]
    pub quantiles: Vec<f64>,
}

/// A duration with its unit (`30s`, `250ms`, `100us`, `1.5s`, `1h 30m`): one parser for the
/// whole workspace (the proxy's config reads durations the same way). A bare number is refused:
/// `--duration 5` could mean seconds or requests, so the unit is written.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("'{s}' is not a duration: {e}"))
}

/// Parses the process arguments; prints help/version or a one-line usage error itself.
pub fn parse_args() -> Result<Cli, i32> {
    match Cli::try_parse() {
        Ok(c) => Ok(c),
        Err(e) => {
            use clap::error::ErrorKind as K;
            match e.kind() {
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    Err(if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand { EXIT_USAGE } else { 0 })
                }
                _ => {
                    let text = e.render().to_string();
                    let line = text.lines().next().unwrap_or("invalid arguments").trim();
                    let line = line.strip_prefix("error: ").unwrap_or(line);
                    eprintln!("loadgen: {line} (see --help)");
                    Err(EXIT_USAGE)
                }
            }
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub fn main_with(cli: Cli, argv: &[String]) -> i32 {
    let r = match cli.cmd {
        Cmd::Run(a) => cmd_run(a, argv),
        Cmd::Ladder(a) => cmd_ladder(a, argv),
        Cmd::Upstream(a) => cmd_upstream(a),
        Cmd::Relay(a) => cmd_relay(a),
        Cmd::Hist(a) => cmd_hist(a),
        Cmd::Hold(a) => Ok(crate::hold::main(a, argv)),
    };
    match r {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("loadgen: {m}");
            EXIT_USAGE
        }
        Err(Failure::Runtime(m)) => {
            eprintln!("loadgen: {m}");
            1
        }
    }
}

enum Failure {
    Usage(String),
    Runtime(String),
}

fn usage<T>(m: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Usage(m.into()))
}

/// Lowest accepted rate (req/s).
const MIN_RATE: f64 = 0.01;
/// Longest measured window: the per-second series keeps a histogram per second.
const MAX_DURATION: Duration = Duration::from_secs(3600);

fn check_window(duration: Duration, warmup: Duration) -> Result<(), Failure> {
    if duration.is_zero() || duration > MAX_DURATION {
        return usage("--duration must be positive and at most 1h (run several for a longer soak)");
    }
    if warmup > MAX_DURATION {
        return usage("--warmup must be at most 1h");
    }
    Ok(())
}

fn check_cpus(cpus: &[usize]) -> Result<(), Failure> {
    let n = sys::online_cpus();
    if let Some(c) = cpus.iter().find(|&&c| c >= n) {
        return usage(format!("--cpus: cpu {c} does not exist (this machine has {n})"));
    }
    Ok(())
}

/// Builds a [`RunConfig`] from the shared load options (rate/duration/warmup/closed set by caller).
fn load_config(a: &LoadArgs) -> Result<RunConfig, Failure> {
    let target = Target::parse(&a.url).map_err(Failure::Usage)?;
    if a.connections == 0 {
        return usage("--connections must be at least 1");
    }
    if a.threads == 0 {
        return usage("--threads must be at least 1");
    }
    if a.threads > a.connections {
        return usage("--threads must not exceed --connections (each thread needs a connection)");
    }
    let max_connections = a.max_connections.unwrap_or(a.connections);
    if max_connections < a.connections {
        return usage("--max-connections must be at least --connections");
    }
    check_cpus(&a.cpus)?;
    if a.method.is_empty() || !a.method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return usage(format!("--method '{}' is not an HTTP method token", a.method));
    }
    let mut headers = Vec::new();
    for h in &a.headers {
        let Some((k, v)) = h.split_once(':') else {
            return usage(format!("header '{h}' must look like 'Name: value'"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':') || v.contains(['\r', '\n']) {
            return usage(format!("header '{h}' has an invalid name or value"));
        }
        headers.push((k.to_string(), v.to_string()));
    }
    let body: Vec<u8> = match (&a.body, a.body_bytes) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(n)) => vec![b'x'; n],
        (None, None) => Vec::new(),
    };
    let requests = match &a.targets {
        None => vec![target.request(&a.method, &target.path, &headers, &body)],
        Some(p) => read_targets(p, &target, &a.method, &headers, &body)?,
    };
    let tls = tls_settings(a, &target)?;
    if a.streams.is_some() && !a.http2 && !a.http3 {
        return usage("--streams needs --http2 or --http3 (an HTTP/1.1 connection carries one request at a time)");
    }
    if a.early_data && a.resume == Some(OnOff::Off) {
        return usage("--early-data needs the session cache (--resume on): 0-RTT resumes a session");
    }
    if a.http3 && !target.tls {
        return usage("--http3 needs an https:// URL (QUIC is always encrypted)");
    }
    let streams = match a.streams {
        Some(0) => return usage("--streams must be at least 1"),
        Some(n) if n > 1000 => return usage("--streams must be at most 1000"),
        Some(n) => n,
        None => 1,
    };
    if a.http2 && requests.iter().any(|r| r.h2.is_none()) {
        return usage("--http2: a request's method, path or header is not valid in HTTP/2");
    }
    if a.http3 && requests.iter().any(|r| r.h2.is_none()) {
        return usage("--http3: a request's method, path or header is not valid in HTTP/3");
    }
    let new_connection_every = match a.new_connection_every {
        Some(0) => return usage("--new-connection-every must be at least 1"),
        Some(n) => n,
        None => 0,
    };
    Ok(RunConfig {
        target,
        requests,
        closed: false,
        rate: 0.0,
        arrival: match a.arrival {
            ArrivalArg::Constant => Arrival::Constant,
            ArrivalArg::Poisson => Arrival::Poisson,
        },
        duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
        connections: a.connections,
        max_connections,
        threads: a.threads,
        cpus: a.cpus.clone(),
        timeout: a.timeout.max(Duration::from_millis(1)),
        policy: match a.on_busy {
            BusyArg::Queue => BusyPolicy::Queue,
            BusyArg::Drop => BusyPolicy::Drop,
        },
        max_lag: a.max_lag,
        spin: a.spin,
        seed: a.seed,
        progress: false,
        tls,
        new_connection_every,
        http2: a.http2,
        http3: a.http3,
        streams,
        connect_rate: false,
    })
}

/// The TLS settings of an `https://` target; `--ca`/`--insecure`/`--sni`/`--resume` are refused
/// on `http://` (they would silently do nothing).
fn tls_settings(a: &LoadArgs, target: &Target) -> Result<Option<ClientSettings>, Failure> {
    if !target.tls {
        if a.ca.is_some() || a.insecure || a.sni.is_some() || a.resume.is_some() {
            return usage("--ca, --insecure, --sni and --resume need an https:// URL");
        }
        return Ok(None);
    }
    let verify = match (&a.ca, a.insecure) {
        (Some(p), _) => tls::read_ca(p).map_err(|e| Failure::Usage(format!("--ca {e}")))?,
        (None, true) => Verify::Insecure,
        (None, false) => return usage("an https:// URL needs --ca FILE (PEM roots) or --insecure (no verification)"),
    };
    let name = a.sni.as_deref().unwrap_or(&target.host);
    let server_name = tls::server_name(name).map_err(|e| Failure::Usage(if a.sni.is_some() { format!("--sni: {e}") } else { e }))?;
    Ok(Some(ClientSettings { server_name, verify, resume: a.resume != Some(OnOff::Off), h2: a.http2, early_data: a.early_data }))
}

/// Reads a targets file: one `[METHOD] URL-or-/path` per line; `#` comments and blanks skipped.
fn read_targets(
    path: &Path,
    target: &Target,
    default_method: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Vec<Request>, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("--targets {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |m: &str| Failure::Usage(format!("--targets {} line {}: {m}", path.display(), i + 1));
        let mut parts = line.split_whitespace();
        let (method, what) = match (parts.next(), parts.next(), parts.next()) {
            (Some(w), None, _) => (default_method, w),
            (Some(m), Some(w), None) => (m, w),
            _ => return Err(at("expected '[METHOD] URL-or-/path'")),
        };
        if !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
            return Err(at("bad method"));
        }
        let p = if what.starts_with('/') {
            what.to_string()
        } else {
            let t = Target::parse(what).map_err(|e| at(&e))?;
            if t.addr != target.addr || t.tls != target.tls {
                return Err(at("all targets must use the scheme and address of --url"));
            }
            t.path
        };
        if p.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(at("path contains spaces or control characters"));
        }
        out.push(target.request(method, &p, headers, body));
    }
    if out.is_empty() {
        return Err(Failure::Usage(format!("--targets {}: no targets", path.display())));
    }
    Ok(out)
}

fn cmd_run(a: RunArgs, argv: &[String]) -> Result<i32, Failure> {
    let mut cfg = load_config(&a.load)?;
    cfg.closed = a.closed;
    match (a.closed, a.rate, a.connect_rate) {
        (true, _, _) => {}
        (false, None, None) => return usage("--rate is required (or --closed, or --connect-rate)"),
        (false, Some(r), _) if !(r.is_finite() && r >= MIN_RATE) => return usage("--rate must be a number >= 0.01"),
        (false, Some(r), _) => cfg.rate = r,
        (false, None, Some(r)) if !(r.is_finite() && r >= MIN_RATE) => return usage("--connect-rate must be a number >= 0.01"),
        (false, None, Some(r)) => {
            if cfg.http2 || cfg.http3 {
                return usage("--connect-rate speaks HTTP/1.1 only (not with --http2 or --http3)");
            }
            cfg.rate = r;
            cfg.connect_rate = true;
            cfg.new_connection_every = 1;
        }
    }
    check_window(a.duration, a.warmup)?;
    cfg.duration = a.duration;
    cfg.warmup = a.warmup;
    cfg.progress = !a.quiet && io::stderr().is_terminal();
    let out = run::run(&cfg).map_err(|e| Failure::Runtime(format!("run failed: {e}")))?;
    print!("{}", report::human(&cfg, &out));
    let _ = io::stdout().flush();
    if let Some(p) = &a.json {
        let doc = report::run_json(&cfg, &out, argv);
        write_json(p, &doc)?;
    }
    if let Some(p) = &a.hlog {
        let mut f = std::fs::File::create(p).map_err(|e| Failure::Runtime(format!("--hlog {}: {e}", p.display())))?;
        report::write_hlog(&mut f, &cfg, &out).map_err(|e| Failure::Runtime(format!("--hlog {}: {e}", p.display())))?;
    }
    Ok(if out.rec.stopped {
        EXIT_INTERRUPTED
    } else if out.validity.valid || a.allow_invalid {
        0
    } else {
        EXIT_INVALID
    })
}

fn write_json<T: serde::Serialize>(p: &Path, doc: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(doc).map_err(|e| Failure::Runtime(format!("--json: {e}")))?;
    std::fs::write(p, text + "\n").map_err(|e| Failure::Runtime(format!("--json {}: {e}", p.display())))
}

fn cmd_ladder(a: LadderArgs, argv: &[String]) -> Result<i32, Failure> {
    let mut base = load_config(&a.load)?;
    check_window(a.duration, a.warmup)?;
    base.duration = a.duration;
    base.warmup = a.warmup;
    let mode = if a.search {
        if !(a.start_rate >= MIN_RATE && a.max_rate >= a.start_rate && a.max_rate.is_finite() && a.precision > 0.0) {
            return usage("--search needs 0 < --start-rate <= --max-rate and --precision > 0");
        }
        LadderMode::Search { start: a.start_rate, max: a.max_rate, precision: a.precision }
    } else {
        if a.rates.is_empty() || a.rates.iter().any(|r| !(r.is_finite() && *r >= MIN_RATE)) {
            return usage("--rates must be numbers >= 0.01");
        }
        LadderMode::Rates(a.rates.clone())
    };
    let lc = LadderConfig { base, slo_p99: a.slo_p99, mode };
    let res = ladder::ladder(&lc, &mut io::stdout()).map_err(|e| Failure::Runtime(format!("ladder failed: {e}")))?;
    if let Some(p) = &a.json {
        write_json(p, &ladder::ladder_json(&lc, &res, argv))?;
    }
    Ok(if run::stop_requested() {
        EXIT_INTERRUPTED
    } else if res.best.is_some() {
        0
    } else {
        EXIT_INVALID
    })
}

fn cmd_upstream(a: UpstreamArgs) -> Result<i32, Failure> {
    check_cpus(&a.cpus)?;
    if a.threads == 0 {
        return usage("--threads must be at least 1");
    }
    if !a.stall_every.is_zero() && a.stall_for >= a.stall_every {
        return usage("--stall-for must be shorter than --stall-every");
    }
    let (tls, http3) = if a.tls {
        let cert = match (a.cert, a.key) {
            (Some(cert), Some(key)) => ServerCert::Files { cert, key },
            _ => ServerCert::Generate { cert_out: a.cert_out },
        };
        // One certificate for TCP and QUIC, so one --cert-out file verifies both.
        let keys = tls::ServerKeys::load(&cert).map_err(Failure::Usage)?;
        let config = tls::tcp_server_config(&keys).map_err(Failure::Usage)?;
        let config = if a.http1_only {
            let mut c = (*config).clone();
            c.alpn_protocols = vec![tls::ALPN_HTTP11.to_vec()];
            std::sync::Arc::new(c)
        } else {
            config
        };
        let http3 = if a.http3 { Some(tls::quic_server_config(&keys, a.early_data).map_err(Failure::Usage)?) } else { None };
        (Some(config), http3)
    } else {
        (None, None)
    };
    let cfg = UpstreamConfig {
        tls,
        listen: a.listen,
        body_bytes: a.body_bytes,
        delay: a.delay,
        stall_every: a.stall_every,
        stall_for: a.stall_for,
        threads: a.threads,
        cpus: a.cpus,
        http1_only: a.http1_only,
        trailers: a.trailers,
        http3,
    };
    upstream::run_upstream(&cfg, announce).map_err(|e| Failure::Runtime(format!("upstream on {}: {e}", a.listen)))?;
    Ok(0)
}

fn cmd_relay(a: RelayArgs) -> Result<i32, Failure> {
    check_cpus(&a.cpus)?;
    if a.threads == 0 {
        return usage("--threads must be at least 1");
    }
    let cert = match (a.cert, a.key) {
        (Some(cert), Some(key)) => ServerCert::Files { cert, key },
        _ => ServerCert::Generate { cert_out: a.cert_out },
    };
    let h3 = if a.h3 {
        let keys = tls::ServerKeys::load(&cert).map_err(Failure::Usage)?;
        Some(tls::quic_server_config(&keys, false).map_err(Failure::Usage)?)
    } else {
        None
    };
    let tls = if a.tls {
        // The floor of an HTTP/1.1 proxy's TLS path: ALPN http/1.1 only (the plaintext goes to
        // an HTTP/1.1 upstream as it is); with --h2, h2 only.
        let mut config = (*tls::server_config(&cert).map_err(Failure::Usage)?).clone();
        config.alpn_protocols = vec![if a.h2 { tls::ALPN_H2 } else { tls::ALPN_HTTP11 }.to_vec()];
        Some(std::sync::Arc::new(config))
    } else {
        None
    };
    let cfg = RelayConfig {
        listen: a.listen,
        upstream: a.upstream,
        threads: a.threads,
        cpus: a.cpus,
        tls,
        h2: a.h2,
        h3,
        upstream_http1: a.upstream_http1,
    };
    relay::run_relay(&cfg, announce).map_err(|e| Failure::Runtime(format!("relay on {}: {e}", a.listen)))?;
    Ok(0)
}

fn cmd_hist(a: HistArgs) -> Result<i32, Failure> {
    if a.quantiles.iter().any(|q| !(0.0..=1.0).contains(q)) {
        return usage("--quantiles must be numbers from 0 to 1");
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut io::stdin(), &mut text).map_err(|e| Failure::Runtime(format!("hist: stdin: {e}")))?;
    let groups: Vec<Vec<String>> = serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("hist: stdin must be a JSON array of arrays of base64 histograms: {e}")))?;
    let merged = report::merge_groups(&groups, &a.quantiles).map_err(|e| Failure::Runtime(format!("hist: {e}")))?;
    let line = serde_json::to_string(&merged).map_err(|e| Failure::Runtime(format!("hist: {e}")))?;
    let mut out = io::stdout();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| Failure::Runtime(format!("hist: stdout: {e}")))?;
    Ok(0)
}

/// Prints `listening ADDR` on stdout (flushed) so scripts and tests can read the real port.
fn announce(addr: SocketAddr) {
    let mut out = io::stdout();
    let _ = writeln!(out, "listening {addr}");
    let _ = out.flush();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err(), "a bare number is refused: the unit is written");
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
