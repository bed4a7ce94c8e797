//! Test origins: a scripted upstream on loopback that records every byte it receives per
//! connection and parses requests strictly (a framing error is recorded, not forgiven), and
//! addresses that refuse or never answer a connect.
//!
//! Plain threads and blocking `std::net` with timeouts: deterministic, bounded, and independent of
//! the proxy's own runtime. Nothing here is on a hot path; `Mutex` is fine.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::bytes::{find, is_tchar, show};
use super::wait_until;

/// How long an upstream connection waits for the next request before giving up.
const UPSTREAM_IDLE: Duration = Duration::from_secs(5);
/// The same for `Upstream::serving`: longer than any test, so a pooled connection is never left
/// unserved while the proxy still holds it.
const SERVING_IDLE: Duration = Duration::from_secs(600);
/// How long `Upstream::serving` takes to answer `GET /slow`.
const SLOW: Duration = Duration::from_secs(2);

/// One complete request as the upstream parsed it.
#[derive(Clone, Debug)]
pub struct UpstreamRequest {
    /// Accept order of the connection it arrived on (0-based).
    pub conn: usize,
    /// Position of the request on its connection (0-based).
    pub index: usize,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunked framing removed).
    pub body: Vec<u8>,
    /// The exact bytes of this request on the wire, head and body framing included.
    pub raw: Vec<u8>,
    /// The handler already answered it after the head (`UpstreamOpts::answer_before_body`).
    pub answered: bool,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What the upstream does after reading a complete request.
pub enum Reply {
    /// Write these bytes and keep reading requests on the connection.
    Send(Vec<u8>),
    /// Write these bytes, then close the connection.
    SendClose(Vec<u8>),
    /// Close without writing anything.
    Close,
    /// Never answer; keep the connection open (recording anything that arrives) until the peer
    /// closes it, the upstream is dropped, or the idle timeout.
    Hang,
    /// Sleep, then write and keep reading.
    Delay(Duration, Vec<u8>),
    /// Write these bytes (a 101 and possibly tunnel data), then echo every byte received back.
    Tunnel(Vec<u8>),
    /// Write these bytes one per segment (Nagle off) with this pause between, keep reading.
    Trickle(Vec<u8>, Duration),
}

type Handler = dyn Fn(&UpstreamRequest) -> Reply + Send + Sync;

#[derive(Default)]
struct ConnLog {
    received: Vec<u8>,
    /// The peer (the proxy) closed or reset the connection.
    peer_closed: bool,
    /// The bytes violated HTTP/1.1 framing as the upstream parses it (strictly).
    error: Option<String>,
}

/// What an upstream's threads share: the handle, the accept loop and one thread per connection.
struct UpstreamState {
    conns: Mutex<Vec<ConnLog>>,
    requests: Mutex<Vec<UpstreamRequest>>,
    accepted: AtomicUsize,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    handler: Box<Handler>,
    opts: UpstreamOpts,
}

/// How the upstream behaves besides its handler.
#[derive(Clone, Copy, Default)]
pub struct UpstreamOpts {
    /// Answer `Expect: 100-continue` with an interim 100 before reading the body.
    pub send_continue: bool,
    /// Call the handler as soon as the head is read (with an empty body) and write a `Send`
    /// reply before reading the body, like an origin that refuses an upload early. The body is
    /// still read and recorded afterwards.
    pub answer_before_body: bool,
    /// Sleep this long before every read, in reads of at most 4 KiB: a slow reader.
    pub read_pause: Option<Duration>,
    /// On a framing error, answer `400` with body `upstream-rejected` and close, as a strict origin
    /// would (default: record and keep draining). The peer runner uses it so a connection a proxy
    /// left with broken framing cannot stall later cases.
    pub reject_malformed: bool,
    /// How long a connection waits for the next request (default `UPSTREAM_IDLE`). On expiry the
    /// connection stops being served but stays open: a long-lived peer run needs it longer.
    pub idle_timeout: Option<Duration>,
}

/// A scripted upstream on 127.0.0.1:0 recording every byte per connection. Dropping it stops it.
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    accept: Option<JoinHandle<()>>,
}

/// A `200 OK` with a Content-Length body.
pub fn ok(body: &[u8]) -> Vec<u8> {
    response("200 OK", &[], body)
}

/// `HTTP/1.1 {status_line}`, the headers, `Content-Length` of the body, the body.
pub fn response(status_line: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status_line}\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    let _ = write!(r, "Content-Length: {}\r\n\r\n", body.len());
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

impl Upstream {
    pub fn start(handler: impl Fn(&UpstreamRequest) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_with(false, handler)
    }

    /// An upstream answering every request with `200 OK`, body `ok`.
    pub fn ok() -> Upstream {
        Self::start(|_| Reply::Send(ok(b"ok")))
    }

    pub fn start_with(send_continue: bool, handler: impl Fn(&UpstreamRequest) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_opts(UpstreamOpts { send_continue, ..UpstreamOpts::default() }, handler)
    }

    pub fn start_opts(opts: UpstreamOpts, handler: impl Fn(&UpstreamRequest) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), opts, handler).expect("bind upstream")
    }

    /// Like `start_opts` on a given address (the peer runner: peers are configured with it).
    pub fn start_on(
        addr: SocketAddr,
        opts: UpstreamOpts,
        handler: impl Fn(&UpstreamRequest) -> Reply + Send + Sync + 'static,
    ) -> io::Result<Upstream> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            conns: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            handler: Box::new(handler),
            opts,
        });
        let accept_state = Arc::clone(&state);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let idx = {
                    let mut conns = accept_state.conns.lock().unwrap();
                    conns.push(ConnLog::default());
                    conns.len() - 1
                };
                accept_state.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    accept_state.streams.lock().unwrap().push(clone);
                }
                let conn_state = Arc::clone(&accept_state);
                thread::spawn(move || serve_conn(conn_state, idx, stream));
            }
        });
        Ok(Upstream { addr, state, accept: Some(accept) })
    }

    /// A plain origin for load and lifecycle tests: every request answered `200 OK` with `body`
    /// after `delay`, except `GET /slow...`, answered after 2 s. Connections are kept alive
    /// without an idle limit (they close when the proxy closes them or the upstream is dropped),
    /// so `open` counts exactly the connections the proxy keeps.
    pub fn serving(body: &'static str, delay: Duration) -> Upstream {
        let opts = UpstreamOpts { idle_timeout: Some(SERVING_IDLE), ..UpstreamOpts::default() };
        Self::start_opts(opts, move |req| {
            let wait = if req.method == "GET" && req.target.starts_with("/slow") { SLOW } else { delay };
            if wait.is_zero() { Reply::Send(ok(body.as_bytes())) } else { Reply::Delay(wait, ok(body.as_bytes())) }
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Every byte received on connection `conn` (empty if it does not exist).
    pub fn received(&self, conn: usize) -> Vec<u8> {
        let conns = self.state.conns.lock().unwrap();
        conns.get(conn).map(|c| c.received.clone()).unwrap_or_default()
    }

    /// Every byte received, per connection.
    pub fn received_all(&self) -> Vec<Vec<u8>> {
        let conns = self.state.conns.lock().unwrap();
        conns.iter().map(|c| c.received.clone()).collect()
    }

    /// Total bytes received over all connections.
    pub fn total_received(&self) -> usize {
        let conns = self.state.conns.lock().unwrap();
        conns.iter().map(|c| c.received.len()).sum()
    }

    /// Framing errors the upstream saw, per connection.
    pub fn errors(&self) -> Vec<(usize, String)> {
        let conns = self.state.conns.lock().unwrap();
        conns.iter().enumerate().filter_map(|(i, c)| c.error.clone().map(|e| (i, e))).collect()
    }

    /// Complete requests parsed so far, in completion order.
    pub fn requests(&self) -> Vec<UpstreamRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` complete requests were parsed.
    pub fn wait_requests(&self, n: usize, within: Duration) -> bool {
        wait_until(within, || self.state.requests.lock().unwrap().len() >= n)
    }

    /// Waits until the proxy closed upstream connection `conn`.
    pub fn wait_closed(&self, conn: usize, within: Duration) -> bool {
        wait_until(within, || {
            let conns = self.state.conns.lock().unwrap();
            conns.get(conn).is_some_and(|c| c.peer_closed)
        })
    }

    /// Accepted connections the proxy has not closed (one this upstream closed itself with
    /// `Reply::Close` still counts).
    pub fn open(&self) -> usize {
        let conns = self.state.conns.lock().unwrap();
        conns.iter().filter(|c| !c.peer_closed).count()
    }

    /// Whether the proxy closed upstream connection `conn`.
    pub fn is_closed(&self, conn: usize) -> bool {
        let conns = self.state.conns.lock().unwrap();
        conns.get(conn).is_some_and(|c| c.peer_closed)
    }

    /// A readable dump of everything received, for failure messages.
    pub fn dump(&self) -> String {
        let conns = self.state.conns.lock().unwrap();
        let mut s = String::new();
        for (i, c) in conns.iter().enumerate() {
            let _ = write!(
                s,
                "  upstream conn {i} (closed by proxy: {}, framing error: {:?}):\n    {}\n",
                c.peer_closed,
                c.error,
                show(&c.received)
            );
        }
        if conns.is_empty() {
            s.push_str("  (no upstream connection)\n");
        }
        s
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for s in self.state.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

enum End {
    /// Clean EOF or reset from the proxy.
    Closed,
    /// Read timeout, or the upstream is stopping.
    Gone,
    /// The bytes are not a valid HTTP/1.1 request.
    Bad(String),
}

/// A connection's reader: every byte read is appended to the state log before it is parsed.
struct ConnReader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    state: Arc<UpstreamState>,
    idx: usize,
}

impl ConnReader {
    fn more(&mut self) -> Result<(), End> {
        let mut tmp = [0u8; 16 * 1024];
        let max = match self.state.opts.read_pause {
            Some(pause) => {
                thread::sleep(pause);
                4096
            }
            None => tmp.len(),
        };
        loop {
            if self.state.stop.load(Ordering::SeqCst) {
                return Err(End::Gone);
            }
            match self.stream.read(&mut tmp[..max]) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => {
                    self.state.conns.lock().unwrap()[self.idx].received.extend_from_slice(&tmp[..n]);
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
                    return Err(End::Closed);
                }
                Err(_) => return Err(End::Gone),
            }
        }
    }

    /// A CRLF-terminated line (without the CRLF); a bare CR or LF inside is a framing error.
    fn line(&mut self) -> Result<Vec<u8>, End> {
        loop {
            if let Some(i) = find(&self.buf[self.pos..], b"\r\n") {
                let l = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                if l.iter().any(|&b| b == b'\r' || b == b'\n') {
                    return Err(End::Bad(format!("bare CR/LF in line {:?}", show(&l))));
                }
                return Ok(l);
            }
            if self.buf.len() - self.pos > 64 * 1024 {
                return Err(End::Bad("line too long".into()));
            }
            self.more()?;
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, End> {
        while self.buf.len() - self.pos < n {
            self.more()?;
        }
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(v)
    }

    /// Reads one request: strict head, then a body framed by Content-Length or chunked.
    /// Returns `Ok(None)` on a clean close between requests.
    fn request(&mut self, index: usize) -> Result<Option<UpstreamRequest>, End> {
        // Compact what earlier requests consumed.
        self.buf.drain(..self.pos);
        self.pos = 0;
        // Head.
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 256 * 1024 {
                return Err(End::Bad("request head too long".into()));
            }
            match self.more() {
                Ok(()) => {}
                Err(End::Closed) if self.buf.is_empty() => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let head = self.buf[..head_end].to_vec();
        if head[..head_end - 4].contains(&0) {
            return Err(End::Bad("NUL in head".into()));
        }
        // Bare LF/CR anywhere in the head is a framing error for this upstream.
        for (i, &b) in head.iter().enumerate() {
            let bad = (b == b'\n' && (i == 0 || head[i - 1] != b'\r')) || (b == b'\r' && head.get(i + 1) != Some(&b'\n'));
            if bad {
                return Err(End::Bad(format!("bare CR/LF in head at {i}")));
            }
        }
        let mut hdrs = [httparse::EMPTY_HEADER; 256];
        let mut parsed = httparse::Request::new(&mut hdrs);
        match parsed.parse(&head) {
            Ok(httparse::Status::Complete(n)) if n == head_end => {}
            other => return Err(End::Bad(format!("unparseable head: {other:?}"))),
        }
        let method = parsed.method.unwrap_or_default().to_string();
        let target = parsed.path.unwrap_or_default().to_string();
        let headers: Vec<(String, String)> =
            parsed.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
        self.pos = head_end;

        let cl: Vec<&str> = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.as_str()).collect();
        let te: Vec<&str> = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")).map(|(_, v)| v.as_str()).collect();
        let expects_continue = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue"));
        if expects_continue && self.state.opts.send_continue {
            let _ = self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut answered = false;
        if self.state.opts.answer_before_body {
            let early = UpstreamRequest {
                conn: self.idx,
                index,
                method: method.clone(),
                target: target.clone(),
                headers: headers.clone(),
                body: Vec::new(),
                raw: self.buf[..self.pos].to_vec(),
                answered: true,
            };
            if let Reply::Send(bytes) = (self.state.handler)(&early) {
                let _ = self.stream.write_all(&bytes);
            }
            answered = true;
        }

        let mut body = Vec::new();
        if !te.is_empty() {
            if !cl.is_empty() || te.len() > 1 || !te[0].eq_ignore_ascii_case("chunked") {
                return Err(End::Bad(format!("ambiguous framing: CL {cl:?} TE {te:?}")));
            }
            loop {
                let line = self.line()?;
                let size_part = match line.iter().position(|&b| b == b';') {
                    Some(i) => &line[..i],
                    None => &line[..],
                };
                let ok_size = !size_part.is_empty() && size_part.len() <= 16 && size_part.iter().all(u8::is_ascii_hexdigit);
                if !ok_size {
                    return Err(End::Bad(format!("bad chunk size line {:?}", show(&line))));
                }
                let size =
                    u64::from_str_radix(std::str::from_utf8(size_part).unwrap(), 16).map_err(|e| End::Bad(format!("chunk size: {e}")))?;
                if size == 0 {
                    // Trailer field lines until the empty line, each `token ":" value`.
                    loop {
                        let t = self.line()?;
                        if t.is_empty() {
                            break;
                        }
                        let colon = t.iter().position(|&b| b == b':').unwrap_or(0);
                        if colon == 0 || !t[..colon].iter().all(|&b| is_tchar(b)) {
                            return Err(End::Bad(format!("bad trailer line {:?}", show(&t))));
                        }
                    }
                    break;
                }
                if size > 64 * 1024 * 1024 {
                    return Err(End::Bad("chunk too large for the test upstream".into()));
                }
                body.extend_from_slice(&self.take(size as usize)?);
                if self.take(2)? != b"\r\n" {
                    return Err(End::Bad("chunk data not followed by CRLF".into()));
                }
            }
        } else if !cl.is_empty() {
            if cl.len() > 1 || cl[0].is_empty() || !cl[0].bytes().all(|b| b.is_ascii_digit()) {
                return Err(End::Bad(format!("bad Content-Length {cl:?}")));
            }
            let n: usize = cl[0].parse().map_err(|e| End::Bad(format!("Content-Length: {e}")))?;
            body = self.take(n)?;
        }
        Ok(Some(UpstreamRequest { conn: self.idx, index, method, target, headers, body, raw: self.buf[..self.pos].to_vec(), answered }))
    }

    /// Keeps the connection open and records until it closes, times out, or the upstream stops.
    fn drain(&mut self) -> End {
        loop {
            if let Err(e) = self.more() {
                return e;
            }
        }
    }
}

fn serve_conn(state: Arc<UpstreamState>, idx: usize, stream: TcpStream) {
    let idle = state.opts.idle_timeout.unwrap_or(UPSTREAM_IDLE);
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(idle));
    let mut r = ConnReader { stream, buf: Vec::new(), pos: 0, state: Arc::clone(&state), idx };
    let mut index = 0;
    let end = loop {
        let req = match r.request(index) {
            Ok(Some(req)) => req,
            Ok(None) => break End::Closed,
            Err(e) => {
                // A framing error: record it and keep draining, so later bytes are recorded too.
                if let End::Bad(msg) = &e {
                    state.conns.lock().unwrap()[idx].error = Some(msg.clone());
                    if state.opts.reject_malformed {
                        let _ = r.stream.write_all(&response("400 Bad Request", &["Connection: close"], b"upstream-rejected"));
                        let _ = r.stream.shutdown(Shutdown::Write);
                    }
                    break r.drain();
                }
                break e;
            }
        };
        index += 1;
        state.requests.lock().unwrap().push(req.clone());
        if req.answered {
            continue;
        }
        match (state.handler)(&req) {
            Reply::Send(bytes) => {
                if r.stream.write_all(&bytes).is_err() {
                    break r.drain();
                }
            }
            Reply::Delay(d, bytes) => {
                thread::sleep(d);
                if r.stream.write_all(&bytes).is_err() {
                    break r.drain();
                }
            }
            Reply::SendClose(bytes) => {
                let _ = r.stream.write_all(&bytes);
                let _ = r.stream.flush();
                let _ = r.stream.shutdown(Shutdown::Write);
                // Read until the proxy closes its side (bounded by the idle timeout) so a late
                // byte is still recorded, then the socket drops.
                break r.drain();
            }
            Reply::Close => {
                let _ = r.stream.shutdown(Shutdown::Both);
                break End::Gone;
            }
            Reply::Hang => break r.drain(),
            Reply::Trickle(bytes, pause) => {
                let _ = r.stream.set_nodelay(true);
                let mut failed = false;
                for b in bytes {
                    if r.stream.write_all(&[b]).is_err() {
                        failed = true;
                        break;
                    }
                    thread::sleep(pause);
                }
                if failed {
                    break r.drain();
                }
            }
            Reply::Tunnel(bytes) => {
                if r.stream.write_all(&bytes).is_err() {
                    break r.drain();
                }
                // Echo everything after what was already parsed.
                let mut sent = r.pos;
                loop {
                    if sent < r.buf.len() {
                        let chunk = r.buf[sent..].to_vec();
                        if r.stream.write_all(&chunk).is_err() {
                            break;
                        }
                        sent = r.buf.len();
                    }
                    if let Err(e) = r.more() {
                        if matches!(e, End::Closed) {
                            state.conns.lock().unwrap()[idx].peer_closed = true;
                        }
                        break;
                    }
                }
                break End::Gone;
            }
        }
    };
    if matches!(end, End::Closed) {
        state.conns.lock().unwrap()[idx].peer_closed = true;
    }
}

/// A port that refuses connections (bound, then released).
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A loopback address where connect() hangs: a listener with a full accept queue that never
/// accepts (new SYNs are dropped). Keep the returned guard alive for as long as it is needed.
pub fn blackhole_addr() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    (sock, fill, addr)
}
