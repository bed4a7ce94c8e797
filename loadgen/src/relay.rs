//! The byte-relay floor (issue 8): what no user-space proxy on epoll can beat on this machine.
//!
//! One upstream connection per client connection, bytes copied both ways through two reused
//! 16 KiB buffers, no HTTP parsing at all. Its CPU per request is the minimal pattern of
//! 2 reads + 2 writes + ~1.2 `epoll_wait` per request; proxies are compared as a ratio to it.
//! Half-closes are propagated (EOF on one side shuts down writing on the other).

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub threads: usize,
    pub cpus: Vec<usize>,
}

const BUF: usize = 16 * 1024;

/// Binds (calling `on_bound` with the real address), then relays until killed.
pub fn run_relay(cfg: &RelayConfig, on_bound: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let upstream = cfg.upstream;
    crate::server::serve_threads(cfg.listen, cfg.threads, &cfg.cpus, "relay", on_bound, move |l| async move {
        let l = TcpListener::from_std(l)?;
        loop {
            let Ok((c, _)) = l.accept().await else {
                // Out of fds and the like: keep relaying the connections we have.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            tokio::task::spawn_local(relay(c, upstream));
        }
    })
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, BUF, BUF).await;
}
