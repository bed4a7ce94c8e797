//! `relay --h2 --upstream-http1` and `relay --h3 --upstream-http1`: the HTTP/2-to-HTTP/1.1 and
//! HTTP/3-to-HTTP/1.1 floors (issues 15 and 17).
//!
//! Every HTTP/2 stream (or HTTP/3 request stream: the client side is a [`ClientSide`], written
//! once for both) the relay serves is sent as one HTTP/1.1 request on a keep-alive
//! connection taken from a pool of plain TCP connections to the upstream, one pool per client
//! connection: an idle connection when there is one, else a new one (never a wait); it goes back
//! to the pool once its response has ended cleanly. What is done, and nothing more:
//!
//! - the request head: `METHOD path HTTP/1.1`, `host` from `:authority` (else the client's
//!   `host` field), then the client's fields as they came (the `h2` and `h3` crates have already
//!   refused the connection-specific ones); a body is framed by the client's `content-length`
//!   when it sent one, else chunked, with the client's trailers as the chunked trailer section
//!   (a body with a `content-length` carries no trailers in HTTP/1.1: they are dropped);
//! - the request is written whole (each DATA frame as it comes, HTTP/2 capacity released once
//!   it is written) before the response is read: no full-duplex streaming of a request body;
//! - the response head is parsed with `httparse`; 1xx interim responses are skipped (101 is an
//!   error), the connection-specific fields (`connection`, `keep-alive`, `proxy-connection`,
//!   `transfer-encoding`, `upgrade`, `te`) are dropped, every other field is relayed;
//! - the response body is relayed by `content-length`, de-chunked (a chunked trailer section
//!   becomes the stream's trailers), or read until the origin closes (that connection
//!   is then not reused); HEAD, 204 and 304 responses have none.
//!
//! Errors: a failed connect, a failed write, or a response head that is malformed, too large
//! (64 KiB) or cut short is answered `502` (empty body); a failure after the head was relayed
//! (a bad chunk, EOF inside the body, the client resetting) resets the stream; the upstream
//! connection is then closed, never reused. No routing, no rewrites, no timers, no retry (a
//! pooled connection the origin closed while idle fails its next request with a 502).
//!
//! Allocation: the pool's connections keep their two buffers (the request head is built in one,
//! the response read into the other, 16 KiB growing to 64 KiB only for large heads); per stream
//! what the `h2` (or `h3`) crate allocates, plus a `Bytes` copy of each relayed piece of response
//! body.

use std::cell::RefCell;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::Framing;
use crate::client::{has_token, last_token_is, parse_u64};

/// The response buffer's initial size; also the largest read of body bytes.
const BUF: usize = 16 * 1024;
/// Largest response head (and chunk-size line, and trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

/// One keep-alive connection to the upstream with its buffers (they stay with it in the pool).
struct UpConn {
    s: TcpStream,
    /// The request being written (head, then each body piece).
    out: Vec<u8>,
    /// Response bytes `inb[lo..hi]` read and not yet used.
    inb: Vec<u8>,
    lo: usize,
    hi: usize,
}

impl UpConn {
    /// Reads more response bytes, compacting or growing the buffer (up to `limit`) when full.
    /// Returns the count read; 0 is EOF.
    async fn fill(&mut self, limit: usize) -> io::Result<usize> {
        if self.lo == self.hi {
            self.lo = 0;
            self.hi = 0;
        }
        if self.hi == self.inb.len() {
            if self.lo > 0 {
                self.inb.copy_within(self.lo..self.hi, 0);
                self.hi -= self.lo;
                self.lo = 0;
            } else if self.inb.len() < limit {
                self.inb.resize((self.inb.len() * 2).min(limit), 0);
            } else {
                return Err(io::Error::other("response head or chunk line too large"));
            }
        }
        let n = self.s.read(&mut self.inb[self.hi..]).await?;
        self.hi += n;
        Ok(n)
    }

    /// [`fill`](Self::fill) where EOF is an error (the message is not complete).
    async fn need(&mut self, limit: usize) -> Result<(), Bad> {
        match self.fill(limit).await {
            Ok(0) | Err(_) => Err(Bad),
            Ok(_) => Ok(()),
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.inb[self.lo..self.hi]
    }
}

/// Something went wrong with the upstream exchange (the stream gets a 502 or a reset).
#[derive(Debug)]
struct Bad;

/// A client connection's pool of idle keep-alive connections to the upstream.
#[derive(Clone)]
pub struct Pool {
    idle: Rc<RefCell<Vec<UpConn>>>,
    upstream: SocketAddr,
}

impl Pool {
    pub fn new(upstream: SocketAddr) -> Self {
        Self { idle: Rc::new(RefCell::new(Vec::new())), upstream }
    }

    /// An idle connection, or a new one when all are busy.
    async fn take(&self) -> io::Result<UpConn> {
        let idle = self.idle.borrow_mut().pop();
        if let Some(c) = idle {
            return Ok(c);
        }
        let s = TcpStream::connect(self.upstream).await?;
        let _ = s.set_nodelay(true);
        Ok(UpConn { s, out: Vec::with_capacity(1024), inb: vec![0; BUF], lo: 0, hi: 0 })
    }

    fn put(&self, c: UpConn) {
        self.idle.borrow_mut().push(c);
    }
}

/// The client side of one relayed request: an HTTP/2 stream ([`H2Side`]) or an HTTP/3 request
/// stream ([`crate::relay_h3::H3Side`]). An `Err(())` is that side's failure (the stream is then
/// reset or abandoned; there is nothing more to say to it).
pub(crate) trait ClientSide {
    /// The request is known to have no body and no trailers.
    fn body_is_empty(&self) -> bool;
    /// The next piece of the request body; `None` at its end.
    async fn data(&mut self) -> Option<Result<Bytes, ()>>;
    /// `n` bytes of the request body were forwarded (HTTP/2 flow control; QUIC's is released as
    /// the stream is read).
    fn release(&mut self, n: usize);
    /// The request's trailers, once the body has ended.
    async fn trailers(&mut self) -> Result<Option<HeaderMap>, ()>;
    /// Sends the response head; `end`: the response has no body (the stream ends with it).
    async fn send_head(&mut self, response: http::Response<()>, end: bool) -> Result<(), ()>;
    /// Sends a piece of the response body (copied out of the caller's buffer).
    async fn send_body(&mut self, d: &[u8]) -> Result<(), ()>;
    /// Ends the response body, with trailers or without.
    async fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), ()>;
    /// Resets the stream: the client failed while its request was read, or the upstream failed
    /// after the response head was sent.
    fn reset(&mut self, why: Side);
}

/// An HTTP/2 stream served by the `h2` crate, as a [`ClientSide`].
pub(crate) struct H2Side {
    body: RecvStream,
    respond: SendResponse<Bytes>,
    tx: Option<SendStream<Bytes>>,
}

impl ClientSide for H2Side {
    fn body_is_empty(&self) -> bool {
        self.body.is_end_stream()
    }

    async fn data(&mut self) -> Option<Result<Bytes, ()>> {
        self.body.data().await.map(|d| d.map_err(|_| ()))
    }

    fn release(&mut self, n: usize) {
        let _ = self.body.flow_control().release_capacity(n);
    }

    async fn trailers(&mut self) -> Result<Option<HeaderMap>, ()> {
        self.body.trailers().await.map_err(|_| ())
    }

    async fn send_head(&mut self, response: http::Response<()>, end: bool) -> Result<(), ()> {
        let tx = self.respond.send_response(response, end).map_err(|_| ())?;
        if !end {
            self.tx = Some(tx);
        }
        Ok(())
    }

    async fn send_body(&mut self, mut d: &[u8]) -> Result<(), ()> {
        let tx = self.tx.as_mut().ok_or(())?;
        while !d.is_empty() {
            tx.reserve_capacity(d.len());
            let cap = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(c)) if c > 0 => c,
                Some(Ok(_)) => continue,
                _ => return Err(()),
            };
            let n = cap.min(d.len());
            tx.send_data(Bytes::copy_from_slice(&d[..n]), false).map_err(|_| ())?;
            d = &d[n..];
        }
        Ok(())
    }

    async fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), ()> {
        let Some(tx) = self.tx.as_mut() else { return Ok(()) };
        match trailers {
            Some(t) => tx.send_trailers(t),
            None => tx.send_data(Bytes::new(), true),
        }
        .map_err(|_| ())
    }

    fn reset(&mut self, why: Side) {
        let reason = match why {
            Side::Client => Reason::CANCEL,
            Side::Upstream => Reason::INTERNAL_ERROR,
        };
        match self.tx.as_mut() {
            Some(tx) => tx.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
    }
}

/// Relays one HTTP/2 stream as an HTTP/1.1 exchange on a pooled connection (see the module docs).
pub async fn stream(req: http::Request<RecvStream>, respond: SendResponse<Bytes>, pool: Pool) {
    let (parts, body) = req.into_parts();
    exchange(parts, H2Side { body, respond, tx: None }, pool).await;
}

/// Relays one request (`parts`, its body and trailers from `client`) as an HTTP/1.1 exchange on
/// a pooled connection, and the response back to `client`.
pub(crate) async fn exchange<C: ClientSide>(parts: http::request::Parts, mut client: C, pool: Pool) {
    let head_method = parts.method == http::Method::HEAD;
    let Ok(mut c) = pool.take().await else {
        return bad_gateway(&mut client).await;
    };
    match write_request(&mut c, &parts, &mut client).await {
        Ok(()) => {}
        Err(Side::Client) => return client.reset(Side::Client),
        Err(Side::Upstream) => return bad_gateway(&mut client).await,
    }
    let Ok(head) = read_head(&mut c, head_method).await else {
        return bad_gateway(&mut client).await;
    };
    let end = head.framing == Framing::None;
    if client.send_head(head.response, end).await.is_err() {
        return;
    }
    if !end && relay_body(&mut c, &mut client, head.framing).await.is_err() {
        client.reset(Side::Upstream);
        return;
    }
    if head.reusable && c.lo == c.hi {
        pool.put(c);
    }
}

/// Answers `502 Bad Gateway` with an empty body.
pub(crate) async fn bad_gateway<C: ClientSide>(client: &mut C) {
    let mut r = http::Response::new(());
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    let _ = client.send_head(r, true).await;
}

/// Which side failed.
pub(crate) enum Side {
    Client,
    Upstream,
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head and body (see the module docs for the framing).
async fn write_request<C: ClientSide>(c: &mut UpConn, parts: &http::request::Parts, body: &mut C) -> Result<(), Side> {
    let out = &mut c.out;
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(a) = authority {
        push_field(out, b"host", a.as_str().as_bytes());
    }
    for (k, v) in &parts.headers {
        if authority.is_some() && k == HOST {
            continue;
        }
        push_field(out, k.as_str().as_bytes(), v.as_bytes());
    }
    let end = body.body_is_empty();
    let chunked = !end && !parts.headers.contains_key(CONTENT_LENGTH);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !end {
        while let Some(d) = body.data().await {
            let d = d.map_err(|_| Side::Client)?;
            if d.is_empty() {
                continue;
            }
            if chunked {
                let _ = write!(out, "{:x}\r\n", d.len());
                out.extend_from_slice(&d);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&d);
            }
            c.s.write_all(out).await.map_err(|_| Side::Upstream)?;
            out.clear();
            body.release(d.len());
        }
        if chunked {
            out.extend_from_slice(b"0\r\n");
            if let Some(t) = body.trailers().await.map_err(|_| Side::Client)? {
                for (k, v) in &t {
                    push_field(out, k.as_str().as_bytes(), v.as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    if !out.is_empty() {
        c.s.write_all(out).await.map_err(|_| Side::Upstream)?;
        out.clear();
    }
    Ok(())
}

/// A parsed response head.
struct Head {
    response: http::Response<()>,
    framing: Framing,
    /// The connection may carry another request once this response has ended.
    reusable: bool,
}

/// Reads and parses the response head, skipping 1xx interim responses.
async fn read_head(c: &mut UpConn, head_method: bool) -> Result<Head, Bad> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut fields);
        match r.parse(c.buffered()) {
            Ok(httparse::Status::Complete(n)) => {
                let code = r.code.ok_or(Bad)?;
                if (100..200).contains(&code) {
                    if code == 101 {
                        return Err(Bad);
                    }
                    c.lo += n;
                    continue;
                }
                let head = head_of(&r, code, head_method)?;
                c.lo += n;
                return Ok(head);
            }
            Ok(httparse::Status::Partial) => c.need(MAX_HEAD).await?,
            Err(_) => return Err(Bad),
        }
    }
}

/// Fields that mean something to one HTTP/1.1 connection only: not relayed over HTTP/2.
fn connection_specific(name: &HeaderName) -> bool {
    matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te")
}

fn head_of(r: &httparse::Response, code: u16, head_method: bool) -> Result<Head, Bad> {
    let mut response = http::Response::new(());
    *response.status_mut() = StatusCode::from_u16(code).map_err(|_| Bad)?;
    let mut reusable = r.version == Some(1);
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Bad)?;
        if name == CONTENT_LENGTH {
            let v = parse_u64(f.value).ok_or(Bad)?;
            if length.is_some_and(|l| l != v) {
                return Err(Bad);
            }
            length = Some(v);
        } else if name == TRANSFER_ENCODING {
            if te.is_some() {
                return Err(Bad);
            }
            te = Some(last_token_is(f.value, b"chunked"));
        } else if name == CONNECTION && has_token(f.value, b"close") {
            reusable = false;
        }
        if connection_specific(&name) {
            continue;
        }
        response.headers_mut().append(name, HeaderValue::from_bytes(f.value).map_err(|_| Bad)?);
    }
    let framing = match (te, length) {
        _ if head_method || code == 204 || code == 304 => Framing::None,
        (Some(_), Some(_)) | (Some(false), None) => return Err(Bad),
        (Some(true), None) => Framing::Chunked,
        (None, Some(0)) => Framing::None,
        (None, Some(l)) => Framing::Length(l),
        (None, None) => {
            reusable = false;
            Framing::UntilClose
        }
    };
    Ok(Head { response, framing, reusable })
}

/// Relays the response body to `tx` and ends the stream (with trailers when a chunked body had
/// some).
async fn relay_body<C: ClientSide>(c: &mut UpConn, tx: &mut C, framing: Framing) -> Result<(), Bad> {
    match framing {
        Framing::None => {}
        Framing::Length(n) => relay_exactly(c, tx, n).await?,
        Framing::UntilClose => loop {
            if c.lo == c.hi {
                match c.fill(BUF).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => return Err(Bad),
                }
            }
            tx.send_body(c.buffered()).await.map_err(|_| Bad)?;
            c.lo = c.hi;
        },
        Framing::Chunked => return dechunk(c, tx).await,
    }
    tx.end(None).await.map_err(|_| Bad)
}

/// Relays the next `n` body bytes.
async fn relay_exactly<C: ClientSide>(c: &mut UpConn, tx: &mut C, mut n: u64) -> Result<(), Bad> {
    while n > 0 {
        if c.lo == c.hi {
            c.need(BUF).await?;
        }
        let take = n.min((c.hi - c.lo) as u64) as usize;
        tx.send_body(&c.buffered()[..take]).await.map_err(|_| Bad)?;
        c.lo += take;
        n -= take as u64;
    }
    Ok(())
}

/// A chunk-size line without its CRLF: hex digits (at most 15), then nothing, or an extension
/// after `;` (ignored), optionally after spaces or tabs.
fn chunk_size(line: &[u8]) -> Result<u64, Bad> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(Bad);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Bad);
    }
    let s = std::str::from_utf8(&line[..digits]).map_err(|_| Bad)?;
    u64::from_str_radix(s, 16).map_err(|_| Bad)
}

/// De-chunks the response body to `tx`; the trailer section, if any, becomes the stream's
/// trailers.
async fn dechunk<C: ClientSide>(c: &mut UpConn, tx: &mut C) -> Result<(), Bad> {
    loop {
        let line = loop {
            if let Some(i) = c.buffered().windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            c.need(MAX_HEAD).await?;
        };
        let size = chunk_size(&c.buffered()[..line])?;
        c.lo += line + 2;
        if size == 0 {
            break;
        }
        relay_exactly(c, tx, size).await?;
        while c.hi - c.lo < 2 {
            c.need(MAX_HEAD).await?;
        }
        if &c.buffered()[..2] != b"\r\n" {
            return Err(Bad);
        }
        c.lo += 2;
    }
    loop {
        if c.buffered().starts_with(b"\r\n") {
            c.lo += 2;
            return tx.end(None).await.map_err(|_| Bad);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::parse_headers(c.buffered(), &mut fields) {
            Ok(httparse::Status::Complete((n, fields))) => {
                let mut trailers = HeaderMap::new();
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Bad)?;
                    if !connection_specific(&name) {
                        trailers.append(name, HeaderValue::from_bytes(f.value).map_err(|_| Bad)?);
                    }
                }
                c.lo += n;
                return tx.end(Some(trailers)).await.map_err(|_| Bad);
            }
            Ok(httparse::Status::Partial) => c.need(MAX_HEAD).await?,
            Err(_) => return Err(Bad),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        assert_eq!(chunk_size(b"10;name=value").unwrap(), 16);
        assert_eq!(chunk_size(b"10 ;x").unwrap(), 16);
        for bad in [&b""[..], b"zz", b"-1", b"1 2", b"1000000000000000", b";x"] {
            assert!(chunk_size(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    fn parse(head: &[u8], head_method: bool) -> Result<Head, Bad> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut fields);
        assert!(r.parse(head).unwrap().is_complete());
        let code = r.code.unwrap();
        head_of(&r, code, head_method)
    }

    #[test]
    fn response_heads() {
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nConnection: keep-alive\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.reusable);
        assert_eq!(h.response.headers()["x-a"], "b");
        assert!(!h.response.headers().contains_key("connection"));
        let h = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.reusable);
        assert!(!h.response.headers().contains_key("transfer-encoding"));
        let h = parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!(h.framing, Framing::None);
        let h = parse(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::None, true));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(parse(bad, false).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
