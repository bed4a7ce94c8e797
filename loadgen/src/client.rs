//! The HTTP/1.1 client hot path: one keep-alive connection, one request at a time.
//!
//! Cheap on purpose, so the generator costs less CPU per request than what it measures:
//! requests are serialized once before the run ([`Request`]); a [`Conn`] owns one read buffer for
//! its whole life; response heads are parsed by `httparse` into a stack array of headers; bodies
//! (Content-Length, chunked or until-close) are skipped in place by [`BodySkipper`] without
//! copying; the per-request timeout is one pinned `Sleep` per connection, reset per request. No
//! heap allocation per request in steady state.
//!
//! The connection's byte stream is a [`Stream`] opened by a [`Connector`] (plain TCP, or TLS for
//! `https://`; see [`crate::transport`]): this module is the HTTP/1.1 protocol over it, and does
//! not care which. `--new-connection-every N` closes the connection after N responses, so the
//! next request pays a new connect (and handshake), reported through [`Conn::take_handshake`].
//!
//! Errors are classified by where they happened ([`ErrorKind`]: connect, read, write, timeout,
//! status, handshake) and why ([`Cause`]: refused, reset, EOF, parse, timeout, other, and for
//! TLS certificate, alert, tls).

use crate::body::{BodySkipper, Framing};
use crate::transport::{Connector, Handshake, Stream};
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

/// Read buffer per connection; a response head must fit in it.
const READ_BUF: usize = 32 * 1024;
/// Response headers parsed per response (stack array).
const MAX_HEADERS: usize = 64;

/// Where a request failed. `Status` is a response with status >= 400; `Handshake` a TLS
/// handshake that failed (or timed out) after TCP connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Connect = 0,
    Read = 1,
    Write = 2,
    Timeout = 3,
    Status = 4,
    Handshake = 5,
    /// HTTP/2: the server sent GOAWAY (or the connection ended) before the stream completed.
    GoAway = 6,
    /// HTTP/2: the stream was reset (RST_STREAM) by the server.
    Reset = 7,
    /// HTTP/2: a protocol or flow-control error (either side), e.g. a server that is not HTTP/2.
    Protocol = 8,
    /// HTTP/2 and HTTP/3: the request timed out while its body waited for the server's
    /// flow-control window (the server stopped granting capacity), not for the server's answer.
    FlowStall = 9,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Connect,
        ErrorKind::Read,
        ErrorKind::Write,
        ErrorKind::Timeout,
        ErrorKind::Status,
        ErrorKind::Handshake,
        ErrorKind::GoAway,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::FlowStall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Read => "read",
            ErrorKind::Write => "write",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Handshake => "handshake",
            ErrorKind::GoAway => "goaway",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::FlowStall => "flow_stall",
        }
    }
}

/// Why a transport error happened. `Certificate`: the server's certificate was rejected (unknown
/// issuer, wrong name, expired…); `Alert`: the peer sent a fatal TLS alert; `Tls`: any other TLS
/// protocol failure (not TLS at all, a corrupt record, nothing in common to negotiate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Refused = 0,
    Reset = 1,
    Eof = 2,
    Parse = 3,
    Timeout = 4,
    Other = 5,
    Certificate = 6,
    Alert = 7,
    Tls = 8,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Refused,
        Cause::Reset,
        Cause::Eof,
        Cause::Parse,
        Cause::Timeout,
        Cause::Other,
        Cause::Certificate,
        Cause::Alert,
        Cause::Tls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Reset => "reset",
            Cause::Eof => "eof",
            Cause::Parse => "parse",
            Cause::Timeout => "timeout",
            Cause::Other => "other",
            Cause::Certificate => "certificate",
            Cause::Alert => "alert",
            Cause::Tls => "tls",
        }
    }

    /// The cause of an I/O error; over TLS, rustls' error when it carries one.
    #[cold]
    pub fn of(e: &io::Error) -> Cause {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => return Cause::Certificate,
            Some(rustls::Error::AlertReceived(_)) => return Cause::Alert,
            Some(_) => return Cause::Tls,
            None => {}
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Cause::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => Cause::Reset,
            io::ErrorKind::UnexpectedEof => Cause::Eof,
            io::ErrorKind::TimedOut => Cause::Timeout,
            _ => Cause::Other,
        }
    }
}

/// A failed request: where and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqError {
    pub kind: ErrorKind,
    pub cause: Cause,
}

impl ReqError {
    pub fn new(kind: ErrorKind, cause: Cause) -> Self {
        Self { kind, cause }
    }
}

/// A pre-serialized request.
#[derive(Clone, Debug)]
pub struct Request {
    pub bytes: Vec<u8>,
    /// HEAD: the response has no body whatever its headers say.
    pub head: bool,
    /// The same request for HTTP/2 (`None` when the method, path or a header is not valid there).
    pub h2: Option<H2Request>,
}

/// A request's HTTP/2 parts, validated once before the run (cloning them per request is
/// infallible).
#[derive(Clone, Debug)]
pub struct H2Request {
    pub method: http::Method,
    pub uri: http::Uri,
    /// Without `Host` (it is `:authority`) and without HTTP/1.1 connection-specific headers.
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl H2Request {
    /// Builds the HTTP/2 form of `method path` on `scheme://authority`; `None` if invalid.
    fn new(scheme: &str, authority: &str, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Option<Self> {
        let method = http::Method::from_bytes(method.as_bytes()).ok()?;
        let uri: http::Uri = format!("{scheme}://{authority}{path}").parse().ok()?;
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).ok()?;
            if matches!(name.as_str(), "host" | "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te") {
                continue;
            }
            map.append(name, http::HeaderValue::from_str(v).ok()?);
        }
        if !body.is_empty() && !map.contains_key(http::header::CONTENT_LENGTH) {
            map.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        }
        Some(Self { method, uri, headers: map, body: bytes::Bytes::copy_from_slice(body) })
    }

    /// A fresh `http::Request` for one stream.
    pub fn build(&self) -> http::Request<()> {
        let mut r = http::Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// Everything needed to build requests: parsed from `--url`, `-H`, `--body…`, `--targets`.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host[:port]` as given, for the Host header.
    pub authority: String,
    /// The host alone (IPv6 in brackets), for TLS's server name.
    pub host: String,
    pub path: String,
    /// `https://`: TLS.
    pub tls: bool,
}

impl Target {
    /// Parses `http://host:port/path` or `https://…` (default ports 80 and 443). The host must be
    /// an IP address or `localhost` (this tool only aims at the local machine; no DNS).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (r, false),
            (None, Some(r)) => (r, true),
            (None, None) => return Err(format!("url '{url}' must start with http:// or https://")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("url '{url}' has no host"));
        }
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => authority.contains(':'),
        };
        let with_port = if has_port { authority.to_string() } else { format!("{authority}:{}", if tls { 443 } else { 80 }) };
        let host = match with_port.rfind(':') {
            Some(i) => with_port[..i].to_string(),
            None => with_port.clone(),
        };
        let with_port = with_port.replacen("localhost:", "127.0.0.1:", 1);
        let addr: SocketAddr =
            with_port.parse().map_err(|_| format!("url '{url}': host must be an IP address or localhost, with an optional port"))?;
        Ok(Target { addr, authority: authority.to_string(), host, path: path.to_string(), tls })
    }

    /// The URL as used: `http://authority/path` or `https://…`.
    pub fn url(&self) -> String {
        format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.authority, self.path)
    }

    /// Serializes one request for `method path` with the extra headers and body.
    pub fn request(&self, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Request {
        let mut b = Vec::with_capacity(128 + body.len());
        b.extend_from_slice(method.as_bytes());
        b.push(b' ');
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(b" HTTP/1.1\r\n");
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        if !has("host") {
            b.extend_from_slice(b"Host: ");
            b.extend_from_slice(self.authority.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        for (k, v) in headers {
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(b": ");
            b.extend_from_slice(v.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() && !has("content-length") && !has("transfer-encoding") {
            b.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(body);
        let h2 = H2Request::new(if self.tls { "https" } else { "http" }, &self.authority, method, path, headers, body);
        Request { bytes: b, head: method.eq_ignore_ascii_case("HEAD"), h2 }
    }
}

/// A parsed response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head, including the final CRLF CRLF.
    pub len: usize,
    pub framing: Framing,
    /// The server will close (or wants us to) after this response.
    pub close: bool,
}

/// Parses a response head from the front of `buf`: `Ok(None)` when more bytes are needed.
/// `head_request` is true when the request was HEAD (no body whatever the headers say).
pub fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, Cause> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Cause::Parse),
    };
    let status = resp.code.ok_or(Cause::Parse)?;
    let mut close = resp.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_u64(h.value).ok_or(Cause::Parse)?;
            if length.is_some_and(|l| l != v) {
                return Err(Cause::Parse);
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            // The last coding decides: chunked must be final to delimit the body.
            chunked = last_token_is(h.value, b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, b"close") {
                close = true;
            } else if has_token(h.value, b"keep-alive") {
                close = false;
            }
        }
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if te {
        if chunked { Framing::Chunked } else { Framing::UntilClose }
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok(Some(Head { status, len, framing, close }))
}

/// Strict decimal (no sign, no spaces, at most 18 digits).
pub fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64))
}

/// True if the comma-separated header value contains `token` (case-insensitive).
pub fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// True if the last comma-separated element is `token` (case-insensitive).
pub fn last_token_is(v: &[u8], token: &[u8]) -> bool {
    v.rsplit(|&b| b == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// One client connection, reconnected on demand after errors, `Connection: close`, or every
/// `new_connection_every` responses.
pub struct Conn {
    addr: SocketAddr,
    connector: Connector,
    stream: Option<Stream>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Close after this many responses on one connection (0: never).
    every: u64,
    /// Responses on the current connection.
    served: u64,
    /// The set-up of the current connection, until taken.
    handshake: Option<Handshake>,
}

impl Conn {
    /// A connection to `addr` through `connector` (not yet connected); each request (including
    /// connect and handshake) is bounded by `timeout`. `every`: a new connection after that many
    /// responses (0: keep it as long as the server does).
    pub fn new(addr: SocketAddr, connector: Connector, timeout: Duration, every: u64) -> Self {
        Self {
            addr,
            connector,
            stream: None,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            every,
            served: 0,
            handshake: None,
        }
    }

    /// True if a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// The set-up (TCP connect + TLS handshake) of the connection opened since the last call, if
    /// one was: the caller attributes it to the request that waited for it.
    #[inline]
    pub fn take_handshake(&mut self) -> Option<Handshake> {
        self.handshake.take()
    }

    /// Connects now (also used to open connections before the measured run).
    pub async fn connect(&mut self) -> Result<(), ReqError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        self.sleep.as_mut().reset(deadline);
        let tcp_done = Cell::new(false);
        let r = tokio::select! {
            biased;
            r = self.connector.connect(self.addr, &tcp_done) => r,
            _ = &mut self.sleep => {
                let kind = if tcp_done.get() { ErrorKind::Handshake } else { ErrorKind::Connect };
                return Err(ReqError::new(kind, Cause::Timeout));
            }
        };
        let (s, hs) = r?;
        self.stream = Some(s);
        self.handshake = Some(hs);
        self.served = 0;
        self.start = 0;
        self.end = 0;
        Ok(())
    }

    /// Sends `req` and reads the whole response. Returns when the connection began on it (the
    /// start of the connection set-up it needed, else its write), the instant the request was
    /// actually written (after any set-up; the end of a failed one), and the status or error. On
    /// any error the connection is dropped; the next call reconnects.
    pub async fn send(&mut self, req: &Request) -> (Instant, Instant, Result<u16, ReqError>) {
        let ready = if self.stream.is_none() {
            let ready = Instant::now();
            if let Err(e) = self.connect().await {
                return (ready, Instant::now(), Err(e));
            }
            Some(ready)
        } else {
            None
        };
        let sent = Instant::now();
        let ready = ready.unwrap_or(sent);
        let deadline = tokio::time::Instant::from_std(sent + self.timeout);
        self.sleep.as_mut().reset(deadline);
        let r = {
            let Conn { stream, buf, start, end, sleep, .. } = self;
            let Some(stream) = stream.as_mut() else {
                return (ready, sent, Err(ReqError::new(ErrorKind::Connect, Cause::Other)));
            };
            // `biased`: poll the I/O first, no random branch order per request.
            tokio::select! {
                biased;
                r = roundtrip(stream, buf, start, end, req) => r,
                _ = sleep.as_mut() => Err(ReqError::new(ErrorKind::Timeout, Cause::Timeout)),
            }
        };
        match r {
            Ok((status, close)) => {
                self.served += 1;
                if close || (self.every != 0 && self.served >= self.every) {
                    // Churn closes without TLS close_notify (FIN only), as many clients do.
                    self.stream = None;
                }
                (ready, sent, Ok(status))
            }
            Err(e) => {
                self.stream = None;
                (ready, sent, Err(e))
            }
        }
    }
}

/// Writes `req`, then reads and skips one response. Returns (status, close-after).
async fn roundtrip(
    stream: &mut Stream,
    buf: &mut [u8],
    start: &mut usize,
    end: &mut usize,
    req: &Request,
) -> Result<(u16, bool), ReqError> {
    if let Err(e) = stream.write_all(&req.bytes).await {
        return Err(ReqError::new(ErrorKind::Write, Cause::of(&e)));
    }
    // TLS: push out what rustls still buffers (a no-op branch for TCP).
    if stream.is_tls()
        && let Err(e) = stream.flush().await
    {
        return Err(ReqError::new(ErrorKind::Write, Cause::of(&e)));
    }
    // Head(s): 1xx interim responses are skipped.
    let head = loop {
        match parse_head(&buf[*start..*end], req.head) {
            Ok(Some(h)) => {
                *start += h.len;
                if (100..200).contains(&h.status) && h.status != 101 {
                    continue;
                }
                break h;
            }
            Ok(None) => {}
            Err(c) => return Err(ReqError::new(ErrorKind::Read, c)),
        }
        if *end == buf.len() {
            if *start == 0 {
                // Head larger than the buffer.
                return Err(ReqError::new(ErrorKind::Read, Cause::Parse));
            }
            buf.copy_within(*start..*end, 0);
            *end -= *start;
            *start = 0;
        }
        read_more(stream, buf, start, end).await?;
    };
    let mut body = BodySkipper::new(head.framing);
    loop {
        let used = body.feed(&buf[*start..*end]).map_err(|_| ReqError::new(ErrorKind::Read, Cause::Parse))?;
        *start += used;
        if body.is_done() {
            break;
        }
        // Everything buffered was body: reuse the whole buffer.
        *start = 0;
        *end = 0;
        match read_more(stream, buf, start, end).await {
            Ok(()) => {}
            Err(e) if e.cause == Cause::Eof && body.ends_at_close() => break,
            Err(e) => return Err(e),
        }
    }
    if *start == *end {
        *start = 0;
        *end = 0;
    }
    Ok((head.status, head.close))
}

/// Reads at least one byte into `buf[end..]`; EOF is an error.
async fn read_more(stream: &mut Stream, buf: &mut [u8], start: &mut usize, end: &mut usize) -> Result<(), ReqError> {
    if *start == *end {
        *start = 0;
        *end = 0;
    }
    match stream.read(&mut buf[*end..]).await {
        Ok(0) => Err(ReqError::new(ErrorKind::Read, Cause::Eof)),
        Ok(n) => {
            *end += n;
            Ok(())
        }
        Err(e) => Err(ReqError::new(ErrorKind::Read, Cause::of(&e))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_head() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let h = parse_head(r, false).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.len, r.len() - 5);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(!h.close);
    }

    #[test]
    fn partial_head_needs_more_at_every_split() {
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        for cut in 0..r.len() {
            assert_eq!(parse_head(&r[..cut], false), Ok(None), "cut {cut}");
        }
        let h = parse_head(r, false).unwrap().unwrap();
        assert_eq!((h.status, h.framing, h.close), (404, Framing::Length(0), true));
    }

    #[test]
    fn chunked_wins_and_head_or_204_have_no_body() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parse_head(r, false).unwrap().unwrap().framing, Framing::Chunked);
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(parse_head(r, true).unwrap().unwrap().framing, Framing::None);
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_head(r, false).unwrap().unwrap().framing, Framing::None);
        let r = b"HTTP/1.0 200 OK\r\n\r\n";
        let h = parse_head(r, false).unwrap().unwrap();
        assert_eq!((h.framing, h.close), (Framing::UntilClose, true));
    }

    #[test]
    fn bad_heads_are_parse_errors() {
        assert_eq!(parse_head(b"HTTX/1.1 200 OK\r\n\r\n", false), Err(Cause::Parse));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_head(r, false), Err(Cause::Parse));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(parse_head(r, false), Err(Cause::Parse));
    }

    #[test]
    fn url_parsing() {
        let t = Target::parse("http://127.0.0.1:9000/a?b=1").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:9000");
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:9000", "/a?b=1"));
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.addr.to_string().as_str(), t.path.as_str()), ("127.0.0.1:80", "/"));
        let t = Target::parse("http://[::1]:8080/").unwrap();
        assert_eq!(t.addr.to_string(), "[::1]:8080");
        assert_eq!((t.host.as_str(), t.tls), ("[::1]", false));
        let t = Target::parse("https://localhost/x").unwrap();
        assert_eq!((t.addr.to_string().as_str(), t.host.as_str(), t.tls), ("127.0.0.1:443", "localhost", true));
        assert_eq!(t.url(), "https://localhost/x");
        let t = Target::parse("https://127.0.0.1:8443").unwrap();
        assert_eq!((t.addr.to_string().as_str(), t.host.as_str(), t.path.as_str()), ("127.0.0.1:8443", "127.0.0.1", "/"));
        assert!(Target::parse("ftp://127.0.0.1/").is_err());
        assert!(Target::parse("http://example.com/").is_err());
        assert!(Target::parse("https://example.com/").is_err());
    }

    #[test]
    fn request_serialization() {
        let t = Target::parse("http://127.0.0.1:9000/").unwrap();
        let r = t.request("POST", "/x", &[("X-A".into(), "1".into())], b"abc");
        assert_eq!(r.bytes, b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(!r.head);
        assert!(t.request("HEAD", "/", &[], b"").head);
    }
}
