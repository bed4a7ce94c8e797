//! One HTTP/1.1 client connection: read a request head, route it, exchange it with an upstream
//! (the upstream side is [`super::upstream`], the body framing [`super::body`]), repeat while
//! keep-alive holds. Hot path.
//!
//! Buffers: the client read buffer, the output buffer, the parsed heads and the upstream read
//! buffer are a working set the connection borrows from its worker while it is active
//! ([`super::scratch`]); pooled upstream connections hold no buffer. Bodies are streamed through
//! those buffers as they arrive (never collected), and the request head plus the first body
//! bytes leave in one write, as do the response head and its first body bytes.
//!
//! Errors are [`ProxyError`] values; each maps to a canned response (or to closing the
//! connection when a response has already started, so a truncated body never looks complete).

use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::data::timer::Timers;

use crate::data::access::AccessRecord;
use crate::data::buf::Buf;
use crate::data::error::ProxyError;
use crate::data::h1::body::ReqBody;
use crate::data::h1::head::{Framing, Parsed};
use crate::data::h1::rewrite;
use crate::data::h1::scratch::{self, CLIENT_BUF, Scratch};
use crate::data::h1::upstream::SendError;
use crate::data::io::ClientIo;
use crate::data::metrics::ROUTE_NONE;
use crate::data::upstream::connect::connect;
use crate::data::worker::{ConnPermit, Worker};
use crate::snapshot::{Limits, Snapshot};

/// How long a connection closed after an error keeps reading (and discarding) what the client
/// still sends, so the error response is not destroyed by a TCP reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Serves one accepted client connection until it closes.
///
/// Two levels, so that an idle keep-alive connection costs little memory (issue 14): this small
/// future waits for the connection to become readable; the request loop ([`Conn::active`]), whose
/// state machine is a few KiB, runs in a box made when the connection wakes and dropped when it
/// has been idle for `memory.release_idle_after`, and the buffers it borrows from the worker's
/// pool go back at the same moment. A connection sending requests back to back never leaves the
/// request loop: no allocation per request.
///
/// The connection is set up here, before the task exists, so the spawned future holds only the
/// connection itself (its arguments would otherwise stay in the task's state for its whole life).
pub fn serve<S: ClientIo + 'static>(worker: Rc<Worker>, client: S, peer: SocketAddr, permit: ConnPermit) -> impl Future<Output = ()> {
    worker.metrics().connection();
    // A new connection owes its first head within the header timeout from the accept, so a
    // client that connects and sends nothing cannot hold a slot for the idle timeout.
    let header_timeout = worker.snapshot().limits.header_read_timeout;
    let mut conn = Conn::new(worker, client, peer, permit);
    let mut until = conn.worker.timers.deadline(header_timeout);
    // The connection's life: idle waits (small, unboxed) and boxed request loops, in turn. An
    // `async move` block that uses `conn` in place (an `async fn` taking it would keep a second
    // copy of its arguments in the task's state).
    #[cfg(feature = "planted")]
    let planted = crate::data::planted::per_connection_bytes();
    async move {
        #[cfg(feature = "planted")]
        let _planted = planted;
        let mut first = true;
        loop {
            let (tslot, dslot) = (conn.timer_slot as usize, conn.drain_slot as usize);
            match idle_wait(&conn.worker, &conn.client, tslot, dslot, until).await {
                Wake::Readable | Wake::Drain => {}
                Wake::Closed | Wake::Expired => return,
            }
            match Box::pin(conn.active(first.then_some(until))).await {
                Some(idle_until) => until = idle_until,
                None => return,
            }
            first = false;
        }
    }
}

/// What a connection keeps for its whole life, idle or not: kept small (issue 14).
struct Conn<S> {
    worker: Rc<Worker>,
    client: S,
    /// The peer address as text, formatted once (`X-Forwarded-For`, access log).
    ip: [u8; 48],
    ip_len: u8,
    /// This connection's slot in the worker's drain signal.
    drain_slot: u32,
    /// This connection's slot in the worker's timer table.
    timer_slot: u32,
    /// Counts the connection against `limits.max_connections` until it is dropped.
    _permit: ConnPermit,
}

/// A connection while its request loop runs (boxed: see [`serve`]): the working set borrowed from
/// the worker's pool, given back while the loop waits for the next request and when it ends.
pub(super) struct Active<'c, S> {
    pub(super) worker: Rc<Worker>,
    pub(super) client: &'c mut S,
    pub(super) ip: &'c [u8],
    drain_slot: usize,
    pub(super) timer_slot: usize,
    pub(super) s: Scratch,
    /// The route of the request in progress (`ROUTE_NONE` until routed), for metrics.
    route: usize,
}

impl<S> Drop for Active<'_, S> {
    fn drop(&mut self) {
        scratch::give(std::mem::replace(&mut self.s, Scratch::husk()));
    }
}

/// How the request loop left off.
enum Head {
    /// A complete request head is at the front of the buffer.
    Ready,
    /// The connection is done (closed by the client, idle timeout, drain).
    Close,
    /// Idle past `release_idle_after` with nothing buffered: the working set goes back to the
    /// pool and the connection waits, unboxed, until the idle deadline (a timer tick).
    Release(u64),
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.worker.drain.release(self.drain_slot as usize);
        self.worker.timers.release(self.timer_slot as usize);
    }
}

/// What is known about the exchange in progress, for the error path.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The whole request (head and body) has been read from the client.
    pub(super) request_done: bool,
    /// Bytes of a response reached the client: an error can only close the connection now.
    pub(super) responded: bool,
    /// Some response bytes came from the upstream (the connection was not stale).
    pub(super) upstream_answered: bool,
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

impl<S: ClientIo> Conn<S> {
    fn new(worker: Rc<Worker>, client: S, peer: SocketAddr, permit: ConnPermit) -> Self {
        let mut ip = [0u8; 48];
        let ip_len = {
            let mut w: &mut [u8] = &mut ip;
            let before = w.len();
            // Formatted once per connection into a fixed array (no allocation).
            let _ = write!(w, "{}", peer.ip().to_canonical());
            (before - w.len()) as u8 // at most 48
        };
        // Slot numbers stay below the open-connection count (`limits.max_connections` ≤ 10^7).
        let drain_slot = worker.drain.register() as u32;
        let timer_slot = worker.timers.register() as u32;
        // The first head's deadline counts from here (the coarse clock may be a tick old).
        worker.timers.observe(Instant::now());
        Conn { drain_slot, timer_slot, worker, client, ip, ip_len, _permit: permit }
    }

    /// The request loop, with a working set borrowed from the worker's pool for as long as it
    /// runs. `first`: the deadline of a new connection's first head. `Some(idle deadline)`: idle
    /// long enough to give the set back; `None`: close.
    async fn active(&mut self, first: Option<u64>) -> Option<u64> {
        let client_buf = client_buf(&self.worker.snapshot().limits);
        let mut active = Active {
            worker: Rc::clone(&self.worker),
            client: &mut self.client,
            ip: &self.ip[..self.ip_len as usize],
            drain_slot: self.drain_slot as usize,
            timer_slot: self.timer_slot as usize,
            s: scratch::take(client_buf),
            route: ROUTE_NONE,
        };
        active.run(first).await
    }
}

impl<S: ClientIo> Active<'_, S> {
    async fn run(&mut self, mut first: Option<u64>) -> Option<u64> {
        loop {
            let snap = self.worker.snapshot();
            match self.read_head(&snap.limits, first.take()).await {
                Ok(Head::Ready) => {}
                Ok(Head::Close) => return None,
                Ok(Head::Release(idle_until)) => return Some(idle_until),
                Err(e) => {
                    self.head_error(e);
                    self.fail(e, &Progress::default()).await;
                    return None;
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
                Ok(_) => self.s.res.status,
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
                Ok(false) => return None,
                Err(e) => {
                    self.worker.metrics().error(e);
                    let keep = e.keeps_client() && self.s.req.keep_alive && progress.request_done && !progress.responded;
                    if keep {
                        #[cfg(feature = "planted")]
                        crate::data::planted::at(crate::data::planted::Site::Error, 0);
                        if let Some(bytes) = e.response()
                            && self.write_client(bytes, snap.limits.client_idle_timeout).await.is_err()
                        {
                            return None;
                        }
                    } else {
                        self.fail(e, &progress).await;
                        return None;
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

    /// Opens the span of a sampled request.
    ///
    /// Off the request path: called for sampled requests only (tracing sampling; never at rate 0).
    #[cold]
    fn trace_start(&self) -> tracing::Span {
        let b = self.s.buf.filled();
        fn text(v: &[u8]) -> &str {
            std::str::from_utf8(v).unwrap_or("<non-utf8>")
        }
        tracing::info_span!(
            target: "proxy::trace",
            "request",
            worker = self.worker.index,
            method = text(self.s.req.method.of(b)),
            host = text(self.s.req.route_host(b)),
            path = text(self.s.req.route_path(b)),
            peer = text(self.ip),
        )
    }

    /// Copies the request line into a fixed-size access-log record (no allocation).
    fn access_start(&self) -> AccessRecord {
        let b = self.s.buf.filled();
        let mut r =
            AccessRecord::new(self.s.req.method.of(b), self.s.req.route_host(b), self.s.req.target.path.of(b), self.ip, self.worker.index);
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

    /// Reads until a complete request head is at the front of the buffer. `first`: a new
    /// connection's first head, due by that deadline.
    async fn read_head(&mut self, limits: &Limits, first: Option<u64>) -> Result<Head, ProxyError> {
        let mut deadline = first;
        // Between requests: the idle deadline, and the earlier moment the working set goes back.
        let mut idle: Option<(u64, u64)> = None;
        // Part-way through a head: when the working set goes back if the rest is slow to come.
        let mut release: Option<u64> = None;
        loop {
            if !self.s.buf.is_empty() {
                if let Parsed::Complete = self.s.req.parse(self.s.buf.filled(), limits)? {
                    return Ok(Head::Ready);
                }
                if self.s.buf.len() >= self.s.buf.capacity() {
                    return Err(ProxyError::HeadersTooLarge);
                }
            }
            let started = !self.s.buf.is_empty();
            if !started && self.worker.drain.is_draining() {
                if self.drain_read() {
                    continue;
                }
                return Ok(Head::Close);
            }
            // Bytes already waiting need no timer (and no extra syscall: a WouldBlock here
            // clears the readiness the timed read below would otherwise try first).
            match self.client.try_read(self.s.buf.spare()) {
                Ok(0) => return Ok(Head::Close),
                Ok(n) => {
                    self.s.buf.advance(n);
                    release = None;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Ok(Head::Close),
            }
            // Between keep-alive requests the idle timeout runs until the first byte, the header
            // timeout from there.
            let timers = &self.worker.timers;
            let until = match deadline {
                Some(d) => d,
                None if started => *deadline.insert(timers.deadline(limits.header_read_timeout)),
                None => {
                    let (idle_until, release_at) =
                        *idle.get_or_insert_with(|| (timers.deadline(limits.client_idle_timeout), release_deadline(timers, limits)));
                    idle_until.min(release_at)
                }
            };
            let read = if started {
                // Part-way through a head. A client that sends nothing more for
                // `release_idle_after` waits without the working set: its bytes so far are kept
                // in a box of their size (issue 14: a few hundred bytes, not ~20 KiB of buffers).
                let release_at = *release.get_or_insert_with(|| release_deadline(timers, limits));
                if release_at < until {
                    match timers.within(self.timer_slot, release_at, self.client.read(self.s.buf.spare())).await {
                        Err(_) => {
                            if !self.wait_without_working_set(until, limits).await? {
                                return Ok(Head::Close);
                            }
                            // The release delay counts again from the bytes that woke it.
                            release = None;
                            continue;
                        }
                        read => read,
                    }
                } else {
                    timers.within(self.timer_slot, until, self.client.read(self.s.buf.spare())).await
                }
            } else {
                // Idle between requests, holding the working set until `release_at` (a busy
                // connection keeps it from request to request); the one place an active
                // connection waits on the drain signal. (The flag check above and the waiter
                // creation here run with no await between them, on one thread: a drain cannot
                // slip in unseen.)
                let (drain, slot) = (&self.worker.drain, self.drain_slot);
                tokio::select! {
                    biased;
                    r = timers.within(self.timer_slot, until, self.client.read(self.s.buf.spare())) => r,
                    () = std::future::poll_fn(|cx| drain.poll_drained(slot, cx)) => continue,
                }
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(Head::Close),
                Ok(Ok(n)) => {
                    self.s.buf.advance(n);
                    // A slow head's working set goes back after `release_idle_after` without a
                    // byte (not after that long in all: a trickle is cut by the header timeout).
                    release = None;
                }
                Err(_) if started => return Err(ProxyError::RequestTimeout),
                // Idle past `release_at`: the loop ends, its box and working set are freed, and
                // the connection waits unboxed for the rest of the idle timeout.
                Err(_) => {
                    return Ok(match idle {
                        Some((idle_until, release_at)) if release_at < idle_until => Head::Release(idle_until),
                        _ => Head::Close,
                    });
                }
            }
        }
    }

    /// A slow client part-way through a head: gives the working set back, keeps the bytes so far
    /// in a box of their size, and waits for the socket to be readable (or `until`, the header
    /// deadline: 408). Then borrows a working set again with the bytes in front. `Ok(false)`: the
    /// client closed or the socket failed. Off the request path (a head slower than
    /// `release_idle_after`): one allocation per wait.
    async fn wait_without_working_set(&mut self, until: u64, limits: &Limits) -> Result<bool, ProxyError> {
        let kept = Buf::holding(self.s.buf.filled());
        scratch::give(std::mem::replace(&mut self.s, Scratch::husk()));
        let ready = self.worker.timers.within(self.timer_slot, until, self.client.readable()).await;
        self.s = scratch::take(client_buf(limits));
        // The set may be smaller than the one the bytes came from (a reload lowered the head
        // limit): bytes that no longer fit are a head too large.
        let n = kept.len();
        let Some(spare) = self.s.buf.spare().get_mut(..n) else {
            return Err(ProxyError::HeadersTooLarge);
        };
        spare.copy_from_slice(kept.filled());
        self.s.buf.advance(n);
        match ready {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(ProxyError::RequestTimeout),
        }
    }

    /// Draining and idle: bytes that already arrived (a request that raced the drain) are
    /// served, with `Connection: close`; otherwise the connection closes. `true`: bytes read.
    #[cold]
    fn drain_read(&mut self) -> bool {
        match self.client.try_read(self.s.buf.spare()) {
            Ok(n) if n > 0 => {
                self.s.buf.advance(n);
                true
            }
            _ => false,
        }
    }

    /// Proxies the request whose head is at the front of `buf`. `Ok(keep_alive)`.
    async fn exchange(&mut self, snap: &Snapshot, progress: &mut Progress, started: Instant) -> Result<bool, ProxyError> {
        #[cfg(feature = "planted")]
        crate::data::planted::at(crate::data::planted::Site::Request, self.s.req.len);
        let limits = &snap.limits;
        let filled = self.s.buf.filled();
        let Some(route) = snap.router.lookup(self.s.req.route_host(filled), self.s.req.route_path(filled)) else {
            progress.request_done = self.s.req.framing == Framing::None;
            if progress.request_done {
                self.s.buf.consume(self.s.req.len);
            }
            return Err(ProxyError::NoRoute);
        };
        let group = &snap.groups[route.group];
        self.route = route.id;
        if group.h2 {
            return self.exchange_h2(snap, route, group, progress).await;
        }
        rewrite::request_head(&mut self.s.out, filled, &self.s.req, route, self.ip, S::TLS, &snap.via);

        // Body bytes that arrived with the head go out in the same write.
        let mut body = ReqBody::new(self.s.req.framing, limits.max_body_bytes);
        let mut body_done = true;
        let head_len = self.s.req.len;
        if let Some(b) = body.as_mut() {
            let avail = &filled[head_len..];
            let n = b.take(avail, &mut body_done)?;
            self.s.out.extend_from_slice(&avail[..n]);
            self.s.buf.consume(head_len + n);
        } else {
            self.s.buf.consume(head_len);
        }
        progress.request_done = body_done;
        // Replaying is safe when every request byte is still in `out` and the method allows it.
        let replayable = body_done && (self.s.req.idempotent || body.is_none());

        // What the last exchange's upstream left in the buffer (bytes past its response, or a
        // response that did not parse) went with that connection: it must never be read as this
        // request's answer.
        self.s.up.clear();
        let server = self.worker.pick(route.group, group);
        let worker = Rc::clone(&self.worker);
        let _in_flight = InFlight::new(&worker, server.id);
        let pooled = self.worker.pool.borrow_mut().checkout(server.id, group.idle_timeout, started);
        let (mut up, mut reused) = match pooled {
            Some(c) => {
                self.worker.metrics().upstream_reused();
                (c, true)
            }
            None => (connect(&self.worker, server, group).await?, false),
        };
        let mut deadline = self.worker.timers.deadline(group.response_header_timeout);
        loop {
            match self.send(&mut up, limits, body.as_mut(), progress, deadline).await {
                Ok(()) => break,
                Err(SendError::Stale) if reused && replayable => {
                    self.worker.metrics().retry();
                    up = connect(&self.worker, server, group).await?;
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

    pub(super) async fn write_client_out(&mut self, idle: Duration) -> Result<(), ProxyError> {
        write_within(&self.worker.timers, self.timer_slot, self.client, &self.s.out, idle).await.map_err(|()| ProxyError::ClientGone)
    }

    async fn write_client(&mut self, bytes: &[u8], idle: Duration) -> Result<(), ProxyError> {
        write_within(&self.worker.timers, self.timer_slot, self.client, bytes, idle).await.map_err(|()| ProxyError::ClientGone)
    }

    /// Answers an error (when a response can still be sent) and closes with a short linger.
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
        self.s.buf.clear();
        while drained < LINGER_BYTES {
            match timeout_at(until, self.client.read(self.s.buf.spare())).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// When an idle connection gives its working set back (`memory.release_idle_after`).
#[inline]
/// The client buffer a working set needs under `limits`: room for the largest head allowed.
fn client_buf(limits: &Limits) -> usize {
    CLIENT_BUF.max(limits.max_request_head_bytes + 1)
}

fn release_deadline(timers: &Timers, limits: &Limits) -> u64 {
    #[cfg(feature = "planted")]
    if crate::data::planted::holds_working_sets() {
        return u64::MAX; // never: the planted regression the memory gate must catch
    }
    timers.deadline(limits.release_idle_after)
}

/// Why an idle connection stopped waiting.
enum Wake {
    Readable,
    /// The socket reported an error.
    Closed,
    /// The proxy is draining: the request loop serves bytes that raced the drain, or closes.
    Drain,
    Expired,
}

/// Waits, holding no buffer, until the client sends something (or closes), the proxy drains or
/// `until` passes. A plain poll over the socket's readiness, the drain signal and the timer slot,
/// not an `async fn`: no nested futures, so the state an idle connection keeps is five words.
fn idle_wait<'a, S: ClientIo>(
    worker: &'a Worker,
    client: &'a S,
    tslot: usize,
    dslot: usize,
    until: u64,
) -> impl Future<Output = Wake> + 'a {
    std::future::poll_fn(move |cx| {
        let wake = if let Poll::Ready(r) = client.poll_read_ready(cx) {
            if r.is_ok() { Wake::Readable } else { Wake::Closed }
        } else if worker.drain.poll_drained(dslot, cx).is_ready() {
            Wake::Drain
        } else if worker.timers.poll_expired(tslot, until, cx).is_ready() {
            Wake::Expired
        } else {
            return Poll::Pending;
        };
        worker.timers.disarm(tslot);
        Poll::Ready(wake)
    })
}

/// Writes what the socket takes at once, without waiting: `Ok(bytes written)` (possibly fewer than
/// asked, possibly 0 when the socket is full), `Err(())` when the connection is broken. The common
/// case — the whole buffer fits in the socket — then costs no timer at all.
#[inline]
pub(super) fn write_now<S: ClientIo>(stream: &mut S, mut bytes: &[u8]) -> Result<usize, ()> {
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
pub(super) async fn write_within<S: ClientIo>(
    timers: &Timers,
    slot: usize,
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), ()> {
    let n = write_now(stream, bytes)?;
    if n == bytes.len() && stream.try_flush().map_err(|_| ())? {
        return Ok(());
    }
    let rest = async {
        stream.write_all(&bytes[n..]).await?;
        stream.flush().await
    };
    match timers.within(slot, timers.deadline(limit), rest).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Closes the span of a sampled request with its outcome.
///
/// Off the request path: called for sampled requests only (tracing sampling; never at rate 0).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ServerIds, parse};
    use crate::data::worker::Shared;
    use tokio::net::{TcpListener, TcpStream};

    /// A minimal origin: answers every request head it reads with a 2-byte 200.
    async fn origin(l: TcpListener) {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::task::spawn_local(async move {
                let mut b = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&b[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }

    async fn get(c: &mut TcpStream) {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut b = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = c.read(&mut b).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&b[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    }

    /// Issue 14: a connection that goes idle gives its working set back to the worker's pool, and
    /// the next request on it borrows the same set again (no new one allocated).
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_gives_its_working_set_back() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let o = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let oaddr = o.local_addr().unwrap();
                tokio::task::spawn_local(origin(o));
                let text = format!(
                    "[[listeners]]\naddress = \"127.0.0.1:0\"\n[memory]\nrelease_idle_after = \"100ms\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"{oaddr}\"]\n"
                );
                let c = parse(std::path::Path::new("t"), &text, &mut ServerIds::default()).unwrap();
                let w = Worker::new(Shared::new(c.snapshot), 0);
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::task::spawn_local(crate::data::accept::accept_loop(Rc::clone(&w), l, 0));
                let (spare0, created0) = scratch::stats();

                let mut client = TcpStream::connect(addr).await.unwrap();
                get(&mut client).await;
                get(&mut client).await; // back to back: the same set, still lent
                let (spare, created) = scratch::stats();
                assert_eq!(created, created0 + 1, "one working set for the busy connection");
                assert_eq!(spare, spare0, "lent while the connection is busy");

                // Idle past release_idle_after (100 ms; the coarse clock fires it within 2 ticks):
                // wait for it, up to 3 s on a busy machine.
                let until = Instant::now() + Duration::from_secs(3);
                while scratch::stats().0 == spare0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let (spare, created) = scratch::stats();
                assert_eq!(spare, spare0 + 1, "the idle connection gave its working set back");

                get(&mut client).await; // wakes: borrows the spare set again
                let (spare_after, created_after) = scratch::stats();
                assert_eq!(created_after, created, "the spare set is reused, not a new one allocated");
                assert_eq!(spare_after, spare - 1, "lent again while the connection is busy");
            })
            .await;
    }

    /// Issue 14: a client slow to send the rest of a head waits without a working set after
    /// `release_idle_after` (its bytes so far kept aside), and the request then completes with
    /// every byte it sent, on a working set borrowed again.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_head_gives_its_working_set_back_and_completes() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let o = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let oaddr = o.local_addr().unwrap();
                tokio::task::spawn_local(origin(o));
                let text = format!(
                    "[[listeners]]\naddress = \"127.0.0.1:0\"\n[memory]\nrelease_idle_after = \"100ms\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"{oaddr}\"]\n"
                );
                let c = parse(std::path::Path::new("t"), &text, &mut ServerIds::default()).unwrap();
                let w = Worker::new(Shared::new(c.snapshot), 0);
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::task::spawn_local(crate::data::accept::accept_loop(Rc::clone(&w), l, 0));

                let mut client = TcpStream::connect(addr).await.unwrap();
                get(&mut client).await;
                // Let the set go back while idle, so the counts below start from a known state.
                let until = Instant::now() + Duration::from_secs(3);
                let (spare0, _) = scratch::stats();
                while scratch::stats().0 == spare0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let (spare_idle, created) = scratch::stats();

                // Half a head: the connection borrows a set to read it...
                client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
                let until = Instant::now() + Duration::from_secs(3);
                while scratch::stats().0 == spare_idle && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                assert_eq!(scratch::stats().0, spare_idle - 1, "lent while the head is read");
                // ...and gives it back when the rest is slow to come.
                let until = Instant::now() + Duration::from_secs(3);
                while scratch::stats().0 != spare_idle && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(scratch::stats().0, spare_idle, "a slow head does not hold a working set");

                // The rest: the request is served whole (the origin answers only a complete head).
                client.write_all(b"st: t\r\n\r\n").await.unwrap();
                let mut got = Vec::new();
                let mut b = [0u8; 4096];
                while !got.ends_with(b"\r\n\r\nok") {
                    let n = client.read(&mut b).await.unwrap();
                    assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&b[..n]);
                }
                assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
                assert_eq!(scratch::stats().1, created, "the spare set is reused, not a new one allocated");
            })
            .await;
    }
}
