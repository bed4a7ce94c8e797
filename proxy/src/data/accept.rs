//! Per-worker accept loop. Hot path (per connection, not per request).

use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::data::h1::{client, conn, scratch};
use crate::data::h2;
use crate::data::h3;
use crate::data::tls;
use crate::data::worker::{ConnPermit, Worker};
use crate::snapshot::TlsListener;

/// Accepts connections on this worker's listener (the `index`th configured one) and serves each
/// on this thread: HTTP/1.1 in cleartext, or over TLS when the listener was configured with TLS
/// at start (its certificates then follow every reload).
pub async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, index: usize) {
    worker.timers.start();
    let (address, started_tls, h2c) = match worker.snapshot().listeners.get(index) {
        Some(l) => (l.address, l.tls.clone(), l.h2c),
        None => (SocketAddr::from(([0, 0, 0, 0], 0)), None, false),
    };
    // An `http3 = true` listener (a restart's decision, as the listener itself) advertises its
    // UDP port, the TCP side's bound one, in the responses of its TCP connections.
    let h3_port = match &started_tls {
        Some(t) if t.quic.is_some() => listener.local_addr().map_or(0, |a| a.port()),
        _ => 0,
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let snap = worker.snapshot();
                // Over the limit the connection is closed at once (the kernel queue stays short).
                if let Some(permit) = ConnPermit::try_acquire(&worker.shared, snap.limits.max_connections) {
                    let _ = stream.set_nodelay(true);
                    match &started_tls {
                        None if h2c => {
                            tokio::task::spawn_local(serve_h2c(Rc::clone(&worker), stream, peer, permit));
                        }
                        None => {
                            tokio::task::spawn_local(conn::serve(Rc::clone(&worker), stream, peer, permit));
                        }
                        Some(at_start) => {
                            let tls = snap.tls_listener(index, address).unwrap_or(at_start).clone();
                            tokio::task::spawn_local(serve_tls(Rc::clone(&worker), stream, peer, permit, tls, h3_port));
                        }
                    }
                }
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// Accepts QUIC connections on this worker's endpoint (the `index`th configured listener, with
/// `http3 = true`) and serves each as HTTP/3 on this thread, under the same connection limit as
/// the TCP side. Each is accepted with the current snapshot's QUIC server config (certificates,
/// transport bounds), so a reload reaches the connections after it as on the TCP side; the
/// start's config if a reload dropped the listener's `http3`. Ends when the endpoint is closed.
pub async fn h3_accept_loop(worker: Rc<Worker>, endpoint: quinn::Endpoint, index: usize) {
    let (address, at_start) = match worker.snapshot().listeners.get(index) {
        Some(l) => (l.address, l.tls.as_ref().and_then(|t| t.quic.clone())),
        None => return,
    };
    let Some(at_start) = at_start else { return };
    while let Some(incoming) = endpoint.accept().await {
        let snap = worker.snapshot();
        let Some(permit) = ConnPermit::try_acquire(&worker.shared, snap.limits.max_connections) else {
            // Over the limit: refused at once (a CONNECTION_CLOSE, no state kept).
            incoming.refuse();
            continue;
        };
        let tls = snap.tls_listener(index, address);
        let timeout = tls.map_or(Duration::from_secs(10), |t| t.handshake_timeout);
        let config = tls.and_then(|t| t.quic.as_ref()).unwrap_or(&at_start);
        // An attempt quinn cannot take (it says why to the client itself) is dropped here.
        if let Ok(connecting) = incoming.accept_with(std::sync::Arc::clone(config)) {
            tokio::task::spawn_local(h3::conn::serve(Rc::clone(&worker), connecting, permit, timeout));
        }
    }
}

/// A TLS connection: the handshake (boxed: its state is rustls's and goes when it is done, so
/// the connection's task stays the size of the HTTP/1.1 loop), then HTTP/2 if ALPN chose it
/// (boxed: an HTTP/2 connection's state is larger than an idle HTTP/1.1 one's), else HTTP/1.1.
async fn serve_tls(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, permit: ConnPermit, tls: TlsListener, h3_port: u16) {
    let accepted = Box::pin(tls::accept(&worker, stream, tls.config, tls.handshake_timeout)).await.map(|mut s| {
        s.advertise_h3(h3_port);
        s
    });
    match accepted {
        Ok(stream) if stream.alpn_h2() => Box::pin(h2::conn::serve(worker, stream, peer, permit)).await,
        Ok(stream) => conn::serve(worker, stream, peer, permit).await,
        Err(kind) => worker.metrics().tls_failure(kind),
    }
}

/// A cleartext connection on an `h2c` listener: HTTP/2 if its first bytes are the HTTP/2
/// preface (prior knowledge, RFC 9113 §3.3), else HTTP/1.1 (`Upgrade: h2c` is never honoured:
/// the HTTP/1.1 parser drops it). The bytes are peeked, not read: whichever protocol serves the
/// connection reads them itself. A client that sends nothing within the header timeout is
/// closed. Per connection, off the request path.
async fn serve_h2c(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, permit: ConnPermit) {
    let mut first = [0u8; h2::PREFACE.len()];
    let until = Instant::now() + worker.snapshot().limits.header_read_timeout;
    let is_h2 = loop {
        let n = match tokio::time::timeout_at(until, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if first[..n] != h2::PREFACE[..n] {
            break false;
        }
        if n == h2::PREFACE.len() {
            break true;
        }
        // A prefix of the preface so far: wait for more (peek returns at once while bytes wait).
        if tokio::time::timeout_at(until, stream.readable()).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    if is_h2 {
        Box::pin(h2::conn::serve(worker, stream, peer, permit)).await;
    } else {
        conn::serve(worker, stream, peer, permit).await;
    }
}

/// Out of file descriptors or a transient accept failure: back off briefly instead of spinning.
///
/// Off the request path: runs only after a failed accept, at most once per 10 ms back-off.
async fn accept_error(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off 10ms");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Once a second: closes idle upstream connections past their group's idle timeout (and those of
/// servers no longer in the config), and frees the spare connection working sets the last second
/// did not need (memory goes back when a crowd leaves); when it freed spare sets or the slot tables
/// shrank, this thread's allocator cache goes back too ([`crate::allocator`]). Allocates nothing
/// (switching jemalloc's thread cache back on allocates its cache once, off the request path).
pub async fn pool_sweeper(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The per-connection slot tables' length at the last tick: it falls when a crowd has left.
    let mut slots = 0;
    loop {
        tick.tick().await;
        let snap = worker.snapshot();
        let max_idle = |id: usize| snap.groups.iter().find_map(|g| g.servers.iter().any(|s| s.id == id).then_some(g.idle_timeout));
        worker.pool.borrow_mut().sweep(max_idle, Instant::now());
        worker.sessions.borrow_mut().sweep(max_idle, Instant::now());
        let (freed, spare, created) = scratch::sweep(snap.limits.pool_max);
        worker.metrics().working_sets(spare as u64, created);
        let (freed_tls, _, _) = tls::pool::sweep();
        let freed = freed + freed_tls + client::sweep(snap.limits.pool_max);
        let table = worker.timers.trim() + worker.drain.trim();
        if freed > 0 || table < slots {
            crate::allocator::release_thread_cache();
        }
        slots = table;
    }
}
