//! Failing neighbours: upstreams that refuse, hang, break framing, die mid-body or idle out a
//! pooled connection; slow upstreams next to fast ones; slow clients cut at the header timeout.

use crate::support::adversarial_cases::{ResponseCase, bad_response_cases};
use crate::support::{Client, Proxy, Reply, SETTLE, Upstream, assert_bytes, config, fwd_tail, ok, refused_addr, show};
use std::thread;
use std::time::{Duration, Instant};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";

/// The proxy's own error response: this status, `Content-Length: 0`.
#[track_caller]
fn assert_proxy_error(r: &crate::support::Response, status: u16) {
    assert_eq!(r.status, status, "got {}", show(&r.raw));
    assert_eq!(r.header("content-length"), Some("0"), "got {}", show(&r.raw));
}

#[test]
fn connect_refused_is_502() {
    let proxy = Proxy::start(&config(&[refused_addr()], "", "connect_timeout = \"1s\""));
    let mut c = proxy.connect();
    let t = Instant::now();
    let r = c.roundtrip(GET);
    assert_proxy_error(&r, 502);
    assert!(t.elapsed() < Duration::from_secs(1), "a refusal is immediate, not a timeout");
}

#[test]
fn upstream_that_never_answers_is_504_after_response_header_timeout() {
    let up = Upstream::start(|_| Reply::Hang);
    let proxy = Proxy::start(&config(&[up.addr], "", "response_header_timeout = \"300ms\""));
    let mut c = proxy.connect();
    let t = Instant::now();
    let r = c.roundtrip(GET);
    let took = t.elapsed();
    assert_proxy_error(&r, 504);
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(2500), "504 after {took:?}, configured 300ms");
    // A late response on that connection would answer the wrong request: it must be closed.
    assert!(up.wait_closed(0, Duration::from_secs(2)), "the timed-out upstream connection was not closed");
}

#[test]
fn upstream_closing_mid_head_is_502() {
    let up = Upstream::start(|_| Reply::SendClose(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec()));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(GET);
    assert_proxy_error(&r, 502);
}

#[test]
fn upstream_closing_without_a_byte_on_a_fresh_connection_is_502() {
    let up = Upstream::start(|_| Reply::Close);
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(GET);
    assert_proxy_error(&r, 502);
    // A retry is only for a reused pooled connection; a fresh one failing is the upstream's fault.
    std::thread::sleep(SETTLE);
    assert!(up.accepted() <= 2, "retried {} times", up.accepted());
}

#[test]
fn upstream_dying_mid_content_length_body_closes_the_client_before_the_full_length() {
    let up = Upstream::start(|_| Reply::SendClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly twenty bytes...".to_vec()));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(GET);
    let (got, closed) = c.read_to_close();
    assert!(closed, "client connection left open after the upstream died mid-body");
    // Either a 502 (nothing relayed yet) or the 200 head + fewer than 100 body bytes.
    if got.starts_with(b"HTTP/1.1 502 ") {
        return;
    }
    let head_end =
        got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or_else(|| panic!("no response head: {}", show(&got)));
    assert!(got.starts_with(b"HTTP/1.1 200 "), "got {}", show(&got));
    assert!(
        got.len() - head_end < 100,
        "the client got {} body bytes of a 100-byte body from an upstream that sent 20: {}",
        got.len() - head_end,
        show(&got)
    );
}

#[test]
fn upstream_dying_mid_chunked_body_never_sends_the_last_chunk() {
    let up = Upstream::start(|_| Reply::SendClose(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec()));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(GET);
    let (got, closed) = c.read_to_close();
    assert!(closed, "client connection left open after the upstream died mid-body");
    if got.starts_with(b"HTTP/1.1 502 ") {
        return;
    }
    assert!(!got.ends_with(b"0\r\n\r\n"), "a truncated chunked body was completed with a last-chunk: {}", show(&got));
}

/// Bad framing from the upstream (the rows of `adversarial_cases::bad_response_cases`, shared with
/// the peer runner): 502 (or a close once the response started), and that upstream connection is
/// never reused (the next request opens a new one).
fn bad_upstream_response(case: &ResponseCase) -> Result<(), String> {
    let (name, bad) = (case.name, case.response);
    let up = Upstream::start(move |req| {
        if req.conn == 0 {
            Reply::Send(bad.to_vec()) // keeps the connection open: only the proxy can drop it
        } else {
            Reply::Send(ok(b"good"))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(GET);
    match c.read_response() {
        Ok(r) if r.status == 502 => {
            if r.header("content-length") != Some("0") {
                return Err(format!("{name}: 502 without `Content-Length: 0`: {}", show(&r.raw)));
            }
        }
        Ok(r) => return Err(format!("{name}: expected 502, got {}", show(&r.raw))),
        Err(e) => {
            // Started, then cut: the connection must have been closed, not left hanging.
            if !case.may_have_started || e.contains("read from proxy failed") {
                return Err(format!("{name}: expected 502 or a close: {e}"));
            }
        }
    }
    if !up.wait_closed(0, Duration::from_secs(2)) {
        return Err(format!("{name}: the upstream connection with broken framing was not closed"));
    }
    let mut c = proxy.connect();
    let r = c.roundtrip(GET);
    if (r.status, r.body.as_slice()) != (200, b"good".as_slice()) {
        return Err(format!("{name}: the next request got {}", show(&r.raw)));
    }
    if up.accepted() != 2 {
        return Err(format!("{name}: the broken connection was reused ({} upstream connections)", up.accepted()));
    }
    Ok(())
}

#[test]
fn upstream_responses_with_broken_framing_are_502_and_the_connection_is_never_reused() {
    let cases = bad_response_cases();
    let failed: Vec<String> = cases.iter().filter_map(|c| bad_upstream_response(c).err().map(|e| format!("{e} ({})", c.why))).collect();
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), cases.len(), failed.join("\n"));
}

#[test]
fn stale_pooled_connection_closed_on_reuse_is_retried_once_for_get() {
    // Connection 0 answers one request, then closes when the next one arrives (the race of an
    // upstream idling out a keep-alive connection just as the proxy reuses it).
    let up = Upstream::start(|req| if req.conn == 0 && req.index > 0 { Reply::Close } else { Reply::Send(ok(b"fine")) });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = c.roundtrip(b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"fine".as_slice()), "{}", show(&r.raw));
    assert_eq!(up.accepted(), 2, "one retry on one fresh connection");
    assert_bytes(
        "the retry",
        format!("GET /2 HTTP/1.1\r\nHost: a.test\r\n{}", fwd_tail("a.test", "127.0.0.1")).as_bytes(),
        &up.received(1),
    );
}

#[test]
fn pooled_connection_the_upstream_closed_while_idle_is_not_an_error() {
    // The upstream closes right after its response (no `Connection: close`): the pooled
    // connection is dead before the next request; the client must not notice.
    let up = Upstream::start(|_| Reply::SendClose(ok(b"fine")));
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    for i in 0..3 {
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, b"fine".as_slice()), "request {i}");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(up.accepted(), 3);
}

#[test]
fn stale_pooled_connection_with_a_sent_post_body_is_502_not_replayed() {
    let up = Upstream::start(|req| if req.conn == 0 && req.index > 0 { Reply::Close } else { Reply::Send(ok(b"fine")) });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(GET);
    assert_eq!(r.status, 200);
    let r = c.roundtrip(b"POST /pay HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nmoney");
    assert_proxy_error(&r, 502);
    thread::sleep(SETTLE);
    let posts = up.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1, "a non-idempotent request whose body was sent must not be replayed");
}

#[test]
fn slow_upstream_response_does_not_stall_other_connections() {
    let up = Upstream::start(|req| {
        if req.target == "/slow" { Reply::Delay(Duration::from_millis(1500), ok(b"slow")) } else { Reply::Send(ok(b"fast")) }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let addr = proxy.addr;
    let slow = thread::spawn(move || {
        let mut c = Client::connect(addr);
        let r = c.roundtrip(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n");
        (r.status, r.body)
    });
    assert!(up.wait_requests(1, Duration::from_secs(2)), "slow request did not arrive");
    let t = Instant::now();
    for _ in 0..5 {
        let mut c = proxy.connect();
        let r = c.roundtrip(b"GET /fast HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(r.body, b"fast");
    }
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1000), "5 fast requests took {took:?} while one slow request was in flight (one worker)");
    let (status, body) = slow.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, b"slow".as_slice()));
}

#[test]
fn slowloris_partial_head_is_cut_with_408_at_header_read_timeout() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"500ms\"", ""));
    let mut c = proxy.connect();
    let t = Instant::now();
    c.send(b"GET / HTTP/1.1\r\nHost: a.te");
    let r = c.read_response().expect("a 408 before the close");
    let took = t.elapsed();
    assert_eq!(r.status, 408, "{}", show(&r.raw));
    assert!(r.says_close(), "408 must say `Connection: close`: {}", show(&r.raw));
    c.expect_eof().unwrap();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(2500), "cut after {took:?}, configured 500ms");
    assert_eq!(up.total_received(), 0);
}

#[test]
fn a_new_connection_that_sends_nothing_is_closed_at_header_read_timeout_not_the_idle_timeout() {
    // The header timeout runs from the accept for a new connection (nginx's client_header_timeout
    // does the same); the idle timeout only applies between keep-alive requests.
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"500ms\"\nclient_idle_timeout = \"30s\"", ""));
    let mut c = proxy.connect();
    let t = Instant::now();
    let got = c.expect_eof();
    let took = t.elapsed();
    assert!(got.is_ok(), "closed without a response: {got:?}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(2500), "closed after {took:?}, configured 500ms");
    // A served keep-alive connection waits for the idle timeout, not the header timeout.
    let mut c = proxy.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(c.read_response().map(|r| r.status), Ok(200));
    std::thread::sleep(Duration::from_millis(1200));
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(c.read_response().map(|r| r.status), Ok(200), "an idle keep-alive connection must outlive the header timeout");
}

#[test]
fn slowloris_trickling_one_byte_at_a_time_is_cut_at_the_head_deadline_not_per_read() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"500ms\"", ""));
    let c = proxy.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        use std::io::Write;
        let head = format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: {}", "p".repeat(100));
        for b in head.bytes() {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let mut c = c;
    let t = Instant::now();
    let r = c.read_response().expect("a 408 before the close");
    let took = t.elapsed();
    assert_eq!(r.status, 408, "{}", show(&r.raw));
    assert!(took < Duration::from_millis(2500), "one byte every 50ms kept the connection {took:?} (timeout 500ms for the whole head)");
    drop(c);
    trickle.join().unwrap();
    assert_eq!(up.total_received(), 0);
}

#[test]
fn max_connections_refuses_extra_clients_and_recovers() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "max_connections = 2", ""));
    let mut a = proxy.connect();
    let mut b = proxy.connect();
    assert_eq!(a.roundtrip(GET).status, 200);
    assert_eq!(b.roundtrip(GET).status, 200);
    // The third connection is over the limit: it must not be served.
    let mut third = proxy.connect();
    third.set_read_timeout(Duration::from_secs(2));
    let _ = third.try_send(GET);
    let (got, closed) = third.read_to_close();
    assert!(
        closed && !got.starts_with(b"HTTP/1.1 200"),
        "a connection over max_connections was served or left hanging (closed: {closed}): {}",
        show(&got)
    );
    drop(a);
    thread::sleep(Duration::from_millis(100));
    let mut d = proxy.connect();
    assert_eq!(d.roundtrip(GET).status, 200, "capacity freed by a closed client");
    assert_eq!(b.roundtrip(GET).status, 200);
}

#[test]
fn stale_connection_retry_happens_once_then_502() {
    // The pooled connection dies on reuse and so does the fresh one: one retry, then 502.
    let up = Upstream::start(|req| if req.conn == 0 && req.index == 0 { Reply::Send(ok(b"fine")) } else { Reply::Close });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(GET).status, 200);
    let r = c.roundtrip(GET);
    assert_proxy_error(&r, 502);
    thread::sleep(SETTLE);
    assert_eq!(up.accepted(), 2, "exactly one retry on one fresh connection");
}

#[test]
fn partial_second_head_on_a_keep_alive_connection_is_cut_with_408() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"500ms\"", ""));
    let mut c = proxy.connect();
    assert_eq!(c.roundtrip(GET).status, 200);
    let t = Instant::now();
    c.send(b"GET /second HTTP/1.1\r\nHost: a.te");
    let r = c.read_response().expect("a 408 for the incomplete second head");
    assert_eq!(r.status, 408, "{}", show(&r.raw));
    c.expect_eof().unwrap();
    assert!(t.elapsed() < Duration::from_millis(2500), "cut after {:?}", t.elapsed());
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn slowloris_crowd_is_cut_while_normal_requests_flow_and_fds_return_to_baseline() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"2s\"", ""));
    // Warm up: the pooled upstream connection is part of the baseline.
    assert_eq!(proxy.connect().roundtrip(GET).status, 200);
    thread::sleep(Duration::from_millis(50));
    let baseline = proxy.fd_count();
    assert!(baseline > 0, "cannot read /proc/<pid>/fd");

    let mut slow: Vec<Client> = (0..200).map(|_| proxy.connect()).collect();
    for c in &mut slow {
        c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ");
    }
    let t = Instant::now();
    let mut c = proxy.connect();
    for i in 0..20 {
        let r = c.roundtrip(GET);
        assert_eq!(r.status, 200, "request {i} during the slowloris crowd");
    }
    assert!(t.elapsed() < Duration::from_millis(1500), "20 requests took {:?} beside 200 slow heads", t.elapsed());
    drop(c);

    let mut not_cut = 0;
    for s in &mut slow {
        let (got, closed) = s.read_to_close();
        if !closed || !got.starts_with(b"HTTP/1.1 408 ") {
            not_cut += 1;
        }
    }
    assert_eq!(not_cut, 0, "slow connections not answered 408 and closed");
    drop(slow);
    let back = crate::support::wait_until(Duration::from_secs(2), || proxy.fd_count() <= baseline);
    assert!(back, "fds: baseline {baseline}, now {}", proxy.fd_count());
}

/// The scaled-down form of `scripts/reliability/slowloris.sh`: a crowd that keeps trickling (a
/// byte every 100 ms on each of 100 connections, so a read arrives long before any per-read timer
/// could fire) is cut with 408 at the deadline for the whole head, while a keep-alive client
/// beside it gets its 200s without waiting for the crowd; afterwards the fds are back.
#[test]
fn slowloris_trickling_crowd_is_cut_at_the_head_deadline_while_a_client_keeps_getting_200s() {
    use std::io::{ErrorKind, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const CROWD: usize = 100;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"1s\"", ""));
    assert_eq!(proxy.connect().roundtrip(GET).status, 200);
    thread::sleep(Duration::from_millis(50));
    let baseline = proxy.fd_count();
    assert!(baseline > 0, "cannot read /proc/<pid>/fd");

    struct Slow {
        stream: std::net::TcpStream,
        first_byte: Instant,
        got: Vec<u8>,
        cut_after: Option<Duration>,
    }
    let mut crowd: Vec<Slow> = (0..CROWD)
        .map(|_| {
            let mut stream = proxy.connect().stream;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ").unwrap();
            let first_byte = Instant::now();
            stream.set_nonblocking(true).unwrap();
            Slow { stream, first_byte, got: Vec::new(), cut_after: None }
        })
        .collect();

    // The client beside the crowd: keep-alive GETs until the crowd is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let flowing = {
        let (stop, addr) = (Arc::clone(&stop), proxy.addr);
        thread::spawn(move || {
            let mut c = Client::connect(addr);
            let (mut n, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.roundtrip(GET);
                assert_eq!(r.status, 200, "request {n} beside the trickling crowd: {}", show(&r.raw));
                slowest = slowest.max(t.elapsed());
                n += 1;
                thread::sleep(Duration::from_millis(10));
            }
            (n, slowest)
        })
    };

    // Trickle: read first (a 408 and EOF, or a reset, is the cut), then one more byte.
    let give_up = Instant::now() + TIMEOUT * 5;
    let mut buf = [0u8; 512];
    while crowd.iter().any(|s| s.cut_after.is_none()) && Instant::now() < give_up {
        for s in crowd.iter_mut().filter(|s| s.cut_after.is_none()) {
            loop {
                match s.stream.read(&mut buf) {
                    Ok(0) => s.cut_after = Some(s.first_byte.elapsed()),
                    Ok(n) => {
                        s.got.extend_from_slice(&buf[..n]);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        // A write racing the cut may fail; the next read sees the close.
                        let _ = s.stream.write(b"a");
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => s.cut_after = Some(s.first_byte.elapsed()),
                }
                break;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let (served, slowest) = flowing.join().expect("the client beside the crowd failed");

    let not_cut = crowd.iter().filter(|s| s.cut_after.is_none()).count();
    assert_eq!(not_cut, 0, "{not_cut} of {CROWD} trickling connections still open after {:?}", TIMEOUT * 5);
    for (i, s) in crowd.iter().enumerate() {
        let after = s.cut_after.unwrap_or_default();
        assert!(
            after >= TIMEOUT - Duration::from_millis(50) && after < TIMEOUT * 3,
            "slow connection {i} cut {after:?} after its first byte (header_read_timeout {TIMEOUT:?})"
        );
        assert!(s.got.starts_with(b"HTTP/1.1 408 "), "slow connection {i} got {}", show(&s.got));
    }
    assert!(served >= 5, "only {served} requests beside the crowd");
    assert!(slowest < TIMEOUT, "a request beside the crowd took {slowest:?}: it waited for the crowd");
    drop(crowd);
    let back = crate::support::wait_until(Duration::from_secs(2), || proxy.fd_count() <= baseline);
    assert!(back, "fds: baseline {baseline}, now {}", proxy.fd_count());
    assert_eq!(up.requests().len(), 1 + served as usize, "only the warm-up and the flowing client reach the upstream");
}

/// A client that dies mid-body leaves a half-sent request on the upstream connection: it must be
/// closed, never reused (the next request's bytes would complete the body: a desync).
#[test]
fn client_dying_mid_body_never_lets_that_upstream_connection_be_reused() {
    let partials: [(&str, &[u8]); 2] = [
        ("content-length", b"POST /dies HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nonly some"),
        ("chunked", b"POST /dies HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nonly some"),
    ];
    for (name, partial) in partials {
        let up = Upstream::start(|req| Reply::Send(ok(req.target.as_bytes())));
        let proxy = Proxy::start(&config(&[up.addr], "", ""));
        let mut c = proxy.connect();
        c.send(partial);
        let forwarded = crate::support::wait_until(Duration::from_secs(1), || up.total_received() > 0);
        drop(c);
        if forwarded {
            assert!(up.wait_closed(0, Duration::from_secs(2)), "{name}: half-sent upstream connection kept open");
        }
        let mut c = proxy.connect();
        let r = c.roundtrip(b"GET /next HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, b"/next".as_slice()), "{name}");
        thread::sleep(SETTLE);
        let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/next"], "{name}: upstream saw {}", up.dump());
    }
}

/// An upstream that sends body bytes after a HEAD response (or any bytes while idle) has broken
/// framing: those bytes must never reach a client as (part of) another response.
#[test]
fn bytes_an_upstream_sends_after_a_head_response_never_reach_a_client() {
    let up = Upstream::start(|req| {
        if req.method == "HEAD" {
            Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec())
        } else {
            Reply::Send(ok(b"real"))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(b"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    let r = c.read_response_to("HEAD").unwrap();
    assert_eq!(r.status, 200);
    thread::sleep(Duration::from_millis(50));
    c.send(GET);
    let r = c.read_response().unwrap();
    assert!((r.status == 200 && r.body == b"real") || r.status == 502, "the stray body bytes leaked: {}", show(&r.raw));
    assert!(!c.pending().windows(5).any(|w| w == b"hello"), "leaked: {}", show(c.pending()));
}

#[test]
fn connect_timeout_is_504() {
    // A listener whose accept queue is full: SYNs are dropped, connect() hangs (loopback only).
    let (_guard, fill, addr) = crate::support::blackhole_addr();
    assert!(!fill.is_empty(), "could not fill the accept queue");
    let proxy = Proxy::start(&config(&[addr], "", "connect_timeout = \"300ms\""));
    let mut c = proxy.connect();
    let t = Instant::now();
    let r = c.roundtrip(GET);
    let took = t.elapsed();
    assert_proxy_error(&r, 504);
    assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(2500), "504 after {took:?}, configured 300ms");
}

#[test]
fn response_header_timeout_covers_the_whole_head_not_the_first_byte() {
    // The head trickles in one byte every 100ms: the first byte is quick, the head is not.
    let up = Upstream::start(|_| Reply::Trickle(ok(b"late"), Duration::from_millis(100)));
    let proxy = Proxy::start(&config(&[up.addr], "", "response_header_timeout = \"500ms\""));
    let mut c = proxy.connect();
    let t = Instant::now();
    let r = c.roundtrip(GET);
    let took = t.elapsed();
    assert_proxy_error(&r, 504);
    assert!(took < Duration::from_millis(2000), "504 after {took:?}, configured 500ms");
}

#[test]
fn in_flight_request_is_not_cut_by_client_idle_timeout() {
    // The client is idle while it waits, but a request is in flight: that is not an idle
    // keep-alive connection.
    let up = Upstream::start(|_| Reply::Delay(Duration::from_millis(800), ok(b"slow but fine")));
    let proxy = Proxy::start(&config(&[up.addr], "client_idle_timeout = \"300ms\"", ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(GET);
    assert_eq!((r.status, r.body.as_slice()), (200, b"slow but fine".as_slice()));
}

#[test]
fn slow_request_body_after_a_timely_head_is_not_cut_by_header_read_timeout() {
    let up = Upstream::start(|req| Reply::Send(ok(&req.body)));
    let proxy = Proxy::start(&config(&[up.addr], "header_read_timeout = \"400ms\"", ""));
    let mut c = proxy.connect();
    c.send(b"POST /slow-body HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n");
    for part in [b"01".as_slice(), b"23", b"45", b"67", b"89"] {
        thread::sleep(Duration::from_millis(200));
        c.send(part);
    }
    let r = c.read_response().expect("the body took 1s, the head was on time");
    assert_eq!((r.status, r.body.as_slice()), (200, b"0123456789".as_slice()), "{}", show(&r.raw));
}
