//! The HTTP/3 instruction rows' workload (phase 3; run by `gates/benches/instructions.rs`, group
//! `h3`, under callgrind): GETs on one HTTP/3 connection with `streams` of them in flight, the
//! same client on every path, client, servers and the proxy's worker as tasks on one
//! `current_thread` runtime.
//!
//! - [`H3Path::Proxied`]: the client → the proxy's worker (a TLS listener with `http3 = true`:
//!   the worker's own QUIC endpoint, `proxy::control::workers::quic_endpoint`, and its accept
//!   loop) → the HTTP/1.1 origin of the other rows ([`crate::exchange`]).
//! - [`H3Path::Relay`], the floor: the client → `loadgen relay --h3 --upstream-http1`'s code
//!   (`loadgen::relay_h3::serve`, an HTTP/3 relay built on quinn + h3 alone: each request stream
//!   sent as one HTTP/1.1 request on a keep-alive pool, head copied, body relayed; no routing,
//!   rewrites or timers) → the same origin.
//! - [`H3Path::Direct`], the base: the client straight to an HTTP/3 origin (quinn + h3) that
//!   answers every request stream with the HTTP/1.1 origin's response (status, fields, body).
//!
//! The same TLS everywhere: every server takes the QUIC server config the proxy compiles for its
//! listener (`proxy::control::workers::quic_server_config`: the same certificate, rustls provider
//! and transport limits); the client offers one cipher suite (TLS13_AES_128_GCM_SHA256) and one
//! key-exchange group (X25519), so a handshake that completes used them, and each run checks the
//! ALPN and the server's certificate (recorded in [`Outcome::handshake`]; the gate refuses a
//! target and a floor whose handshakes differ).
//!
//! Every response is verified (status 200, exactly `body_bytes` of body, its `content-length`),
//! and every request counted by the origin that served it.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::error::chain;
use crate::exchange::{ExchangeError, Listener, Outcome};

/// Which path an HTTP/3 run ([`h3_exchange`]) measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H3Path {
    /// HTTP/3 client → HTTP/3 origin.
    Direct,
    /// HTTP/3 client → the proxy (TLS listener, `http3 = true`) → HTTP/1.1 origin.
    Proxied,
    /// HTTP/3 client → the floor, `loadgen::relay_h3` with an HTTP/1.1 upstream → HTTP/1.1 origin.
    Relay,
}

/// Requests before the measured ones in an HTTP/3 run (both request counts run them): QUIC's
/// congestion window and RTT estimate settle, the pools fill.
pub const H3_WARMUP: u64 = 100;

/// The one cipher suite the client offers (QUIC's initial suite, as `loadgen`'s HTTP/3 client).
const SUITE: rustls::CipherSuite = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
/// The one key-exchange group the client offers.
const GROUP: rustls::NamedGroup = rustls::NamedGroup::X25519;

/// What every handshake of an HTTP/3 run is ([`Outcome::handshake`]).
const HANDSHAKE: &str = "QUIC v1, TLS 1.3 TLS13_AES_128_GCM_SHA256, X25519, Ed25519 certificate, ALPN h3, full; one connection per run";

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// `H3_WARMUP + n` GETs, each with a `body_bytes` response, on one HTTP/3 connection keeping
/// `streams` of them in flight (a new request stream as soon as one ends), each verified.
pub fn h3_exchange(path: H3Path, streams: u64, n: u64, body_bytes: usize) -> Outcome {
    let mut out = Outcome { proxied: path == H3Path::Proxied, requests: n, warmup: H3_WARMUP, body_bytes, ..Outcome::default() };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(chain(&ExchangeError::Runtime(e)));
            return out;
        }
    };
    let served = Rc::new(Cell::new(0u64));
    let local = tokio::task::LocalSet::new();
    let (ok, result) = local.block_on(&rt, run_h3(path, streams.max(1), H3_WARMUP + n, body_bytes, Rc::clone(&served)));
    out.ok = ok;
    match result {
        Ok(()) => out.handshake = Some(HANDSHAKE.to_owned()),
        Err(e) => out.error = Some(e),
    }
    out.origin_served = served.get();
    out
}

/// The client side of an HTTP/3 run: requests started, verified responses, the first error.
struct H3Client {
    total: u64,
    started: Cell<u64>,
    ok: Cell<u64>,
    error: RefCell<Option<String>>,
}

async fn run_h3(path: H3Path, streams: u64, total: u64, body_bytes: usize, served: Rc<Cell<u64>>) -> (u64, Result<(), String>) {
    let dir = std::env::temp_dir().join(format!("gates-instr-h3-{}", std::process::id()));
    let set_up = async {
        let (cert, key, _) = crate::tlsclient::make_pki(&dir, true).map_err(ExchangeError::Tls)?;
        let client = client_config(&cert)?;
        let target = h3_setup(path, body_bytes, served, &cert, &key).await?;
        Ok::<_, ExchangeError>((client, target))
    };
    let set_up = set_up.await;
    let _ = std::fs::remove_dir_all(&dir);
    let (client, target) = match set_up {
        Ok(s) => s,
        Err(e) => return (0, Err(chain(&e))),
    };
    let (sender, driver) = match connect(client, target).await {
        Ok(c) => c,
        Err(e) => return (0, Err(chain(&e))),
    };
    let state = Rc::new(H3Client { total, started: Cell::new(0), ok: Cell::new(0), error: RefCell::new(None) });
    let tasks: Vec<_> =
        (0..streams).map(|_| tokio::task::spawn_local(client_task(sender.clone(), body_bytes, Rc::clone(&state)))).collect();
    drop(sender);
    for t in tasks {
        let _ = t.await;
    }
    driver.abort();
    let error = state.error.borrow_mut().take();
    (state.ok.get(), error.map_or(Ok(()), Err))
}

/// The client's QUIC config: TLS 1.3 with [`SUITE`] and [`GROUP`] only, ALPN `h3`, trusting
/// exactly the run's certificate; quinn's default transport but for the servers' ACKs.
fn client_config(cert: &Path) -> Result<quinn::ClientConfig, ExchangeError> {
    use rustls::pki_types::pem::PemObject;
    let tls = |e: &dyn std::fmt::Display| ExchangeError::Tls(std::io::Error::other(e.to_string()));
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).map_err(|e| tls(&e))? {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == SUITE);
    provider.kx_groups.retain(|g| g.name() == GROUP);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| tls(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // The servers acknowledge every ack-eliciting packet at once (the ACK frequency extension,
    // asked of every server alike): otherwise a server's ACK waits for its response or its
    // 25 ms ack-delay timer, and under callgrind a request takes about that long, so whether
    // the timer fired first (an ACK-only packet more) varied run to run. The requested delay is
    // pinned at the default 25 ms so that the client never re-sends the request as its RTT
    // estimate moves.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(quinn::VarInt::from_u32(0)).max_ack_delay(Some(std::time::Duration::from_millis(25)));
    let mut transport = quinn::TransportConfig::default();
    transport.ack_frequency_config(Some(ack));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Opens the run's one QUIC connection and its HTTP/3 session (the driver on a task of its own),
/// after checking the handshake: ALPN `h3` and the run's certificate (the suite and group are
/// the only ones offered).
async fn connect(config: quinn::ClientConfig, target: SocketAddr) -> Result<(Sender, tokio::task::JoinHandle<()>), ExchangeError> {
    let h3err = |what: &'static str| move |e: &dyn std::fmt::Display| ExchangeError::H3 { what, detail: e.to_string() };
    let bind = |source| ExchangeError::Bind { listener: Listener::Client, source };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime)).map_err(bind)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(target, crate::tlsclient::SERVER_NAME).map_err(|e| h3err("connect")(&e))?;
    let conn = connecting.await.map_err(|e| h3err("handshake")(&e))?;
    let alpn = conn.handshake_data().and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok()).and_then(|d| d.protocol);
    if alpn.as_deref() != Some(b"h3") {
        return Err(ExchangeError::H3 { what: "handshake", detail: format!("ALPN {alpn:?}, expected h3") });
    }
    let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn)).await.map_err(|e| h3err("client session")(&e))?;
    let driver = tokio::task::spawn_local(async move {
        let _endpoint = endpoint;
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((sender, driver))
}

/// One of the client's `streams` tasks: takes the next request while any is left.
async fn client_task(mut sender: Sender, body_bytes: usize, st: Rc<H3Client>) {
    while st.error.borrow().is_none() && st.started.get() < st.total {
        st.started.set(st.started.get() + 1);
        match round_trip(&mut sender, body_bytes).await {
            Ok(()) => st.ok.set(st.ok.get() + 1),
            Err(e) => {
                st.error.borrow_mut().get_or_insert_with(|| chain(&e));
                return;
            }
        }
    }
}

/// One GET on a new request stream; `Ok` only for a 200 whose `content-length` and body are
/// exactly `body_bytes`.
async fn round_trip(sender: &mut Sender, body_bytes: usize) -> Result<(), ExchangeError> {
    let h3err = |what: &'static str| move |e: h3::error::StreamError| ExchangeError::H3 { what, detail: e.to_string() };
    let mut req = http::Request::new(());
    *req.uri_mut() = http::Uri::from_static("https://bench.local/");
    let mut stream = sender.send_request(req).await.map_err(h3err("send request"))?;
    stream.finish().await.map_err(h3err("finish request"))?;
    let response = stream.recv_response().await.map_err(h3err("response"))?;
    if response.status() != http::StatusCode::OK {
        return Err(ExchangeError::Status(response.status().as_u16()));
    }
    let length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .ok_or(ExchangeError::NoContentLength)?;
    if length != body_bytes {
        return Err(ExchangeError::BodyLength { got: length, expected: body_bytes });
    }
    let mut got = 0;
    while let Some(d) = stream.recv_data().await.map_err(h3err("response body"))? {
        got += d.remaining();
        if got > body_bytes {
            return Err(ExchangeError::BodyLength { got, expected: body_bytes });
        }
    }
    if got != body_bytes {
        return Err(ExchangeError::BodyLength { got, expected: body_bytes });
    }
    Ok(())
}

/// Starts the origin and what `path` puts in front of it; returns the UDP address to send to.
async fn h3_setup(path: H3Path, body_bytes: usize, served: Rc<Cell<u64>>, cert: &Path, key: &Path) -> Result<SocketAddr, ExchangeError> {
    use proxy::config::{ServerIds, parse};
    use proxy::control::workers::{quic_endpoint, quic_server_config};
    use proxy::data::accept::h3_accept_loop;
    use proxy::data::worker::{Shared, Worker};

    let bind = |listener| move |source| ExchangeError::Bind { listener, source };
    let address = |listener| move |source| ExchangeError::Address { listener, source };
    let origin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(bind(Listener::Origin))?;
    let origin_addr = origin_listener.local_addr().map_err(address(Listener::Origin))?;
    // The proxy's config, parsed on every path: its QUIC server config serves every path.
    let text = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nhttp3 = true\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
         [[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"{origin_addr}\"]\n",
        cert.display(),
        key.display()
    );
    let cfg = parse(Path::new("bench"), &text, &mut ServerIds::default()).map_err(ExchangeError::Config)?;
    let server_config = quic_server_config(&cfg.snapshot, 0).map_err(ExchangeError::Quic)?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(bind(Listener::Proxy))?;
    socket.set_nonblocking(true).map_err(bind(Listener::Proxy))?;
    let addr = socket.local_addr().map_err(address(Listener::Proxy))?;
    match path {
        H3Path::Direct => {
            drop(origin_listener);
            let endpoint =
                quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server_config), socket, Arc::new(quinn::TokioRuntime))
                    .map_err(ExchangeError::Quic)?;
            tokio::task::spawn_local(h3_origin(endpoint, body_bytes, served));
        }
        H3Path::Relay => {
            tokio::task::spawn_local(crate::exchange::origin(origin_listener, body_bytes, served));
            tokio::task::spawn_local(loadgen::relay_h3::serve(socket, server_config, origin_addr, true));
        }
        H3Path::Proxied => {
            tokio::task::spawn_local(crate::exchange::origin(origin_listener, body_bytes, served));
            let worker = Worker::new(Shared::new(cfg.snapshot), 0);
            // As in the other rows: the wall-clock tick kept out of the count.
            worker.timers.never_tick();
            let endpoint = quic_endpoint(&worker.snapshot(), 0, socket).map_err(ExchangeError::Quic)?;
            tokio::task::spawn_local(h3_accept_loop(Rc::clone(&worker), endpoint, 0));
        }
    }
    Ok(addr)
}

/// The base's HTTP/3 origin: each request stream answered with what the HTTP/1.1 origin sends
/// (200, `content-type`, `content-length` and `body` bytes in one DATA frame, then the stream's
/// end); counts them.
async fn h3_origin(endpoint: quinn::Endpoint, body: usize, served: Rc<Cell<u64>>) {
    let data = Bytes::from(vec![b'x'; body]);
    let length = http::HeaderValue::from(body);
    while let Some(incoming) = endpoint.accept().await {
        let (data, length, served) = (data.clone(), length.clone(), Rc::clone(&served));
        tokio::task::spawn_local(async move {
            let Ok(conn) = incoming.await else { return };
            let Ok(mut h) = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await else { return };
            while let Ok(Some(resolver)) = h.accept().await {
                let (data, length, served) = (data.clone(), length.clone(), Rc::clone(&served));
                tokio::task::spawn_local(async move {
                    let Ok((_req, mut stream)) = resolver.resolve_request().await else { return };
                    served.set(served.get() + 1);
                    let mut res = http::Response::new(());
                    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/octet-stream"));
                    res.headers_mut().insert(http::header::CONTENT_LENGTH, length);
                    if stream.send_response(res).await.is_err() {
                        return;
                    }
                    if !data.is_empty() && stream.send_data(data).await.is_err() {
                        return;
                    }
                    let _ = stream.finish().await;
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every HTTP/3 path verifies at 1 and 10 streams in flight, and the target's handshake is
    /// its floor's.
    #[test]
    fn every_http3_path_verifies() {
        for streams in [1, 10] {
            let mut handshakes = Vec::new();
            for path in [H3Path::Direct, H3Path::Proxied, H3Path::Relay] {
                let o = h3_exchange(path, streams, 30, 1024);
                assert_eq!(o.verify(), Ok(()), "{path:?} {streams}: {o:?}");
                assert_eq!((o.ok, o.origin_served), (H3_WARMUP + 30, H3_WARMUP + 30));
                handshakes.push(o.handshake);
            }
            assert!(handshakes.iter().all(|h| h.as_deref() == Some(HANDSHAKE)), "{handshakes:?}");
        }
    }

    /// A response whose body is not the length asked for is refused.
    #[test]
    fn a_wrong_body_length_is_refused_over_http3() {
        let o = h3_exchange(H3Path::Direct, 1, 5, 1024);
        assert_eq!(o.verify(), Ok(()), "{o:?}");
        // The client expects 1024 bytes, the origin sends 100: the first exchange fails.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let local = tokio::task::LocalSet::new();
        let served = Rc::new(Cell::new(0));
        let dir = std::env::temp_dir().join(format!("gates-instr-h3-test-{}", std::process::id()));
        let err = local.block_on(&rt, async move {
            let (cert, key, _) = crate::tlsclient::make_pki(&dir, true).expect("pki");
            let client = client_config(&cert).expect("client config");
            let target = h3_setup(H3Path::Proxied, 100, served, &cert, &key).await.expect("setup");
            let (mut sender, _driver) = connect(client, target).await.expect("connect");
            let _ = std::fs::remove_dir_all(&dir);
            round_trip(&mut sender, 1024).await.expect_err("wrong length accepted")
        });
        assert!(matches!(err, ExchangeError::BodyLength { got: 100, expected: 1024 }), "{err}");
    }
}
