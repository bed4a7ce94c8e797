//! Per-worker upstream connection pool. Hot path.
//!
//! Each worker owns one `Pool`: idle keep-alive connections per upstream server (indexed by the
//! server's stable id) in a LIFO stack (the most recently used connection is the warmest and the
//! least likely to have been closed by the upstream). Checkout and checkin are plain `Vec`
//! pops/pushes on worker-local memory: no atomic, no lock. Imbalance between workers is accepted
//! (keep-alive is naturally sticky), as in Envoy, whose pools are never shared between workers.

use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::data::io::ClientIo;
use crate::data::upstream::stream::UpstreamStream;

/// An open connection to an upstream server. It holds no buffer: the exchange using it reads into
/// the client connection's working set, so an idle pooled connection costs only its socket (and,
/// over TLS, its keys: TLS record buffers are lent only while bytes wait in them).
#[derive(Debug)]
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub server_id: usize,
    pub addr: SocketAddr,
}

impl UpstreamConn {
    pub fn new(stream: UpstreamStream, server_id: usize, addr: SocketAddr) -> Self {
        UpstreamConn { stream, server_id, addr }
    }

    /// Whether an idle connection still looks usable: no EOF, no unexpected bytes. Uses the
    /// readiness tokio already has; a syscall happens only when the socket was marked readable.
    /// Over TLS the probe's read opens what records came (session tickets, key updates): only
    /// application data, an alert or the end make the connection unusable.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                // Any byte at all means the connection is not reusable: one is enough to know.
                let mut probe = [0u8; 1];
                match self.stream.try_read(&mut probe) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
                    _ => false, // EOF, stray bytes, or an error: not reusable
                }
            }
        }
    }
}

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

#[derive(Debug, Default)]
pub struct Pool {
    servers: Vec<Vec<Idle>>,
    /// Connections reused / opened: the pool hit ratio.
    pub reused: u64,
    pub opened: u64,
}

impl Pool {
    /// Takes the most recently parked live connection to `server_id` younger than `idle_timeout`.
    pub fn checkout(&mut self, server_id: usize, idle_timeout: Duration, now: Instant) -> Option<UpstreamConn> {
        let stack = self.servers.get_mut(server_id)?;
        while let Some(mut idle) = stack.pop() {
            if now.saturating_duration_since(idle.since) < idle_timeout && idle.conn.still_open() {
                self.reused += 1;
                return Some(idle.conn);
            }
        }
        None
    }

    /// Parks a connection whose last exchange ended cleanly; drops it when `cap` are parked.
    pub fn checkin(&mut self, conn: UpstreamConn, cap: usize, now: Instant) {
        if conn.server_id >= self.servers.len() {
            self.servers.resize_with(conn.server_id + 1, Vec::new);
        }
        let stack = &mut self.servers[conn.server_id];
        if stack.len() < cap {
            if stack.capacity() == 0 {
                stack.reserve_exact(cap.min(64));
            }
            stack.push(Idle { conn, since: now });
        }
    }

    /// Closes connections idle for longer than `max_idle` (run periodically, off the request path).
    pub fn sweep(&mut self, max_idle: impl Fn(usize) -> Option<Duration>, now: Instant) -> usize {
        let mut closed = 0;
        for (id, stack) in self.servers.iter_mut().enumerate() {
            let before = stack.len();
            match max_idle(id) {
                // A server no longer in the config: close all of its idle connections.
                None => stack.clear(),
                Some(t) => stack.retain_mut(|i| now.saturating_duration_since(i.since) < t && i.conn.still_open()),
            }
            closed += before - stack.len();
        }
        closed
    }

    pub fn idle_count(&self) -> usize {
        self.servers.iter().map(Vec::len).sum()
    }
}
