//! HTTP/3 from clients (phase 3a): a TLS listener with `http3 = true` serves QUIC on its port
//! number over UDP; each request stream is routed and forwarded to an HTTP/1.1 upstream like an
//! HTTP/2 stream (the same status for a route that does not match, 502 for an upstream that is
//! down, `X-Forwarded-*` and `Via`); bodies arrive whole both ways; a drain lets an open stream
//! finish, then the connection closes and the proxy exits. `http3` without TLS is a config
//! error. The client is quinn + h3 (the crates the proxy uses) on a tokio runtime; every wait is
//! bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Method, Request, Response};

use crate::support::tls::{Pki, cert_entry};
use crate::support::{Proxy, Reply, Upstream, refused_addr, response, temp_dir};

/// Every client step is bounded by this.
const STEP: Duration = Duration::from_secs(10);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// A proxy with one TLS listener with `http3 = true` (a leaf for `localhost` from `pki`), routes
/// `routes` (whole `[[routes]]` tables; default: everything to `u`) and group `u` = `servers`.
fn h3_proxy(pki: &Pki, dir: &std::path::Path, servers: &[SocketAddr], routes: &str) -> Proxy {
    h3_proxy_with(pki, dir, servers, routes, "")
}

/// [`h3_proxy`] with `tables` (whole TOML tables) appended.
fn h3_proxy_with(pki: &Pki, dir: &std::path::Path, servers: &[SocketAddr], routes: &str, tables: &str) -> Proxy {
    let leaf = pki.leaf("site", &["localhost"]);
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let routes = if routes.is_empty() { "[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n" } else { routes };
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\nhttp3 = true\n[listeners.tls]\ncertificates = [{}]\n\n\
         {routes}\n[upstreams.u]\nservers = [{}]\n\n{tables}\n",
        cert_entry(&leaf),
        servers.join(", ")
    );
    Proxy::start_in(dir, &config, 1)
}

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// An HTTP/3 connection to the proxy's listener (UDP, same port number), trusting `pki`; the
/// connection is driven by a spawned task, whose handle ends when the connection closes.
async fn h3_connect(pki: &Pki, addr: SocketAddr) -> (quinn::Endpoint, SendRequest, tokio::task::JoinHandle<()>) {
    let (endpoint, send, drive, _) = h3_connect_leaf(pki, addr).await;
    (endpoint, send, drive)
}

/// [`h3_connect`], and the leaf certificate the proxy presented.
async fn h3_connect_leaf(
    pki: &Pki,
    addr: SocketAddr,
) -> (quinn::Endpoint, SendRequest, tokio::task::JoinHandle<()>, rustls_pki_types::CertificateDer<'static>) {
    let mut tls = pki.client();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn =
        tokio::time::timeout(STEP, endpoint.connect(addr, "localhost").unwrap()).await.expect("handshake in time").expect("handshake");
    let chain = conn.peer_identity().and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok());
    let leaf = chain.and_then(|c| c.into_iter().next()).expect("the proxy presented a certificate");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await.unwrap();
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    (endpoint, send, drive, leaf)
}

/// Sends a request (its body whole, then the end of the stream) and reads the whole response.
async fn exchange(send: &mut SendRequest, req: Request<()>, body: &[u8]) -> (Response<()>, Vec<u8>) {
    let go = async {
        let mut stream = send.send_request(req).await.unwrap();
        if !body.is_empty() {
            stream.send_data(Bytes::copy_from_slice(body)).await.unwrap();
        }
        stream.finish().await.unwrap();
        let resp = stream.recv_response().await.expect("response");
        let mut got = Vec::new();
        while let Some(mut d) = stream.recv_data().await.expect("body data") {
            while d.has_remaining() {
                let c = d.chunk();
                got.extend_from_slice(c);
                let n = c.len();
                d.advance(n);
            }
        }
        (resp, got)
    };
    tokio::time::timeout(STEP, go).await.expect("exchange in time")
}

fn request(method: Method, path: &str) -> Request<()> {
    Request::builder().method(method).uri(format!("https://localhost{path}")).body(()).unwrap()
}

#[test]
fn get_and_a_100000_byte_post_arrive_whole_with_status_and_headers_relayed() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let up = Upstream::start(|req| {
        let body = if req.method == "POST" { req.body.len().to_string().into_bytes() } else { b"hello over h3".to_vec() };
        Reply::Send(response("201 Created", &["X-Up: yes", "Connection: keep-alive"], &body))
    });
    let proxy = h3_proxy(&pki, &dir, &[up.addr], "");
    block_on(async {
        let (_ep, mut send, _drive) = h3_connect(&pki, proxy.addr).await;
        let (resp, body) = exchange(&mut send, request(Method::GET, "/a?b=c"), b"").await;
        assert_eq!(resp.status(), 201, "{}\n{}", up.dump(), proxy.stderr());
        assert_eq!(body, b"hello over h3");
        assert_eq!(resp.headers().get("x-up").map(|v| v.as_bytes()), Some(&b"yes"[..]));
        assert!(resp.headers().get("connection").is_none(), "hop-by-hop fields are not relayed");
        assert!(resp.headers().get("via").is_some_and(|v| !v.is_empty()), "{resp:?}");

        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (resp, body) = exchange(&mut send, request(Method::POST, "/upload"), &big).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(body, b"100000");
    });
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2, "{}", up.dump());
    let get = &reqs[0];
    assert_eq!((get.method.as_str(), get.target.as_str()), ("GET", "/a?b=c"));
    assert_eq!(get.header("host"), Some("localhost"));
    assert_eq!(get.header("x-forwarded-proto"), Some("https"));
    assert_eq!(get.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(get.header("via").is_some());
    assert!(get.body.is_empty());
    let post = &reqs[1];
    assert_eq!(post.method, "POST");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(post.body.len(), 100_000);
    assert!(post.body == big, "the POST body arrived whole and in order");
}

#[test]
fn an_upstream_that_is_down_gives_502() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let proxy = h3_proxy(&pki, &dir, &[refused_addr()], "");
    block_on(async {
        let (_ep, mut send, _drive) = h3_connect(&pki, proxy.addr).await;
        let (resp, body) = exchange(&mut send, request(Method::GET, "/"), b"").await;
        assert_eq!(resp.status(), 502);
        assert!(body.is_empty());
        // The connection serves the next request.
        let (resp, _) = exchange(&mut send, request(Method::GET, "/again"), b"").await;
        assert_eq!(resp.status(), 502);
    });
}

#[test]
fn a_route_that_does_not_match_gives_the_same_status_as_over_http2() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let up = Upstream::ok();
    let routes = "[[routes]]\npath_prefix = \"/api\"\nupstream = \"u\"\n";
    let proxy = h3_proxy(&pki, &dir, &[up.addr], routes);
    let h3_status = block_on(async {
        let (_ep, mut send, _drive) = h3_connect(&pki, proxy.addr).await;
        let (resp, _) = exchange(&mut send, request(Method::GET, "/api/x"), b"").await;
        assert_eq!(resp.status(), 200, "a matching route is served");
        exchange(&mut send, request(Method::GET, "/elsewhere"), b"").await.0.status()
    });
    // The same request over HTTP/2 (ALPN h2 on the listener's TCP side).
    let mut tls = pki.client();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let h2_status = block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let stream = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let (send, conn) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(request(Method::GET, "/elsewhere"), true).unwrap();
        tokio::time::timeout(STEP, resp).await.unwrap().unwrap().status()
    });
    assert_eq!(h3_status, 404);
    assert_eq!(h3_status, h2_status);
    assert_eq!(up.requests().len(), 1, "only the matching request went upstream");
}

#[test]
fn a_drain_lets_the_open_stream_finish_then_closes_the_connection() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let up = Upstream::start(|req| {
        let body = b"slow but whole".to_vec();
        if req.target.starts_with("/slow") {
            Reply::Delay(Duration::from_millis(800), crate::support::ok(&body))
        } else {
            Reply::Send(crate::support::ok(&body))
        }
    });
    let mut proxy = h3_proxy(&pki, &dir, &[up.addr], "");
    block_on(async {
        let (_ep, mut send, drive) = h3_connect(&pki, proxy.addr).await;
        let (resp, _) = exchange(&mut send, request(Method::GET, "/warm"), b"").await;
        assert_eq!(resp.status(), 200);
        let mut slow_send = send.clone();
        let slow = tokio::spawn(async move { exchange(&mut slow_send, request(Method::GET, "/slow"), b"").await });
        // Waits without blocking the runtime (the client's tasks must keep running).
        let end = tokio::time::Instant::now() + STEP;
        while up.requests().len() < 2 {
            assert!(tokio::time::Instant::now() < end, "the slow request reached the upstream");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proxy.signal(nix::sys::signal::Signal::SIGTERM);
        let (resp, body) = slow.await.expect("the open stream finishes through the drain");
        assert_eq!(resp.status(), 200);
        assert_eq!(body, b"slow but whole");
        // Then the proxy closes the connection (GOAWAY, every stream done).
        tokio::time::timeout(STEP, drive).await.expect("the connection closes after the drain").unwrap();
    });
    assert!(proxy.wait_exit(STEP).is_some(), "the proxy exits once the drain is done");
}

#[test]
fn an_idle_connection_is_closed_after_the_client_idle_timeout() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let up = Upstream::ok();
    let proxy = h3_proxy_with(&pki, &dir, &[up.addr], "", "[limits]\nclient_idle_timeout = \"1s\"\n");
    block_on(async {
        let (_ep, mut send, drive) = h3_connect(&pki, proxy.addr).await;
        let (resp, _) = exchange(&mut send, request(Method::GET, "/"), b"").await;
        assert_eq!(resp.status(), 200);
        let idle = tokio::time::Instant::now();
        // GOAWAY after 1 s without a stream, then the close (the client may close first).
        tokio::time::timeout(STEP, drive).await.expect("the idle connection is closed").unwrap();
        assert!(idle.elapsed() >= Duration::from_millis(900), "not before the idle timeout: {:?}", idle.elapsed());
    });
}

/// A reload's certificates reach QUIC as they reach TCP: a connection made after it gets the new
/// leaf (same file names, new certificate), one made before keeps serving, and the TCP side
/// agrees.
#[test]
fn a_reload_brings_new_certificates_to_new_quic_connections() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let up = Upstream::ok();
    let proxy = h3_proxy(&pki, &dir, &[up.addr], "");
    block_on(async {
        let (_ep, mut old, _drive, before) = h3_connect_leaf(&pki, proxy.addr).await;
        assert_eq!(exchange(&mut old, request(Method::GET, "/"), b"").await.0.status(), 200);
        let after = pki.leaf("site", &["localhost"]);
        assert_ne!(before, after.der);
        let (status, body) = proxy.admin("POST", "/reload", "");
        assert_eq!(status, 200, "{body}");
        let (_ep2, mut new, _drive2, got) = h3_connect_leaf(&pki, proxy.addr).await;
        assert!(got == after.der, "a QUIC connection after the reload gets the new certificate");
        assert_eq!(exchange(&mut new, request(Method::GET, "/"), b"").await.0.status(), 200);
        assert_eq!(exchange(&mut old, request(Method::GET, "/"), b"").await.0.status(), 200, "the older connection keeps serving");
    });
}

/// The TCP side of an `http3 = true` listener advertises HTTP/3 on every relayed response, over
/// HTTP/1.1 and HTTP/2 (`Alt-Svc: h3=":PORT"; ma=86400`, PORT the listener's own); a TLS listener
/// without it does not.
#[test]
fn the_tcp_side_advertises_http3_with_alt_svc() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let up = Upstream::ok();
    let proxy = h3_proxy(&pki, &dir, &[up.addr], "");
    let want = format!("h3=\":{}\"; ma=86400", proxy.addr.port());
    let config = Arc::new(pki.client());
    let mut c = crate::support::tls::tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    for _ in 0..2 {
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("alt-svc"), Some(want.as_str()), "{:?}", String::from_utf8_lossy(&r.raw));
        assert_eq!(r.header_count("alt-svc"), 1);
    }
    let mut h2_config = pki.client();
    h2_config.alpn_protocols = vec![b"h2".to_vec()];
    block_on(async {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(h2_config));
        let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.unwrap();
        let (resp, _) = send.send_request(Request::builder().uri("https://localhost/").body(()).unwrap(), true).unwrap();
        let resp = tokio::time::timeout(STEP, resp).await.expect("in time").unwrap();
        assert_eq!(resp.status(), 200);
        let got: Vec<_> = resp.headers().get_all("alt-svc").iter().map(|v| v.as_bytes().to_vec()).collect();
        assert_eq!(got, vec![want.as_bytes().to_vec()]);
    });
    // Over HTTP/3 itself, and on a TLS listener without http3: none.
    block_on(async {
        let (_ep, mut send, _drive) = h3_connect(&pki, proxy.addr).await;
        let (resp, _) = exchange(&mut send, request(Method::GET, "/"), b"").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("alt-svc").is_none());
    });
    let leaf = pki.leaf("plain", &["localhost"]);
    let plain = crate::support::tls::tls_proxy_with(&dir, &up, &[cert_entry(&leaf)], "", "");
    let mut c = crate::support::tls::tls_connect(plain.addr, Some("localhost"), &config).unwrap();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("alt-svc"), None);
}

#[test]
fn http3_needs_tls() {
    let (code, _, err) = crate::support::run_proxy_cmd(&["check", "--config", &*crate::support::write_temp(
        "p.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nhttp3 = true\n[[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"127.0.0.1:9\"]\n",
    )
    .to_string_lossy()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listeners[0].http3") && err.contains("needs TLS"), "{err}");
}
