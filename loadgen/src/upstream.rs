//! The bundled benchmark origin: a minimal, fast, strict-enough HTTP/1.1 server.
//!
//! Answers every request with `200 OK` and a fixed body of `--body-bytes` bytes (HEAD: headers
//! only), pre-serialized once. Keep-alive; pipelined requests are answered in order, batched into
//! one write per read. Request bodies framed by `Content-Length` or `chunked` are read and
//! discarded as they stream in ([`BodySkipper`]); `Expect: 100-continue` is honoured. Malformed
//! requests get `400` and a close: a bad request line or header, both `Content-Length` and
//! `Transfer-Encoding`, conflicting lengths, a transfer coding other than final `chunked`.
//! A head larger than the 64 KiB buffer gets `431`. HTTP/1.0 and `Connection: close` close after
//! the response.
//!
//! Test knobs: `--delay` holds each response; `--stall-every E --stall-for F` holds every
//! response due in the last `F` of each period `E` (counted from start) until the period ends,
//! like a GC pause in an origin, which is what exposes coordinated omission.
//!
//! `--threads N` runs N `current_thread` runtimes with one `SO_REUSEPORT` listener each.
//!
//! `--tls` serves the same over TLS (rustls; see [`crate::tls::server_config`]): the handshake
//! runs in the connection's task, a failed one just closes the connection. The stall and delay
//! apply to responses exactly as in cleartext.
//!
//! `--http3` (with `--tls`) also serves HTTP/3 (`quinn` and `h3`) on the same port number over
//! UDP, one QUIC endpoint per serving thread, from the same certificate; every request stream
//! gets the same `200`, body, trailers, delay and stall as over TCP. `--early-data` makes its
//! tickets allow 0-RTT, and 0-RTT requests are served as they arrive (0.5-RTT).
//!
//! HTTP/2 (the `h2` crate server): a cleartext connection that opens with the h2 preface is
//! served as h2c (prior knowledge), a TLS connection that negotiated ALPN `h2` as h2; each
//! stream gets the same `200` and body, with `--delay` and the stall applied per response.
//! `--http1-only` turns both off.
//!
//! `--trailers` makes every response gRPC-shaped: `content-type: application/grpc` and a trailer
//! section `grpc-status: 0`, `grpc-message: ok` after the body, over HTTP/2 a trailing HEADERS
//! frame (the DATA frames then do not end the stream), over HTTP/1.1 a chunked body (one chunk,
//! then the trailers; announced by `trailer: grpc-status, grpc-message`) whatever the request's
//! `TE` says: gRPC over HTTP/1.1 is not a thing, the option exists so that a proxy relaying
//! HTTP/2 to an HTTP/1.1 origin has trailers to carry. HEAD responses are the head alone.

use crate::body::{BodySkipper, Framing};
use crate::client::{has_token, last_token_is, parse_u64};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Largest request head accepted (431 beyond).
const BUF: usize = 64 * 1024;
const BUF_INITIAL: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

/// Upstream settings.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub listen: SocketAddr,
    pub body_bytes: usize,
    pub delay: Duration,
    pub stall_every: Duration,
    pub stall_for: Duration,
    pub threads: usize,
    pub cpus: Vec<usize>,
    /// Serve over TLS with this config (one for all threads: shared session ticketer).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/1.1 only (no h2c detection; the TLS config then offers no ALPN h2).
    pub http1_only: bool,
    /// Trailers after every response body (`--trailers`; see the module docs).
    pub trailers: bool,
    /// `--http3`: also serve HTTP/3 on the same port number over UDP, with this QUIC config.
    pub http3: Option<quinn::ServerConfig>,
}

/// Pre-serialized responses.
#[derive(Debug)]
struct Responses {
    keep: Vec<u8>,
    keep_head_len: usize,
    close: Vec<u8>,
    close_head_len: usize,
    /// The body alone (HTTP/2 sends it in DATA frames).
    body: bytes::Bytes,
}

/// The trailer section `--trailers` sends (HTTP/1.1 form; HTTP/2 sends the same fields).
const TRAILERS: &[(&str, &str)] = &[("grpc-status", "0"), ("grpc-message", "ok")];

impl Responses {
    fn new(body_bytes: usize, trailers: bool) -> Self {
        let body = vec![b'x'; body_bytes];
        let build = |extra: &str| {
            let mut v = if trailers {
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/grpc\r\nTrailer: grpc-status, grpc-message\r\n{extra}\r\n"
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {body_bytes}\r\nContent-Type: text/plain\r\n{extra}\r\n")
            }
            .into_bytes();
            let head = v.len();
            if trailers {
                if body_bytes > 0 {
                    v.extend_from_slice(format!("{body_bytes:x}\r\n").as_bytes());
                    v.extend_from_slice(&body);
                    v.extend_from_slice(b"\r\n");
                }
                v.extend_from_slice(b"0\r\n");
                for (k, val) in TRAILERS {
                    v.extend_from_slice(format!("{k}: {val}\r\n").as_bytes());
                }
                v.extend_from_slice(b"\r\n");
            } else {
                v.extend_from_slice(&body);
            }
            (v, head)
        };
        let (keep, keep_head_len) = build("");
        let (close, close_head_len) = build("Connection: close\r\n");
        Self { keep, keep_head_len, close, close_head_len, body: body.into() }
    }
}

/// Binds the listeners (so the caller can print the real address), then serves until killed.
pub fn run_upstream(cfg: &UpstreamConfig, on_bound: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let start = Instant::now();
    let c = cfg.clone();
    crate::server::serve_threads(cfg.listen, cfg.threads, &cfg.cpus, "upstream", on_bound, move |l| accept_loop(l, c.clone(), start))
}

async fn accept_loop(l: std::net::TcpListener, cfg: UpstreamConfig, start: Instant) -> io::Result<()> {
    let addr = l.local_addr()?;
    let l = TcpListener::from_std(l)?;
    let resp = Rc::new(Responses::new(cfg.body_bytes, cfg.trailers));
    let acceptor = cfg.tls.clone().map(TlsAcceptor::from);
    let quic = match &cfg.http3 {
        Some(q) => Some(h3_endpoint(addr, cfg.threads > 1, q.clone())?),
        None => None,
    };
    let cfg = Rc::new(cfg);
    if let Some(ep) = quic {
        tokio::task::spawn_local(h3_accept_loop(ep, resp.clone(), cfg.clone(), start));
    }
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            // Out of fds and the like: keep serving the connections we have.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        match &acceptor {
            None if cfg.http1_only => {
                tokio::task::spawn_local(conn(s, resp.clone(), cfg.clone(), start));
            }
            None => {
                tokio::task::spawn_local(plain_conn(s, resp.clone(), cfg.clone(), start));
            }
            Some(acc) => {
                tokio::task::spawn_local(tls_conn(acc.clone(), s, resp.clone(), cfg.clone(), start));
            }
        }
    }
}

/// What a parsed request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    /// A full head of `len` bytes.
    Head {
        len: usize,
        framing: Framing,
        head_method: bool,
        close: bool,
        expect_continue: bool,
    },
    /// Malformed: answer with this status and close.
    Bad(u16),
}

fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(431),
        Err(_) => return Parsed::Bad(400),
    };
    let mut close = req.version == Some(0);
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(v) = parse_u64(h.value) else {
                return Parsed::Bad(400);
            };
            if length.is_some_and(|l| l != v) {
                return Parsed::Bad(400);
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return Parsed::Bad(400);
            }
            te = Some(last_token_is(h.value, b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, b"close") {
                close = true;
            } else if has_token(h.value, b"keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing = match (te, length) {
        (Some(_), Some(_)) | (Some(false), None) => return Parsed::Bad(400),
        (Some(true), None) => Framing::Chunked,
        (None, Some(l)) => Framing::Length(l),
        (None, None) => Framing::None,
    };
    Parsed::Head {
        len,
        framing,
        head_method: req.method == Some("HEAD"),
        close,
        expect_continue: expect_continue && framing != Framing::None,
    }
}

/// Holds the current response if we are inside a stall window.
async fn stall(cfg: &UpstreamConfig, start: Instant) {
    if cfg.stall_every.is_zero() || cfg.stall_for.is_zero() {
        return;
    }
    let every = cfg.stall_every.as_nanos();
    let phase = (Instant::now() - start).as_nanos() % every;
    let stall_from = every.saturating_sub(cfg.stall_for.as_nanos());
    if phase >= stall_from {
        let left = Duration::from_nanos((every - phase) as u64);
        tokio::time::sleep(left).await;
    }
}

fn bad_response(status: u16) -> Vec<u8> {
    let reason = match status {
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A TLS connection: handshake, then the same HTTP/1.1 service. A failed handshake (a client
/// that does not trust the certificate, or does not speak TLS) closes the connection.
async fn tls_conn(acc: TlsAcceptor, s: TcpStream, resp: Rc<Responses>, cfg: Rc<UpstreamConfig>, start: Instant) {
    if let Ok(s) = acc.accept(s).await {
        if s.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
            h2_conn(s, resp, cfg, start).await;
        } else {
            conn(s, resp, cfg, start).await;
        }
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4): a cleartext connection that starts with
/// it is served as h2c (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A cleartext connection: HTTP/2 when its first bytes are the h2 preface, else HTTP/1.1.
async fn plain_conn(s: TcpStream, resp: Rc<Responses>, cfg: Rc<UpstreamConfig>, start: Instant) {
    let mut peek = [0u8; H2_PREFACE.len()];
    let h2 = loop {
        let n = match s.peek(&mut peek).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if peek[..n] != H2_PREFACE[..n] {
            break false;
        }
        if n == H2_PREFACE.len() {
            break true;
        }
        // A prefix of the preface: wait for more (peek returns at once while data is queued).
        if s.readable().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    if h2 {
        h2_conn(s, resp, cfg, start).await;
    } else {
        conn(s, resp, cfg, start).await;
    }
}

/// Serves HTTP/2 (the `h2` crate) on `s`: every stream gets `200` with the same body, after the
/// request body is read and discarded; `--delay` and the stall apply per response.
async fn h2_conn<S: AsyncRead + AsyncWrite + Unpin + 'static>(s: S, resp: Rc<Responses>, cfg: Rc<UpstreamConfig>, start: Instant) {
    let Ok(mut c) = h2::server::Builder::new().max_concurrent_streams(1000).handshake::<_, bytes::Bytes>(s).await else {
        return;
    };
    let body = resp.body.clone();
    while let Some(r) = c.accept().await {
        let Ok((req, respond)) = r else { break };
        tokio::task::spawn_local(h2_stream(req, respond, body.clone(), cfg.clone(), start));
    }
}

async fn h2_stream(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    body: bytes::Bytes,
    cfg: Rc<UpstreamConfig>,
    start: Instant,
) {
    let head = req.method() == http::Method::HEAD;
    let mut rx = req.into_body();
    while let Some(d) = rx.data().await {
        match d {
            Ok(d) => {
                let _ = rx.flow_control().release_capacity(d.len());
            }
            Err(_) => return,
        }
    }
    if !cfg.delay.is_zero() {
        tokio::time::sleep(cfg.delay).await;
    }
    stall(&cfg, start).await;
    let mut r = http::Response::new(());
    r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    let content_type = if cfg.trailers { "application/grpc" } else { "text/plain" };
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    let trailers = cfg.trailers && !head;
    let end = head || (body.is_empty() && !trailers);
    if let Ok(mut tx) = respond.send_response(r, end)
        && !end
    {
        if !body.is_empty() {
            let _ = tx.send_data(body, !trailers);
        }
        if trailers {
            let mut t = http::HeaderMap::new();
            for (k, v) in TRAILERS {
                t.insert(*k, http::HeaderValue::from_static(v));
            }
            let _ = tx.send_trailers(t);
        }
    }
}

/// The HTTP/3 endpoint of one serving thread: a UDP socket on the TCP listener's address
/// (`SO_REUSEPORT` when threads share it: the kernel keeps each client's datagrams on one socket).
fn h3_endpoint(addr: SocketAddr, reuse_port: bool, config: quinn::ServerConfig) -> io::Result<quinn::Endpoint> {
    crate::server::quic_endpoint(crate::server::bind_udp(addr, reuse_port)?, config)
}

/// Accepts QUIC connections until the endpoint closes; each is served by its own task.
async fn h3_accept_loop(ep: quinn::Endpoint, resp: Rc<Responses>, cfg: Rc<UpstreamConfig>, start: Instant) {
    while let Some(incoming) = ep.accept().await {
        tokio::task::spawn_local(h3_conn(incoming, resp.body.clone(), cfg.clone(), start));
    }
}

/// One HTTP/3 connection: a failed handshake just ends it; every request stream gets its own
/// task.
async fn h3_conn(incoming: quinn::Incoming, body: bytes::Bytes, cfg: Rc<UpstreamConfig>, start: Instant) {
    let Ok(connecting) = incoming.accept() else { return };
    // 0.5-RTT: requests that came as 0-RTT data (`--early-data`) are served as they arrive, before
    // the handshake completes; for any other connection this changes nothing.
    let conn = match connecting.into_0rtt() {
        Ok((conn, _)) => conn,
        Err(connecting) => match connecting.await {
            Ok(conn) => conn,
            Err(_) => return,
        },
    };
    let Ok(mut h) = h3::server::Connection::<_, bytes::Bytes>::new(h3_quinn::Connection::new(conn)).await else {
        return;
    };
    while let Ok(Some(resolver)) = h.accept().await {
        tokio::task::spawn_local(h3_stream(resolver, body.clone(), cfg.clone(), start));
    }
}

/// One HTTP/3 request: its body is read and discarded, then `200` with the same body as every
/// other protocol (and the `--trailers` section), after `--delay` and the stall.
async fn h3_stream(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, bytes::Bytes>,
    body: bytes::Bytes,
    cfg: Rc<UpstreamConfig>,
    start: Instant,
) {
    let Ok((req, mut stream)) = resolver.resolve_request().await else { return };
    let head = req.method() == http::Method::HEAD;
    loop {
        match stream.recv_data().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => return,
        }
    }
    if !cfg.delay.is_zero() {
        tokio::time::sleep(cfg.delay).await;
    }
    stall(&cfg, start).await;
    let mut r = http::Response::new(());
    r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    let content_type = if cfg.trailers { "application/grpc" } else { "text/plain" };
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    if stream.send_response(r).await.is_err() {
        return;
    }
    if !head {
        if !body.is_empty() && stream.send_data(body).await.is_err() {
            return;
        }
        if cfg.trailers {
            let mut t = http::HeaderMap::new();
            for (k, v) in TRAILERS {
                t.insert(*k, http::HeaderValue::from_static(v));
            }
            if stream.send_trailers(t).await.is_err() {
                return;
            }
        }
    }
    let _ = stream.finish().await;
}

async fn conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, resp: Rc<Responses>, cfg: Rc<UpstreamConfig>, start: Instant) {
    // Grows (doubling) up to BUF only for large heads, so idle connections stay small.
    let mut buf = vec![0u8; BUF_INITIAL];
    let mut out = Outbox::default();
    let (mut lo, mut hi) = (0usize, 0usize);
    // The body being skipped and what to answer once it is complete.
    let mut body: Option<(BodySkipper, bool, bool)> = None;
    loop {
        let mut close_now = false;
        let mut answered = 0usize;
        loop {
            if let Some((sk, head_method, close)) = body.as_mut() {
                let Ok(used) = sk.feed(&buf[lo..hi]) else {
                    out.raw(&resp, &bad_response(400));
                    close_now = true;
                    break;
                };
                lo += used;
                if !sk.is_done() {
                    break;
                }
                let (head_method, close) = (*head_method, *close);
                body = None;
                out.response(&resp, head_method, close);
                answered += 1;
                if close {
                    close_now = true;
                    break;
                }
            }
            if lo == hi {
                break;
            }
            match parse_request(&buf[lo..hi]) {
                Parsed::Partial => {
                    if lo == 0 && hi == buf.len() {
                        if buf.len() < BUF {
                            buf.resize((buf.len() * 2).min(BUF), 0);
                        } else {
                            out.raw(&resp, &bad_response(431));
                            close_now = true;
                        }
                    }
                    break;
                }
                Parsed::Bad(status) => {
                    out.raw(&resp, &bad_response(status));
                    close_now = true;
                    break;
                }
                Parsed::Head { len, framing, head_method, close, expect_continue } => {
                    lo += len;
                    if expect_continue {
                        out.raw(&resp, b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    body = Some((BodySkipper::new(framing), head_method, close));
                }
            }
        }
        if lo == hi {
            lo = 0;
            hi = 0;
        } else if hi == buf.len() && lo > 0 {
            buf.copy_within(lo..hi, 0);
            hi -= lo;
            lo = 0;
        }
        if !out.is_empty() {
            if answered > 0 {
                stall(&cfg, start).await;
                if !cfg.delay.is_zero() {
                    // One delay per response, as a slow origin would take.
                    tokio::time::sleep(cfg.delay * answered as u32).await;
                }
            }
            if s.write_all(out.bytes(&resp)).await.is_err() || s.flush().await.is_err() {
                return;
            }
            out.clear();
        }
        if close_now {
            let _ = s.shutdown().await;
            return;
        }
        match s.read(&mut buf[hi..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => hi += n,
        }
    }
}

/// The bytes of one pre-serialized response.
fn response_bytes(r: &Responses, head_method: bool, close: bool) -> &[u8] {
    let (bytes, head_len) = if close { (&r.close, r.close_head_len) } else { (&r.keep, r.keep_head_len) };
    if head_method { &bytes[..head_len] } else { bytes }
}

/// What to write after a read batch. The common case, a single response, is written straight
/// from the pre-serialized bytes (no copy, whatever the body size); only pipelined batches and
/// interim/error responses are assembled in `buf`.
#[derive(Debug, Default)]
struct Outbox {
    buf: Vec<u8>,
    /// A single response not yet copied into `buf`: (HEAD, close).
    single: Option<(bool, bool)>,
}

impl Outbox {
    fn materialize(&mut self, r: &Responses) {
        if let Some((h, c)) = self.single.take() {
            self.buf.extend_from_slice(response_bytes(r, h, c));
        }
    }

    fn response(&mut self, r: &Responses, head_method: bool, close: bool) {
        if self.buf.is_empty() && self.single.is_none() {
            self.single = Some((head_method, close));
        } else {
            self.materialize(r);
            self.buf.extend_from_slice(response_bytes(r, head_method, close));
        }
    }

    fn raw(&mut self, r: &Responses, bytes: &[u8]) {
        self.materialize(r);
        self.buf.extend_from_slice(bytes);
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.single.is_none()
    }

    fn bytes<'a>(&'a self, r: &'a Responses) -> &'a [u8] {
        match self.single {
            Some((h, c)) if self.buf.is_empty() => response_bytes(r, h, c),
            _ => &self.buf,
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.single = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn head(buf: &[u8]) -> (usize, Framing, bool, bool) {
        match parse_request(buf) {
            Parsed::Head { len, framing, head_method, close, .. } => (len, framing, head_method, close),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_framing() {
        let r = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(head(r), (r.len() - 3, Framing::Length(3), false, false));
        let r = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(r).1, Framing::Chunked);
        let r = b"HEAD / HTTP/1.0\r\n\r\n";
        assert_eq!(head(r), (r.len(), Framing::None, true, true));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial);
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Parsed::Bad(400), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn head_response_has_no_body() {
        let r = Responses::new(5, false);
        assert!(response_bytes(&r, true, false).ends_with(b"text/plain\r\n\r\n"));
        assert!(response_bytes(&r, false, true).ends_with(b"Connection: close\r\n\r\nxxxxx"));
        // One response is written from the template; a batch is assembled in order.
        let mut o = Outbox::default();
        o.response(&r, true, false);
        assert_eq!(o.bytes(&r), response_bytes(&r, true, false));
        o.raw(&r, b"X");
        o.response(&r, false, false);
        let mut want = response_bytes(&r, true, false).to_vec();
        want.extend_from_slice(b"X");
        want.extend_from_slice(response_bytes(&r, false, false));
        assert_eq!(o.bytes(&r), &want[..]);
        o.clear();
        assert!(o.is_empty());
    }

    #[test]
    fn trailers_make_a_chunked_body_with_a_trailer_section() {
        let r = Responses::new(20, true);
        let keep = std::str::from_utf8(&r.keep).unwrap();
        assert!(keep.starts_with("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/grpc\r\n"), "{keep}");
        assert!(keep.ends_with(&format!("\r\n\r\n14\r\n{}\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n", "x".repeat(20))), "{keep}");
        assert!(!keep.contains("Content-Length"));
        assert!(response_bytes(&r, true, false).ends_with(b"grpc-message\r\n\r\n"));
        let empty = Responses::new(0, true);
        assert!(empty.keep.ends_with(b"\r\n\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n"));
        let mut sk = BodySkipper::new(Framing::Chunked);
        let body = &r.close[r.close_head_len..];
        assert_eq!(sk.feed(body), Ok(body.len()));
        assert!(sk.is_done());
    }
}
