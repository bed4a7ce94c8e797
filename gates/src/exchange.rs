//! The instruction gate's workload (run by `gates/benches/instructions.rs` under callgrind):
//! keep-alive exchanges on the direct path (client → origin) or the proxied path
//! (client → proxy → origin), client, origin and the proxy's worker all as tasks on one
//! `current_thread` runtime so the instruction count is the same on every run.
//!
//! Every exchange is verified, and the verdict travels with the count: a proxy that answers 404
//! or 502 does less work than one that proxies, so an unverified count would *pass* a broken
//! proxy with a lower figure. [`Outcome`] records what the run really did (responses with status
//! 200 and the exact body length, requests the origin really served); the gate refuses the count
//! unless it matches what was asked.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::chain;
use crate::harness::GET;
use proxy::data::tls::record::{self, Keys};

/// Exchanges before the measured ones (both request counts run them: they cancel out).
pub const WARMUP: u64 = 200;

/// What went wrong in a run (recorded, as text, in [`Outcome::error`]).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("runtime")]
    Runtime(#[source] io::Error),
    #[error("bind{}", listener.suffix())]
    Bind { listener: Listener, source: io::Error },
    #[error("{}address", listener.prefix())]
    Address { listener: Listener, source: io::Error },
    #[error("bench config")]
    Config(#[source] proxy::config::ConfigError),
    #[error("connect {target}")]
    Connect { target: SocketAddr, source: io::Error },
    #[error("write")]
    Write(#[source] io::Error),
    #[error("read")]
    Read(#[source] io::Error),
    #[error("read body")]
    ReadBody(#[source] io::Error),
    #[error("connection closed before a whole response")]
    ClosedBeforeResponse,
    #[error("unparsable response")]
    Unparsable(#[source] httparse::Error),
    #[error("status {0}, expected 200")]
    Status(u16),
    #[error("a 200 without a Content-Length")]
    NoContentLength,
    #[error("body of {got} bytes, expected {expected}")]
    BodyLength { got: usize, expected: usize },
    #[error("response larger than the client buffer")]
    TooLarge,
    #[error("connection closed mid-body")]
    ClosedMidBody,
    #[error("{0} bytes past the response (the bench sends one request at a time)")]
    PastResponse(usize),
    #[error("tls")]
    Tls(#[source] io::Error),
    /// A handshake that was not the one the run measures (`index`: the connection, from 0).
    #[error("connection {index}: {what}")]
    Handshake { index: u64, what: String },
    /// A step of an HTTP/2 run ([`h2_exchange`]) that failed: `what` names it.
    #[error("http/2 {what}")]
    H2 { what: &'static str, source: h2::Error },
    /// An HTTP/2 response stream ended without its body.
    #[error("http/2 response body of {got} bytes ended early, expected {expected}")]
    H2ShortBody { got: usize, expected: usize },
    /// A step of an HTTP/3 run ([`crate::h3exchange`]) that failed: `what` names it, `detail` is
    /// quinn's or h3's error (their error types differ by step).
    #[error("http/3 {what}: {detail}")]
    H3 { what: &'static str, detail: String },
    /// A QUIC endpoint or server config that could not be made.
    #[error("quic endpoint")]
    Quic(#[source] io::Error),
}

/// The sockets a run binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Origin,
    Proxy,
    /// The port of [`Route::ProxiedDeadUpstream`], bound to find one free and closed again.
    DeadUpstream,
    /// The HTTP/3 client's UDP socket.
    Client,
}

impl Listener {
    fn suffix(self) -> &'static str {
        match self {
            Listener::Origin => " origin",
            Listener::Proxy => " proxy",
            Listener::DeadUpstream => "",
            Listener::Client => " client",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Listener::Origin => "origin ",
            Listener::Proxy => "proxy ",
            Listener::DeadUpstream => "",
            Listener::Client => "client ",
        }
    }
}

/// A run that did not do what was asked: the count it came with is no figure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `path`: `direct` or `proxied`; `error`: [`Outcome::error`].
    #[error("{path} run of {total} exchanges failed after {ok} good ones: {error}")]
    Failed { path: &'static str, total: u64, ok: u64, error: String },
    #[error("{path} run: {ok} verified responses of {total}")]
    Unverified { path: &'static str, total: u64, ok: u64 },
    #[error("{path} run: the origin served {served} requests of {total}")]
    NotServed { path: &'static str, total: u64, served: u64 },
}

/// What one run really did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub proxied: bool,
    /// Measured exchanges asked for (the warm-up excluded).
    pub requests: u64,
    pub warmup: u64,
    pub body_bytes: usize,
    /// Responses with status 200 and exactly `body_bytes` of body.
    pub ok: u64,
    /// Requests the origin served (warm-up included): proof the proxy forwarded them.
    pub origin_served: u64,
    /// The first thing that went wrong, if anything did.
    pub error: Option<String>,
    /// Runs of a TLS handshake per connection: what every handshake was (cipher suite, key
    /// exchange, full or resumed, session tickets received), the same for each connection; the
    /// gate refuses a target and a floor whose handshakes differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<String>,
}

impl Outcome {
    /// `Ok` when every exchange, warm-up included, was a verified 200 served by the origin.
    pub fn verify(&self) -> Result<(), VerifyError> {
        let path = if self.proxied { "proxied" } else { "direct" };
        let total = self.warmup + self.requests;
        if let Some(e) = &self.error {
            return Err(VerifyError::Failed { path, total, ok: self.ok, error: e.clone() });
        }
        if self.ok != total {
            return Err(VerifyError::Unverified { path, total, ok: self.ok });
        }
        if self.origin_served != total {
            return Err(VerifyError::NotServed { path, total, served: self.origin_served });
        }
        Ok(())
    }
}

/// Which path a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Client → origin.
    Direct,
    /// Client → proxy → origin.
    Proxied,
    /// A broken proxy for the gate's own tests: its only route names a host the client does
    /// not send, so every request is answered 404 without reaching the origin.
    ProxiedNoRoute,
    /// A broken proxy for the gate's own tests: its upstream is a closed port (502).
    ProxiedDeadUpstream,
    /// Client → proxy over TLS 1.3 (a rustls handshake, then the proxy's record layer on the
    /// client too: [`crate::tlsclient`]) → origin in cleartext.
    ProxiedTls,
}

/// Runs `WARMUP + n` keep-alive GETs with `body_bytes` responses and reports what happened.
pub fn exchange(route: Route, n: u64, body_bytes: usize) -> Outcome {
    let proxied = route != Route::Direct;
    let mut out = Outcome { proxied, requests: n, warmup: WARMUP, body_bytes, ..Outcome::default() };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(chain(&ExchangeError::Runtime(e)));
            return out;
        }
    };
    let served = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let (ok, error) = local.block_on(&rt, run(route, n, body_bytes, Rc::clone(&served)));
    out.ok = ok;
    out.error = error;
    out.origin_served = served.get();
    out
}

async fn run(route: Route, n: u64, body_bytes: usize, served: Rc<Cell<u64>>) -> (u64, Option<String>) {
    let tls = match route {
        Route::ProxiedTls => match tls_setup() {
            Ok(t) => Some(t),
            Err(e) => return (0, Some(chain(&e))),
        },
        _ => None,
    };
    let target = match setup(route, body_bytes, served, tls.as_ref().map(|t| (t.cert.as_path(), t.key.as_path()))).await {
        Ok(t) => t,
        Err(e) => return (0, Some(chain(&e))),
    };
    let s = match tokio::net::TcpStream::connect(target).await {
        Ok(s) => s,
        Err(source) => return (0, Some(chain(&ExchangeError::Connect { target, source }))),
    };
    let _ = s.set_nodelay(true);
    let mut s = match &tls {
        None => Stream::Plain(s),
        Some(t) => match AsyncTls::handshake(s, &t.client).await {
            Ok(c) => Stream::Tls(Box::new(c)),
            Err(e) => return (0, Some(chain(&ExchangeError::Tls(e)))),
        },
    };
    if let Some(t) = &tls {
        let _ = std::fs::remove_dir_all(&t.dir);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut ok = 0;
    for _ in 0..WARMUP + n {
        match round_trip(&mut s, &mut buf, body_bytes).await {
            Ok(()) => ok += 1,
            Err(e) => return (ok, Some(chain(&e))),
        }
    }
    (ok, None)
}

/// The TLS route's certificate and client config.
struct TlsSetup {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client: std::sync::Arc<rustls::ClientConfig>,
}

fn tls_setup() -> Result<TlsSetup, ExchangeError> {
    let dir = std::env::temp_dir().join(format!("gates-instr-tls-{}", std::process::id()));
    let (cert, key, client) = crate::tlsclient::make_pki(&dir, true).map_err(ExchangeError::Tls)?;
    Ok(TlsSetup { dir, cert, key, client })
}

/// Starts the origin (and the proxy's worker in front of it); returns the address to send to.
/// `tls`: the proxy's listener speaks TLS with this certificate and key.
async fn setup(route: Route, body_bytes: usize, served: Rc<Cell<u64>>, tls: Option<(&Path, &Path)>) -> Result<SocketAddr, ExchangeError> {
    use proxy::config::{ServerIds, parse};
    use proxy::data::accept::accept_loop;
    use proxy::data::worker::{Shared, Worker};

    let bind = |listener| move |source| ExchangeError::Bind { listener, source };
    let address = |listener| move |source| ExchangeError::Address { listener, source };
    let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(bind(Listener::Origin))?;
    let origin_addr = origin_listener.local_addr().map_err(address(Listener::Origin))?;
    tokio::task::spawn_local(origin(origin_listener, body_bytes, served));
    let (upstream, host) = match route {
        Route::Direct => return Ok(origin_addr),
        Route::Proxied | Route::ProxiedTls => (origin_addr, ""),
        Route::ProxiedNoRoute => (origin_addr, "host = \"elsewhere.example\"\n"),
        Route::ProxiedDeadUpstream => {
            // A port that was just free: nothing listens there.
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(bind(Listener::DeadUpstream))?;
            (l.local_addr().map_err(address(Listener::DeadUpstream))?, "")
        }
    };
    let tls = tls
        .map(|(cert, key)| format!("[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n", cert.display(), key.display()))
        .unwrap_or_default();
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n{tls}[[routes]]\n{host}upstream = \"o\"\n[upstreams.o]\nservers = [\"{upstream}\"]\n"
    );
    let cfg = parse(Path::new("bench"), &text, &mut ServerIds::default()).map_err(ExchangeError::Config)?;
    let worker = Worker::new(Shared::new(cfg.snapshot), 0);
    // The coarse-timer tick is wall-clock driven (a per-second cost, not per request): kept out
    // so the count stays exact run to run.
    worker.timers.never_tick();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(bind(Listener::Proxy))?;
    let addr = listener.local_addr().map_err(address(Listener::Proxy))?;
    tokio::task::spawn_local(accept_loop(Rc::clone(&worker), listener, 0));
    Ok(addr)
}

/// A keep-alive origin answering each bodiless request with 200 and `body` bytes; counts them.
pub(crate) async fn origin(listener: tokio::net::TcpListener, body: usize, served: Rc<Cell<u64>>) {
    let mut response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    response.resize(response.len() + body, b'x');
    let response: Rc<[u8]> = response.into();
    while let Ok((mut s, _)) = listener.accept().await {
        let response = Rc::clone(&response);
        let served = Rc::clone(&served);
        tokio::task::spawn_local(async move {
            let _ = s.set_nodelay(true);
            let mut buf = vec![0u8; 16 * 1024];
            let mut filled = 0;
            loop {
                match s.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => filled += n,
                }
                let mut start = 0;
                while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    served.set(served.get() + 1);
                    if s.write_all(&response).await.is_err() {
                        return;
                    }
                    start += end + 4;
                }
                buf.copy_within(start..filled, 0);
                filled -= start;
            }
        });
    }
}

/// The client's connection: cleartext, or TLS through the proxy's record layer.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<AsyncTls>),
    /// rustls for the whole connection (the per-connection runs: the client must process the
    /// session tickets to resume with them).
    Rustls(Box<RustlsStream>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => s.write_all(bytes).await,
            Stream::Rustls(s) => s.write_all(bytes).await,
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Rustls(s) => s.read(buf).await,
        }
    }
}

/// A client TLS connection that stays rustls's (handshake, session tickets, records), on tokio.
struct RustlsStream {
    tcp: tokio::net::TcpStream,
    conn: rustls::ClientConnection,
    out: Vec<u8>,
    inbuf: Box<[u8]>,
}

impl RustlsStream {
    async fn handshake(tcp: tokio::net::TcpStream, config: &std::sync::Arc<rustls::ClientConfig>) -> io::Result<RustlsStream> {
        let name = rustls::pki_types::ServerName::try_from(crate::tlsclient::SERVER_NAME).map_err(io::Error::other)?;
        let conn = rustls::ClientConnection::new(std::sync::Arc::clone(config), name).map_err(io::Error::other)?;
        let mut s = RustlsStream { tcp, conn, out: Vec::with_capacity(4096), inbuf: vec![0u8; 32 * 1024].into_boxed_slice() };
        loop {
            s.flush().await?;
            if !s.conn.is_handshaking() {
                return Ok(s);
            }
            if s.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Sends what rustls has to send.
    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.out.clear();
            self.conn.write_tls(&mut self.out)?;
            self.tcp.write_all(&self.out).await?;
        }
        Ok(())
    }

    /// Reads from the socket into rustls and processes it; the bytes read (0: the end).
    async fn fill(&mut self) -> io::Result<usize> {
        let n = self.tcp.read(&mut self.inbuf).await?;
        let mut rd = &self.inbuf[..n];
        while !rd.is_empty() {
            self.conn.read_tls(&mut rd)?;
            self.conn.process_new_packets().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        self.conn.writer().write_all(bytes)?;
        self.flush().await
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Read;
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if self.fill().await? == 0 {
                return Ok(0);
            }
            self.flush().await?;
        }
    }
}

/// [`crate::tlsclient::TlsClient`] on tokio: a rustls handshake, then records sealed and opened by
/// the proxy's record layer in buffers owned for the connection's life.
struct AsyncTls {
    tcp: tokio::net::TcpStream,
    rx: Keys,
    tx: Keys,
    rbuf: Box<[u8]>,
    start: usize,
    end: usize,
    plain: (usize, usize, usize),
    wbuf: Box<[u8]>,
}

impl AsyncTls {
    async fn handshake(mut tcp: tokio::net::TcpStream, config: &std::sync::Arc<rustls::ClientConfig>) -> io::Result<AsyncTls> {
        let name = rustls::pki_types::ServerName::try_from(crate::tlsclient::SERVER_NAME).map_err(io::Error::other)?;
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::clone(config), name).map_err(io::Error::other)?;
        let mut out = Vec::new();
        let mut inbuf = vec![0u8; 32 * 1024];
        loop {
            while conn.wants_write() {
                out.clear();
                conn.write_tls(&mut out)?;
                tcp.write_all(&out).await?;
            }
            if !conn.is_handshaking() {
                break;
            }
            let n = tcp.read(&mut inbuf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            conn.read_tls(&mut &inbuf[..n])?;
            conn.process_new_packets().map_err(io::Error::other)?;
        }
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
        let keys =
            |(seq, s): (u64, rustls::ConnectionTrafficSecrets)| Keys::new(seq, &s, tls13).map_err(|_| io::Error::other("cipher suite"));
        Ok(AsyncTls {
            tcp,
            rx: keys(secrets.rx)?,
            tx: keys(secrets.tx)?,
            rbuf: vec![0; record::HEADER + record::MAX_CIPHERTEXT_12].into_boxed_slice(),
            start: 0,
            end: 0,
            plain: (0, 0, 0),
            wbuf: vec![0; record::MAX_PLAINTEXT + record::MAX_OVERHEAD].into_boxed_slice(),
        })
    }

    async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(record::MAX_PLAINTEXT);
            let len = self.tx.seal(record::APPLICATION_DATA, &bytes[..n], &mut self.wbuf).map_err(|_| io::Error::other("seal"))?;
            self.tcp.write_all(&self.wbuf[..len]).await?;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (a, b, rec_end) = self.plain;
            if a < b {
                let n = buf.len().min(b - a);
                buf[..n].copy_from_slice(&self.rbuf[a..a + n]);
                self.plain.0 += n;
                if self.plain.0 == b {
                    self.start = rec_end;
                    self.plain = (0, 0, 0);
                }
                return Ok(n);
            }
            match record::record_len(&self.rbuf[self.start..self.end], self.rx.max_ciphertext()) {
                Err(_) => return Err(io::Error::other("not a TLS record")),
                Ok(Some(len)) if len <= self.end - self.start => {
                    let at = self.start;
                    let (typ, pa, pb) = self.rx.open(&mut self.rbuf[at..at + len]).map_err(|_| io::Error::other("record does not open"))?;
                    if typ == record::APPLICATION_DATA {
                        self.plain = (at + pa, at + pb, at + len);
                    } else {
                        self.start += len; // session tickets
                    }
                    continue;
                }
                _ => {}
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.end == self.rbuf.len() {
                self.rbuf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = self.tcp.read(&mut self.rbuf[self.end..]).await?;
            if n == 0 {
                return Ok(0);
            }
            self.end += n;
        }
    }
}

/// The TLS floor: rustls alone, client and server in one process over memory (no sockets, no
/// proxy), doing per exchange what the TLS path does to its records: the client encrypts the
/// request, the server decrypts it, encrypts the response (the origin's head and `body_bytes`
/// body) and the client decrypts it. After one handshake, `WARMUP + n` exchanges, each checked.
pub fn tls_floor(n: u64, body_bytes: usize) -> Outcome {
    let mut out = Outcome { proxied: false, requests: n, warmup: WARMUP, body_bytes, ..Outcome::default() };
    match floor_run(n, body_bytes, &mut out) {
        Ok(()) => {}
        Err(e) => out.error = Some(chain(&ExchangeError::Tls(e))),
    }
    out
}

fn floor_run(n: u64, body_bytes: usize, out: &mut Outcome) -> io::Result<()> {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("gates-tls-floor-{}", std::process::id()));
    let (cert, key, client_config) = crate::tlsclient::make_pki(&dir, true)?;
    let chain_pem: Vec<rustls::pki_types::CertificateDer<'static>> = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .map_err(io::Error::other)?
            .collect::<Result<_, _>>()
            .map_err(io::Error::other)?
    };
    let key_der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&key).map_err(io::Error::other)?
    };
    let _ = std::fs::remove_dir_all(&dir);
    let server_config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain_pem, key_der)
        .map_err(io::Error::other)?;
    let name = rustls::pki_types::ServerName::try_from(crate::tlsclient::SERVER_NAME).map_err(io::Error::other)?;
    let mut client = rustls::ClientConnection::new(client_config, name).map_err(io::Error::other)?;
    let mut server = rustls::ServerConnection::new(std::sync::Arc::new(server_config)).map_err(io::Error::other)?;
    let mut wire = Vec::with_capacity(64 * 1024);
    while client.is_handshaking() || server.is_handshaking() {
        pass(&mut |w| client.write_tls(w), &mut server, &mut wire)?;
        pass(&mut |w| server.write_tls(w), &mut client, &mut wire)?;
    }
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_bytes}\r\n\r\n").into_bytes();
    response.resize(response.len() + body_bytes, b'x');
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..WARMUP + n {
        client.writer().write_all(GET)?;
        pass(&mut |w| client.write_tls(w), &mut server, &mut wire)?;
        let got = server.reader().read(&mut buf)?;
        if buf.get(..got) != Some(GET) {
            return Err(io::Error::other("the server read another request"));
        }
        out.origin_served += 1;
        server.writer().write_all(&response)?;
        pass(&mut |w| server.write_tls(w), &mut client, &mut wire)?;
        let mut total = 0;
        loop {
            match client.reader().read(&mut buf[total..]) {
                Ok(0) => break,
                Ok(k) => total += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if buf.get(..total) != Some(&response[..]) {
            return Err(io::Error::other("the client read another response"));
        }
        out.ok += 1;
    }
    Ok(())
}

/// Moves what `from` has to send into `to` and lets `to` process it (the floors' wire).
fn pass(
    from: &mut dyn FnMut(&mut Vec<u8>) -> io::Result<usize>,
    to: &mut rustls::ConnectionCommon<impl rustls::SideData>,
    wire: &mut Vec<u8>,
) -> io::Result<()> {
    wire.clear();
    while from(wire)? > 0 {}
    let mut rd: &[u8] = wire;
    while !rd.is_empty() {
        to.read_tls(&mut rd)?;
        to.process_new_packets().map_err(io::Error::other)?;
    }
    Ok(())
}

/// What each connection of a per-connection run ([`connections`]) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// Cleartext through the proxy: the base the TLS runs are measured against.
    Clear,
    /// TLS 1.3 through the proxy, a full handshake each time.
    TlsFull,
    /// TLS 1.3 through the proxy, resuming with a session ticket of an earlier connection.
    TlsResumed,
}

/// Connections made (and checked) before the measured ones in a per-connection run; the first
/// one of a resuming run is a full handshake that leaves the tickets the next ones resume with.
pub const CONN_WARMUP: u64 = 20;

/// The client's session store: rustls's memory cache, counting the TLS 1.3 session tickets it
/// is given. With `resume` false it hands none back, so every handshake is full while the
/// tickets are still received and kept as a resuming client does (the target and its floor do
/// the same).
#[derive(Debug)]
pub struct TicketCount {
    inner: rustls::client::ClientSessionMemoryCache,
    resume: bool,
    tickets: std::sync::atomic::AtomicU64,
}

impl TicketCount {
    pub fn tickets(&self) -> u64 {
        self.tickets.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl rustls::client::ClientSessionStore for TicketCount {
    fn set_kx_hint(&self, server_name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: rustls::pki_types::ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: rustls::pki_types::ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &rustls::pki_types::ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        if self.resume { self.inner.take_tls13_ticket(server_name) } else { None }
    }
}

/// `config` with a [`TicketCount`] session store (resuming when `resume`).
fn ticket_client(config: &rustls::ClientConfig, resume: bool) -> (std::sync::Arc<rustls::ClientConfig>, std::sync::Arc<TicketCount>) {
    let store = std::sync::Arc::new(TicketCount {
        inner: rustls::client::ClientSessionMemoryCache::new(32),
        resume,
        tickets: std::sync::atomic::AtomicU64::new(0),
    });
    let mut c = config.clone();
    c.resumption =
        rustls::client::Resumption::store(std::sync::Arc::clone(&store) as std::sync::Arc<dyn rustls::client::ClientSessionStore>);
    (std::sync::Arc::new(c), store)
}

/// Checks that every handshake of a per-connection run is the one it measures: full, or resumed
/// after the first; the same cipher suite, key exchange group and number of session tickets each
/// time.
struct Handshakes {
    resume: bool,
    first: Option<(rustls::CipherSuite, rustls::NamedGroup, u64)>,
    tickets: u64,
}

impl Handshakes {
    fn new(resume: bool) -> Handshakes {
        Handshakes { resume, first: None, tickets: 0 }
    }

    /// Connection `index`, after its response was read; `tickets`: the store's count now.
    fn check(&mut self, index: u64, conn: &rustls::ClientConnection, tickets: u64) -> Result<(), ExchangeError> {
        let what = |what: String| ExchangeError::Handshake { index, what };
        let want = if self.resume && index > 0 { rustls::HandshakeKind::Resumed } else { rustls::HandshakeKind::Full };
        if conn.handshake_kind() != Some(want) {
            return Err(what(format!("a {:?} handshake, expected {want:?}", conn.handshake_kind())));
        }
        let suite = conn.negotiated_cipher_suite().map(|s| s.suite()).ok_or_else(|| what("no cipher suite".into()))?;
        let group = conn.negotiated_key_exchange_group().map(|g| g.name()).ok_or_else(|| what("no key exchange".into()))?;
        let got = (suite, group, tickets - self.tickets);
        self.tickets = tickets;
        match self.first {
            None => self.first = Some(got),
            Some(first) if first != got => return Err(what(format!("{got:?}, the first connection {first:?}"))),
            Some(_) => {}
        }
        Ok(())
    }

    /// What every handshake was, for [`Outcome::handshake`].
    fn describe(&self) -> Option<String> {
        let (suite, group, tickets) = self.first?;
        let kind = if self.resume { "resumed (the run's first connection full)" } else { "full" };
        Some(format!("TLS 1.3 {suite:?}, {group:?}, Ed25519 certificate, {kind}, {tickets} session tickets per connection"))
    }
}

/// A new connection per exchange through the proxy (`CONN_WARMUP + n` of them, one GET each,
/// then the client closes), each verified; over TLS each handshake is checked too.
pub fn connections(kind: Conn, n: u64, body_bytes: usize) -> Outcome {
    let mut out = Outcome { proxied: true, requests: n, warmup: CONN_WARMUP, body_bytes, ..Outcome::default() };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(chain(&ExchangeError::Runtime(e)));
            return out;
        }
    };
    let served = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let (ok, result) = local.block_on(&rt, run_connections(kind, n, body_bytes, Rc::clone(&served)));
    out.ok = ok;
    match result {
        Ok(handshake) => out.handshake = handshake,
        Err(e) => out.error = Some(chain(&e)),
    }
    out.origin_served = served.get();
    out
}

async fn run_connections(kind: Conn, n: u64, body_bytes: usize, served: Rc<Cell<u64>>) -> (u64, Result<Option<String>, ExchangeError>) {
    let tls = match kind {
        Conn::Clear => None,
        Conn::TlsFull | Conn::TlsResumed => match tls_setup() {
            Ok(t) => Some(t),
            Err(e) => return (0, Err(e)),
        },
    };
    let target = match setup(Route::Proxied, body_bytes, served, tls.as_ref().map(|t| (t.cert.as_path(), t.key.as_path()))).await {
        Ok(t) => t,
        Err(e) => return (0, Err(e)),
    };
    if let Some(t) = &tls {
        let _ = std::fs::remove_dir_all(&t.dir);
    }
    let client = tls.as_ref().map(|t| ticket_client(&t.client, kind == Conn::TlsResumed));
    let mut handshakes = Handshakes::new(kind == Conn::TlsResumed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut ok = 0;
    for index in 0..CONN_WARMUP + n {
        let s = match tokio::net::TcpStream::connect(target).await {
            Ok(s) => s,
            Err(source) => return (ok, Err(ExchangeError::Connect { target, source })),
        };
        let _ = s.set_nodelay(true);
        let mut s = match &client {
            None => Stream::Plain(s),
            Some((config, _)) => match RustlsStream::handshake(s, config).await {
                Ok(c) => Stream::Rustls(Box::new(c)),
                Err(e) => return (ok, Err(ExchangeError::Tls(e))),
            },
        };
        if let Err(e) = round_trip(&mut s, &mut buf, body_bytes).await {
            return (ok, Err(e));
        }
        if let (Stream::Rustls(c), Some((_, store))) = (&s, &client)
            && let Err(e) = handshakes.check(index, &c.conn, store.tickets())
        {
            return (ok, Err(e));
        }
        ok += 1;
    }
    (ok, Ok(handshakes.describe()))
}

/// The server config of the handshake floors: what the proxy's TLS listener compiles to
/// (proxy/src/config/tls.rs) for one certificate: rustls's ring provider with its default suites
/// and groups, TLS 1.3 and 1.2, ALPN `http/1.1`, no early data, a ring ticketer, rustls's default
/// number of TLS 1.3 session tickets (2), secrets extractable. The proxy picks the certificate
/// with its SNI map; here rustls's single-certificate resolver.
fn floor_server_config(cert: &Path, key: &Path) -> io::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .map_err(io::Error::other)?
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(io::Error::other)?;
    let mut c = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(io::Error::other)?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.enable_secret_extraction = true;
    c.max_early_data_size = 0;
    c.ticketer = rustls::crypto::ring::Ticketer::new().map_err(io::Error::other)?;
    Ok(std::sync::Arc::new(c))
}

/// The handshake floor: rustls alone, a new client and server in memory per exchange (no sockets,
/// no proxy), the same handshake as [`connections`] over TLS (full, or resumed with a ticket of
/// an earlier connection), then the same request and response, each checked.
pub fn tls_floor_handshakes(resume: bool, n: u64, body_bytes: usize) -> Outcome {
    let mut out = Outcome { proxied: false, requests: n, warmup: CONN_WARMUP, body_bytes, ..Outcome::default() };
    match floor_handshakes(resume, n, body_bytes, &mut out) {
        Ok(handshake) => out.handshake = handshake,
        Err(e) => out.error = Some(chain(&e)),
    }
    out
}

fn floor_handshakes(resume: bool, n: u64, body_bytes: usize, out: &mut Outcome) -> Result<Option<String>, ExchangeError> {
    use std::io::{Read, Write};
    let tls = |e| ExchangeError::Tls(e);
    let dir = std::env::temp_dir().join(format!("gates-tls-floor-hs-{}", std::process::id()));
    let made = crate::tlsclient::make_pki(&dir, true);
    let server_config =
        made.as_ref().map_err(|e| io::Error::new(e.kind(), e.to_string())).and_then(|(cert, key, _)| floor_server_config(cert, key));
    let _ = std::fs::remove_dir_all(&dir);
    let (_, _, client_config) = made.map_err(tls)?;
    let server_config = server_config.map_err(tls)?;
    let (client_config, store) = ticket_client(&client_config, resume);
    let name = rustls::pki_types::ServerName::try_from(crate::tlsclient::SERVER_NAME).map_err(|e| tls(io::Error::other(e)))?;
    let mut response =
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body_bytes}\r\n\r\n").into_bytes();
    response.resize(response.len() + body_bytes, b'x');
    let mut buf = vec![0u8; 64 * 1024];
    let mut wire = Vec::with_capacity(64 * 1024);
    let mut handshakes = Handshakes::new(resume);
    for index in 0..CONN_WARMUP + n {
        let mut client =
            rustls::ClientConnection::new(std::sync::Arc::clone(&client_config), name.clone()).map_err(|e| tls(io::Error::other(e)))?;
        let mut server = rustls::ServerConnection::new(std::sync::Arc::clone(&server_config)).map_err(|e| tls(io::Error::other(e)))?;
        while client.is_handshaking() || server.is_handshaking() {
            pass(&mut |w| client.write_tls(w), &mut server, &mut wire).map_err(tls)?;
            pass(&mut |w| server.write_tls(w), &mut client, &mut wire).map_err(tls)?;
        }
        client.writer().write_all(GET).map_err(tls)?;
        pass(&mut |w| client.write_tls(w), &mut server, &mut wire).map_err(tls)?;
        let got = server.reader().read(&mut buf).map_err(tls)?;
        if buf.get(..got) != Some(GET) {
            return Err(tls(io::Error::other("the server read another request")));
        }
        out.origin_served += 1;
        server.writer().write_all(&response).map_err(tls)?;
        pass(&mut |w| server.write_tls(w), &mut client, &mut wire).map_err(tls)?;
        let mut total = 0;
        loop {
            match client.reader().read(&mut buf[total..]) {
                Ok(0) => break,
                Ok(k) => total += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(tls(e)),
            }
        }
        if buf.get(..total) != Some(&response[..]) {
            return Err(tls(io::Error::other("the client read another response")));
        }
        handshakes.check(index, &client, store.tickets())?;
        out.ok += 1;
    }
    Ok(handshakes.describe())
}

/// Which path an HTTP/2 run ([`h2_exchange`]) measures. The same client and origin on every path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Path {
    /// h2 client → h2c origin.
    Direct,
    /// h2 client → the proxy (an `h2c = true` listener; the route's group `protocol = "h2c"`) →
    /// origin.
    Proxied,
    /// h2 client → the floor: a relay built on the `h2` crate alone ([`h2_relay`]) → origin.
    Relay,
}

/// Windows of the HTTP/2 client connections (the bench client's and the relay's to the origin):
/// what the proxy's upstream sessions use (proxy/src/data/upstream/session.rs), so the client
/// and every hop send the same WINDOW_UPDATEs on each path.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONN_WINDOW: u32 = 4 << 20;

/// Requests before the measured ones in an HTTP/2 run (both request counts run them): a round of
/// the largest number of streams in flight. Fewer than [`WARMUP`]: the HTTP/2 group runs 18
/// benchmarks under callgrind.
pub const H2_WARMUP: u64 = 100;

/// `H2_WARMUP + n` GETs, each with a `body_bytes` response, on one HTTP/2 connection keeping
/// `streams` of them in flight (a new stream as soon as one ends), every response verified
/// (status 200, exactly `body_bytes` of body) and every request counted by the origin.
///
/// Client: the `h2` crate's, `streams` tasks sharing one connection, the same on every path so
/// that its cost cancels in the differences. Origin: an `h2` server answering each stream with
/// 200, `content-length` and the body in one DATA frame that ends the stream.
pub fn h2_exchange(path: H2Path, streams: u64, n: u64, body_bytes: usize) -> Outcome {
    let mut out = Outcome { proxied: path == H2Path::Proxied, requests: n, warmup: H2_WARMUP, body_bytes, ..Outcome::default() };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(chain(&ExchangeError::Runtime(e)));
            return out;
        }
    };
    let served = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let (ok, error) = local.block_on(&rt, run_h2(path, streams.max(1), H2_WARMUP + n, body_bytes, Rc::clone(&served)));
    out.ok = ok;
    out.error = error;
    out.origin_served = served.get();
    out
}

/// The client side of an HTTP/2 run: streams started, verified responses, the first error.
struct H2Client {
    total: u64,
    started: Cell<u64>,
    ok: Cell<u64>,
    error: std::cell::RefCell<Option<String>>,
}

async fn run_h2(path: H2Path, streams: u64, total: u64, body_bytes: usize, served: Rc<Cell<u64>>) -> (u64, Option<String>) {
    let target = match h2_setup(path, body_bytes, served).await {
        Ok(t) => t,
        Err(e) => return (0, Some(chain(&e))),
    };
    let s = match tokio::net::TcpStream::connect(target).await {
        Ok(s) => s,
        Err(source) => return (0, Some(chain(&ExchangeError::Connect { target, source }))),
    };
    let _ = s.set_nodelay(true);
    let handshake = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .handshake::<_, bytes::Bytes>(s)
        .await;
    let (client, conn) = match handshake {
        Ok(pair) => pair,
        Err(source) => return (0, Some(chain(&ExchangeError::H2 { what: "client handshake", source }))),
    };
    let conn = tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let uri = match http::Uri::try_from(format!("http://{target}/")) {
        Ok(u) => u,
        Err(_) => return (0, Some("bench uri".to_owned())),
    };
    let state = Rc::new(H2Client { total, started: Cell::new(0), ok: Cell::new(0), error: std::cell::RefCell::new(None) });
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::task::spawn_local(h2_client_task(client.clone(), uri.clone(), body_bytes, Rc::clone(&state))))
        .collect();
    drop(client);
    for t in tasks {
        let _ = t.await;
    }
    conn.abort();
    let error = state.error.borrow_mut().take();
    (state.ok.get(), error)
}

/// One of the client's `streams` tasks: takes the next request while any is left.
async fn h2_client_task(mut client: h2::client::SendRequest<bytes::Bytes>, uri: http::Uri, body_bytes: usize, st: Rc<H2Client>) {
    while st.error.borrow().is_none() && st.started.get() < st.total {
        st.started.set(st.started.get() + 1);
        match h2_round_trip(&mut client, &uri, body_bytes).await {
            Ok(()) => st.ok.set(st.ok.get() + 1),
            Err(e) => {
                st.error.borrow_mut().get_or_insert_with(|| chain(&e));
                return;
            }
        }
    }
}

/// One GET on a new stream; `Ok` only for a 200 whose body is exactly `body_bytes`.
async fn h2_round_trip(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    uri: &http::Uri,
    body_bytes: usize,
) -> Result<(), ExchangeError> {
    let h2 = |what| move |source| ExchangeError::H2 { what, source };
    std::future::poll_fn(|cx| client.poll_ready(cx)).await.map_err(h2("client ready"))?;
    let mut req = http::Request::new(());
    *req.uri_mut() = uri.clone();
    let (response, _) = client.send_request(req, true).map_err(h2("send request"))?;
    let response = response.await.map_err(h2("response"))?;
    if response.status() != http::StatusCode::OK {
        return Err(ExchangeError::Status(response.status().as_u16()));
    }
    let mut body = response.into_body();
    let mut got = 0;
    while let Some(data) = body.data().await {
        let data = data.map_err(h2("response body"))?;
        got += data.len();
        if got > body_bytes {
            return Err(ExchangeError::BodyLength { got, expected: body_bytes });
        }
        let _ = body.flow_control().release_capacity(data.len());
    }
    if got != body_bytes {
        return Err(ExchangeError::H2ShortBody { got, expected: body_bytes });
    }
    Ok(())
}

/// Starts the origin and what `path` puts in front of it; returns the address to send to.
async fn h2_setup(path: H2Path, body_bytes: usize, served: Rc<Cell<u64>>) -> Result<SocketAddr, ExchangeError> {
    use proxy::config::{ServerIds, parse};
    use proxy::data::accept::accept_loop;
    use proxy::data::worker::{Shared, Worker};

    let bind = |listener| move |source| ExchangeError::Bind { listener, source };
    let address = |listener| move |source| ExchangeError::Address { listener, source };
    let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(bind(Listener::Origin))?;
    let origin_addr = origin_listener.local_addr().map_err(address(Listener::Origin))?;
    tokio::task::spawn_local(h2_origin(origin_listener, body_bytes, served));
    if path == H2Path::Direct {
        return Ok(origin_addr);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(bind(Listener::Proxy))?;
    let addr = listener.local_addr().map_err(address(Listener::Proxy))?;
    if path == H2Path::Relay {
        tokio::task::spawn_local(h2_relay(listener, origin_addr));
        return Ok(addr);
    }
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nh2c = true\n[[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"{origin_addr}\"]\nprotocol = \"h2c\"\n"
    );
    let cfg = parse(Path::new("bench"), &text, &mut ServerIds::default()).map_err(ExchangeError::Config)?;
    let worker = Worker::new(Shared::new(cfg.snapshot), 0);
    // As in `setup`: the wall-clock tick kept out so the count stays exact.
    worker.timers.never_tick();
    tokio::task::spawn_local(accept_loop(Rc::clone(&worker), listener, 0));
    Ok(addr)
}

/// An HTTP/2 origin: each stream answered with 200, `content-length` and `body` bytes in one
/// DATA frame that ends the stream; counts them.
async fn h2_origin(listener: tokio::net::TcpListener, body: usize, served: Rc<Cell<u64>>) {
    let data = bytes::Bytes::from(vec![b'x'; body]);
    let length = http::HeaderValue::from(body);
    while let Ok((s, _)) = listener.accept().await {
        let (data, length, served) = (data.clone(), length.clone(), Rc::clone(&served));
        tokio::task::spawn_local(async move {
            let _ = s.set_nodelay(true);
            let Ok(mut conn) = h2::server::handshake(s).await else { return };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                served.set(served.get() + 1);
                let mut res = http::Response::new(());
                res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
                res.headers_mut().insert(http::header::CONTENT_LENGTH, length.clone());
                if let Ok(mut send) = respond.send_response(res, data.is_empty()) {
                    let _ = send.send_data(data.clone(), true);
                }
            }
        });
    }
}

/// The floor of the HTTP/2 rows: a relay built on the `h2` crate alone. One client connection to
/// the origin (opened first, the same windows as the proxy's upstream sessions), then an `h2`
/// server on the one client connection (the proxy's default `[http2]` settings); each stream, on
/// a task of its own as in the proxy, goes out on the origin connection with the client's head
/// as it came, and the response's head, body and trailers come back under both sides' flow
/// control. Nothing else: no routing, no header rewrites, no timers, no metrics.
pub async fn h2_relay(listener: tokio::net::TcpListener, origin: SocketAddr) {
    let Ok(up) = tokio::net::TcpStream::connect(origin).await else { return };
    let _ = up.set_nodelay(true);
    let handshake = h2::client::Builder::new()
        .initial_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .handshake::<_, bytes::Bytes>(up)
        .await;
    let Ok((send, conn)) = handshake else { return };
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let Ok((s, _)) = listener.accept().await else { return };
    let _ = s.set_nodelay(true);
    // The proxy's `[http2]` defaults (docs/configuration.md).
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(256 << 10)
        .initial_connection_window_size(1 << 20)
        .max_frame_size(16384)
        .max_header_list_size(16384)
        .max_concurrent_streams(128)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024));
    let Ok(mut conn) = builder.handshake::<_, bytes::Bytes>(s).await else { return };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let up = send.clone();
        tokio::task::spawn_local(async move {
            if relay_stream(up, req, &mut respond).await.is_err() {
                respond.send_reset(h2::Reason::INTERNAL_ERROR);
            }
        });
    }
}

/// One stream of [`h2_relay`]. The request body (none for the bench's GETs) is relayed before
/// the response is awaited: enough for this workload, not for a server that answers before the
/// request ends.
async fn relay_stream(
    mut up: h2::client::SendRequest<bytes::Bytes>,
    req: http::Request<h2::RecvStream>,
    respond: &mut h2::server::SendResponse<bytes::Bytes>,
) -> Result<(), h2::Error> {
    let (parts, mut body) = req.into_parts();
    std::future::poll_fn(|cx| up.poll_ready(cx)).await?;
    let end = body.is_end_stream();
    let (response, mut up_send) = up.send_request(http::Request::from_parts(parts, ()), end)?;
    if !end {
        relay_body(&mut body, &mut up_send).await?;
    }
    let (head, mut up_body) = response.await?.into_parts();
    let done = up_body.is_end_stream();
    let mut send = respond.send_response(http::Response::from_parts(head, ()), done)?;
    if !done && let Err(e) = relay_body(&mut up_body, &mut send).await {
        send.send_reset(h2::Reason::INTERNAL_ERROR);
        return Err(e);
    }
    Ok(())
}

/// Relays a body and its trailers (an empty DATA frame ending the stream when there are none),
/// each DATA frame sent as the receiver's window allows and its window given back once sent.
async fn relay_body(from: &mut h2::RecvStream, to: &mut h2::SendStream<bytes::Bytes>) -> Result<(), h2::Error> {
    while let Some(data) = from.data().await {
        let mut data = data?;
        let n = data.len();
        while !data.is_empty() {
            to.reserve_capacity(data.len());
            let mut cap = to.capacity();
            if cap == 0 {
                cap = std::future::poll_fn(|cx| to.poll_capacity(cx)).await.ok_or(h2::Reason::CANCEL)??;
                if cap == 0 {
                    continue;
                }
            }
            to.send_data(data.split_to(cap.min(data.len())), false)?;
        }
        let _ = from.flow_control().release_capacity(n);
    }
    match from.trailers().await? {
        Some(t) => to.send_trailers(t),
        None => to.send_data(bytes::Bytes::new(), true),
    }
}

/// One GET; `Ok` only for a 200 whose Content-Length body is exactly `body_bytes`.
async fn round_trip(s: &mut Stream, buf: &mut [u8], body_bytes: usize) -> Result<(), ExchangeError> {
    s.write_all(GET).await.map_err(ExchangeError::Write)?;
    let mut filled = 0;
    loop {
        let n = s.read(&mut buf[filled..]).await.map_err(ExchangeError::Read)?;
        if n == 0 {
            return Err(ExchangeError::ClosedBeforeResponse);
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&buf[..filled]) {
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(ExchangeError::Unparsable(e)),
            Ok(httparse::Status::Complete(head)) => {
                let status = res.code.unwrap_or(0);
                if status != 200 {
                    return Err(ExchangeError::Status(status));
                }
                let len = res
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                    .ok_or(ExchangeError::NoContentLength)?;
                if len != body_bytes {
                    return Err(ExchangeError::BodyLength { got: len, expected: body_bytes });
                }
                if head + len > buf.len() {
                    return Err(ExchangeError::TooLarge);
                }
                while filled < head + len {
                    let n = s.read(&mut buf[filled..head + len]).await.map_err(ExchangeError::ReadBody)?;
                    if n == 0 {
                        return Err(ExchangeError::ClosedMidBody);
                    }
                    filled += n;
                }
                if filled != head + len {
                    return Err(ExchangeError::PastResponse(filled - head - len));
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_verifies_and_the_origin_counts_every_request() {
        for route in [Route::Direct, Route::Proxied, Route::ProxiedTls] {
            let o = exchange(route, 50, 1024);
            assert_eq!(o.verify(), Ok(()), "{o:?}");
            assert_eq!((o.ok, o.origin_served), (WARMUP + 50, WARMUP + 50));
        }
    }

    /// The per-connection runs and their floors: every connection verified, every handshake the
    /// kind asked for, and the target's handshakes the same as the floor's.
    #[test]
    fn per_connection_runs_and_their_floors_verify_and_match() {
        let clear = connections(Conn::Clear, 5, 1024);
        assert_eq!(clear.verify(), Ok(()), "{clear:?}");
        assert_eq!((clear.ok, clear.origin_served, clear.handshake), (CONN_WARMUP + 5, CONN_WARMUP + 5, None));
        for resume in [false, true] {
            let kind = if resume { Conn::TlsResumed } else { Conn::TlsFull };
            let t = connections(kind, 5, 1024);
            assert_eq!(t.verify(), Ok(()), "{t:?}");
            let f = tls_floor_handshakes(resume, 5, 1024);
            assert_eq!(f.verify(), Ok(()), "{f:?}");
            assert_eq!(f.ok, CONN_WARMUP + 5);
            assert!(t.handshake.as_deref().is_some_and(|h| h.contains("2 session tickets")), "{t:?}");
            assert_eq!(t.handshake, f.handshake);
        }
    }

    /// The HTTP/2 runs: every path verifies at 1, 10 and 100 streams in flight.
    #[test]
    fn every_http2_path_verifies() {
        for path in [H2Path::Direct, H2Path::Proxied, H2Path::Relay] {
            for streams in [1, 10, 100] {
                let o = h2_exchange(path, streams, 30, 1024);
                assert_eq!(o.verify(), Ok(()), "{path:?} {streams}: {o:?}");
                assert_eq!((o.ok, o.origin_served), (H2_WARMUP + 30, H2_WARMUP + 30));
            }
        }
    }

    #[test]
    fn the_tls_floor_exchanges_and_checks_every_record() {
        let o = tls_floor(30, 1024);
        assert_eq!(o.verify(), Ok(()), "{o:?}");
        assert_eq!((o.ok, o.origin_served), (WARMUP + 30, WARMUP + 30));
    }

    /// The old bench counted these runs' instructions (fewer than a real proxy's) and passed them.
    #[test]
    fn a_proxy_answering_404_or_502_is_refused() {
        let o = exchange(Route::ProxiedNoRoute, 20, 1024);
        let e = o.verify().expect_err("a 404 proxy must not verify");
        assert!(matches!(&e, VerifyError::Failed { error, .. } if error == "status 404, expected 200"), "{e}");
        assert_eq!(o.origin_served, 0);
        let o = exchange(Route::ProxiedDeadUpstream, 20, 1024);
        let e = o.verify().expect_err("a 502 proxy must not verify");
        assert!(e.to_string().contains("status 502"), "{e}");
    }

    #[test]
    fn a_wrong_body_length_is_refused() {
        // The origin sends 100 bytes; the client expects 1024.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let local = tokio::task::LocalSet::new();
        let served = Rc::new(Cell::new(0));
        let err = local.block_on(&rt, async move {
            let target = setup(Route::Proxied, 100, served, None).await.expect("setup");
            let mut s = Stream::Plain(tokio::net::TcpStream::connect(target).await.expect("connect"));
            let mut buf = vec![0u8; 64 * 1024];
            round_trip(&mut s, &mut buf, 1024).await.expect_err("wrong length accepted")
        });
        assert!(matches!(err, ExchangeError::BodyLength { got: 100, expected: 1024 }), "{err}");
        assert_eq!(err.to_string(), "body of 100 bytes, expected 1024");
    }

    #[test]
    fn a_broken_outcome_is_refused() {
        let good =
            Outcome { proxied: true, requests: 10, warmup: 2, body_bytes: 5, ok: 12, origin_served: 12, error: None, handshake: None };
        assert_eq!(good.verify(), Ok(()));
        let bad = [
            Outcome { ok: 11, ..good.clone() },
            Outcome { origin_served: 0, ..good.clone() },
            Outcome { error: Some("status 502, expected 200".into()), ..good.clone() },
        ];
        for b in bad {
            assert!(b.verify().is_err(), "{b:?}");
        }
    }
}
