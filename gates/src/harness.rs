//! In-process measurement harness: an allocation-free blocking origin and client, and a helper
//! that starts the real proxy (either engine) in the same process against that origin.
//!
//! The origin and the client allocate nothing per request after their connection is set up
//! (fixed buffers, a pre-built response, `httparse` with a stack header array), so a heap
//! profiler or callgrind running around them sees the proxy's cost; the direct path
//! (client → origin, no proxy) is measured the same way as the control.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proxy::config::{self, ServerIds};
use proxy::control::runtime::{self, Engine, Running};

/// A keep-alive HTTP/1.1 origin answering every request with `200` and a fixed body.
#[derive(Debug)]
pub struct Origin {
    pub addr: SocketAddr,
    /// Connections accepted so far (to check upstream reuse).
    pub accepted: Arc<AtomicUsize>,
}

impl Origin {
    pub fn start(body_bytes: usize) -> io::Result<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut response = Vec::with_capacity(body_bytes + 128);
        response.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ");
        response.extend_from_slice(body_bytes.to_string().as_bytes());
        response.extend_from_slice(b"\r\n\r\n");
        response.resize(response.len() + body_bytes, b'x');
        let response: Arc<[u8]> = response.into();
        let count = Arc::clone(&accepted);
        std::thread::Builder::new().name("origin".into()).spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                let response = Arc::clone(&response);
                let _ = std::thread::Builder::new().name("origin-conn".into()).spawn(move || serve_origin(stream, &response));
            }
        })?;
        Ok(Origin { addr, accepted })
    }
}

/// Answers bodiless requests (GET) on one connection until it closes.
fn serve_origin(mut s: TcpStream, response: &[u8]) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        match s.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        // Answer every complete head in the buffer (pipelining-safe).
        let mut start = 0;
        while let Some(end) = find_head_end(&buf[start..filled]) {
            if s.write_all(response).is_err() {
                return;
            }
            start += end;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return;
        }
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A blocking keep-alive client sending one pre-serialized request at a time.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Box<[u8]>,
}

impl Client {
    pub fn connect(addr: SocketAddr, request: &[u8]) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client { stream, request: request.to_vec(), buf: vec![0; 64 * 1024].into_boxed_slice() })
    }

    /// Sends the request and reads the whole response (Content-Length framed); returns the status.
    pub fn round_trip(&mut self) -> io::Result<u16> {
        self.stream.write_all(&self.request)?;
        let mut filled = 0;
        loop {
            let n = self.stream.read(&mut self.buf[filled..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
            }
            filled += n;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf[..filled]) {
                Ok(httparse::Status::Complete(head)) => {
                    let status = res.code.unwrap_or(0);
                    let len = res
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let total = head + len;
                    if total > self.buf.len() {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "response larger than the client buffer"));
                    }
                    while filled < total {
                        let n = self.stream.read(&mut self.buf[filled..total])?;
                        if n == 0 {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body"));
                        }
                        filled += n;
                    }
                    return Ok(status);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(io::Error::new(io::ErrorKind::InvalidData, "unparseable response")),
            }
        }
    }
}

/// Starts the proxy in this process with one worker, one catch-all route to `origin`.
pub fn start_proxy(origin: SocketAddr, engine: Engine) -> io::Result<Running> {
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"origin\"\n[upstreams.origin]\nservers = [\"{origin}\"]\n"
    );
    let cfg = config::parse(Path::new("<harness>"), &text, &mut ServerIds::default()).map_err(|e| io::Error::other(e.to_string()))?;
    runtime::start(cfg, 1, engine).map_err(|e| io::Error::other(e.to_string()))
}

/// The request every harness workload sends: a keep-alive GET.
pub const GET: &[u8] = b"GET /bench HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: gates\r\nAccept: */*\r\n\r\n";
