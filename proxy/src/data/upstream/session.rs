//! HTTP/2 sessions to upstream servers (groups with `protocol = "h2c"` or `"h2"`): a few
//! multiplexed connections per worker per server, kept in the worker (no lock, no atomic on our
//! side). Hot path, shared by every protocol that sends requests over HTTP/2.
//!
//! A request takes a stream on the first live session of its server with room under the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` (capped at [`MAX_STREAMS`]); when every session is
//! full, another connection is opened rather than streams queued without bound. Each session's
//! connection is driven by a task of its own, which also pings the server every [`PING_EVERY`]
//! and closes a connection that does not answer within the next period (a server that went away
//! without a FIN is noticed). A session without a stream for its group's `idle_timeout` is
//! closed by the worker's once-a-second sweep, as idle pooled HTTP/1.1 connections are.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::Ping;
use h2::client::{Builder, Connection, SendRequest};
use tokio::time::Instant;

use crate::data::error::ProxyError;
use crate::data::metrics::H2Event;
use crate::data::upstream::connect::connect;
use crate::data::upstream::stream::UpstreamStream;
use crate::data::worker::Worker;
use crate::snapshot::{Server, UpstreamGroup};

/// Streams one session carries at once at most, whatever the server allows.
pub const MAX_STREAMS: usize = 256;
/// How often a session's connection is pinged; no answer by the next ping closes it.
pub const PING_EVERY: Duration = Duration::from_secs(15);

/// What a session's streams and its driver task share.
#[derive(Debug)]
pub struct SessionState {
    /// Streams in flight.
    open: Cell<usize>,
    /// The connection is gone (its driver task ended): no new stream goes on it.
    dead: Cell<bool>,
    /// When the last stream ended (the idle timeout counts from here).
    idle_since: Cell<Instant>,
}

/// One HTTP/2 connection to a server.
#[derive(Debug)]
pub struct Session {
    send: SendRequest<Bytes>,
    state: Rc<SessionState>,
}

/// A stream's hold on its session: counted in the session's open streams until dropped.
#[derive(Debug)]
pub struct StreamSlot {
    state: Rc<SessionState>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let s = &self.state;
        s.open.set(s.open.get().saturating_sub(1));
        if s.open.get() == 0 {
            s.idle_since.set(Instant::now());
        }
    }
}

/// A worker's HTTP/2 sessions, by server id.
#[derive(Debug, Default)]
pub struct Sessions {
    by_server: Vec<Vec<Session>>,
    /// Connections being opened, per server id: a stream that finds no room waits for one of
    /// them rather than opening its own (ten streams arriving together share one connection).
    connecting: Vec<usize>,
    /// Streams waiting for a connection being opened (woken when any open ends).
    waiting: Vec<Waker>,
    /// Sessions opened so far (for the tests and metrics).
    pub opened: u64,
}

impl Sessions {
    /// A stream on a live session of `server_id` with room for one more: the session's request
    /// handle and the stream's slot.
    pub fn checkout(&mut self, server_id: usize) -> Option<(SendRequest<Bytes>, StreamSlot)> {
        let list = self.by_server.get_mut(server_id)?;
        list.retain(|s| !s.state.dead.get());
        let s = list.iter().find(|s| s.state.open.get() < s.send.current_max_send_streams().min(MAX_STREAMS))?;
        s.state.open.set(s.state.open.get() + 1);
        Some((s.send.clone(), StreamSlot { state: Rc::clone(&s.state) }))
    }

    fn insert(&mut self, server_id: usize, session: Session) {
        if self.by_server.len() <= server_id {
            self.by_server.resize_with(server_id + 1, Vec::new);
        }
        self.by_server[server_id].push(session);
    }

    /// Closes the sessions of dead connections, and those without a stream for longer than
    /// their server's idle timeout (`max_idle`; `None`: the server left the config). Returns how
    /// many were closed. Once a second, off the request path.
    pub fn sweep(&mut self, max_idle: impl Fn(usize) -> Option<Duration>, now: Instant) -> usize {
        let mut closed = 0;
        for (id, list) in self.by_server.iter_mut().enumerate() {
            let before = list.len();
            list.retain(|s| {
                let st = &s.state;
                if st.dead.get() {
                    return false;
                }
                if st.open.get() > 0 {
                    return true;
                }
                max_idle(id).is_some_and(|idle| now.saturating_duration_since(st.idle_since.get()) < idle)
            });
            closed += before - list.len();
        }
        closed
    }

    fn connecting(&self, server_id: usize) -> usize {
        self.connecting.get(server_id).copied().unwrap_or(0)
    }

    fn set_connecting(&mut self, server_id: usize, delta: isize) {
        if self.connecting.len() <= server_id {
            self.connecting.resize(server_id + 1, 0);
        }
        let n = &mut self.connecting[server_id];
        *n = n.saturating_add_signed(delta);
        if delta < 0 {
            for w in self.waiting.drain(..) {
                w.wake();
            }
        }
    }

    /// Live sessions (for the tests and metrics).
    pub fn count(&self) -> usize {
        self.by_server.iter().map(|l| l.iter().filter(|s| !s.state.dead.get()).count()).sum()
    }
}

/// A stream to `server` of `group` (which speaks HTTP/2): on a session with room, else on a new
/// connection (TCP, TLS by ALPN `h2` for `protocol = "h2"`, the HTTP/2 preface and settings, all
/// within the group's `connect_timeout`).
pub async fn stream(worker: &Worker, server: Server, group: &UpstreamGroup) -> Result<(SendRequest<Bytes>, StreamSlot), ProxyError> {
    let deadline = Instant::now() + group.connect_timeout;
    loop {
        // `Some(stream)`: a session had room; `None`: this stream opens the connection;
        // `Err(())`: another stream is opening one (the borrow ends before any wait).
        let found = {
            let mut sessions = worker.sessions.borrow_mut();
            match sessions.checkout(server.id) {
                Some(s) => Ok(Some(s)),
                None if sessions.connecting(server.id) == 0 => {
                    sessions.set_connecting(server.id, 1);
                    Ok(None)
                }
                None => Err(()),
            }
        };
        match found {
            Ok(Some(s)) => {
                worker.metrics().upstream_reused();
                return Ok(s);
            }
            Ok(None) => break,
            Err(()) => {}
        }
        // A connection to this server is being opened: wait for it (then look again).
        let mut waited = false;
        let wait = std::future::poll_fn(|cx| {
            if waited {
                return Poll::Ready(());
            }
            waited = true;
            worker.sessions.borrow_mut().waiting.push(cx.waker().clone());
            Poll::Pending
        });
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            return Err(ProxyError::ConnectTimeout);
        }
    }
    // Counted until the open ends, however it ends (the stream's task may be dropped mid-way:
    // a client reset), so waiting streams never wait on a connect nobody makes.
    let _connecting = Connecting { worker, server_id: server.id };
    open(worker, server, group).await
}

/// A connection being opened to one server, counted in [`Sessions`] until dropped.
struct Connecting<'w> {
    worker: &'w Worker,
    server_id: usize,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.worker.sessions.borrow_mut().set_connecting(self.server_id, -1);
    }
}

/// Opens a new session to `server` and takes its first stream.
async fn open(worker: &Worker, server: Server, group: &UpstreamGroup) -> Result<(SendRequest<Bytes>, StreamSlot), ProxyError> {
    let conn = connect(worker, server, group).await?;
    if let UpstreamStream::Tls(t) = &conn.stream
        && !t.alpn_h2()
    {
        // The server did not choose HTTP/2: speaking it anyway would only fail later.
        return Err(ProxyError::UpstreamTls);
    }
    let handshake = Builder::new().initial_window_size(1 << 20).initial_connection_window_size(4 << 20).handshake::<_, Bytes>(conn.stream);
    let (send, connection) = match tokio::time::timeout(group.connect_timeout, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(_)) => return Err(ProxyError::UpstreamConnect),
        Err(_) => return Err(ProxyError::ConnectTimeout),
    };
    worker.metrics().h2(H2Event::UpstreamSession);
    let state = Rc::new(SessionState { open: Cell::new(1), dead: Cell::new(false), idle_since: Cell::new(Instant::now()) });
    tokio::task::spawn_local(drive(connection, Rc::clone(&state)));
    let slot = StreamSlot { state: Rc::clone(&state) };
    let mut sessions = worker.sessions.borrow_mut();
    sessions.opened += 1;
    sessions.insert(server.id, Session { send: send.clone(), state });
    Ok((send, slot))
}

/// Drives one session's connection until it ends (the server closed it, an error, no answer to
/// a ping, or every handle dropped by the sweep), then marks the session dead.
async fn drive(mut connection: Connection<UpstreamStream, Bytes>, state: Rc<SessionState>) {
    let mut pings = connection.ping_pong();
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut awaiting = false;
    std::future::poll_fn(|cx| {
        if Pin::new(&mut connection).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some(p) = pings.as_mut() {
            if awaiting && let Poll::Ready(r) = p.poll_pong(cx) {
                awaiting = false;
                if r.is_err() {
                    return Poll::Ready(());
                }
            }
            while tick.poll_tick(cx).is_ready() {
                if awaiting {
                    return Poll::Ready(()); // no answer for a whole period
                }
                if p.send_ping(Ping::opaque()).is_ok() {
                    awaiting = true;
                }
            }
        }
        Poll::Pending
    })
    .await;
    state.dead.set(true);
}
