//! A raw HTTP/1.1 client over blocking `std::net` with its own read buffer: exact bytes out,
//! responses parsed strictly enough to see framing, keep-alive requests, admin API calls.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::bytes::{find, show};

/// Read/write timeout of every test socket: long enough for a loaded 2-core box, short enough that
/// a hung proxy fails a test in seconds rather than hanging the suite.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Read/write timeout of a client that waits for slow responses (the control tests' 2 s `GET
/// /slow`, the admin API) with room to spare on a loaded machine.
pub const LONG_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How a response body was delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length,
    Chunked,
    Close,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// 0 or 1 (HTTP/1.x minor version).
    pub version: u8,
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
    /// Exact bytes of the whole response, head and body framing.
    pub raw: Vec<u8>,
    pub framing: Framing,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    /// `Connection: close` among the headers (token match, case-insensitive).
    pub fn says_close(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// How a request on a keep-alive connection ended without a response.
#[derive(Debug)]
pub enum Failure {
    /// The connection closed before any response byte (a connection the proxy closed while
    /// idle; the request was never read). Real clients retry these.
    ClosedBeforeResponse,
    /// Anything else: a partial response, a reset mid-response, a timeout.
    Broken(String),
}

/// A raw client connection with its own read buffer, over TCP or over TLS (`Client::over`).
pub struct Client<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
    /// A read saw the proxy close the connection (EOF or reset).
    closed: bool,
}

impl<S: Read + Write> Client<S> {
    /// A client over an established stream (a TLS one, say).
    pub fn over(stream: S) -> Client<S> {
        Client { stream, buf: Vec::new(), closed: false }
    }
}

impl Client {
    /// Connects with `IO_TIMEOUT` for the connect, every read and every write; panics if the
    /// connection is refused.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        Self::connect_with_timeout(addr, IO_TIMEOUT)
    }

    /// Like `connect`, with `timeout` instead of `IO_TIMEOUT`.
    #[track_caller]
    pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> Client {
        let stream = TcpStream::connect_timeout(&addr, timeout).expect("connect to proxy");
        stream.set_read_timeout(Some(timeout)).unwrap();
        stream.set_write_timeout(Some(timeout)).unwrap();
        let _ = stream.set_nodelay(true);
        Client { stream, buf: Vec::new(), closed: false }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }
}

impl<S: Read + Write> Client<S> {
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to proxy");
    }

    /// Like `send`, but a write error (the proxy closed early) is returned, not a panic.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into the buffer. Ok(false) on EOF or reset.
    fn more(&mut self) -> Result<bool, String> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
                    self.closed = true;
                    return Ok(false);
                }
                Err(e) => {
                    return Err(format!("read from proxy failed ({e}); buffered so far:\n    {}", show(&self.buf)));
                }
            }
        }
    }

    /// Reads one response to a non-HEAD request (1xx interim responses are returned as-is).
    pub fn read_response(&mut self) -> Result<Response, String> {
        self.read_response_to("GET")
    }

    /// Reads one response, using the request method to know whether a body follows.
    pub fn read_response_to(&mut self, method: &str) -> Result<Response, String> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.more()? {
                return Err(format!("connection closed before a complete response head; got:\n    {}", show(&self.buf)));
            }
        };
        let (status, reason, version, headers) = {
            let mut hdrs = [httparse::EMPTY_HEADER; 128];
            let mut resp = httparse::Response::new(&mut hdrs);
            match resp.parse(&self.buf[..head_end]) {
                Ok(httparse::Status::Complete(_)) => {}
                other => {
                    return Err(format!("unparseable response head ({other:?}):\n    {}", show(&self.buf[..head_end])));
                }
            }
            let headers: Vec<(String, String)> =
                resp.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
            (resp.code.unwrap_or(0), resp.reason.unwrap_or("").to_string(), resp.version.unwrap_or(1), headers)
        };
        let mut r = Response { status, reason, version, headers, body: Vec::new(), raw: Vec::new(), framing: Framing::None };
        let mut pos = head_end;
        let no_body = method.eq_ignore_ascii_case("HEAD") || (100..200).contains(&status) || status == 204 || status == 304;
        let chunked = r.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.rsplit(',').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        });
        let cl = r.header("content-length").map(|v| v.trim().to_string());
        if no_body {
        } else if chunked {
            r.framing = Framing::Chunked;
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                        break pos + i;
                    }
                    if !self.more()? {
                        return Err(self.truncated("chunk size line", &r));
                    }
                };
                let line = self.buf[pos..line_end].to_vec();
                pos = line_end + 2;
                let size_str = String::from_utf8_lossy(&line);
                let size_str = size_str.split(';').next().unwrap_or("").trim();
                let size =
                    usize::from_str_radix(size_str, 16).map_err(|_| format!("bad chunk size line in response: {:?}", show(&line)))?;
                if size == 0 {
                    loop {
                        let e = loop {
                            if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                                break pos + i;
                            }
                            if !self.more()? {
                                return Err(self.truncated("trailers", &r));
                            }
                        };
                        let empty = e == pos;
                        pos = e + 2;
                        if empty {
                            break;
                        }
                    }
                    break;
                }
                while self.buf.len() < pos + size + 2 {
                    if !self.more()? {
                        return Err(self.truncated("chunk data", &r));
                    }
                }
                r.body.extend_from_slice(&self.buf[pos..pos + size]);
                if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF in response".into());
                }
                pos += size + 2;
            }
        } else if let Some(cl) = cl {
            r.framing = Framing::Length;
            let n: usize = cl.parse().map_err(|_| format!("bad Content-Length in response: {cl:?}"))?;
            while self.buf.len() < pos + n {
                if !self.more()? {
                    return Err(self.truncated(&format!("{n}-byte body"), &r));
                }
            }
            r.body = self.buf[pos..pos + n].to_vec();
            pos += n;
        } else {
            r.framing = Framing::Close;
            while self.more()? {}
            r.body = self.buf[pos..].to_vec();
            pos = self.buf.len();
        }
        r.raw = self.buf[..pos].to_vec();
        self.buf.drain(..pos);
        Ok(r)
    }

    fn truncated(&self, what: &str, r: &Response) -> String {
        format!("connection closed in the middle of the {what} of a {} response; got:\n    {}", r.status, show(&self.buf))
    }

    /// Reads the final (non-1xx) response, returning the interim ones before it.
    pub fn read_final(&mut self, method: &str) -> Result<(Vec<Response>, Response), String> {
        let mut interim = Vec::new();
        loop {
            let r = self.read_response_to(method)?;
            if (100..200).contains(&r.status) && r.status != 101 {
                interim.push(r);
            } else {
                return Ok((interim, r));
            }
        }
    }

    /// Sends a request and reads its response; panics with the bytes seen on failure.
    #[track_caller]
    pub fn roundtrip(&mut self, request: &[u8]) -> Response {
        self.send(request);
        let method = request.split(|&b| b == b' ').next().map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
        match self.read_response_to(&method) {
            Ok(r) => r,
            Err(e) => panic!("request:\n    {}\nfailed: {e}", show(request)),
        }
    }

    /// Ok if the proxy closes the connection (EOF or reset) with no further bytes within the
    /// current read timeout.
    pub fn expect_eof(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!("expected the connection to close, but extra bytes arrived:\n    {}", show(&self.buf)));
        }
        match self.more() {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("expected the connection to close, but bytes arrived:\n    {}", show(&self.buf))),
            Err(e) => Err(format!("expected the connection to close: {e}")),
        }
    }

    /// Reads everything until the proxy closes; returns the bytes and whether it closed (false:
    /// timed out with the connection still open).
    pub fn read_to_close(&mut self) -> (Vec<u8>, bool) {
        loop {
            match self.more() {
                Ok(true) => {}
                Ok(false) => return (std::mem::take(&mut self.buf), true),
                Err(_) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    /// `GET path` with `Host: test.local` on this (keep-alive) connection.
    pub fn get(&mut self, path: &str) -> Result<Response, Failure> {
        self.get_host(path, "test.local")
    }

    /// `GET path` with the given Host on this (keep-alive) connection; a connection the proxy
    /// closed before any byte of the response is told apart from a broken exchange.
    pub fn get_host(&mut self, path: &str, host: &str) -> Result<Response, Failure> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if self.try_send(req.as_bytes()).is_err() {
            return Err(Failure::ClosedBeforeResponse);
        }
        match self.read_response() {
            Ok(r) => Ok(r),
            Err(_) if self.closed && self.buf.is_empty() => Err(Failure::ClosedBeforeResponse),
            Err(e) => Err(Failure::Broken(e)),
        }
    }

    /// Bytes received but not consumed by a `read_*` call.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// `METHOD path` on the admin API at `addr` over a fresh `Connection: close` connection:
/// (status, body).
#[track_caller]
pub fn admin_call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut c = Client::connect_with_timeout(addr, LONG_IO_TIMEOUT);
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    c.send(req.as_bytes());
    match c.read_response_to(method) {
        Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        Err(e) => panic!("admin API {method} {path}: {e}"),
    }
}
