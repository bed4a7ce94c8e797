//! Connection reuse on both sides: upstream keep-alive pooling, pipelining, and when each side
//! closes.

use crate::support::{Client, Proxy, Reply, Upstream, assert_bytes, config, fwd_tail, ok, show};
use std::thread;
use std::time::{Duration, Instant};

/// An upstream answering with the request target as the body.
fn echo_target() -> Upstream {
    Upstream::start(|req| Reply::Send(ok(req.target.as_bytes())))
}

#[test]
fn one_upstream_connection_serves_many_sequential_keep_alive_requests() {
    let up = echo_target();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let mut expected = Vec::new();
    for i in 0..50 {
        let r = c.roundtrip(format!("GET /r{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.body, format!("/r{i}").as_bytes());
        assert!(!r.says_close(), "request {i}: {}", show(&r.raw));
        expected.extend_from_slice(format!("GET /r{i} HTTP/1.1\r\nHost: a.test\r\n{}", fwd_tail("a.test", "127.0.0.1")).as_bytes());
    }
    assert_eq!(up.accepted(), 1, "50 keep-alive requests must share one upstream connection");
    assert_bytes("upstream connection 0", &expected, &up.received(0));
}

#[test]
fn pooled_upstream_connection_is_reused_across_client_connections() {
    let up = echo_target();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    for i in 0..10 {
        let mut c = proxy.connect();
        let r = c.roundtrip(format!("GET /c{i} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
        assert_eq!(r.body, format!("/c{i}").as_bytes());
        drop(c);
        // Let the worker check the connection back in before the next client arrives.
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(up.accepted(), 1, "one worker, sequential clients: one pooled upstream connection");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start(|req| {
        // The first answer is the slowest: order must still hold.
        let delay = if req.target == "/1" { 200 } else { 0 };
        let mut body = req.target.clone().into_bytes();
        body.extend_from_slice(&req.body);
        let mut resp = ok(&body);
        if req.method == "HEAD" {
            resp.truncate(resp.len() - body.len()); // a HEAD response has no body
        }
        Reply::Delay(Duration::from_millis(delay), resp)
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(
        concat!(
            "GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "POST /2 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\nbody",
            "POST /3 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "HEAD /4 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "GET /5 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        )
        .as_bytes(),
    );
    let mut got = Vec::new();
    for m in ["GET", "POST", "POST", "HEAD", "GET"] {
        let r = c.read_response_to(m).unwrap();
        assert_eq!(r.status, 200);
        got.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    assert_eq!(got, ["/1", "/2body", "/3abc", "", "/5"]);
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/1", "/2", "/3", "/4", "/5"]);
}

#[test]
fn request_after_a_chunked_body_on_the_same_connection_is_a_separate_request() {
    let up = echo_target();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(c.read_response().unwrap().body, b"/a");
    assert_eq!(c.read_response().unwrap().body, b"/b");
    let expected = format!(
        "POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n{t}4\r\nwxyz\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\n{t}",
        t = fwd_tail("a.test", "127.0.0.1")
    );
    assert_bytes("upstream connection 0", expected.as_bytes(), &up.received(0));
}

#[test]
fn client_connection_close_gets_connection_close_then_eof() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.says_close(), "{}", show(&r.raw));
    assert_eq!(r.header_count("connection"), 1, "{}", show(&r.raw));
    c.expect_eof().unwrap();
    // The upstream connection is still fine for others: Connection is hop-by-hop.
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").status, 200);
    assert_eq!(up.accepted(), 1);
}

#[test]
fn http10_request_without_keep_alive_is_closed_after_the_response() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    assert!(r.says_close(), "{}", show(&r.raw));
    c.expect_eof().unwrap();
}

#[test]
fn upstream_connection_close_drops_that_connection_but_keeps_the_client() {
    let up = Upstream::start(|req| {
        if req.conn == 0 {
            Reply::SendClose(crate::support::response("200 OK", &["Connection: close"], b"one"))
        } else {
            Reply::Send(ok(b"two"))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_bytes("client received", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nVia: 1.1 fastproxy\r\n\r\none", &r.raw);
    let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.body, b"two");
    assert_eq!(up.accepted(), 2);
}

#[test]
fn idle_client_connection_is_closed_after_client_idle_timeout() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "client_idle_timeout = \"300ms\"", ""));
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").status, 200);
    let t = Instant::now();
    c.expect_eof().unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(2500),
        "idle connection closed after {took:?}, configured 300ms"
    );
}

#[test]
fn pooled_connection_older_than_idle_timeout_is_closed_not_reused() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "", "idle_timeout = \"200ms\""));
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").status, 200);
    thread::sleep(Duration::from_millis(600));
    assert_eq!(c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").status, 200);
    assert_eq!(up.accepted(), 2, "a connection idle past idle_timeout was reused");
    assert!(up.is_closed(0), "the expired pooled connection was not closed");
}

#[test]
fn concurrent_keep_alive_clients_never_get_each_others_responses() {
    let up = echo_target();
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let addr = proxy.addr;
    let workers: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..25 {
                    let target = format!("/t{t}/r{i}");
                    let r = c.roundtrip(format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes());
                    assert_eq!(r.body, target.as_bytes(), "client {t} request {i}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(up.requests().len(), 200);
    assert!(up.accepted() <= 8, "{} upstream connections for 8 clients", up.accepted());
}

#[test]
fn a_hundred_pipelined_requests_with_bodies_crossing_buffer_boundaries() {
    let up = Upstream::start(|req| Reply::Send(ok(format!("{} {}", req.target, req.body.len()).as_bytes())));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let mut wire = Vec::new();
    let mut expected_upstream = Vec::new();
    let mut expected_bodies = Vec::new();
    for i in 0..100usize {
        let len = (i * 977) % 9000;
        let body: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
        let target = format!("/p{i}");
        let tail = fwd_tail("a.test", "127.0.0.1");
        if i % 3 == 0 {
            // Chunked, in chunks of 1000.
            let head = format!("POST {target} HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n");
            let mut framed = Vec::new();
            for part in body.chunks(1000) {
                framed.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                framed.extend_from_slice(part);
                framed.extend_from_slice(b"\r\n");
            }
            framed.extend_from_slice(b"0\r\n\r\n");
            wire.extend_from_slice(format!("{head}\r\n").as_bytes());
            wire.extend_from_slice(&framed);
            expected_upstream.extend_from_slice(format!("{head}{tail}").as_bytes());
            expected_upstream.extend_from_slice(&framed);
        } else {
            let head = format!("POST {target} HTTP/1.1\r\nHost: a.test\r\nContent-Length: {len}\r\n");
            wire.extend_from_slice(format!("{head}\r\n").as_bytes());
            wire.extend_from_slice(&body);
            expected_upstream.extend_from_slice(format!("{head}{tail}").as_bytes());
            expected_upstream.extend_from_slice(&body);
        }
        expected_bodies.push(format!("{target} {len}"));
    }
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&wire).unwrap();
    });
    for (i, want) in expected_bodies.iter().enumerate() {
        let r = c.read_response().unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(String::from_utf8_lossy(&r.body), *want, "response {i}");
    }
    sender.join().unwrap();
    assert_eq!(up.accepted(), 1);
    assert_bytes("upstream connection 0", &expected_upstream, &up.received(0));
}

#[test]
fn idle_pool_size_caps_the_connections_kept_per_server() {
    let up = Upstream::start(|_| Reply::Delay(Duration::from_millis(300), ok(b"ok")));
    let proxy = Proxy::start(&config(&[up.addr], "", "idle_pool_size = 1"));
    let addr = proxy.addr;
    let clients: Vec<_> = (0..3)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").status
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    assert_eq!(up.accepted(), 3, "three concurrent requests need three upstream connections");
    let two_closed = crate::support::wait_until(Duration::from_secs(1), || (0..3).filter(|&i| up.is_closed(i)).count() == 2);
    let closed: Vec<usize> = (0..3).filter(|&i| up.is_closed(i)).collect();
    assert!(two_closed, "idle_pool_size = 1 keeps one connection; closed by the proxy: {closed:?}");
    thread::sleep(Duration::from_millis(100));
    assert_eq!((0..3).filter(|&i| up.is_closed(i)).count(), 2, "the one kept connection was closed too");
}

/// Two routes to two upstreams on one client connection; `first` answers route `/a`.
fn two_upstreams(first: Upstream) -> (Upstream, Upstream, Proxy) {
    let second = Upstream::start(|_| Reply::Send(ok(b"real")));
    let config = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [[routes]]\npath_prefix = \"/a\"\nupstream = \"a\"\n\n[[routes]]\npath_prefix = \"/b\"\nupstream = \"b\"\n\n\
         [upstreams.a]\nservers = [\"{}\"]\n\n[upstreams.b]\nservers = [\"{}\"]\n",
        first.addr, second.addr
    );
    let proxy = Proxy::start(&config);
    (first, second, proxy)
}

/// Bytes an upstream sends past its response (here a whole second response nobody asked for)
/// belong to that upstream connection, which is then not reused: they must never be read as the
/// answer to the client's next request, which goes to another upstream.
#[test]
fn bytes_an_upstream_sends_past_its_response_never_answer_the_next_request() {
    let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged".to_vec();
    let (_a, b, proxy) = two_upstreams(Upstream::start(move |_| Reply::SendClose(extra.clone())));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /a HTTP/1.1\r\nHost: t.test\r\n\r\n");
    assert_eq!((r.status, &r.body[..]), (200, &b"a"[..]), "{}", show(&r.raw));
    let r = c.roundtrip(b"GET /b HTTP/1.1\r\nHost: t.test\r\n\r\n");
    assert_eq!((r.status, &r.body[..]), (200, &b"real"[..]), "the second answer is upstream b's: {}", show(&r.raw));
    assert!(b.wait_requests(1, Duration::from_secs(2)));
}

/// The same after a response head that does not parse (a 502, the client connection kept): what
/// the bad upstream sent is dropped with its connection.
#[test]
fn an_invalid_upstream_response_leaves_nothing_for_the_next_request() {
    let (_a, b, proxy) = two_upstreams(Upstream::start(|_| Reply::SendClose(b"\x15\x03\x03\x00\x02\x02\x46garbage".to_vec())));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /a HTTP/1.1\r\nHost: t.test\r\n\r\n");
    assert_eq!(r.status, 502, "{}", show(&r.raw));
    let r = c.roundtrip(b"GET /b HTTP/1.1\r\nHost: t.test\r\n\r\n");
    assert_eq!((r.status, &r.body[..]), (200, &b"real"[..]), "{}", show(&r.raw));
    assert!(b.wait_requests(1, Duration::from_secs(2)));
}
