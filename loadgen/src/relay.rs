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
//! `--h2` makes it the HTTP/2 floor (issues 15 and 17): an `h2` crate server (h2c by prior
//! knowledge; with `--tls`, h2 by ALPN) whose every stream is sent, as it came (pseudo-headers,
//! fields, body, trailers), over one multiplexed h2c connection to the upstream per client
//! connection, and the response back the same way; request and response bodies stream with the
//! `h2` crate's flow control (capacity released as data is forwarded). No routing, no header
//! rules: what a proxy built on `h2` cannot do with less.
//!
//! `--h2 --upstream-http1` keeps the HTTP/2 side and sends each stream as one HTTP/1.1 request
//! on a keep-alive connection from a per-client-connection pool instead ([`crate::relay_h1`]):
//! the floor of a proxy that relays HTTP/2 clients to an HTTP/1.1 origin.
//!
//! `--h3` makes it the HTTP/3 floor (issue 15's phase 3, [`crate::relay_h3`]): it serves HTTP/3
//! over QUIC on UDP at the listen address (one `quinn` endpoint per thread) and relays each
//! request stream over one h2c connection per client QUIC connection, or with
//! `--upstream-http1` as one HTTP/1.1 request on a keep-alive pool (the same code as above).
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

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// Relay HTTP/2 streams over an h2c upstream connection (`--h2`) instead of bytes.
    pub h2: bool,
    /// Serve HTTP/3 over QUIC with this config (`--h3`) instead of anything over TCP.
    pub h3: Option<quinn::ServerConfig>,
    /// With `h2` or `h3`: send each stream as an HTTP/1.1 request on pooled keep-alive
    /// connections (`--upstream-http1`) instead of over h2c.
    pub upstream_http1: bool,
}

const BUF: usize = 16 * 1024;

/// Binds (calling `on_bound` with the real address), then relays until killed.
pub fn run_relay(cfg: &RelayConfig, on_bound: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let upstream = cfg.upstream;
    let tls = cfg.tls.clone();
    let h2 = cfg.h2;
    let h1up = cfg.upstream_http1;
    if let Some(quic) = cfg.h3.clone() {
        return crate::server::serve_threads(cfg.listen, cfg.threads, &cfg.cpus, "relay", on_bound, move |s: std::net::UdpSocket| {
            crate::relay_h3::serve(s, quic.clone(), upstream, h1up)
        });
    }
    crate::server::serve_threads(cfg.listen, cfg.threads, &cfg.cpus, "relay", on_bound, move |l: std::net::TcpListener| {
        let acceptor = tls.clone().map(TlsAcceptor::from);
        async move {
            let l = TcpListener::from_std(l)?;
            loop {
                let Ok((c, _)) = l.accept().await else {
                    // Out of fds and the like: keep relaying the connections we have.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                match (&acceptor, h2) {
                    (None, false) => tokio::task::spawn_local(relay(c, upstream)),
                    (Some(a), false) => tokio::task::spawn_local(relay_tls(a.clone(), c, upstream)),
                    (None, true) => {
                        let _ = c.set_nodelay(true);
                        tokio::task::spawn_local(relay_h2(c, upstream, h1up))
                    }
                    (Some(a), true) => {
                        let a = a.clone();
                        tokio::task::spawn_local(async move {
                            let _ = c.set_nodelay(true);
                            if let Ok(tls) = a.accept(c).await {
                                relay_h2(tls, upstream, h1up).await;
                            }
                        })
                    }
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

/// `--h2`: serves HTTP/2 on `client` and sends each stream over one h2c connection to `upstream`
/// (or, with `h1up`, as an HTTP/1.1 request on a pooled connection).
async fn relay_h2<S: AsyncRead + AsyncWrite + Unpin + 'static>(client: S, upstream: SocketAddr, h1up: bool) {
    if h1up {
        let Ok(mut server) = h2::server::Builder::new().max_concurrent_streams(1000).handshake::<_, Bytes>(client).await else {
            return;
        };
        let pool = crate::relay_h1::Pool::new(upstream);
        while let Some(r) = server.accept().await {
            let Ok((req, respond)) = r else { break };
            tokio::task::spawn_local(crate::relay_h1::stream(req, respond, pool.clone()));
        }
        return;
    }
    let (server, up) =
        tokio::join!(h2::server::Builder::new().max_concurrent_streams(1000).handshake::<_, Bytes>(client), TcpStream::connect(upstream));
    let (Ok(mut server), Ok(up)) = (server, up) else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((send, conn)) = h2::client::handshake(up).await else {
        return;
    };
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    while let Some(r) = server.accept().await {
        let Ok((req, respond)) = r else { break };
        tokio::task::spawn_local(relay_stream(req, respond, send.clone()));
    }
}

/// One stream: the request to the upstream, then its response back, bodies and trailers
/// streamed. A failure on either side resets the other side's stream.
async fn relay_stream(req: http::Request<RecvStream>, mut respond: SendResponse<Bytes>, send: SendRequest<Bytes>) {
    let (parts, body) = req.into_parts();
    let end = body.is_end_stream();
    let Ok(mut send) = send.ready().await else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let Ok((response, up_body)) = send.send_request(http::Request::from_parts(parts, ()), end) else {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    };
    let upload = async move {
        if !end {
            forward(body, up_body).await;
        }
    };
    let (_, response) = tokio::join!(upload, response);
    let Ok(response) = response else {
        respond.send_reset(Reason::INTERNAL_ERROR);
        return;
    };
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    let Ok(down) = respond.send_response(http::Response::from_parts(parts, ()), end) else {
        return;
    };
    if !end {
        forward(body, down).await;
    }
}

/// Copies a body's data and trailers from `rx` to `tx`, waiting for send capacity (flow control)
/// and releasing the receive capacity of what was forwarded. A reset or error resets `tx`.
async fn forward(mut rx: RecvStream, mut tx: SendStream<Bytes>) {
    while let Some(d) = rx.data().await {
        let Ok(mut d) = d else {
            tx.send_reset(Reason::CANCEL);
            return;
        };
        let n = d.len();
        while !d.is_empty() {
            tx.reserve_capacity(d.len());
            let cap = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(c)) if c > 0 => c,
                Some(Ok(_)) => continue,
                _ => return,
            };
            let chunk = d.split_to(cap.min(d.len()));
            if tx.send_data(chunk, false).is_err() {
                return;
            }
        }
        let _ = rx.flow_control().release_capacity(n);
    }
    match rx.trailers().await {
        Ok(Some(t)) => {
            let _ = tx.send_trailers(t);
        }
        Ok(None) => {
            let _ = tx.send_data(Bytes::new(), true);
        }
        Err(_) => tx.send_reset(Reason::CANCEL),
    }
}
