//! The HTTP/3 client of the allocation probe's `h3-*` shapes, in a process of its own.
//!
//! dhat counts every allocation of the process it runs in, and a QUIC client cannot be made
//! allocation-free as the HTTP/2 one is (`gates::h2raw`): quinn and h3 allocate per stream and
//! per packet on the client side too. So the client runs here, and the probe's process holds only
//! the proxy and the allocation-free origin: what dhat counts between the probe's `go` and this
//! client's `done` is the proxy's.
//!
//! One QUIC connection (quinn + h3 over h3-quinn, ALPN `h3`, trusting `--ca` for
//! `--server-name`), driven by the probe over stdin and stdout, one line each:
//!
//! 1. connects, runs `--warmup` requests, prints `ready`;
//! 2. waits for `go`, runs `--requests` requests, prints `done N` (N: responses checked);
//! 3. waits for `close` (or the end of stdin), closes the connection (`H3_NO_ERROR`), waits for
//!    the close to reach the proxy, exits 0.
//!
//! Requests go in batches of `--streams` streams in flight at once on the connection (all of a
//! batch sent before any response is read). Every response is checked: status 200, a
//! `content-length` of `--body-bytes`, and exactly `--body-bytes` body bytes, each
//! [`gates::harness::FILL`] (what the harness's origin sends), then the end of the stream. A POST
//! carries `--body-bytes` bytes of `FILL` with their `content-length`, in one DATA frame. Any
//! response not as expected, or a step that takes longer than [`STEP`]: the reason on stderr,
//! exit 1 (the probe reports it).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use clap::{Parser, ValueEnum};
use gates::harness::FILL;
use http::{Method, Request};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::task::JoinSet;

/// Every step (the handshake, a batch of requests, the close) is bounded by this.
const STEP: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(name = "h3-client", about = "the allocation probe's HTTP/3 client (driven over stdin/stdout)")]
struct Args {
    /// The proxy's listener (UDP, the TCP side's port number).
    #[arg(long)]
    addr: SocketAddr,
    /// PEM certificate to trust (the probe's self-signed one).
    #[arg(long)]
    ca: PathBuf,
    #[arg(long, default_value = gates::tlsclient::SERVER_NAME)]
    server_name: String,
    #[arg(long, value_enum, default_value_t = Kind::Get)]
    method: Kind,
    /// Response body bytes expected; a POST's body bytes sent.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
    /// Request streams in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    streams: u64,
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    #[arg(long, default_value_t = 1000)]
    requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Get,
    Post,
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// Why the run stopped (exit 1).
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("--ca {}", path.display())]
    Ca { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("--ca {}: certificate refused", path.display())]
    Trust { path: PathBuf, source: rustls::Error },
    #[error("QUIC client config")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("client endpoint")]
    Endpoint(#[source] std::io::Error),
    #[error("connect")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("HTTP/3 set-up")]
    Setup(#[source] h3::error::ConnectionError),
    #[error("request {index}: {what}")]
    Request { index: u64, what: String },
    #[error("no response within {STEP:?} (batch starting at request {index})")]
    Timeout { index: u64 },
    #[error("stdin: expected {expected:?}, got {got:?}")]
    Protocol { expected: &'static str, got: String },
    #[error("stdin/stdout")]
    Io(#[from] std::io::Error),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("h3-client: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h3-client: {}", gates::error::Chain(&e));
            ExitCode::from(1)
        }
    }
}

async fn run(a: &Args) -> Result<(), ClientError> {
    let (endpoint, conn, send, driver) = connect(a).await?;
    let body = Bytes::from(vec![FILL; if a.method == Kind::Post { a.body_bytes } else { 0 }]);
    let mut index = 0u64;
    requests(a, &send, &body, &mut index, a.warmup).await?;
    let mut stdin = std::io::stdin().lock();
    say("ready")?;
    expect(&mut stdin, "go")?;
    let before = index;
    requests(a, &send, &body, &mut index, a.requests).await?;
    say(&format!("done {}", index - before))?;
    // `close`, or the probe gone: either way the connection closes.
    let mut line = String::new();
    let _ = stdin.read_line(&mut line);
    drop(send);
    conn.close(quinn::VarInt::from_u32(0x0100), b"");
    driver.abort();
    let _ = tokio::time::timeout(STEP, endpoint.wait_idle()).await;
    Ok(())
}

/// `n` requests from `index` on, in batches of `--streams`.
async fn requests(a: &Args, send: &Sender, body: &Bytes, index: &mut u64, n: u64) -> Result<(), ClientError> {
    let end = *index + n;
    while *index < end {
        let k = (end - *index).min(a.streams);
        batch(a, send, body, *index, k).await?;
        *index += k;
    }
    Ok(())
}

fn say(line: &str) -> Result<(), ClientError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn expect(stdin: &mut impl BufRead, word: &'static str) -> Result<(), ClientError> {
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    if line.trim() != word {
        return Err(ClientError::Protocol { expected: word, got: line });
    }
    Ok(())
}

/// The QUIC connection, its HTTP/3 sender, and the task that drives the HTTP/3 connection.
async fn connect(a: &Args) -> Result<(quinn::Endpoint, quinn::Connection, Sender, tokio::task::JoinHandle<()>), ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&a.ca).map_err(|source| ClientError::Ca { path: a.ca.clone(), source })? {
        let cert = cert.map_err(|source| ClientError::Ca { path: a.ca.clone(), source })?;
        roots.add(cert).map_err(|source| ClientError::Trust { path: a.ca.clone(), source })?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.into()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ClientError::Config(e.into()))?;
    let bind: SocketAddr =
        if a.addr.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }.parse().map_err(|e| ClientError::Config(Box::new(e)))?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Endpoint)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = endpoint.connect(a.addr, &a.server_name).map_err(|e| ClientError::Connect(e.into()))?;
    let conn = match tokio::time::timeout(STEP, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(ClientError::Connect(e.into())),
        Err(e) => return Err(ClientError::Connect(e.into())),
    };
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await.map_err(ClientError::Setup)?;
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((endpoint, conn, send, driver))
}

/// `k` requests in flight at once (requests `index..index + k`), every response checked.
async fn batch(a: &Args, send: &Sender, body: &Bytes, index: u64, k: u64) -> Result<(), ClientError> {
    let mut set = JoinSet::new();
    for i in index..index + k {
        let (mut send, body) = (send.clone(), body.clone());
        let (kind, body_bytes) = (a.method, a.body_bytes);
        let uri = format!("https://{}{}", a.server_name, if kind == Kind::Post { "/upload" } else { "/bench" });
        set.spawn(async move {
            exchange(&mut send, kind, &uri, body, body_bytes).await.map_err(|what| ClientError::Request { index: i, what })
        });
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.map_err(|e| ClientError::Request { index, what: format!("task: {e}") })??;
        }
        Ok::<(), ClientError>(())
    };
    tokio::time::timeout(STEP, all).await.map_err(|_| ClientError::Timeout { index })?
}

/// One request and its whole response, checked; `Err`: what was wrong.
async fn exchange(send: &mut Sender, kind: Kind, uri: &str, body: Bytes, body_bytes: usize) -> Result<(), String> {
    let mut req = Request::builder().uri(uri);
    req = match kind {
        Kind::Get => req.method(Method::GET),
        Kind::Post => req.method(Method::POST).header(http::header::CONTENT_LENGTH, body.len()),
    };
    let req = req.body(()).map_err(|e| format!("request: {e}"))?;
    let mut stream = send.send_request(req).await.map_err(|e| format!("send_request: {e}"))?;
    if !body.is_empty() {
        stream.send_data(body).await.map_err(|e| format!("send_data: {e}"))?;
    }
    stream.finish().await.map_err(|e| format!("finish: {e}"))?;
    let resp = stream.recv_response().await.map_err(|e| format!("recv_response: {e}"))?;
    if resp.status() != 200 {
        return Err(format!("status {}, expected 200", resp.status()));
    }
    let length = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if length != Some(body_bytes) {
        return Err(format!("content-length {:?}, expected {body_bytes}", resp.headers().get(http::header::CONTENT_LENGTH)));
    }
    let mut got = 0usize;
    while let Some(mut d) = stream.recv_data().await.map_err(|e| format!("recv_data: {e}"))? {
        while d.has_remaining() {
            let c = d.chunk();
            if let Some(at) = c.iter().position(|&b| b != FILL) {
                return Err(format!("body byte {} is {:#04x}, expected {FILL:#04x}", got + at, c[at]));
            }
            got += c.len();
            let n = c.len();
            d.advance(n);
        }
    }
    if got != body_bytes {
        return Err(format!("{got} body bytes, expected {body_bytes}"));
    }
    if let Some(t) = stream.recv_trailers().await.map_err(|e| format!("recv_trailers: {e}"))? {
        return Err(format!("unexpected trailers {t:?}"));
    }
    Ok(())
}
