//! Well-formed HTTP/1.1 traffic through the proxy: what the upstream receives and what the client
//! gets back, byte for byte (headers rewritten exactly as issue 2 specifies, bodies untouched).

use crate::fwd_tail;
use crate::support::{Framing, Proxy, Reply, SETTLE, Upstream, assert_bytes, config, ok, show};
use std::io::Read;
use std::time::Duration;

/// Deterministic bytes covering all 256 values, so a body corrupted anywhere shows up.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn get_is_rewritten_exactly_and_the_response_loses_only_hop_by_hop_headers() {
    let up = Upstream::start(|_| {
        Reply::Send(
            b"HTTP/1.1 200 Fine Thanks\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\n\r\nhello"
                .to_vec(),
        )
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /a/b?c=d&e HTTP/1.1\r\nHost: a.test\r\nUser-Agent: t/1\r\nAccept: */*\r\n\r\n");
    assert_eq!((r.version, r.reason.as_str()), (1, "Fine Thanks"));
    assert_bytes(
        "client received",
        b"HTTP/1.1 200 Fine Thanks\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 5\r\nVia: 1.1 fastproxy\r\n\r\nhello",
        &r.raw,
    );
    assert_bytes(
        "upstream received",
        concat!("GET /a/b?c=d&e HTTP/1.1\r\nHost: a.test\r\nUser-Agent: t/1\r\nAccept: */*\r\n", fwd_tail!()).as_bytes(),
        &up.received(0),
    );
}

#[test]
fn host_with_port_goes_to_x_forwarded_host_as_received() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test:8080\r\n\r\n");
    assert_eq!(r.status, 200);
    let expected = format!("GET / HTTP/1.1\r\nHost: a.test:8080\r\n{}", crate::support::fwd_tail("a.test:8080", "127.0.0.1"));
    assert_bytes("upstream received", expected.as_bytes(), &up.received(0));
}

#[test]
fn one_mebibyte_content_length_request_body_streams_byte_for_byte() {
    let body = pattern(1 << 20);
    let up = Upstream::start(|req| Reply::Send(ok(format!("{}", req.body.len()).as_bytes())));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let head = format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n", body.len());
    let r = c.roundtrip(&[head.as_bytes(), &body].concat());
    assert_eq!((r.status, r.body.as_slice()), (200, b"1048576".as_slice()));
    let mut expected = format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n{}", body.len(), fwd_tail!()).into_bytes();
    expected.extend_from_slice(&body);
    assert_bytes("upstream received", &expected, &up.received(0));
}

#[test]
fn one_mebibyte_responses_stream_byte_for_byte_content_length_and_chunked() {
    let body = pattern(1 << 20);
    // A chunked body with uneven chunk sizes, an extension and a trailer.
    let mut chunked = Vec::new();
    let mut at = 0;
    let mut size = 1;
    while at < body.len() {
        let n = size.min(body.len() - at);
        chunked.extend_from_slice(format!("{n:x}").as_bytes());
        if n % 3 == 0 {
            chunked.extend_from_slice(b";k=v");
        }
        chunked.extend_from_slice(b"\r\n");
        chunked.extend_from_slice(&body[at..at + n]);
        chunked.extend_from_slice(b"\r\n");
        at += n;
        size = size * 3 + 7;
    }
    chunked.extend_from_slice(b"0\r\nX-Checksum: 42\r\n\r\n");

    let (b1, c1) = (body.clone(), chunked.clone());
    let up = Upstream::start(move |req| {
        let mut r = if req.target == "/cl" {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", b1.len()).into_bytes()
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
        };
        r.extend_from_slice(if req.target == "/cl" { &b1 } else { &c1 });
        Reply::Send(r)
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();

    let r = c.roundtrip(b"GET /cl HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let mut expected = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nVia: 1.1 fastproxy\r\n\r\n", body.len()).into_bytes();
    expected.extend_from_slice(&body);
    assert_bytes("content-length response", &expected, &r.raw);

    let r = c.roundtrip(b"GET /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let mut expected = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nVia: 1.1 fastproxy\r\n\r\n".to_vec();
    expected.extend_from_slice(&chunked);
    assert_bytes("chunked response", &expected, &r.raw);
    assert_eq!(up.accepted(), 1, "both responses on one upstream connection");
}

#[test]
fn http10_client_gets_a_chunked_response_dechunked_and_close_delimited() {
    let up = Upstream::start(|_| {
        Reply::Send(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"
                .to_vec(),
        )
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"GET /old HTTP/1.0\r\nHost: a.test\r\n\r\n");
    let (got, closed) = c.read_to_close();
    assert!(closed, "connection must close after an HTTP/1.0 response");
    assert_bytes(
        "client received",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nVia: 1.1 fastproxy\r\nConnection: close\r\n\r\nhello world",
        &got,
    );
}

#[test]
fn head_response_has_no_body_and_the_connection_stays_usable() {
    let up = Upstream::start(|req| {
        if req.method == "HEAD" {
            Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec())
        } else {
            Reply::Send(ok(b"after"))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    // Pipelined: if the proxy waited for 1000 body bytes, the GET would never be answered.
    c.send(b"HEAD /h HTTP/1.1\r\nHost: a.test\r\n\r\nGET /g HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let head = c.read_response_to("HEAD").unwrap();
    assert_bytes("HEAD response", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nVia: 1.1 fastproxy\r\n\r\n", &head.raw);
    let get = c.read_response().unwrap();
    assert_eq!((get.status, get.body.as_slice()), (200, b"after".as_slice()));
    assert_eq!(up.accepted(), 1, "the upstream connection survives a HEAD");
}

#[test]
fn responses_204_and_304_carry_no_body_even_with_a_content_length() {
    let up = Upstream::start(|req| match req.target.as_str() {
        "/204" => Reply::Send(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec()),
        "/304" => Reply::Send(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\n\r\n".to_vec()),
        _ => Reply::Send(ok(b"after")),
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /204 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_bytes("204", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nVia: 1.1 fastproxy\r\n\r\n", &r.raw);
    let r = c.roundtrip(b"GET /304 HTTP/1.1\r\nHost: a.test\r\nIf-None-Match: \"x\"\r\n\r\n");
    assert_bytes("304", b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 100\r\nVia: 1.1 fastproxy\r\n\r\n", &r.raw);
    let r = c.roundtrip(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"after".as_slice()));
    assert!(c.pending().is_empty(), "stray bytes: {}", show(c.pending()));
    assert_eq!(up.accepted(), 1);
}

#[test]
fn early_hints_103_is_relayed_before_the_final_response() {
    let up = Upstream::start(|_| {
        let mut r = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec();
        r.extend_from_slice(&ok(b"final"));
        Reply::Send(r)
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let (interim, fin) = c.read_final("GET").unwrap();
    assert_eq!(interim.len(), 1, "one interim response");
    assert_eq!(interim[0].status, 103);
    assert_eq!(interim[0].header("link"), Some("</s.css>; rel=preload"));
    assert_eq!((fin.status, fin.body.as_slice()), (200, b"final".as_slice()));
}

#[test]
fn expect_100_continue_is_forwarded_and_the_interim_100_relayed_before_the_body() {
    let up = Upstream::start_with(true, |req| Reply::Send(ok(&req.body)));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"POST /e HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    // The client waits for the 100 before sending the body, as curl does (without its 1 s fallback).
    let interim = c.read_response().expect("a 100 Continue before the body is sent");
    assert_eq!(interim.status, 100, "got {}", show(&interim.raw));
    c.send(b"hello");
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"hello".as_slice()));
    assert_bytes(
        "upstream received",
        concat!("POST /e HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n", fwd_tail!(), "hello").as_bytes(),
        &up.received(0),
    );
}

#[test]
fn websocket_upgrade_becomes_a_bidirectional_tunnel_after_101() {
    let up = Upstream::start(|req| {
        if req.header("upgrade").is_some() {
            Reply::Tunnel(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nserver-first"
                    .to_vec(),
            )
        } else {
            Reply::Send(ok(b"plain"))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 101, "got {}", show(&r.raw));
    assert!(
        r.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "a 101 without `Upgrade: websocket` is rejected by browsers (RFC 6455 §4.1): {}",
        show(&r.raw)
    );
    assert!(
        r.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("connection") && v.to_ascii_lowercase().contains("upgrade")),
        "a 101 without `Connection: upgrade` is rejected by browsers (RFC 6455 §4.1): {}",
        show(&r.raw)
    );
    // Server-first bytes that arrived with the 101, then an echo of client bytes.
    let mut got = c.pending().to_vec();
    let mut buf = [0u8; 256];
    while got.len() < b"server-first".len() {
        let n = c.stream.read(&mut buf).expect("tunnel read");
        assert!(n > 0, "tunnel closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_bytes("server-first bytes", b"server-first", &got);
    let frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58 not http at all\r\n\r\n";
    c.send(frame);
    let mut echoed = Vec::new();
    while echoed.len() < frame.len() {
        let n = c.stream.read(&mut buf).expect("tunnel echo read");
        assert!(n > 0, "tunnel closed early");
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_bytes("echo through the tunnel", frame, &echoed);

    let mut expected = concat!(
        "GET /ws HTTP/1.1\r\nHost: a.test\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nVia: 1.1 fastproxy\r\n",
        "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    .as_bytes()
    .to_vec();
    expected.extend_from_slice(frame);
    assert_bytes("upstream received", &expected, &up.received(0));

    // Closing the client side closes the tunnel towards the upstream.
    drop(c);
    assert!(up.wait_closed(0, Duration::from_secs(2)), "the upstream side of the tunnel stays open after the client left");
}

#[test]
fn close_delimited_response_reaches_the_client_whole() {
    let up = Upstream::start(|_| Reply::SendClose(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it, until close".to_vec()));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"all of it, until close", "{}", show(&r.raw));
    match r.framing {
        // Relayed close-delimited: the client can only know the end by the close, so the proxy
        // must say so and close (RFC 9112 §6.3(8)).
        Framing::Close => assert!(r.says_close(), "close-delimited without `Connection: close`"),
        // Re-framed as chunked: the client connection may stay open.
        Framing::Chunked => {}
        other => panic!("unexpected framing {other:?}: {}", show(&r.raw)),
    }
}

#[test]
fn proxy_generated_404_has_content_length_zero_and_keeps_the_connection() {
    let up = Upstream::ok();
    // Only /api/ is routed.
    let cfg = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\"]\n",
        up.addr
    );
    let proxy = Proxy::start(&cfg);
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /nope HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 404, "{}", show(&r.raw));
    assert_eq!(r.header("content-length"), Some("0"));
    // Whichever the proxy chose, it must be consistent: without `Connection: close` the
    // connection stays usable.
    if r.says_close() {
        c.expect_eof().unwrap();
        c = proxy.connect();
    }
    let r = c.roundtrip(b"GET /api/x HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 200);
    std::thread::sleep(SETTLE);
    assert_eq!(up.requests().len(), 1, "only the routed request reached the upstream");
}

#[test]
fn request_sent_one_byte_per_segment_is_reassembled_exactly() {
    let up = Upstream::start(|req| Reply::Send(ok(&req.body)));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let requests: [&[u8]; 2] = [
        b"POST /t HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5;e=1\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Tr: 1\r\n\r\n",
        b"POST /u HTTP/1.1\r\nHost: a.test\r\nContent-Length: 7\r\n\r\nabcdefg",
    ];
    for req in requests {
        // Every parser state boundary falls between two reads at least once.
        for b in req {
            c.send(&[*b]);
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
    }
    let expected = concat!(
        "POST /t HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n",
        fwd_tail!(),
        "5;e=1\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Tr: 1\r\n\r\n",
        "POST /u HTTP/1.1\r\nHost: a.test\r\nContent-Length: 7\r\n",
        fwd_tail!(),
        "abcdefg"
    );
    assert_bytes("upstream received", expected.as_bytes(), &up.received(0));
}

#[test]
fn response_sent_one_byte_per_segment_is_relayed_exactly() {
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5;e=1\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Tr: 1\r\n\r\n";
    let up = Upstream::start(|req| {
        let bytes = if req.target == "/chunked" { CHUNKED.to_vec() } else { ok(b"0123456789") };
        Reply::Trickle(bytes, Duration::from_millis(1))
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /chunked HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_bytes(
        "chunked response",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nVia: 1.1 fastproxy\r\n\r\n5;e=1\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Tr: 1\r\n\r\n",
        &r.raw,
    );
    let r = c.roundtrip(b"GET /cl HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_bytes("content-length response", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nVia: 1.1 fastproxy\r\n\r\n0123456789", &r.raw);
    assert_eq!(up.accepted(), 1);
}

#[test]
fn slow_reading_client_gets_a_large_response_exactly() {
    let body = pattern(3 << 20);
    let b = body.clone();
    let up = Upstream::start(move |_| Reply::Send(ok(&b)));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n");
    // Read in small pieces with pauses: the proxy's writes hit a full socket buffer many times.
    let mut got = Vec::new();
    let mut buf = [0u8; 32 * 1024];
    let head_len = "HTTP/1.1 200 OK\r\nContent-Length: 3145728\r\nVia: 1.1 fastproxy\r\n\r\n".len();
    while got.len() < head_len + body.len() {
        let n = c.stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if got.len() % (512 * 1024) < n {
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let mut expected = b"HTTP/1.1 200 OK\r\nContent-Length: 3145728\r\nVia: 1.1 fastproxy\r\n\r\n".to_vec();
    expected.extend_from_slice(&body);
    assert_bytes("client received", &expected, &got);
}

#[test]
fn slow_reading_upstream_gets_a_large_request_body_exactly() {
    let body = pattern(1 << 20);
    let up = crate::support::Upstream::start_opts(
        crate::support::UpstreamOpts { read_pause: Some(Duration::from_micros(500)), ..Default::default() },
        |req| Reply::Send(ok(format!("{}", req.body.len()).as_bytes())),
    );
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let head = format!("POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", body.len());
    let r = c.roundtrip(&[head.as_bytes(), &body, b"\r\n0\r\n\r\n"].concat());
    assert_eq!((r.status, r.body.as_slice()), (200, b"1048576".as_slice()));
    let req = up.requests().pop().unwrap();
    assert!(req.body == body, "the body differs");
}

#[test]
fn http10_client_never_gets_a_1xx() {
    // RFC 9110 §15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client.
    let up = Upstream::start(|_| {
        let mut r = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec();
        r.extend_from_slice(&ok(b"final"));
        Reply::Send(r)
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n");
    let (got, closed) = c.read_to_close();
    assert!(closed);
    assert!(got.starts_with(b"HTTP/1.1 200 "), "got {}", show(&got));
    assert!(got.ends_with(b"\r\n\r\nfinal"), "got {}", show(&got));
}
