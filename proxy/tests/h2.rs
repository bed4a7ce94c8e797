//! HTTP/2 from clients (issue 17): prior-knowledge h2c on an `h2c = true` listener (HTTP/1.1
//! still served there), HTTP/2 chosen by ALPN on a TLS listener, each stream routed and
//! forwarded to an HTTP/1.1 upstream like an HTTP/1.1 request; bodies both ways under flow
//! control; errors as statuses before the response and as RST_STREAM after; the header rules of
//! RFC 9113 §8.2; the drain's GOAWAY. The client is the `h2` crate on a tokio runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, Response};
use tokio::net::TcpStream;

use crate::support::tls::{Pki, cert_entry};
use crate::support::{Proxy, Reply, Upstream, config, response, temp_dir};

/// Runs an async test body on a current-thread runtime (the tests are plain `#[test]`s).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

/// Waits without blocking the runtime (the client's connection task must keep running) until
/// `cond` holds, for at most `within`.
async fn until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while !cond() {
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A proxy with an `h2c = true` listener in front of `up`; `extra`: whole tables appended.
fn h2c_proxy(up: &Upstream, extra: &str) -> Proxy {
    let text = config(&[up.addr], "", "").replace("address = \"127.0.0.1:0\"\n", "address = \"127.0.0.1:0\"\nh2c = true\n");
    let text = format!("[admin]\naddress = \"127.0.0.1:0\"\n\n{text}\n{extra}");
    Proxy::start_in(&temp_dir(), &text, 1)
}

/// An HTTP/2 client connection over cleartext (prior knowledge); the connection is driven by a
/// spawned task.
async fn h2c_connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends a request (body sent whole, then end of stream) and reads the whole response.
async fn exchange(send: &mut SendRequest<Bytes>, req: Request<()>, body: &[u8]) -> (Response<()>, Vec<u8>, Option<http::HeaderMap>) {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut stream) = send.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream.reserve_capacity(body.len());
        let mut rest = Bytes::copy_from_slice(body);
        while !rest.is_empty() {
            let cap = std::future::poll_fn(|cx| stream.poll_capacity(cx)).await.unwrap().unwrap();
            let chunk = rest.split_to(cap.min(rest.len()));
            stream.send_data(chunk, rest.is_empty()).unwrap();
        }
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("response in time").expect("response");
    let (parts, mut recv) = resp.into_parts();
    let mut got = Vec::new();
    while let Some(d) = recv.data().await {
        let d = d.expect("body data");
        got.extend_from_slice(&d);
        let _ = recv.flow_control().release_capacity(d.len());
    }
    let trailers = recv.trailers().await.unwrap();
    (Response::from_parts(parts, ()), got, trailers)
}

fn get(path: &str) -> Request<()> {
    Request::builder().uri(format!("http://a.test{path}")).body(()).unwrap()
}

#[test]
fn h2c_prior_knowledge_streams_are_routed_and_forwarded_as_http11() {
    let up = Upstream::start(|r| Reply::Send(response("200 OK", &["X-Up: 1", "Connection: keep-alive"], r.target.as_bytes())));
    let proxy = h2c_proxy(&up, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        for i in 0..20 {
            let (resp, body, _) = exchange(&mut c, get(&format!("/n{i}?q=1")), b"").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(body, format!("/n{i}?q=1").as_bytes());
            assert_eq!(resp.headers().get("x-up").unwrap(), "1");
            assert_eq!(resp.headers().get("via").unwrap(), "1.1 fastproxy");
            assert!(resp.headers().get("connection").is_none(), "no connection-specific field over HTTP/2");
        }
    });
    assert!(up.wait_requests(20, Duration::from_secs(3)));
    let reqs = up.requests();
    assert!(reqs.iter().all(|r| r.conn == 0), "the upstream connection is pooled and reused");
    let r = &reqs[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.header("host"), Some("a.test"), ":authority is the Host");
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-forwarded-host"), Some("a.test"));
    assert_eq!(r.header("via"), Some("1.1 fastproxy"));
    assert!(r.raw.starts_with(b"GET /n0?q=1 HTTP/1.1\r\nHost: a.test\r\n"), "{}", String::from_utf8_lossy(&r.raw));
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"connection\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"stream\"}"), 20.0);
}

#[test]
fn an_h2c_listener_still_serves_http11() {
    let up = Upstream::ok();
    let proxy = h2c_proxy(&up, "");
    let mut c = crate::support::Client::connect(proxy.addr);
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 200);
    // The cleartext upgrade is never honoured: the Upgrade field does not reach the upstream.
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(up.wait_requests(2, Duration::from_secs(3)));
    assert_eq!(up.requests()[1].header("upgrade"), None);
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"connection\"}"), 0.0);
}

#[test]
fn request_bodies_stream_upstream_chunked_or_by_length_and_large_responses_follow_flow_control() {
    // Echoes the request body; `/big` answers 1 MiB (more than the client's 64 KiB window).
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = big.clone();
    let up = Upstream::start(move |r| {
        if r.target == "/big" {
            Reply::Send(response("200 OK", &[], &reply))
        } else if r.target == "/chunked" {
            Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec())
        } else {
            Reply::Send(response("200 OK", &[], &r.body))
        }
    });
    let proxy = h2c_proxy(&up, "");
    let body: Vec<u8> = (0..300 * 1024).map(|i| (i % 253) as u8).collect();
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        // No content-length: chunked upstream.
        let req = Request::builder().method(Method::POST).uri("http://a.test/echo").body(()).unwrap();
        let (resp, got, _) = exchange(&mut c, req, &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the body crossed intact");
        // With content-length: forwarded as sent.
        let req = Request::builder().method(Method::PUT).uri("http://a.test/echo").header("content-length", body.len()).body(()).unwrap();
        let (resp, got, _) = exchange(&mut c, req, &body).await;
        assert_eq!(resp.status(), 200);
        assert!(got == body);
        let (resp, got, _) = exchange(&mut c, get("/big"), b"").await;
        assert_eq!(resp.status(), 200);
        assert!(got == big, "1 MiB relayed whole ({} bytes)", got.len());
        let (_, got, _) = exchange(&mut c, get("/chunked"), b"").await;
        assert_eq!(got, b"hello world", "a chunked response is de-chunked into DATA");
        // A POST without a body says so upstream.
        let req = Request::builder().method(Method::POST).uri("http://a.test/empty").body(()).unwrap();
        let (resp, got, _) = exchange(&mut c, req, b"").await;
        assert_eq!(resp.status(), 200);
        assert!(got.is_empty());
    });
    assert!(up.wait_requests(5, Duration::from_secs(3)));
    let reqs = up.requests();
    assert_eq!(reqs[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(reqs[0].body.len(), body.len());
    assert_eq!(reqs[1].header("content-length"), Some(&*body.len().to_string()));
    assert_eq!(reqs[1].header("transfer-encoding"), None);
    assert_eq!(reqs[4].header("content-length"), Some("0"));
}

#[test]
fn an_http11_upstreams_chunked_trailers_reach_the_client_as_http2_trailers() {
    // gRPC-style: a chunked response whose trailer section carries the status. The proxy sends
    // the trailers as a HEADERS frame ending the stream; framing, routing and connection fields
    // among them are dropped, as on HTTP/1.1.
    let up = Upstream::start(|r| {
        let trailers = if r.target == "/none" {
            ""
        } else if r.target == "/forbidden" {
            "Content-Length: 9\r\nConnection: close\r\n"
        } else {
            "Grpc-Status: 0\r\ngrpc-message:  ok \r\nX-Checksum: abc\r\n"
        };
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n";
        Reply::Send(format!("{head}5\r\nhello\r\n6\r\n world\r\n0\r\n{trailers}\r\n").into_bytes())
    });
    let proxy = h2c_proxy(&up, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        for _ in 0..3 {
            let req = Request::builder()
                .method(Method::POST)
                .uri("http://a.test/pkg.Svc/Method")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (resp, got, trailers) = exchange(&mut c, req, b"\0\0\0\0\x03abc").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers().get("content-type").unwrap(), "application/grpc");
            assert_eq!(got, b"hello world");
            let t = trailers.expect("trailers relayed");
            assert_eq!(t.get("grpc-status").unwrap(), "0");
            assert_eq!(t.get("grpc-message").unwrap(), "ok", "optional whitespace trimmed");
            assert_eq!(t.get("x-checksum").unwrap(), "abc");
            assert_eq!(t.len(), 3);
        }
        let (resp, got, trailers) = exchange(&mut c, get("/none"), b"").await;
        assert_eq!((resp.status().as_u16(), got.as_slice(), trailers), (200, b"hello world".as_slice(), None));
        let (resp, got, trailers) = exchange(&mut c, get("/forbidden"), b"").await;
        assert_eq!((resp.status().as_u16(), got.as_slice()), (200, b"hello world".as_slice()));
        assert_eq!(trailers, None, "only forbidden fields: no trailers at all");
        let (resp, _, _) = exchange(&mut c, get("/after"), b"").await;
        assert_eq!(resp.status(), 200, "the connection serves on");
    });
    let reqs = up.requests();
    assert_eq!(reqs[0].header("te"), Some("trailers"), "te: trailers reaches the upstream");
    assert_eq!(reqs[0].body, b"\0\0\0\0\x03abc");
}

#[test]
fn cookies_are_joined_and_errors_map_to_statuses() {
    let up = Upstream::start(|r| if r.target == "/hang" { Reply::Hang } else { Reply::Send(response("200 OK", &[], b"ok")) });
    let text = config(&[up.addr], "", "response_header_timeout = \"300ms\"")
        .replace("address = \"127.0.0.1:0\"\n", "address = \"127.0.0.1:0\"\nh2c = true\n")
        .replace("path_prefix = \"/\"", "path_prefix = \"/\"\nhost = \"a.test\"");
    let proxy = Proxy::start_in(&temp_dir(), &format!("[admin]\naddress = \"127.0.0.1:0\"\n\n{text}"), 1);
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        let req = Request::builder().uri("http://a.test/c").header("cookie", "a=1").header("cookie", "b=2").body(()).unwrap();
        let (resp, _, _) = exchange(&mut c, req, b"").await;
        assert_eq!(resp.status(), 200);
        let (resp, _, _) = exchange(&mut c, Request::builder().uri("http://other.test/").body(()).unwrap(), b"").await;
        assert_eq!(resp.status(), 404, "no route for this :authority");
        let (resp, _, _) = exchange(&mut c, get("/hang"), b"").await;
        assert_eq!(resp.status(), 504, "response_header_timeout");
        // The connection carries on after errors.
        let (resp, _, _) = exchange(&mut c, get("/after"), b"").await;
        assert_eq!(resp.status(), 200);
    });
    let reqs = up.requests();
    assert_eq!(reqs[0].header("cookie"), Some("a=1; b=2"), "RFC 9113 §8.2.3");
    assert_eq!(reqs[0].headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("cookie")).count(), 1);
    assert_eq!(proxy.metric("proxy_errors_total{kind=\"no_route\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_errors_total{kind=\"response_timeout\"}"), 1.0);
}

#[test]
fn an_upstream_that_breaks_mid_body_resets_the_stream_not_the_connection() {
    let up = Upstream::start(|r| {
        if r.target == "/cut" {
            Reply::SendClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part".to_vec())
        } else {
            Reply::Send(response("200 OK", &[], b"ok"))
        }
    });
    let proxy = h2c_proxy(&up, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        let mut s = c.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(get("/cut"), true).unwrap();
        // The head went out before the upstream broke; the reset may reach the client before
        // it reads the head (h2 then reports the reset in place of the response): either way
        // the stream ends in RST_STREAM, never as a complete response.
        let (got, reset) = match resp.await {
            Err(e) => (Vec::new(), e.reason()),
            Ok(resp) => {
                assert_eq!(resp.status(), 200, "the head had gone out");
                let mut recv = resp.into_body();
                let mut got = Vec::new();
                let mut reset = None;
                while let Some(d) = recv.data().await {
                    match d {
                        Ok(d) => got.extend_from_slice(&d),
                        Err(e) => {
                            reset = e.reason();
                            break;
                        }
                    }
                }
                (got, reset)
            }
        };
        assert!(b"only-part".starts_with(&got), "{got:?}");
        assert_eq!(reset, Some(h2::Reason::INTERNAL_ERROR), "a cut body ends in RST_STREAM, never a clean end");
        let (resp, body, _) = exchange(&mut c, get("/fine"), b"").await;
        assert_eq!((resp.status().as_u16(), body.as_slice()), (200, b"ok".as_slice()), "the connection serves on");
    });
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"reset_by_proxy\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_errors_total{kind=\"upstream_broken\"}"), 1.0);
}

#[test]
fn connection_specific_and_malformed_fields_are_refused_per_stream() {
    // RFC 9113 §8.2.2: `connection`, `te` other than `trailers`; §8.2.1: uppercase names;
    // §8.3.1: a missing :path. Each is a stream error (RST_STREAM PROTOCOL_ERROR) that never
    // reaches the upstream, and the connection serves on.
    let up = Upstream::ok();
    let proxy = h2c_proxy(&up, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        for (name, value) in
            [("connection", "close"), ("te", "gzip"), ("keep-alive", "5"), ("transfer-encoding", "chunked"), ("upgrade", "x")]
        {
            let mut s = c.clone().ready().await.unwrap();
            let req = Request::builder().uri("http://a.test/bad").header(name, value).body(()).unwrap();
            // h2's client refuses to send some of these itself: either way nothing goes upstream.
            if let Ok((resp, _)) = s.send_request(req, true) {
                let r = resp.await;
                assert!(r.is_err(), "{name}: {value} must be refused, got {:?}", r.map(|r| r.status()));
            }
        }
        let (resp, _, _) = exchange(&mut c, get("/fine"), b"").await;
        assert_eq!(resp.status(), 200);
    });
    assert!(up.wait_requests(1, Duration::from_secs(3)));
    assert_eq!(up.requests().len(), 1, "only the good request reached the upstream");
}

#[test]
fn alpn_chooses_h2_or_http11_on_a_tls_listener() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let up = Upstream::ok();
    let proxy = crate::support::tls::tls_proxy_with(&dir, &up, &[cert_entry(&leaf)], "", "");
    let mut h2_config = pki.client();
    h2_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let h2_config = Arc::new(h2_config);
    block_on(async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&h2_config));
        let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send;
        for _ in 0..5 {
            let (resp, body, _) = exchange(&mut send, Request::builder().uri("https://localhost/x").body(()).unwrap(), b"").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(body, b"ok");
        }
    });
    // A client offering only http/1.1 still gets HTTP/1.1.
    let h1_config = Arc::new(pki.client());
    let mut c = crate::support::tls::tls_connect(proxy.addr, Some("localhost"), &h1_config).unwrap();
    assert_eq!(c.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(up.wait_requests(6, Duration::from_secs(3)));
    assert!(up.requests().iter().all(|r| r.header("x-forwarded-proto") == Some("https")));
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"stream\"}"), 5.0);

    // `tls.http2 = false`: ALPN offers only http/1.1.
    let proxy = crate::support::tls::tls_proxy_with(&dir, &up, &[cert_entry(&leaf)], "http2 = false", "");
    let c = crate::support::tls::tls_connect(proxy.addr, Some("localhost"), &h2_config).unwrap();
    assert_eq!(c.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn too_many_concurrent_streams_are_refused_and_a_drain_sends_goaway_after_open_streams_finish() {
    let up = Upstream::start(|r| {
        if r.target == "/slow" {
            Reply::Delay(Duration::from_millis(600), response("200 OK", &[], b"slow"))
        } else {
            Reply::Send(response("200 OK", &[], b"ok"))
        }
    });
    let mut proxy = h2c_proxy(&up, "[http2]\nmax_concurrent_streams = 2\n");
    block_on(async {
        let c = h2c_connect(proxy.addr).await;
        // The client learns the limit from SETTINGS and holds its third stream back itself;
        // the two in flight both complete.
        let mut a = c.clone().ready().await.unwrap();
        let (ra, _) = a.send_request(get("/slow"), true).unwrap();
        let mut b = c.clone().ready().await.unwrap();
        let (rb, _) = b.send_request(get("/slow"), true).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Drain while both are open: GOAWAY, the streams finish, then the connection closes.
        proxy.signal(nix::sys::signal::Signal::SIGTERM);
        let ra = ra.await.expect("an open stream finishes through the drain");
        let rb = rb.await.expect("an open stream finishes through the drain");
        assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
        let mut body = ra.into_body();
        let mut got = Vec::new();
        while let Some(d) = body.data().await {
            got.extend_from_slice(&d.unwrap());
        }
        assert_eq!(got, b"slow");
    });
    assert!(proxy.wait_exit(Duration::from_secs(5)).is_some(), "the proxy exits once its streams are done");
}

#[test]
fn a_stream_the_client_resets_stops_its_upstream_exchange() {
    let up = Upstream::start(|r| if r.target == "/hang" { Reply::Hang } else { Reply::Send(response("200 OK", &[], b"ok")) });
    let proxy = h2c_proxy(&up, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        let mut s = c.clone().ready().await.unwrap();
        let (_resp, mut stream) = s.send_request(get("/hang"), false).unwrap();
        assert!(until(Duration::from_secs(3), || !up.requests().is_empty() || up.accepted() > 0).await, "the request reached the upstream");
        assert!(until(Duration::from_secs(3), || !up.received(0).is_empty()).await);
        stream.send_reset(h2::Reason::CANCEL);
        // The proxy closes the upstream connection at once (it is not left waiting for an
        // answer nobody will read, nor pooled with a response pending).
        assert!(until(Duration::from_secs(3), || up.is_closed(0)).await, "the upstream connection of the reset stream was closed");
        let (resp, body, _) = exchange(&mut c, get("/after"), b"").await;
        assert_eq!((resp.status().as_u16(), body.as_slice()), (200, b"ok".as_slice()));
    });
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"reset_by_client\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_errors_total{kind=\"client_gone\"}"), 1.0);
}

/// What an [`H2Origin`] saw of one stream.
#[derive(Debug, Clone)]
struct OriginStream {
    conn: usize,
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

/// An HTTP/2 origin (the `h2` crate's server, cleartext prior knowledge) on its own thread: for
/// each stream it reads the whole body and trailers, then answers 200 with the body echoed, a
/// header `x-origin-conn` and the trailers `grpc-status: 0` and `x-body-len` (gRPC's shape);
/// `/big` answers 1 MiB without trailers; `/reset` resets the stream after the head.
struct H2Origin {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<OriginStream>>>,
    conns: Arc<std::sync::atomic::AtomicUsize>,
}

impl H2Origin {
    fn start() -> H2Origin {
        Self::start_with(None)
    }

    /// The same origin over TLS (ALPN `h2` only) with `leaf`'s certificate.
    fn start_tls(leaf: &crate::support::tls::Leaf) -> H2Origin {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&leaf.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> H2Origin {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen2, conns2) = (Arc::clone(&seen), Arc::clone(&conns));
        std::thread::spawn(move || {
            block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let local = tokio::task::LocalSet::new();
                local
                    .run_until(async move {
                        loop {
                            let Ok((tcp, _)) = l.accept().await else { return };
                            let n = conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let seen = Arc::clone(&seen2);
                            let tls = tls.clone();
                            tokio::task::spawn_local(async move {
                                match tls {
                                    None => serve_origin(n, tcp, seen).await,
                                    Some(acceptor) => {
                                        let Ok(stream) = acceptor.accept(tcp).await else { return };
                                        serve_origin(n, stream, seen).await;
                                    }
                                }
                            });
                        }
                    })
                    .await;
            });
        });
        H2Origin { addr, seen, conns }
    }

    fn streams(&self) -> Vec<OriginStream> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve_origin<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static>(
    n: usize,
    io: T,
    seen: Arc<std::sync::Mutex<Vec<OriginStream>>>,
) {
    let Ok(mut conn) = h2::server::handshake(io).await else { return };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::task::spawn_local(origin_stream(n, req, respond, Arc::clone(&seen)));
    }
}

async fn origin_stream(
    conn: usize,
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: Arc<std::sync::Mutex<Vec<OriginStream>>>,
) {
    let (parts, mut body) = req.into_parts();
    let mut got = Vec::new();
    while let Some(Ok(d)) = body.data().await {
        got.extend_from_slice(&d);
        let _ = body.flow_control().release_capacity(d.len());
    }
    let trailers = body.trailers().await.ok().flatten();
    let pairs = |m: &http::HeaderMap| m.iter().map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let path = parts.uri.path().to_owned();
    seen.lock().unwrap().push(OriginStream {
        conn,
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: pairs(&parts.headers),
        body: got.clone(),
        trailers: trailers.as_ref().map(pairs).unwrap_or_default(),
    });
    let res = Response::builder().status(200).header("x-origin-conn", conn.to_string()).body(()).unwrap();
    let Ok(mut send) = respond.send_response(res, false) else { return };
    if path == "/reset" {
        // Part of a body, time for the proxy to relay the head, then the reset.
        let _ = send.send_data(Bytes::from_static(b"partial"), false);
        tokio::time::sleep(Duration::from_millis(200)).await;
        send.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    }
    let out: Vec<u8> = if path == "/big" { (0..1024 * 1024).map(|i| (i % 251) as u8).collect() } else { got };
    let mut out = Bytes::from(out);
    while !out.is_empty() {
        send.reserve_capacity(out.len());
        let Some(Ok(cap)) = std::future::poll_fn(|cx| send.poll_capacity(cx)).await else { return };
        let chunk = out.split_to(cap.min(out.len()));
        let _ = send.send_data(chunk, false);
    }
    if path == "/big" {
        let _ = send.send_data(Bytes::new(), true);
        return;
    }
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("x-body-len", seen.lock().unwrap().last().unwrap().body.len().to_string().parse().unwrap());
    let _ = send.send_trailers(t);
}

fn h2_upstream_proxy(origin: &H2Origin, route_extra: &str) -> Proxy {
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\nh2c = true\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"o\"\n{route_extra}\n\n[upstreams.o]\nservers = [\"{}\"]\nprotocol = \"h2c\"\n",
        origin.addr
    );
    Proxy::start_in(&temp_dir(), &text, 1)
}

#[test]
fn grpc_style_h2c_to_h2c_relays_trailers_both_ways_and_multiplexes_one_upstream_connection() {
    let origin = H2Origin::start();
    let proxy = h2_upstream_proxy(&origin, "");
    block_on(async {
        let c = h2c_connect(proxy.addr).await;
        // Ten concurrent unary calls: a body, trailers back.
        let mut calls = Vec::new();
        for i in 0..10 {
            let mut s = c.clone().ready().await.unwrap();
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("http://a.test/pkg.Svc/Call{i}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let (resp, mut body) = s.send_request(req, false).unwrap();
            let msg = Bytes::from(format!("message-{i}"));
            body.send_data(msg, false).unwrap();
            let mut t = http::HeaderMap::new();
            t.insert("x-req-trailer", format!("{i}").parse().unwrap());
            body.send_trailers(t).unwrap();
            calls.push(resp);
        }
        for (i, resp) in calls.into_iter().enumerate() {
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers().get("via").unwrap(), "1.1 fastproxy");
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(d) = body.data().await {
                let d = d.unwrap();
                got.extend_from_slice(&d);
                let _ = body.flow_control().release_capacity(d.len());
            }
            assert_eq!(got, format!("message-{i}").as_bytes());
            let t = body.trailers().await.unwrap().expect("trailers relayed");
            assert_eq!(t.get("grpc-status").unwrap(), "0");
            assert_eq!(t.get("x-body-len").unwrap(), &*format!("message-{i}").len().to_string());
        }
        // A large response follows both windows.
        let mut c2 = c.clone();
        let (resp, got, t) = exchange(&mut c2, get("/big"), b"").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(got.len(), 1024 * 1024);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        assert!(t.is_none());
    });
    let streams = origin.streams();
    assert_eq!(streams.len(), 11);
    assert_eq!(origin.conns.load(std::sync::atomic::Ordering::SeqCst), 1, "all streams multiplexed on one upstream connection");
    let s = streams.iter().find(|s| s.uri.ends_with("/pkg.Svc/Call3")).unwrap();
    assert_eq!(s.method, "POST");
    assert_eq!(s.uri, "http://a.test/pkg.Svc/Call3");
    assert_eq!(s.body, b"message-3");
    assert!(s.trailers.contains(&("x-req-trailer".into(), "3".into())), "request trailers relayed: {:?}", s.trailers);
    let h = |n: &str| s.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(h("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto"), Some("http"));
    assert_eq!(h("x-forwarded-host"), Some("a.test"));
    assert_eq!(h("via"), Some("1.1 fastproxy"));
    assert_eq!(h("te"), Some("trailers"));
    assert_eq!(h("content-type"), Some("application/grpc"));
    let _ = s.conn;
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"upstream_session\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"upstream_stream\"}"), 11.0);
}

#[test]
fn an_h2_upstream_reset_mid_response_resets_the_client_stream_and_strip_prefix_applies() {
    let origin = H2Origin::start();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\nh2c = true\n\n\
         [[routes]]\npath_prefix = \"/api\"\nstrip_prefix = true\nupstream = \"o\"\n\n[upstreams.o]\nservers = [\"{}\"]\nprotocol = \"h2c\"\n",
        origin.addr
    );
    let proxy = Proxy::start_in(&temp_dir(), &text, 1);
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        let mut s = c.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(get("/api/reset"), true).unwrap();
        let outcome = match resp.await {
            Err(e) => e.reason(),
            Ok(r) => {
                let mut b = r.into_body();
                let mut reason = None;
                while let Some(d) = b.data().await {
                    if let Err(e) = d {
                        reason = e.reason();
                        break;
                    }
                }
                reason
            }
        };
        assert_eq!(outcome, Some(h2::Reason::INTERNAL_ERROR));
        let (resp, _, _) = exchange(&mut c, get("/api/x?q=1"), b"").await;
        assert_eq!(resp.status(), 200);
    });
    let streams = origin.streams();
    assert!(streams.iter().any(|s| s.uri == "http://a.test/x?q=1"), "{streams:?}");
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"reset_by_proxy\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"upstream_reset\"}"), 1.0);
}

#[test]
fn upstream_protocol_is_checked_against_tls() {
    let (code, _, err) = crate::support::run_proxy_cmd(&["check", "--config", &*crate::support::write_temp(
        "p.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"127.0.0.1:9\"]\nprotocol = \"h2\"\n",
    )
    .to_string_lossy()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("upstreams.o.protocol") && err.contains("tls = true"), "{err}");
    let (code, _, err) = crate::support::run_proxy_cmd(&["check", "--config", &*crate::support::write_temp(
        "p.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"o\"\n[upstreams.o]\nservers = [\"127.0.0.1:9\"]\nprotocol = \"spdy\"\n",
    )
    .to_string_lossy()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown protocol \"spdy\""), "{err}");
}

#[test]
fn http11_clients_reach_an_h2c_upstream_with_chunked_bodies_and_trailers_translated() {
    let origin = H2Origin::start();
    let proxy = h2_upstream_proxy(&origin, "");
    let mut c = crate::support::Client::connect(proxy.addr);
    // GET: the origin answers with a body and trailers; no content-length: chunked, with the
    // trailers in the last chunk.
    let r = c.roundtrip(b"GET /g?x=1 HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\nX-A: 1\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("via"), Some("1.1 fastproxy"));
    assert!(r.body.is_empty());
    // A chunked request body goes up de-chunked; the echo comes back.
    let r = c.roundtrip(b"POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    // Content-Length body; a big response.
    let r = c.roundtrip(b"PUT /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.body, b"abc");
    let r = c.roundtrip(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.body.len(), 1024 * 1024);
    // HTTP/1.0: close-delimited.
    let mut c10 = crate::support::Client::connect(proxy.addr);
    c10.send(b"GET /big HTTP/1.0\r\nHost: a.test\r\n\r\n");
    let (raw, _) = c10.read_to_close();
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", String::from_utf8_lossy(&raw[..200.min(raw.len())]));
    let at = crate::support::find(&raw, b"\r\n\r\n").unwrap() + 4;
    assert_eq!(raw.len() - at, 1024 * 1024, "the whole body, delimited by the close");
    assert_eq!(raw.last(), Some(&(((1024 * 1024 - 1) % 251) as u8)));

    let streams = origin.streams();
    assert_eq!(streams.len(), 5, "{streams:?}");
    let g = &streams[0];
    assert_eq!(g.uri, "http://a.test/g?x=1");
    let h = |s: &OriginStream, n: &str| s.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(h(g, "x-a").as_deref(), Some("1"));
    assert_eq!(h(g, "te").as_deref(), Some("trailers"));
    assert_eq!(h(g, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h(g, "host"), None, "the Host is the authority");
    assert_eq!(streams[1].body, b"hello world");
    assert_eq!(h(&streams[1], "transfer-encoding"), None);
    assert_eq!(origin.conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_reload_applies_to_the_next_stream_of_an_open_connection_and_metrics_count_by_protocol() {
    let a = Upstream::start(|_| Reply::Send(response("200 OK", &[], b"a")));
    let b = Upstream::start(|_| Reply::Send(response("200 OK", &[], b"b")));
    let proxy = h2c_proxy(&a, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        let (_, body, _) = exchange(&mut c, get("/"), b"").await;
        assert_eq!(body, b"a");
        let text = std::fs::read_to_string(&proxy.config).unwrap().replace(&a.addr.to_string(), &b.addr.to_string());
        std::fs::write(&proxy.config, text).unwrap();
        assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
        let (_, body, _) = exchange(&mut c, get("/"), b"").await;
        assert_eq!(body, b"b", "the next stream on the same connection runs on the new routes");
    });
    let mut h1 = crate::support::Client::connect(proxy.addr);
    assert_eq!(h1.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").status, 200);
    assert_eq!(proxy.metric("proxy_h2_events_total{event=\"connection\"}"), 1.0);
    // A request is counted once its response is written: the client may read it first.
    assert!(crate::support::wait_until(Duration::from_secs(3), || {
        proxy.metric("proxy_requests_by_protocol_total{protocol=\"http1\"}") == 1.0
    }));
    assert_eq!(proxy.metric("proxy_requests_by_protocol_total{protocol=\"h2\"}"), 2.0);
}

#[test]
fn h2_over_tls_to_an_upstream_verified_by_its_ca_with_alpn_h2() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("origin", &["origin.test"]);
    let ca = pki.write_ca("ca.pem");
    let origin = H2Origin::start_tls(&leaf);
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\nh2c = true\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"o\"\n\n[upstreams.o]\nservers = [\"{}\"]\nprotocol = \"h2\"\ntls = true\n\
         tls_ca = \"{}\"\ntls_server_name = \"origin.test\"\n",
        origin.addr,
        ca.display()
    );
    let proxy = Proxy::start_in(&dir, &text, 1);
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        for i in 0..3 {
            let req = Request::builder().method(Method::POST).uri(format!("http://a.test/t{i}")).body(()).unwrap();
            let (resp, body, trailers) = exchange(&mut c, req, b"over-tls").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(body, b"over-tls");
            assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
        }
    });
    let mut h1 = crate::support::Client::connect(proxy.addr);
    let r = h1.roundtrip(b"GET /h1 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 200, "an HTTP/1.1 client reaches the same HTTP/2-over-TLS upstream");
    assert_eq!(origin.conns.load(std::sync::atomic::Ordering::SeqCst), 1, "one TLS connection carries every stream");
    assert!(origin.streams().iter().all(|s| s.uri.starts_with("https://a.test/")), "{:?}", origin.streams());
    assert_eq!(proxy.metric("proxy_upstream_tls_handshakes_total{kind=\"full\"}"), 1.0);
}

#[test]
fn two_content_lengths_are_refused_and_framing_fields_never_travel_as_trailers() {
    let up = Upstream::start(|r| Reply::Send(response("200 OK", &[], &r.body)));
    let proxy = h2c_proxy(&up, "");
    block_on(async {
        let mut c = h2c_connect(proxy.addr).await;
        // Two content-length fields: `h2` resets the stream when they differ; when they agree
        // the proxy refuses them itself (400), as its HTTP/1.1 parser does, rather than pass a
        // repeated field to an HTTP/1.1 upstream.
        let req = Request::builder()
            .method(Method::POST)
            .uri("http://a.test/two")
            .header("content-length", "3")
            .header("content-length", "3")
            .body(())
            .unwrap();
        let mut s = c.clone().ready().await.unwrap();
        let (resp, mut body) = s.send_request(req, false).unwrap();
        let _ = body.send_data(Bytes::from_static(b"abc"), true);
        let status = resp.await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"));
        assert_eq!(status.as_ref().ok(), Some(&400), "refused by the proxy itself: {status:?}");
        // Request trailers that would reframe or reroute (content-length, host,
        // transfer-encoding) are dropped from the HTTP/1.1 trailer section; others pass.
        let mut s = c.clone().ready().await.unwrap();
        let req = Request::builder().method(Method::POST).uri("http://a.test/t").body(()).unwrap();
        let (resp, mut body) = s.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(b"xyz"), false).unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("content-length", "99".parse().unwrap());
        t.insert("host", "evil.test".parse().unwrap());
        t.insert("x-checksum", "abc".parse().unwrap());
        body.send_trailers(t).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        let (resp, _, _) = exchange(&mut c, get("/after"), b"").await;
        assert_eq!(resp.status(), 200);
    });
    let reqs = up.requests();
    assert!(
        up.received_all().iter().all(|bytes| crate::support::find(bytes, b"/two").is_none()),
        "no byte of the request with two lengths went upstream"
    );
    let t = reqs.iter().find(|r| r.target == "/t").unwrap();
    let raw = String::from_utf8_lossy(&t.raw);
    assert!(raw.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{raw}");
    assert_eq!(t.body, b"xyz");
}
