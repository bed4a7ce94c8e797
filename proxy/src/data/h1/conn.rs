//! One client connection: read a request head, route it, forward it over a pooled upstream
//! connection, stream the bodies both ways, repeat while keep-alive holds. Hot path.
//!
//! Buffers: the client read buffer, the output buffer and the parsed-head vectors are allocated
//! once per connection; upstream connections carry their own read buffer in the pool. Bodies are
//! streamed through those buffers as they arrive (never collected), and the request head plus
//! the first body bytes leave in one write, as do the response head and its first body bytes.
//!
//! Errors are [`ProxyError`] values; each maps to a canned response (or to closing the
//! connection when a response has already started, so a truncated body never looks complete).

use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::data::timer::Timers;

use crate::data::access::AccessRecord;
use crate::data::buf::Buf;
use crate::data::error::ProxyError;
use crate::data::h1::chunked::{ChunkError, Chunked};
use crate::data::h1::head::{Framing, Parsed, RequestHead, ResponseHead};
use crate::data::h1::rewrite::{self, ClientConn};
use crate::data::metrics::ROUTE_NONE;
use crate::data::upstream::pool::UpstreamConn;
use crate::data::worker::{ConnPermit, Worker};
use crate::snapshot::{Limits, Server, Snapshot, UpstreamGroup};

/// Client read buffer floor; grown to the configured head limit when that is larger.
const CLIENT_BUF: usize = 16 * 1024;
/// How long a connection closed after an error keeps reading (and discarding) what the client
/// still sends, so the error response is not destroyed by a TCP reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Serves one accepted client connection until it closes.
pub async fn serve(worker: Rc<Worker>, client: TcpStream, peer: SocketAddr, permit: ConnPermit) {
    let _permit = permit;
    let _ = client.set_nodelay(true);
    worker.metrics().connection();
    let head_limit = worker.snapshot().limits.max_request_head_bytes;
    let mut conn = Conn::new(worker, client, peer, head_limit);
    conn.run().await;
}

struct Conn {
    worker: Rc<Worker>,
    client: TcpStream,
    buf: Buf,
    out: Vec<u8>,
    req: RequestHead,
    res: ResponseHead,
    ip: [u8; 48],
    ip_len: usize,
    /// The route of the request in progress (`ROUTE_NONE` until routed), for metrics.
    route: usize,
    /// This connection's slot in the worker's drain signal.
    drain_slot: usize,
    /// This connection's slot in the worker's timer table.
    timer_slot: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.worker.drain.release(self.drain_slot);
        self.worker.timers.release(self.timer_slot);
    }
}

/// What is known about the exchange in progress, for the error path.
#[derive(Debug, Default)]
struct Progress {
    /// The whole request (head and body) has been read from the client.
    request_done: bool,
    /// Bytes of a response reached the client: an error can only close the connection now.
    responded: bool,
    /// Some response bytes came from the upstream (the connection was not stale).
    upstream_answered: bool,
}

/// Why sending a request over one upstream connection failed.
enum SendError {
    /// The connection died before any response byte: safe to replay if the request allows.
    Stale,
    Proxy(ProxyError),
}

impl From<ProxyError> for SendError {
    fn from(e: ProxyError) -> Self {
        SendError::Proxy(e)
    }
}

/// The request body still to be read from the client.
enum ReqBody {
    Length(u64),
    Chunked(Chunked),
}

impl ReqBody {
    fn new(framing: Framing, max: u64) -> Option<Self> {
        match framing {
            Framing::None | Framing::Length(0) | Framing::UntilClose => None,
            Framing::Length(n) => Some(ReqBody::Length(n)),
            Framing::Chunked => Some(ReqBody::Chunked(Chunked::new(max))),
        }
    }

    /// How many bytes of `avail` belong to the body (validated); sets `done` at its end.
    fn take(&mut self, avail: &[u8], done: &mut bool) -> Result<usize, ProxyError> {
        match self {
            ReqBody::Length(left) => {
                let n = (*left).min(avail.len() as u64);
                *left -= n;
                *done = *left == 0;
                Ok(n as usize)
            }
            ReqBody::Chunked(c) => match c.feed(avail, |_, _| {}) {
                Ok(step) => {
                    *done = step.done;
                    Ok(step.consumed)
                }
                Err(ChunkError::Malformed) => Err(ProxyError::BadRequest),
                Err(ChunkError::TooLarge) => Err(ProxyError::BodyTooLarge),
            },
        }
    }
}

/// The response body still to be relayed to the client.
enum ResBody {
    Length(u64),
    Chunked { dec: Chunked, dechunk: bool },
    UntilClose,
}

impl ResBody {
    /// Validates the body bytes at the front of `avail`; returns how many input bytes belong to
    /// the body and whether it ended. Chunk data is appended to `dechunked` only when
    /// de-chunking (the one case where body bytes are copied instead of passed through).
    fn take(&mut self, avail: &[u8], dechunked: &mut Vec<u8>) -> Result<(usize, bool), ProxyError> {
        match self {
            ResBody::Length(left) => {
                let n = (*left).min(avail.len() as u64) as usize;
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            ResBody::Chunked { dec, dechunk } => {
                let dechunk = *dechunk;
                let step = dec
                    .feed(avail, |s, e| {
                        if dechunk {
                            dechunked.extend_from_slice(&avail[s..e]);
                        }
                    })
                    .map_err(|_| ProxyError::BadResponse)?;
                Ok((step.consumed, step.done))
            }
            ResBody::UntilClose => Ok((avail.len(), false)),
        }
    }

    fn dechunks(&self) -> bool {
        matches!(self, ResBody::Chunked { dechunk: true, .. })
    }
}

/// Counts a request in flight to one server on this worker for as long as it lives.
struct InFlight<'a> {
    worker: &'a Worker,
    server: usize,
}

impl<'a> InFlight<'a> {
    fn new(worker: &'a Worker, server: usize) -> Self {
        worker.begin(server);
        InFlight { worker, server }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.worker.end(self.server);
    }
}

impl Conn {
    fn new(worker: Rc<Worker>, client: TcpStream, peer: SocketAddr, head_limit: usize) -> Self {
        let mut ip = [0u8; 48];
        let ip_len = {
            let mut w: &mut [u8] = &mut ip;
            let before = w.len();
            // Formatted once per connection into a fixed array (no allocation).
            let _ = write!(w, "{}", peer.ip().to_canonical());
            before - w.len()
        };
        let drain_slot = worker.drain.register();
        let timer_slot = worker.timers.register();
        // The first head's deadline counts from here (the coarse clock may be a tick old).
        worker.timers.observe(Instant::now());
        Conn {
            drain_slot,
            timer_slot,
            worker,
            client,
            buf: Buf::new(CLIENT_BUF.max(head_limit + 1)),
            out: Vec::with_capacity(8 * 1024),
            req: RequestHead::new(crate::config::MAX_HEADERS_CEILING),
            res: ResponseHead::new(),
            ip,
            ip_len,
            route: ROUTE_NONE,
        }
    }

    async fn run(&mut self) {
        let mut first = true;
        loop {
            let snap = self.worker.snapshot();
            match self.read_head(&snap.limits, first).await {
                Ok(true) => first = false,
                Ok(false) => return,
                Err(e) => {
                    self.head_error(e);
                    return self.fail(e, &Progress::default()).await;
                }
            }
            // The request runs on the snapshot current when its head arrived, not the one that
            // was current when the connection went idle (a reload may have happened since).
            let snap = self.worker.snapshot();
            let started = Instant::now();
            self.worker.timers.observe(started);
            self.worker.metrics().start();
            self.route = ROUTE_NONE;
            let sampled = self.worker.sampled(snap.trace_sample_every);
            let mut span = None;
            if sampled {
                span = Some(self.trace_start());
            }
            let mut access = None;
            if self.worker.shared.access_log.is_some() {
                access = Some(self.access_start());
            }
            let mut progress = Progress::default();
            let result = self.exchange(&snap, &mut progress, started).await;
            let status = match result {
                Ok(_) => self.res.status,
                Err(e) => e.status(),
            };
            let elapsed = started.elapsed();
            self.worker.metrics().finish(self.route, status, elapsed);
            if sampled {
                trace_end(span, self.route, status, elapsed, result.err());
            }
            if let Some(record) = access {
                self.access_end(record, status, elapsed);
            }
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    self.worker.metrics().error(e);
                    let keep = e.keeps_client() && self.req.keep_alive && progress.request_done && !progress.responded;
                    if keep {
                        #[cfg(feature = "planted")]
                        crate::data::planted::at(crate::data::planted::Site::Error, 0);
                        if let Some(bytes) = e.response()
                            && self.write_client(bytes, snap.limits.client_idle_timeout).await.is_err()
                        {
                            return;
                        }
                    } else {
                        return self.fail(e, &progress).await;
                    }
                }
            }
        }
    }

    /// A request that failed before it could be routed: counted with route `none`.
    #[cold]
    fn head_error(&self, e: ProxyError) {
        let m = self.worker.metrics();
        m.count(ROUTE_NONE, e.status(), Duration::ZERO);
        m.error(e);
    }

    /// Opens the span of a sampled request (tracing sampling; never reached at rate 0).
    #[cold]
    fn trace_start(&self) -> tracing::Span {
        let b = self.buf.filled();
        fn text(v: &[u8]) -> &str {
            std::str::from_utf8(v).unwrap_or("<non-utf8>")
        }
        tracing::info_span!(
            target: "proxy::trace",
            "request",
            worker = self.worker.index,
            method = text(self.req.method.of(b)),
            host = text(self.req.route_host(b)),
            path = text(self.req.route_path(b)),
            peer = text(&self.ip[..self.ip_len]),
        )
    }

    /// Copies the request line into a fixed-size access-log record (no allocation).
    fn access_start(&self) -> AccessRecord {
        let b = self.buf.filled();
        let mut r = AccessRecord::new(
            self.req.method.of(b),
            self.req.route_host(b),
            self.req.target.path.of(b),
            &self.ip[..self.ip_len],
            self.worker.index,
        );
        r.time = std::time::SystemTime::now();
        r
    }

    fn access_end(&self, mut r: AccessRecord, status: u16, elapsed: Duration) {
        r.status = status;
        r.latency = elapsed;
        r.route = if self.route == ROUTE_NONE { u16::MAX } else { self.route.min(u16::MAX as usize - 1) as u16 };
        if let Some(log) = &self.worker.shared.access_log
            && !log.send(r)
        {
            self.worker.metrics().access_log_dropped();
        }
    }

    /// Reads until a complete request head is at the front of `buf`. `Ok(false)`: the client
    /// closed (or idled out) cleanly between requests, or the proxy is draining and the
    /// connection was idle.
    async fn read_head(&mut self, limits: &Limits, first: bool) -> Result<bool, ProxyError> {
        // A new connection owes its first head within the header timeout from the accept, so a
        // client that connects and sends nothing cannot hold a slot for the idle timeout.
        let mut deadline = first.then(|| self.worker.timers.deadline(limits.header_read_timeout));
        loop {
            if !self.buf.is_empty() {
                if let Parsed::Complete = self.req.parse(self.buf.filled(), limits)? {
                    return Ok(true);
                }
                if self.buf.len() >= self.buf.capacity() {
                    return Err(ProxyError::HeadersTooLarge);
                }
            }
            let started = !self.buf.is_empty();
            if !started && self.worker.drain.is_draining() {
                if self.drain_read() {
                    continue;
                }
                return Ok(false);
            }
            // Bytes already waiting need no timer (and no extra syscall: a WouldBlock here
            // clears the readiness the timed read below would otherwise try first).
            match self.client.try_read(self.buf.spare()) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.advance(n);
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Ok(false),
            }
            // Between keep-alive requests the idle timeout runs until the first byte, the header
            // timeout from there.
            let timers = &self.worker.timers;
            let until = match deadline {
                Some(d) => d,
                None if started => *deadline.insert(timers.deadline(limits.header_read_timeout)),
                None => timers.deadline(limits.client_idle_timeout),
            };
            let read = if started {
                timers.within(self.timer_slot, until, self.client.read(self.buf.spare())).await
            } else {
                // Idle between requests: the one place a connection waits on the drain signal.
                // (The flag check above and the waiter creation here run with no await between
                // them, on one thread: a drain cannot slip in unseen.)
                let (drain, slot) = (&self.worker.drain, self.drain_slot);
                tokio::select! {
                    biased;
                    r = timers.within(self.timer_slot, until, self.client.read(self.buf.spare())) => r,
                    () = std::future::poll_fn(|cx| drain.poll_drained(slot, cx)) => continue,
                }
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(false),
                Ok(Ok(n)) => self.buf.advance(n),
                Err(_) if started => return Err(ProxyError::RequestTimeout),
                Err(_) => return Ok(false),
            }
        }
    }

    /// Draining and idle: bytes that already arrived (a request that raced the drain) are
    /// served, with `Connection: close`; otherwise the connection closes. `true`: bytes read.
    #[cold]
    fn drain_read(&mut self) -> bool {
        match self.client.try_read(self.buf.spare()) {
            Ok(n) if n > 0 => {
                self.buf.advance(n);
                true
            }
            _ => false,
        }
    }

    /// Proxies the request whose head is at the front of `buf`. `Ok(keep_alive)`.
    async fn exchange(&mut self, snap: &Snapshot, progress: &mut Progress, started: Instant) -> Result<bool, ProxyError> {
        #[cfg(feature = "planted")]
        crate::data::planted::at(crate::data::planted::Site::Request, self.req.len);
        let limits = &snap.limits;
        let filled = self.buf.filled();
        let Some(route) = snap.router.lookup(self.req.route_host(filled), self.req.route_path(filled)) else {
            progress.request_done = self.req.framing == Framing::None;
            if progress.request_done {
                self.buf.consume(self.req.len);
            }
            return Err(ProxyError::NoRoute);
        };
        let group = &snap.groups[route.group];
        self.route = route.id;
        rewrite::request_head(&mut self.out, filled, &self.req, route, &self.ip[..self.ip_len], &snap.via);

        // Body bytes that arrived with the head go out in the same write.
        let mut body = ReqBody::new(self.req.framing, limits.max_body_bytes);
        let mut body_done = true;
        let head_len = self.req.len;
        if let Some(b) = body.as_mut() {
            let avail = &filled[head_len..];
            let n = b.take(avail, &mut body_done)?;
            self.out.extend_from_slice(&avail[..n]);
            self.buf.consume(head_len + n);
        } else {
            self.buf.consume(head_len);
        }
        progress.request_done = body_done;
        // Replaying is safe when every request byte is still in `out` and the method allows it.
        let replayable = body_done && (self.req.idempotent || body.is_none());

        let server = self.worker.pick(route.group, group);
        let worker = Rc::clone(&self.worker);
        let _in_flight = InFlight::new(&worker, server.id);
        let pooled = self.worker.pool.borrow_mut().checkout(server.id, group.idle_timeout, started);
        let (mut up, mut reused) = match pooled {
            Some(c) => {
                self.worker.metrics().upstream_reused();
                (c, true)
            }
            None => (self.connect(server, group).await?, false),
        };
        let mut deadline = self.worker.timers.deadline(group.response_header_timeout);
        loop {
            match self.send(&mut up, limits, body.as_mut(), progress, deadline).await {
                Ok(()) => break,
                Err(SendError::Stale) if reused && replayable => {
                    self.worker.metrics().retry();
                    up = self.connect(server, group).await?;
                    reused = false;
                    self.worker.timers.observe(Instant::now());
                    deadline = self.worker.timers.deadline(group.response_header_timeout);
                }
                Err(SendError::Stale) => return Err(ProxyError::UpstreamClosed),
                Err(SendError::Proxy(e)) => return Err(e),
            }
        }
        self.respond(up, snap, group, progress).await
    }

    #[cold]
    async fn connect(&self, server: Server, group: &UpstreamGroup) -> Result<UpstreamConn, ProxyError> {
        match timeout(group.connect_timeout, TcpStream::connect(server.addr)).await {
            Err(_) => Err(ProxyError::ConnectTimeout),
            Ok(Err(_)) => Err(ProxyError::UpstreamConnect),
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                self.worker.pool.borrow_mut().opened += 1;
                self.worker.metrics().upstream_opened();
                Ok(UpstreamConn::new(s, server.id, server.addr))
            }
        }
    }

    /// Sends the request (head and body) and reads until a final response head is parsed in
    /// `up.buf`; interim responses are relayed on the way.
    async fn send(
        &mut self,
        up: &mut UpstreamConn,
        limits: &Limits,
        mut body: Option<&mut ReqBody>,
        progress: &mut Progress,
        deadline: u64,
    ) -> Result<(), SendError> {
        match write_now(&up.stream, &self.out) {
            Ok(n) if n == self.out.len() => {}
            Ok(n) => match self.worker.timers.within(self.timer_slot, deadline, up.stream.write_all(&self.out[n..])).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SendError::Stale),
                Err(_) => return Err(ProxyError::ResponseTimeout.into()),
            },
            Err(()) => return Err(SendError::Stale),
        }
        loop {
            if !progress.request_done
                && let Some(b) = body.as_deref_mut()
            {
                self.stream_request_body(up, b, limits, progress).await?;
            }
            self.read_response_head(up, deadline, progress).await?;
            if self.res.status >= 200 || self.res.status == 101 {
                return Ok(());
            }
            // Interim response (100 Continue, 103 Early Hints): relayed to HTTP/1.1 clients.
            if self.req.minor == 1 {
                rewrite::interim_head(&mut self.out, up.buf.filled(), &self.res);
                self.write_client_out(limits.client_idle_timeout).await?;
            }
            up.buf.consume(self.res.len);
        }
    }

    /// Streams the rest of the request body to the upstream, returning early (with bytes in
    /// `up.buf`) if the upstream starts answering before the body is complete.
    async fn stream_request_body(
        &mut self,
        up: &mut UpstreamConn,
        body: &mut ReqBody,
        limits: &Limits,
        progress: &mut Progress,
    ) -> Result<(), SendError> {
        while !progress.request_done {
            if self.buf.is_empty() {
                let timers = &self.worker.timers;
                let until = timers.deadline(limits.client_idle_timeout);
                tokio::select! {
                    biased;
                    r = timers.within(self.timer_slot, until, self.client.read(self.buf.spare())) => match r {
                        Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::ClientGone.into()),
                        Ok(Ok(n)) => self.buf.advance(n),
                        Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    },
                    r = up.stream.readable() => {
                        if r.is_err() {
                            return Err(ProxyError::UpstreamClosed.into());
                        }
                        match up.stream.try_read(up.buf.spare()) {
                            Ok(0) => return Err(ProxyError::UpstreamClosed.into()),
                            Ok(n) => {
                                up.buf.advance(n);
                                return Ok(()); // an early response: stop sending
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                            Err(_) => return Err(ProxyError::UpstreamClosed.into()),
                        }
                    }
                }
            }
            let avail = self.buf.filled();
            let mut done = false;
            let n = body.take(avail, &mut done)?;
            if up.stream.write_all(&avail[..n]).await.is_err() {
                return Err(ProxyError::UpstreamClosed.into());
            }
            self.buf.consume(n);
            progress.request_done = done;
        }
        Ok(())
    }

    async fn read_response_head(&mut self, up: &mut UpstreamConn, deadline: u64, progress: &mut Progress) -> Result<(), SendError> {
        loop {
            if !up.buf.is_empty() {
                progress.upstream_answered = true;
                if let Parsed::Complete = self.res.parse(up.buf.filled(), self.req.is_head)? {
                    return Ok(());
                }
                if up.buf.len() >= up.buf.capacity() {
                    return Err(ProxyError::BadResponse.into());
                }
            }
            let read = match up.stream.try_read(up.buf.spare()) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.worker.timers.within(self.timer_slot, deadline, up.stream.read(up.buf.spare())).await
                }
                r => Ok(r),
            };
            match read {
                Ok(Ok(n)) if n > 0 => up.buf.advance(n),
                Ok(_) if !progress.upstream_answered => return Err(SendError::Stale),
                Ok(_) => return Err(ProxyError::UpstreamClosed.into()),
                Err(_) => return Err(ProxyError::ResponseTimeout.into()),
            }
        }
    }

    /// Relays the final response whose head is parsed at the front of `up.buf`.
    async fn respond(
        &mut self,
        mut up: UpstreamConn,
        snap: &Snapshot,
        group: &UpstreamGroup,
        progress: &mut Progress,
    ) -> Result<bool, ProxyError> {
        let idle = snap.limits.client_idle_timeout;
        if self.res.status == 101 {
            return self.tunnel(up, snap, progress).await;
        }
        let dechunk = self.req.minor == 0 && self.res.framing == Framing::Chunked;
        // While draining, the response in flight is the connection's last: `Connection: close`.
        let keep = self.req.keep_alive
            && progress.request_done
            && self.res.framing != Framing::UntilClose
            && !dechunk
            && !self.worker.drain.is_draining();
        let conn = match (keep, self.req.minor) {
            (false, _) => ClientConn::Close,
            (true, 0) => ClientConn::KeepAlive10,
            (true, _) => ClientConn::KeepAlive11,
        };
        rewrite::response_head(&mut self.out, up.buf.filled(), &self.res, &snap.via, conn, dechunk, false);
        up.buf.consume(self.res.len);

        let mut body = match self.res.framing {
            Framing::None | Framing::Length(0) => None,
            Framing::Length(n) => Some(ResBody::Length(n)),
            Framing::Chunked => Some(ResBody::Chunked { dec: Chunked::new(u64::MAX), dechunk }),
            Framing::UntilClose => Some(ResBody::UntilClose),
        };
        #[cfg(feature = "planted")]
        if self.res.framing == Framing::Chunked {
            crate::data::planted::at(crate::data::planted::Site::Chunked, self.res.len);
        }
        let mut done = body.is_none();
        if let Some(b) = body.as_mut() {
            // The body bytes that came with the head leave in the same write (a bounded copy
            // that saves a syscall). A malformed prefix is still a clean 502: nothing was sent.
            let (n, end) = b.take(up.buf.filled(), &mut self.out)?;
            if !b.dechunks() {
                self.out.extend_from_slice(&up.buf.filled()[..n]);
            }
            up.buf.consume(n);
            done = end;
        }
        progress.responded = true;
        self.write_client_out(idle).await?;

        if let Some(b) = body.as_mut() {
            while !done {
                let read = match up.stream.try_read(up.buf.spare()) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let timers = &self.worker.timers;
                        timers.within(self.timer_slot, timers.deadline(group.response_header_timeout), up.stream.read(up.buf.spare())).await
                    }
                    r => Ok(r),
                };
                match read {
                    Ok(Ok(0)) if matches!(b, ResBody::UntilClose) => break,
                    Ok(Ok(n)) if n > 0 => up.buf.advance(n),
                    // EOF, reset or stall mid-body: close the client rather than end cleanly.
                    _ => return Err(ProxyError::UpstreamBroken),
                }
                self.out.clear();
                let (n, end) = b.take(up.buf.filled(), &mut self.out).map_err(|_| ProxyError::UpstreamBroken)?;
                done = end;
                if b.dechunks() {
                    self.write_client_out(idle).await?;
                } else {
                    // Zero-copy relay: straight from the upstream buffer to the client socket.
                    write_within(&self.worker.timers, self.timer_slot, &mut self.client, &up.buf.filled()[..n], idle)
                        .await
                        .map_err(|()| ProxyError::ClientGone)?;
                }
                up.buf.consume(n);
            }
        }

        if self.res.keep_alive && progress.request_done && up.buf.is_empty() {
            self.worker.pool.borrow_mut().checkin(up, group.idle_pool_size, Instant::now());
        }
        Ok(keep)
    }

    /// After a 101: relay the head, then copy bytes both ways until either side closes.
    #[cold]
    async fn tunnel(&mut self, mut up: UpstreamConn, snap: &Snapshot, progress: &mut Progress) -> Result<bool, ProxyError> {
        if self.req.upgrade.is_none() {
            return Err(ProxyError::BadResponse);
        }
        rewrite::response_head(&mut self.out, up.buf.filled(), &self.res, &snap.via, ClientConn::Close, false, true);
        up.buf.consume(self.res.len);
        self.out.extend_from_slice(up.buf.filled());
        up.buf.clear();
        progress.responded = true;
        self.write_client_out(snap.limits.client_idle_timeout).await?;
        if !self.buf.is_empty() {
            if up.stream.write_all(self.buf.filled()).await.is_err() {
                return Ok(false);
            }
            self.buf.clear();
        }
        let _ = tokio::io::copy_bidirectional(&mut self.client, &mut up.stream).await;
        Ok(false)
    }

    async fn write_client_out(&mut self, idle: Duration) -> Result<(), ProxyError> {
        write_within(&self.worker.timers, self.timer_slot, &mut self.client, &self.out, idle).await.map_err(|()| ProxyError::ClientGone)
    }

    async fn write_client(&mut self, bytes: &[u8], idle: Duration) -> Result<(), ProxyError> {
        write_within(&self.worker.timers, self.timer_slot, &mut self.client, bytes, idle).await.map_err(|()| ProxyError::ClientGone)
    }

    /// Answers an error (when a response can still be sent) and closes with a short linger.
    #[cold]
    async fn fail(&mut self, e: ProxyError, progress: &Progress) {
        if progress.responded {
            return; // mid-response: dropping the connection is the only honest signal
        }
        let Some(bytes) = e.response() else { return };
        #[cfg(feature = "planted")]
        crate::data::planted::at(crate::data::planted::Site::Error, bytes.len());
        if self.write_client(bytes, LINGER).await.is_err() {
            return;
        }
        let _ = self.client.shutdown().await;
        // Discard what the client still sends so the close is a FIN, not a reset that could
        // destroy the response before the client reads it.
        let until = Instant::now() + LINGER;
        let mut drained = 0;
        self.buf.clear();
        while drained < LINGER_BYTES {
            match timeout_at(until, self.client.read(self.buf.spare())).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// Writes what the socket takes at once, without waiting: `Ok(bytes written)` (possibly fewer than
/// asked, possibly 0 when the socket is full), `Err(())` when the connection is broken. The common
/// case — the whole buffer fits in the socket — then costs no timer at all.
#[inline]
fn write_now(stream: &TcpStream, mut bytes: &[u8]) -> Result<usize, ()> {
    let total = bytes.len();
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(0) => return Err(()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(total - bytes.len())
}

/// Writes all of `bytes` within `limit`; the timer exists only when the socket cannot take
/// everything at once.
async fn write_within(timers: &Timers, slot: usize, stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> Result<(), ()> {
    let n = write_now(stream, bytes)?;
    if n == bytes.len() {
        return Ok(());
    }
    match timers.within(slot, timers.deadline(limit), stream.write_all(&bytes[n..])).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Closes the span of a sampled request with its outcome (tracing sampling only).
#[cold]
fn trace_end(span: Option<tracing::Span>, route: usize, status: u16, elapsed: Duration, error: Option<ProxyError>) {
    let Some(span) = span else { return };
    let route = if route == ROUTE_NONE { -1 } else { route as i64 };
    match error {
        None => {
            tracing::info!(target: "proxy::trace", parent: &span, route, status, latency_us = elapsed.as_micros() as u64, "request done")
        }
        Some(e) => {
            tracing::info!(target: "proxy::trace", parent: &span, route, status, latency_us = elapsed.as_micros() as u64, error = %e, "request failed")
        }
    }
}
