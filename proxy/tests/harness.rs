//! Test harness: the real `proxy` binary as a child process, a scripted upstream that records every
//! byte it receives, and raw-socket clients.
//!
//! Everything is blocking `std::net` with timeouts and plain threads: deterministic, bounded, and
//! independent of the proxy's own runtime. Nothing here is on a hot path; `Mutex` is fine.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Read/write timeout of every test socket: long enough for a loaded 2-core box, short enough that
/// a hung proxy fails a test in seconds rather than hanging the suite.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an upstream connection waits for the next request before giving up.
const UPSTREAM_IDLE: Duration = Duration::from_secs(5);
/// After a client-side verdict, how long to let stray bytes reach the upstream before asserting on
/// what it received ("nothing" must mean nothing, not "nothing yet").
pub const SETTLE: Duration = Duration::from_millis(80);

/// The headers the proxy appends to every forwarded request for a client on 127.0.0.1 that sent no
/// X-Forwarded-For, with `Host: a.test`. Usable inside `concat!`.
#[macro_export]
macro_rules! fwd_tail {
    () => {
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nVia: 1.1 fastproxy\r\n\r\n"
    };
}

/// The appended headers for an arbitrary Host value and X-Forwarded-For value.
pub fn fwd_tail(host: &str, xff: &str) -> String {
    format!("X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: {host}\r\nVia: 1.1 fastproxy\r\n\r\n")
}

// ---------------------------------------------------------------------------------------------
// Display helpers
// ---------------------------------------------------------------------------------------------

/// Bytes shown readably: CR and LF escaped (a real newline after each `\n`), other control and
/// non-ASCII bytes as `\xNN`.
pub fn show(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n\n    "),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    if s.len() > 4000 {
        let mut cut = 4000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("... (truncated)");
    }
    s
}

/// Compares bytes exactly; on mismatch, both sides escaped and the first differing offset.
pub fn check_bytes(what: &str, expected: &[u8], actual: &[u8]) -> Result<(), String> {
    if expected == actual {
        return Ok(());
    }
    let at = expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    Err(format!(
        "{what}: bytes differ at offset {at} (expected {} bytes, got {})\n  expected:\n    {}\n  actual:\n    {}\n",
        expected.len(),
        actual.len(),
        show(expected),
        show(actual)
    ))
}

#[track_caller]
pub fn assert_bytes(what: &str, expected: &[u8], actual: &[u8]) {
    if let Err(e) = check_bytes(what, expected, actual) {
        panic!("{e}");
    }
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Config files and the proxy process
// ---------------------------------------------------------------------------------------------

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A unique path in the temp dir (no tempfile crate): pid + counter + name.
pub fn temp_path(name: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("proxy-it-{}-{n}-{name}", std::process::id()))
}

/// Writes `text` to a fresh temp file; the caller removes it (or lets the `Proxy` guard do it).
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text).expect("write temp config");
    path
}

/// A config with one listener on a free port, a catch-all route to group `u` with the given
/// servers, optional `[limits]` lines, and extra lines for the `[upstreams.u]` table.
pub fn config(servers: &[SocketAddr], limits: &str, upstream_extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let mut c = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n");
    if !limits.trim().is_empty() {
        let _ = writeln!(c, "[limits]\n{limits}\n");
    }
    let _ = write!(
        c,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [{}]\n{upstream_extra}\n",
        servers.join(", ")
    );
    c
}

/// The binary under test: `PROXY_BIN` if set (to run the suite against another build, or against
/// a deliberately naive relay to prove the tests can fail), else this crate's `proxy`.
pub fn proxy_bin() -> PathBuf {
    // option_env!: the peer runner (an example) includes this file and has no such variable.
    std::env::var_os("PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(option_env!("CARGO_BIN_EXE_proxy").unwrap_or("proxy")))
}

/// The proxy child process. Dropping it kills and reaps the process and removes its config.
pub struct Proxy {
    child: Child,
    /// Every bound listener, in the order the proxy printed them.
    pub addrs: Vec<SocketAddr>,
    /// The first listener.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<Vec<u8>>>,
    config: PathBuf,
}

impl Proxy {
    /// Starts `proxy --config FILE --workers 1` and waits for one `listening ADDR` line per
    /// `[[listeners]]` table in `config`.
    pub fn start(config: &str) -> Proxy {
        let expected = config.matches("[[listeners]]").count().max(1);
        let path = write_temp("proxy.toml", config);
        let mut child = Command::new(proxy_bin())
            .arg("--config")
            .arg(&path)
            .arg("--workers")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proxy binary");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

        // stdout: forward lines over a channel, and keep draining so the proxy never blocks on a
        // full pipe.
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut proxy = Proxy { child, addrs: Vec::new(), addr: "127.0.0.1:1".parse().unwrap(), stderr, config: path };
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.addrs.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.trim().strip_prefix("listening ") {
                        match a.trim().parse() {
                            Ok(addr) => proxy.addrs.push(addr),
                            Err(_) => proxy.fail(&format!("bad listening line {line:?}")),
                        }
                    }
                }
                Err(_) => {
                    let status = proxy.child.try_wait().ok().flatten();
                    proxy.fail(&format!("proxy did not print {expected} `listening` line(s) within 10s (exit status: {status:?})"));
                }
            }
        }
        proxy.addr = proxy.addrs[0];
        proxy
    }

    /// Everything the proxy wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Open file descriptors of the proxy process (Linux `/proc`).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    #[track_caller]
    fn fail(&mut self, msg: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(50));
        let cfg = std::fs::read_to_string(&self.config).unwrap_or_default();
        panic!("{msg}\n--- config ---\n{cfg}\n--- proxy stderr ---\n{}", self.stderr());
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// Runs `proxy ARGS...` to completion (bounded: killed after 10 s) and returns (exit code, stdout,
/// stderr).
pub fn run_proxy_cmd(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(proxy_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy binary");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    (code, out, err)
}

// ---------------------------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------------------------

/// One complete request as the upstream parsed it.
#[derive(Clone, Debug)]
pub struct Req {
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
    /// The handler already answered it after the head (`Opts::answer_before_body`).
    pub answered: bool,
}

impl Req {
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

type Handler = dyn Fn(&Req) -> Reply + Send + Sync;

#[derive(Default)]
struct ConnLog {
    received: Vec<u8>,
    /// The peer (the proxy) closed or reset the connection.
    peer_closed: bool,
    /// The bytes violated HTTP/1.1 framing as the upstream parses it (strictly).
    error: Option<String>,
}

struct Shared {
    conns: Mutex<Vec<ConnLog>>,
    requests: Mutex<Vec<Req>>,
    accepted: AtomicUsize,
    stop: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    handler: Box<Handler>,
    opts: Opts,
}

/// How the upstream behaves besides its handler.
#[derive(Clone, Copy, Default)]
pub struct Opts {
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
    shared: Arc<Shared>,
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
    pub fn start(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_with(false, handler)
    }

    /// An upstream answering every request with `200 OK`, body `ok`.
    pub fn ok() -> Upstream {
        Self::start(|_| Reply::Send(ok(b"ok")))
    }

    pub fn start_with(send_continue: bool, handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_opts(Opts { send_continue, ..Opts::default() }, handler)
    }

    pub fn start_opts(opts: Opts, handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), opts, handler).expect("bind upstream")
    }

    /// Like `start_opts` on a given address (the peer runner: peers are configured with it).
    pub fn start_on(addr: SocketAddr, opts: Opts, handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> io::Result<Upstream> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            conns: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
            handler: Box::new(handler),
            opts,
        });
        let sh = Arc::clone(&shared);
        let accept = thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let idx = {
                    let mut conns = sh.conns.lock().unwrap();
                    conns.push(ConnLog::default());
                    conns.len() - 1
                };
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    sh.streams.lock().unwrap().push(clone);
                }
                let sh2 = Arc::clone(&sh);
                thread::spawn(move || serve_conn(sh2, idx, stream));
            }
        });
        Ok(Upstream { addr, shared, accept: Some(accept) })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every byte received on connection `conn` (empty if it does not exist).
    pub fn received(&self, conn: usize) -> Vec<u8> {
        let conns = self.shared.conns.lock().unwrap();
        conns.get(conn).map(|c| c.received.clone()).unwrap_or_default()
    }

    /// Every byte received, per connection.
    pub fn received_all(&self) -> Vec<Vec<u8>> {
        let conns = self.shared.conns.lock().unwrap();
        conns.iter().map(|c| c.received.clone()).collect()
    }

    /// Total bytes received over all connections.
    pub fn total_received(&self) -> usize {
        let conns = self.shared.conns.lock().unwrap();
        conns.iter().map(|c| c.received.len()).sum()
    }

    /// Framing errors the upstream saw, per connection.
    #[allow(dead_code)] // reason: used by examples/adversarial_peers.rs, which includes this file
    pub fn errors(&self) -> Vec<(usize, String)> {
        let conns = self.shared.conns.lock().unwrap();
        conns.iter().enumerate().filter_map(|(i, c)| c.error.clone().map(|e| (i, e))).collect()
    }

    /// Complete requests parsed so far, in completion order.
    pub fn requests(&self) -> Vec<Req> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` complete requests were parsed.
    pub fn wait_requests(&self, n: usize, within: Duration) -> bool {
        wait_until(within, || self.shared.requests.lock().unwrap().len() >= n)
    }

    /// Waits until the proxy closed upstream connection `conn`.
    pub fn wait_closed(&self, conn: usize, within: Duration) -> bool {
        wait_until(within, || {
            let conns = self.shared.conns.lock().unwrap();
            conns.get(conn).is_some_and(|c| c.peer_closed)
        })
    }

    /// Whether the proxy closed upstream connection `conn`.
    pub fn is_closed(&self, conn: usize) -> bool {
        let conns = self.shared.conns.lock().unwrap();
        conns.get(conn).is_some_and(|c| c.peer_closed)
    }

    /// A readable dump of everything received, for failure messages.
    pub fn dump(&self) -> String {
        let conns = self.shared.conns.lock().unwrap();
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
        self.shared.stop.store(true, Ordering::SeqCst);
        for s in self.shared.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
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

/// A connection's reader: every byte read is appended to the shared log before it is parsed.
struct ConnReader {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    shared: Arc<Shared>,
    idx: usize,
}

impl ConnReader {
    fn more(&mut self) -> Result<(), End> {
        let mut tmp = [0u8; 16 * 1024];
        let max = match self.shared.opts.read_pause {
            Some(pause) => {
                thread::sleep(pause);
                4096
            }
            None => tmp.len(),
        };
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Err(End::Gone);
            }
            match self.stream.read(&mut tmp[..max]) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => {
                    self.shared.conns.lock().unwrap()[self.idx].received.extend_from_slice(&tmp[..n]);
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
    fn request(&mut self, index: usize) -> Result<Option<Req>, End> {
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
        if expects_continue && self.shared.opts.send_continue {
            let _ = self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let mut answered = false;
        if self.shared.opts.answer_before_body {
            let early = Req {
                conn: self.idx,
                index,
                method: method.clone(),
                target: target.clone(),
                headers: headers.clone(),
                body: Vec::new(),
                raw: self.buf[..self.pos].to_vec(),
                answered: true,
            };
            if let Reply::Send(bytes) = (self.shared.handler)(&early) {
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
        Ok(Some(Req { conn: self.idx, index, method, target, headers, body, raw: self.buf[..self.pos].to_vec(), answered }))
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

fn serve_conn(shared: Arc<Shared>, idx: usize, stream: TcpStream) {
    let idle = shared.opts.idle_timeout.unwrap_or(UPSTREAM_IDLE);
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(idle));
    let mut r = ConnReader { stream, buf: Vec::new(), pos: 0, shared: Arc::clone(&shared), idx };
    let mut index = 0;
    let end = loop {
        let req = match r.request(index) {
            Ok(Some(req)) => req,
            Ok(None) => break End::Closed,
            Err(e) => {
                // A framing error: record it and keep draining, so later bytes are recorded too.
                if let End::Bad(msg) = &e {
                    shared.conns.lock().unwrap()[idx].error = Some(msg.clone());
                    if shared.opts.reject_malformed {
                        let _ = r.stream.write_all(&response("400 Bad Request", &["Connection: close"], b"upstream-rejected"));
                        let _ = r.stream.shutdown(Shutdown::Write);
                    }
                    break r.drain();
                }
                break e;
            }
        };
        index += 1;
        shared.requests.lock().unwrap().push(req.clone());
        if req.answered {
            continue;
        }
        match (shared.handler)(&req) {
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
                            shared.conns.lock().unwrap()[idx].peer_closed = true;
                        }
                        break;
                    }
                }
                break End::Gone;
            }
        }
    };
    if matches!(end, End::Closed) {
        shared.conns.lock().unwrap()[idx].peer_closed = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Raw clients
// ---------------------------------------------------------------------------------------------

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

/// A raw client connection with its own read buffer.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to proxy");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = stream.set_nodelay(true);
        Client { stream, buf: Vec::new() }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

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
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => {
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

    /// Bytes received but not consumed by a `read_*` call.
    pub fn pending(&self) -> &[u8] {
        &self.buf
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
