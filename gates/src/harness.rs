//! In-process measurement harness: an allocation-free blocking origin and client, and a helper
//! that starts the real proxy (either engine) in the same process against that origin.
//!
//! The origin and the client allocate nothing per request, nor per connection, once started:
//! fixed buffers allocated before the first connection, pre-built responses, `httparse` with a
//! stack header array, an incremental chunked decoder with no buffer of its own, and a fixed set
//! of origin threads started up front (no thread per connection). A heap profiler or callgrind
//! running around them therefore sees the proxy's cost; the direct path (client → origin, no
//! proxy) is measured the same way as the control.
//!
//! The origin has one [`OriginMode`] per kind of upstream behaviour the allocation probe needs
//! (a `Content-Length` or chunked answer, a `101` followed by an echo, no answer at all, a
//! refusal, a keep-alive connection that turns stale), and counts what it saw
//! ([`OriginStats`]) so each measured exchange can be checked to be the one its name says.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use proxy::config::{self, ServerIds};
use proxy::control::workers::{self, Engine, Running};

/// The request every harness workload sends: a keep-alive GET.
pub const GET: &[u8] = b"GET /bench HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: gates\r\nAccept: */*\r\n\r\n";

/// The byte every response body (and every request body the probes send) is made of, so a
/// client can check that what arrived is the body and not something else.
pub const FILL: u8 = b'x';

/// Chunk size of the chunked bodies the harness serves and sends.
pub const CHUNK: usize = 256;

/// Origin threads started up front: each serves one connection at a time, so this many
/// upstream connections can be open at once (the probes keep a handful).
const ORIGIN_THREADS: usize = 16;
const ORIGIN_BUF: usize = 64 * 1024;
const CLIENT_BUF: usize = 64 * 1024;

/// What the origin does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginMode {
    /// Keep-alive; every request (any body framing) gets `200` with a `Content-Length` body.
    Length,
    /// Keep-alive; every request gets `200` with a chunked body (chunks of [`CHUNK`] bytes).
    Chunked,
    /// Keep-alive; every request gets a gRPC-style answer: `200` with `Content-Type:
    /// application/grpc`, a chunked body as in `Chunked`, and the trailer section
    /// [`GRPC_TRAILERS`] in its last chunk.
    ChunkedTrailers,
    /// A request with an `Upgrade` field gets `101 Switching Protocols`, then every byte is
    /// echoed back until the peer closes; other requests are answered as in `Length`.
    Upgrade,
    /// Reads requests and never answers, until the peer closes (the proxy's response timeout).
    Silent,
    /// Accepts the connection and closes it at once, reading nothing (an upstream that refuses
    /// service after the TCP handshake).
    Refuse,
    /// Answers the first request of each connection as in `Length` (keep-alive, so the proxy
    /// pools the connection) and closes the connection, unanswered, when a second request
    /// arrives on it: a pooled connection that the origin closed under the proxy, every time.
    OneThenClose,
}

/// What the origin saw, across all its connections. Every count is raised before the bytes it
/// answers with are written, so a client that has received them sees them counted.
#[derive(Debug, Default)]
pub struct OriginStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Complete requests read (head and body).
    pub requests: AtomicU64,
    /// Responses written (`101` included).
    pub answered: AtomicU64,
    /// Connections closed with a request unanswered (`Refuse`, `OneThenClose`).
    pub dropped: AtomicU64,
    /// Request body bytes received (chunk data after de-chunking).
    pub body_bytes: AtomicU64,
    /// Bytes echoed back through upgraded connections.
    pub echoed: AtomicU64,
}

/// A copy of [`OriginStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginCounts {
    pub accepted: u64,
    pub requests: u64,
    pub answered: u64,
    pub dropped: u64,
    pub body_bytes: u64,
    pub echoed: u64,
}

impl OriginStats {
    pub fn snapshot(&self) -> OriginCounts {
        let r = |a: &AtomicU64| a.load(Ordering::SeqCst);
        OriginCounts {
            accepted: r(&self.accepted),
            requests: r(&self.requests),
            answered: r(&self.answered),
            dropped: r(&self.dropped),
            body_bytes: r(&self.body_bytes),
            echoed: r(&self.echoed),
        }
    }
}

impl OriginCounts {
    /// What happened between `before` and `self`.
    pub fn since(self, before: OriginCounts) -> OriginCounts {
        OriginCounts {
            accepted: self.accepted - before.accepted,
            requests: self.requests - before.requests,
            answered: self.answered - before.answered,
            dropped: self.dropped - before.dropped,
            body_bytes: self.body_bytes - before.body_bytes,
            echoed: self.echoed - before.echoed,
        }
    }
}

/// The origin's pre-built answers.
#[derive(Debug)]
struct Replies {
    length: Box<[u8]>,
    chunked: Box<[u8]>,
    grpc: Box<[u8]>,
}

/// The trailer section of [`OriginMode::ChunkedTrailers`] answers (each field line with its CRLF).
pub const GRPC_TRAILERS: &[u8] = b"grpc-status: 0\r\ngrpc-message: ok\r\n";

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

impl Replies {
    fn new(body_bytes: usize) -> Replies {
        let mut length = Vec::with_capacity(body_bytes + 128);
        length.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ");
        length.extend_from_slice(body_bytes.to_string().as_bytes());
        length.extend_from_slice(b"\r\n\r\n");
        length.resize(length.len() + body_bytes, FILL);
        let mut chunked = Vec::with_capacity(body_bytes * 2 + 128);
        chunked.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
        chunked_body(&mut chunked, body_bytes);
        let mut grpc = Vec::with_capacity(body_bytes * 2 + 192);
        grpc.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n");
        chunked_body(&mut grpc, body_bytes);
        // The body ends "0\r\n\r\n": the trailer section goes before the final CRLF.
        grpc.truncate(grpc.len() - 2);
        grpc.extend_from_slice(GRPC_TRAILERS);
        grpc.extend_from_slice(b"\r\n");
        Replies { length: length.into(), chunked: chunked.into(), grpc: grpc.into() }
    }
}

/// Appends a chunked body of `len` [`FILL`] bytes in chunks of [`CHUNK`] bytes, last chunk and
/// empty trailer included. Setup only (it allocates).
pub fn chunked_body(out: &mut Vec<u8>, len: usize) {
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.resize(out.len() + n, FILL);
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

/// An HTTP/1.1 origin on a fixed set of threads (see [`OriginMode`]). Dropping it ends the
/// threads once their connections have closed.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    pub mode: OriginMode,
    pub stats: Arc<OriginStats>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Origin {
    /// Ends the threads (those still serving a connection end when it closes) and waits a
    /// second at most for them, so that nothing of this origin runs into a later measurement.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake every thread blocked in accept; each sees `stop` and ends.
        for _ in 0..ORIGIN_THREADS {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
        }
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Origin {
    /// A keep-alive origin answering `200` with a `body_bytes` `Content-Length` body.
    pub fn start(body_bytes: usize) -> io::Result<Origin> {
        Origin::start_mode(OriginMode::Length, body_bytes)
    }

    pub fn start_mode(mode: OriginMode, body_bytes: usize) -> io::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(OriginStats::default());
        let replies = Arc::new(Replies::new(body_bytes));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(ORIGIN_THREADS);
        let started = Arc::new(AtomicU64::new(0));
        for i in 0..ORIGIN_THREADS {
            let listener = listener.try_clone()?;
            let started = Arc::clone(&started);
            let stop = Arc::clone(&stop);
            let stats = Arc::clone(&stats);
            let replies = Arc::clone(&replies);
            // Allocated here, before any connection: the thread allocates nothing itself.
            let mut buf = vec![0u8; ORIGIN_BUF].into_boxed_slice();
            let t = std::thread::Builder::new().name(format!("origin-{i}")).spawn(move || {
                started.fetch_add(1, Ordering::SeqCst);
                loop {
                    match listener.accept() {
                        Ok(_) if stop.load(Ordering::SeqCst) => return,
                        Ok((stream, _)) => {
                            stats.accepted.fetch_add(1, Ordering::SeqCst);
                            serve_origin(stream, mode, &replies, &mut buf, &stats);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })?;
            threads.push(t);
        }
        // A new thread allocates as it starts (std records its name for the stack-overflow
        // handler): wait until every one has, so none of that lands in a measurement.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while started.load(Ordering::SeqCst) < ORIGIN_THREADS as u64 {
            if std::time::Instant::now() > until {
                return Err(io::Error::other("origin threads did not start"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Origin { addr, mode, stats, stop, threads })
    }
}

/// Where the origin is in the request it is reading.
enum ReqState {
    Head,
    Length(u64),
    Chunked(ChunkDecoder),
}

/// Serves one connection until it closes (or the mode closes it).
fn serve_origin(mut s: TcpStream, mode: OriginMode, replies: &Replies, buf: &mut [u8], stats: &OriginStats) {
    if mode == OriginMode::Refuse {
        stats.dropped.fetch_add(1, Ordering::SeqCst);
        return; // dropping the stream closes it
    }
    let _ = s.set_nodelay(true);
    let (mut start, mut end) = (0, 0);
    let mut state = ReqState::Head;
    let mut upgrade = false;
    let mut answered = 0u64;
    loop {
        // Answer every complete request in the buffer (pipelining-safe).
        loop {
            match next_request(&mut state, &mut upgrade, &buf[start..end], stats) {
                Err(()) => return,
                Ok((used, false)) => {
                    start += used;
                    break;
                }
                Ok((used, true)) => start += used,
            }
            stats.requests.fetch_add(1, Ordering::SeqCst);
            let reply: &[u8] = match mode {
                OriginMode::Silent => return discard_until_closed(&mut s, buf),
                OriginMode::OneThenClose if answered > 0 => {
                    stats.dropped.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                OriginMode::Upgrade if upgrade => {
                    stats.answered.fetch_add(1, Ordering::SeqCst);
                    if s.write_all(SWITCHING).is_err() {
                        return;
                    }
                    return echo_until_closed(&mut s, buf, start, end, stats);
                }
                OriginMode::Chunked => &replies.chunked,
                OriginMode::ChunkedTrailers => &replies.grpc,
                _ => &replies.length,
            };
            // Counted before the write: a client that has the response sees it counted.
            answered += 1;
            stats.answered.fetch_add(1, Ordering::SeqCst);
            if s.write_all(reply).is_err() {
                return;
            }
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            if start == 0 {
                return; // a head larger than the buffer
            }
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        match s.read(&mut buf[end..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => end += n,
        }
    }
}

/// Consumes request bytes from `avail`: `(bytes used, a whole request ended)`.
fn next_request(state: &mut ReqState, upgrade: &mut bool, avail: &[u8], stats: &OriginStats) -> Result<(usize, bool), ()> {
    let mut used = 0;
    loop {
        let rest = &avail[used..];
        match state {
            ReqState::Head => {
                let Some(head) = parse_request(rest)? else { return Ok((used, false)) };
                used += head.len;
                *upgrade = head.upgrade;
                match head.framing {
                    BodyFraming::None | BodyFraming::Length(0) => return Ok((used, true)),
                    BodyFraming::Length(n) => *state = ReqState::Length(n),
                    BodyFraming::Chunked => *state = ReqState::Chunked(ChunkDecoder::new()),
                    BodyFraming::UntilClose => return Err(()),
                }
            }
            ReqState::Length(left) => {
                let n = (*left).min(rest.len() as u64);
                *left -= n;
                used += n as usize;
                stats.body_bytes.fetch_add(n, Ordering::SeqCst);
                if *left > 0 {
                    return Ok((used, false));
                }
                *state = ReqState::Head;
                return Ok((used, true));
            }
            ReqState::Chunked(dec) => {
                let step = dec
                    .feed(rest, |d| {
                        stats.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                    })
                    .map_err(|Malformed| ())?;
                used += step.consumed;
                if !step.done {
                    return Ok((used, false));
                }
                *state = ReqState::Head;
                return Ok((used, true));
            }
        }
    }
}

fn discard_until_closed(s: &mut TcpStream, buf: &mut [u8]) {
    while let Ok(n) = s.read(buf) {
        if n == 0 {
            return;
        }
    }
}

/// After a `101`: echoes what already arrived behind the request, then everything else.
fn echo_until_closed(s: &mut TcpStream, buf: &mut [u8], start: usize, end: usize, stats: &OriginStats) {
    if start < end {
        stats.echoed.fetch_add((end - start) as u64, Ordering::SeqCst);
        if s.write_all(&buf[start..end]).is_err() {
            return;
        }
    }
    loop {
        match s.read(buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                stats.echoed.fetch_add(n as u64, Ordering::SeqCst);
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// A response without length or chunking: the body runs to the end of the connection.
    UntilClose,
}

struct RequestInfo {
    len: usize,
    framing: BodyFraming,
    upgrade: bool,
}

fn parse_request(b: &[u8]) -> Result<Option<RequestInfo>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(b) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let fields = Fields::of(req.headers)?;
    let framing = match (fields.chunked, fields.length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(n)) => BodyFraming::Length(n),
        (false, None) => BodyFraming::None,
    };
    Ok(Some(RequestInfo { len, framing, upgrade: fields.upgrade }))
}

/// The fields of a head the harness cares about.
#[derive(Debug, Default)]
struct Fields {
    length: Option<u64>,
    chunked: bool,
    upgrade: bool,
    close: bool,
    keep_alive: bool,
}

impl Fields {
    fn of(headers: &[httparse::Header<'_>]) -> Result<Fields, ()> {
        let mut f = Fields::default();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let v = std::str::from_utf8(h.value).map_err(|_| ())?;
                f.length = Some(v.trim().parse().map_err(|_| ())?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                f.chunked |= contains_token(h.value, b"chunked");
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                f.upgrade = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                f.close |= contains_token(h.value, b"close");
                f.keep_alive |= contains_token(h.value, b"keep-alive");
            }
        }
        Ok(f)
    }
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// An incremental chunked-body decoder that keeps no bytes of its own (RFC 9112 §7.1: sizes,
/// extensions, data, trailer fields).
#[derive(Debug, Clone, Copy)]
pub struct ChunkDecoder {
    state: ChunkState,
    size: u64,
    digits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// A chunked body that breaks RFC 9112 §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// What one [`ChunkDecoder::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkStep {
    /// Input bytes that belong to the body (the decoder stops right after its end).
    pub consumed: usize,
    /// The body ended.
    pub done: bool,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder::new()
    }
}

impl ChunkDecoder {
    pub fn new() -> ChunkDecoder {
        ChunkDecoder { state: ChunkState::Size, size: 0, digits: 0 }
    }

    /// Decodes what `input` holds; `data` gets each run of chunk data.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<ChunkStep, Malformed> {
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                let n = (self.size as usize).min(input.len() - i);
                data(&input[i..i + n]);
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (ChunkState::Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits >= 15 {
                        return Err(Malformed);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).ok_or(Malformed)?);
                    ChunkState::Size
                }
                (ChunkState::Size, b';' | b' ' | b'\t') if self.digits > 0 => ChunkState::Extension,
                (ChunkState::Size, b'\r') if self.digits > 0 => ChunkState::SizeLf,
                (ChunkState::Extension, b'\r') => ChunkState::SizeLf,
                (ChunkState::Extension, _) => ChunkState::Extension,
                (ChunkState::SizeLf, b'\n') if self.size == 0 => ChunkState::TrailerStart,
                (ChunkState::SizeLf, b'\n') => ChunkState::Data,
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => {
                    self.digits = 0;
                    ChunkState::Size
                }
                (ChunkState::TrailerStart, b'\r') => ChunkState::FinalLf,
                (ChunkState::TrailerLine, b'\r') => ChunkState::TrailerLf,
                (ChunkState::TrailerStart | ChunkState::TrailerLine, _) => ChunkState::TrailerLine,
                (ChunkState::TrailerLf, b'\n') => ChunkState::TrailerStart,
                (ChunkState::FinalLf, b'\n') => ChunkState::Done,
                _ => return Err(Malformed),
            };
        }
        Ok(ChunkStep { consumed: i, done: self.state == ChunkState::Done })
    }
}

/// One response as the client received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Body bytes received (chunk data after de-chunking).
    pub body_bytes: u64,
    /// Every body byte was [`FILL`].
    pub body_intact: bool,
    /// The body came chunked.
    pub chunked: bool,
    /// The server closed the connection after this response (the client read to its end).
    pub closed: bool,
}

/// A blocking client over one connection at a time: it connects on first use and again after
/// a connection closed (no allocation either way: the buffer is its own for life).
pub struct Client {
    addr: SocketAddr,
    stream: Option<Stream>,
    /// Speak TLS (after a rustls handshake, records through [`crate::tlsclient`]).
    tls: Option<Arc<rustls::ClientConfig>>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("addr", &self.addr).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

/// The client's connection: cleartext or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<crate::tlsclient::TlsClient>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Client {
    /// A client for `addr`, connected at once.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let mut c = Client::new(addr);
        c.stream()?;
        Ok(c)
    }

    /// A client for `addr` that connects on first use.
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, stream: None, tls: None, buf: vec![0; CLIENT_BUF].into_boxed_slice(), start: 0, end: 0 }
    }

    /// A client for `addr` that speaks TLS with `config` (see [`crate::tlsclient`]); connects on
    /// first use.
    pub fn new_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Client {
        Client { tls: Some(config), ..Client::new(addr) }
    }

    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    fn stream(&mut self) -> io::Result<&mut Stream> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            (self.start, self.end) = (0, 0);
            self.stream = Some(match &self.tls {
                None => Stream::Plain(s),
                Some(config) => Stream::Tls(Box::new(crate::tlsclient::TlsClient::handshake(s, config)?)),
            });
        }
        self.stream.as_mut().ok_or_else(|| invalid("not connected"))
    }

    /// Closes the connection (the next request opens a new one).
    pub fn close(&mut self) {
        self.stream = None;
        (self.start, self.end) = (0, 0);
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream()?.write_all(bytes)
    }

    /// Sends one request and reads its response.
    pub fn round_trip(&mut self, request: &[u8]) -> io::Result<Response> {
        self.send(request)?;
        self.response()
    }

    /// Reads more bytes into the buffer: `Ok(0)` at the end of the connection.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(invalid("response head larger than the client buffer"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let s = self.stream.as_mut().ok_or_else(|| invalid("not connected"))?;
        let n = s.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    fn fill_some(&mut self) -> io::Result<()> {
        match self.fill()? {
            0 => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response")),
            _ => Ok(()),
        }
    }

    /// Reads the next final response (interim 1xx other than `101` are skipped) and its body.
    /// A response that ends its connection (close-delimited, `Connection: close`, HTTP/1.0
    /// without keep-alive) is read to the end of the connection, which is then closed here.
    pub fn response(&mut self) -> io::Result<Response> {
        loop {
            let (status, head_len, framing, close) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 48];
                let mut res = httparse::Response::new(&mut headers);
                match res.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = res.code.unwrap_or(0);
                        let f = Fields::of(res.headers).map_err(|()| invalid("bad framing fields"))?;
                        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
                            BodyFraming::None
                        } else if f.chunked {
                            BodyFraming::Chunked
                        } else if let Some(n) = f.length {
                            BodyFraming::Length(n)
                        } else {
                            BodyFraming::UntilClose
                        };
                        let close = f.close || (res.version == Some(0) && !f.keep_alive) || framing == BodyFraming::UntilClose;
                        break (status, n, framing, close && status != 101);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(invalid("unparseable response")),
                }
                self.fill_some()?;
            };
            self.start += head_len;
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut r = Response { status, body_bytes: 0, body_intact: true, chunked: framing == BodyFraming::Chunked, closed: false };
            match framing {
                BodyFraming::None => {}
                BodyFraming::Length(n) => {
                    let mut left = n;
                    while left > 0 {
                        if self.start == self.end {
                            self.fill_some()?;
                        }
                        let take = left.min((self.end - self.start) as u64) as usize;
                        r.body_intact &= self.buf[self.start..self.start + take].iter().all(|&b| b == FILL);
                        self.start += take;
                        left -= take as u64;
                    }
                    r.body_bytes = n;
                }
                BodyFraming::Chunked => {
                    let mut dec = ChunkDecoder::new();
                    loop {
                        let (mut bytes, mut intact) = (0u64, true);
                        let step = dec
                            .feed(&self.buf[self.start..self.end], |d| {
                                bytes += d.len() as u64;
                                intact &= d.iter().all(|&b| b == FILL);
                            })
                            .map_err(|Malformed| invalid("malformed chunked body"))?;
                        self.start += step.consumed;
                        r.body_bytes += bytes;
                        r.body_intact &= intact;
                        if step.done {
                            break;
                        }
                        self.fill_some()?;
                    }
                }
                BodyFraming::UntilClose => loop {
                    r.body_bytes += (self.end - self.start) as u64;
                    r.body_intact &= self.buf[self.start..self.end].iter().all(|&b| b == FILL);
                    self.start = self.end;
                    if self.fill()? == 0 {
                        break;
                    }
                },
            }
            if close {
                if framing != BodyFraming::UntilClose {
                    // Nothing may follow a closing response: read to the end of the connection.
                    if self.start != self.end || self.fill()? != 0 {
                        return Err(invalid("bytes after a response that closes its connection"));
                    }
                }
                r.closed = true;
                self.close();
            }
            return Ok(r);
        }
    }

    /// Through an upgraded connection: sends `msg` and reads the same bytes back.
    pub fn echo(&mut self, msg: &[u8]) -> io::Result<bool> {
        self.send(msg)?;
        let mut got = 0;
        let mut same = true;
        while got < msg.len() {
            if self.start == self.end {
                self.fill_some()?;
            }
            let n = (msg.len() - got).min(self.end - self.start);
            same &= self.buf[self.start..self.start + n] == msg[got..got + n];
            self.start += n;
            got += n;
        }
        Ok(same)
    }
}

/// How the in-process proxy is configured beyond its one listener and its one route to the
/// origin. The fields are TOML lines placed in the matching table.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxySetup {
    /// The route matches only this host (requests for any other get the proxy's 404).
    pub route_host: Option<&'static str>,
    /// Lines of `[upstreams.origin]`, e.g. `response_header_timeout = "1ms"`.
    pub upstream: &'static str,
    /// Lines of `[limits]`, e.g. `max_body_bytes = 1024`.
    pub limits: &'static str,
    /// Lines of the listener's `[[listeners]]` table, e.g. `h2c = true`.
    pub listener: &'static str,
}

/// Starts the proxy in this process with one worker, one route to `origin` (see [`ProxySetup`]).
pub fn start_proxy(origin: SocketAddr, engine: Engine, setup: &ProxySetup) -> io::Result<Running> {
    start_proxy_tls(origin, engine, setup, None)
}

/// [`start_proxy`], the listener speaking TLS with `tls` (certificate and key PEM files) if given.
pub fn start_proxy_tls(origin: SocketAddr, engine: Engine, setup: &ProxySetup, tls: Option<(&Path, &Path)>) -> io::Result<Running> {
    let host = setup.route_host.map(|h| format!("host = \"{h}\"\n")).unwrap_or_default();
    let tls = tls
        .map(|(cert, key)| format!("[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n", cert.display(), key.display()))
        .unwrap_or_default();
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n{}{tls}[[routes]]\nupstream = \"origin\"\n{host}[upstreams.origin]\nservers = [\"{origin}\"]\n{}\n[limits]\n{}\n",
        setup.listener, setup.upstream, setup.limits,
    );
    let cfg = config::parse(Path::new("<harness>"), &text, &mut ServerIds::default()).map_err(|e| io::Error::other(e.to_string()))?;
    workers::start(cfg, 1, engine).map_err(|e| io::Error::other(e.to_string()))
}

/// An address on which nothing listens (connections are refused): bound, then released.
pub fn refused_addr() -> io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunk_decoder_handles_any_split_extensions_and_trailers() {
        let body = b"4;ext=1\r\nxxxx\r\n10\r\nxxxxxxxxxxxxxxxx\r\n0\r\nTrailer: v\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut dec = ChunkDecoder::new();
            let (mut data, mut used) = (0, 0);
            for part in [&body[..split], &body[split..]] {
                let step = dec.feed(part, |d| data += d.len()).unwrap();
                used += step.consumed;
                if step.done {
                    break;
                }
            }
            assert_eq!((data, &body[used..]), (20, &b"NEXT"[..]), "split at {split}");
        }
        assert!(ChunkDecoder::new().feed(b"\r\n", |_| {}).is_err());
        assert!(ChunkDecoder::new().feed(b"4\r\nxxxxZ", |_| {}).is_err());
        let mut v = Vec::new();
        chunked_body(&mut v, 600);
        let mut n = 0;
        assert_eq!(ChunkDecoder::new().feed(&v, |d| n += d.len()).unwrap(), ChunkStep { consumed: v.len(), done: true });
        assert_eq!(n, 600);
    }

    #[test]
    fn client_and_origin_speak_every_mode() {
        let o = Origin::start_mode(OriginMode::Chunked, 700).unwrap();
        let mut c = Client::connect(o.addr).unwrap();
        let r = c.round_trip(GET).unwrap();
        assert_eq!((r.status, r.body_bytes, r.body_intact, r.chunked, r.closed), (200, 700, true, true, false));

        let o = Origin::start_mode(OriginMode::ChunkedTrailers, 700).unwrap();
        let mut c = Client::connect(o.addr).unwrap();
        for _ in 0..2 {
            let r = c.round_trip(GET).unwrap();
            assert_eq!((r.status, r.body_bytes, r.body_intact, r.chunked, r.closed), (200, 700, true, true, false));
        }
        assert!(Replies::new(10).grpc.ends_with(b"\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n"));

        let o = Origin::start_mode(OriginMode::Upgrade, 10).unwrap();
        let mut c = Client::connect(o.addr).unwrap();
        let up = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(c.round_trip(up).unwrap().status, 101);
        assert!(c.echo(b"hello").unwrap());

        let o = Origin::start_mode(OriginMode::OneThenClose, 10).unwrap();
        let mut c = Client::connect(o.addr).unwrap();
        assert_eq!(c.round_trip(GET).unwrap().body_bytes, 10);
        assert!(c.round_trip(GET).is_err());
        assert_eq!((o.stats.snapshot().answered, o.stats.snapshot().dropped), (1, 1));
    }
}
