//! Test plumbing: the proxy child process, a threaded upstream, a keep-alive client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory for one test's files.
pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("proxy-control-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A config with the admin API on, one catch-all route to `servers`, and `extra` appended.
pub fn config(servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n\n[upstreams.up]\nservers = [{}]\n\n{extra}",
        list.join(", ")
    )
}

/// The proxy child. Dropping it kills and reaps it.
pub struct Proxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    /// Writes `config` to `dir/proxy.toml` and starts `proxy --config it --workers N`.
    pub fn start(dir: &Path, config: &str, workers: usize) -> Proxy {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .arg("--config")
            .arg(&path)
            .arg("--workers")
            .arg(workers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while addr.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("proxy did not print its addresses in 10s; stderr:\n{}", String::from_utf8_lossy(&stderr.lock().unwrap()));
                }
            };
            if let Some(a) = line.strip_prefix("admin listening ") {
                admin = Some(a.trim().parse().unwrap());
            } else if let Some(a) = line.strip_prefix("listening ") {
                addr = Some(a.trim().parse().unwrap());
            }
        }
        Proxy { child: Some(child), addr: addr.unwrap(), admin: admin.unwrap(), config: path, stderr }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` to the child (not reaped before drop, so the pid is still ours).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap();
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `stderr` contains `needle` (the log writer is asynchronous).
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if self.stderr().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        while Instant::now() < until {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `METHOD path` on the admin API (one connection per call): (status, body).
    pub fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        admin_call(self.admin, method, path, body)
    }

    /// A metric's value from `/metrics` (the whole series name, labels included), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.admin("GET", "/metrics", "");
        assert_eq!(status, 200);
        metric(&body, series)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The test's directory (config, access log) goes with it.
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

pub fn admin_call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub close: bool,
    pub body: Vec<u8>,
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

/// A blocking keep-alive HTTP/1.1 client (Content-Length responses only).
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client { stream, buf: Vec::new() })
    }

    pub fn get(&mut self, path: &str) -> Result<Response, Failure> {
        self.get_host(path, "test.local")
    }

    pub fn get_host(&mut self, path: &str, host: &str) -> Result<Response, Failure> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        if self.stream.write_all(req.as_bytes()).is_err() {
            return Err(Failure::ClosedBeforeResponse);
        }
        self.read_response()
    }

    pub fn read_response(&mut self) -> Result<Response, Failure> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = res.parse(&self.buf) {
                let status = res.code.unwrap_or(0);
                let mut len = 0;
                let mut close = false;
                for h in res.headers.iter() {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    } else if h.name.eq_ignore_ascii_case("connection") && v.contains("close") {
                        close = true;
                    }
                }
                while self.buf.len() < head + len {
                    match self.stream.read(&mut tmp) {
                        Ok(n) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                        Ok(_) => return Err(Failure::Broken("closed mid-body".into())),
                        Err(e) => return Err(Failure::Broken(format!("mid-body: {e}"))),
                    }
                }
                let body = self.buf[head..head + len].to_vec();
                self.buf.drain(..head + len);
                return Ok(Response { status, close, body });
            }
            match self.stream.read(&mut tmp) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&tmp[..n]),
                Ok(_) if self.buf.is_empty() => return Err(Failure::ClosedBeforeResponse),
                Err(e) if self.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(Failure::ClosedBeforeResponse);
                }
                Ok(_) => return Err(Failure::Broken("closed mid-head".into())),
                Err(e) => return Err(Failure::Broken(format!("reading the head: {e}"))),
            }
        }
    }
}

/// A threaded keep-alive upstream: answers `200` with `body`; `GET /slow` waits 2 s first,
/// `GET /delay` waits `delay`. Counts open connections. Dropping it stops it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub open: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(body: &'static str, delay: Duration) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, a, st) = (Arc::clone(&open), Arc::clone(&accepted), Arc::clone(&stop));
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        o.fetch_add(1, Ordering::Relaxed);
                        let (o, st) = (Arc::clone(&o), Arc::clone(&st));
                        thread::spawn(move || {
                            serve(s, body, delay, &st);
                            o.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Upstream { addr, open, accepted, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut s: TcpStream, body: &str, delay: Duration, stop: &AtomicBool) {
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    while !stop.load(Ordering::Relaxed) {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut tmp) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        if head.starts_with("GET /slow") {
            thread::sleep(Duration::from_secs(2));
        } else if !delay.is_zero() {
            thread::sleep(delay);
        }
        let res = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        if s.write_all(res.as_bytes()).is_err() {
            return;
        }
    }
}
