//! The byte-relay floor (issue 8): what no user-space proxy on epoll can beat on this machine.
//!
//! One upstream connection per client connection, bytes copied both ways through two reused
//! 16 KiB buffers, no HTTP parsing at all. Its CPU per request is the minimal pattern of
//! 2 reads + 2 writes + ~1.2 `epoll_wait` per request; proxies are compared as a ratio to it.
//! Half-closes are propagated (EOF on one side shuts down writing on the other).
//!
//! `--tls` makes it the TLS floor (issue 15): it terminates TLS from the client (rustls server,
//! ALPN `http/1.1` only, the upstream's certificate handling and session tickets, see
//! [`crate::tls::server_config`]) and copies the plaintext both ways to a cleartext upstream
//! connection, which is opened while the handshake runs (so a set-up costs max(handshake,
//! connect), not their sum). Nothing else: no handshake timeout, no HTTP.
//!
//! Allocation per connection: the two 16 KiB copy buffers, the rustls connection state (boxed
//! by `tokio-rustls`) and its handshake messages. Per request, once established, the relay code
//! allocates nothing; rustls 0.23's buffered API does, twice per TLS record: decryption is in
//! place in its receive buffer, but each received record's plaintext is then copied into a new
//! `Vec` queued in its plaintext buffer (`take_received_plaintext`), and each record it encrypts
//! for sending is a new `Vec` (`encrypt_outgoing`). A request and its response that each fit in
//! one record (16 KiB of plaintext) therefore cost 2 allocations in rustls; avoiding them needs
//! rustls' unbuffered API.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub threads: usize,
    pub cpus: Vec<usize>,
    /// Terminate TLS from clients with this config (`--tls`); `None`: copy bytes as they are.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

const BUF: usize = 16 * 1024;

/// Binds (calling `on_bound` with the real address), then relays until killed.
pub fn run_relay(cfg: &RelayConfig, on_bound: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let upstream = cfg.upstream;
    let tls = cfg.tls.clone();
    crate::server::serve_threads(cfg.listen, cfg.threads, &cfg.cpus, "relay", on_bound, move |l| {
        let acceptor = tls.clone().map(TlsAcceptor::from);
        async move {
            let l = TcpListener::from_std(l)?;
            loop {
                let Ok((c, _)) = l.accept().await else {
                    // Out of fds and the like: keep relaying the connections we have.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                match &acceptor {
                    None => tokio::task::spawn_local(relay(c, upstream)),
                    Some(a) => tokio::task::spawn_local(relay_tls(a.clone(), c, upstream)),
                };
            }
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

/// Terminates TLS on `client` while connecting to `upstream`, then copies plaintext both ways.
/// A failed handshake or connect closes both.
async fn relay_tls(acceptor: TlsAcceptor, client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let (tls, up) = tokio::join!(acceptor.accept(client), TcpStream::connect(upstream));
    let (Ok(mut tls), Ok(mut up)) = (tls, up) else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut up, BUF, BUF).await;
}
