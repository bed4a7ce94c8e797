//! Per-worker accept loop. Hot path (per connection, not per request).

use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::data::h1::{conn, scratch};
use crate::data::tls;
use crate::data::worker::{ConnPermit, Worker};
use crate::snapshot::TlsListener;

/// Accepts connections on this worker's listener (the `index`th configured one) and serves each
/// on this thread: HTTP/1.1 in cleartext, or over TLS when the listener was configured with TLS
/// at start (its certificates then follow every reload).
pub async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, index: usize) {
    worker.timers.start();
    let (address, started_tls) = match worker.snapshot().listeners.get(index) {
        Some(l) => (l.address, l.tls.clone()),
        None => (SocketAddr::from(([0, 0, 0, 0], 0)), None),
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let snap = worker.snapshot();
                // Over the limit the connection is closed at once (the kernel queue stays short).
                if let Some(permit) = ConnPermit::try_acquire(&worker.shared, snap.limits.max_connections) {
                    let _ = stream.set_nodelay(true);
                    match &started_tls {
                        None => {
                            tokio::task::spawn_local(conn::serve(Rc::clone(&worker), stream, peer, permit));
                        }
                        Some(at_start) => {
                            let tls = snap.tls_listener(index, address).unwrap_or(at_start).clone();
                            tokio::task::spawn_local(serve_tls(Rc::clone(&worker), stream, peer, permit, tls));
                        }
                    }
                }
            }
            Err(e) => accept_error(e).await,
        }
    }
}

/// A TLS connection: the handshake (boxed: its state is rustls's and goes when it is done, so
/// the connection's task stays the size of the HTTP/1.1 loop), then HTTP/1.1 over the stream.
async fn serve_tls(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, permit: ConnPermit, tls: TlsListener) {
    match Box::pin(tls::accept(&worker, stream, tls.config, tls.handshake_timeout)).await {
        Ok(stream) => conn::serve(worker, stream, peer, permit).await,
        Err(kind) => worker.metrics().tls_failure(kind),
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
        let (freed, spare, created) = scratch::sweep(snap.limits.pool_max);
        worker.metrics().working_sets(spare as u64, created);
        let (freed_tls, _, _) = tls::pool::sweep();
        let freed = freed + freed_tls;
        let table = worker.timers.trim() + worker.drain.trim();
        if freed > 0 || table < slots {
            crate::allocator::release_thread_cache();
        }
        slots = table;
    }
}
