//! Hostile requests as raw bytes, checked against what reached the upstream, byte for byte.
//!
//! Each case is a row: the request bytes, what the client must get, what the upstream must have
//! received, and the reason (RFC 9110/9112 section or the project's stricter rule from issue 2).
//! Every case runs against a fresh proxy and a fresh recording upstream, so what the upstream saw
//! belongs to that case alone.
//!
//! For every rejected case a valid second request (`GET /smuggled`) is pipelined in the same write:
//! it must never reach the upstream, because after a framing error the connection has no trustworthy
//! message boundary left.
//!
//! The rows live in `adversarial_cases.rs` (`support::adversarial_cases`, shared with the fuzz
//! seeds and the peer runner); this file runs them.
//! Set `ADVERSARIAL_CASE=name` to run one case.

use crate::fwd_tail;
use crate::support::adversarial_cases::*;
use crate::support::{Proxy, Reply, SETTLE, Upstream, assert_bytes, check_bytes, config, ok, show, wait_until};
use std::time::Duration;

/// Runs one case; Err explains the mismatch.
///
/// `streamed`: for a broken chunked body, first send the head and one valid chunk and wait until
/// the head is upstream, then the broken rest; this exercises the streaming path, where the
/// proxy has already committed the request to an upstream connection when the body breaks.
fn run(case: &Case, streamed: bool) -> Result<(), String> {
    let up = Upstream::ok();
    let mut proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut client = proxy.connect();
    let mut bytes = case.request.clone();
    if !matches!(case.answer, Answer::Relayed) {
        bytes.extend_from_slice(SMUGGLE);
    }
    let mut seen = &case.seen;
    let streamed_seen;
    if streamed {
        const FIRST: &[u8] = b"3\r\nabc\r\n";
        let Seen::NoCompleteMessage(prefix) = &case.seen else {
            return Err("streamed mode is for broken chunked bodies only".into());
        };
        let body = &bytes[CHUNKED_HEAD.len()..];
        let _ = client.try_send(&[CHUNKED_HEAD.as_bytes(), FIRST].concat());
        if !wait_until(Duration::from_secs(1), || up.total_received() >= CHUNKED_FWD.len()) {
            return Err(format!(
                "the head and a valid chunk did not reach the upstream within 1s (streaming expected); upstream:\n{}",
                up.dump()
            ));
        }
        let _ = client.try_send(body);
        bytes = [CHUNKED_HEAD.as_bytes(), FIRST, body].concat();
        streamed_seen = Seen::NoCompleteMessage([CHUNKED_FWD.as_bytes(), FIRST, &prefix[CHUNKED_FWD.len()..]].concat());
        seen = &streamed_seen;
    } else {
        // The proxy may legitimately stop reading (and close) before a large request is written.
        let _ = client.try_send(&bytes);
    }

    let client_result: Result<(), String> = match case.answer {
        Answer::Reject(statuses) => match client.read_response() {
            Err(e) => Err(format!("expected a {statuses:?} response: {e}")),
            Ok(r) => {
                let mut errs = Vec::new();
                if !statuses.contains(&r.status) {
                    errs.push(format!("status {} (expected one of {statuses:?})", r.status));
                }
                if r.header("content-length") != Some("0") {
                    errs.push("no `Content-Length: 0`".to_string());
                }
                if !r.says_close() {
                    errs.push("no `Connection: close` although the connection must close".into());
                }
                if let Err(e) = client.expect_eof() {
                    errs.push(e);
                }
                if errs.is_empty() { Ok(()) } else { Err(format!("{}; response:\n    {}", errs.join("; "), show(&r.raw))) }
            }
        },
        Answer::Relayed => match client.read_response() {
            Ok(r) if r.status == 200 && r.body == b"ok" => Ok(()),
            Ok(r) => Err(format!("expected the upstream's 200 ok, got:\n    {}", show(&r.raw))),
            Err(e) => Err(format!("expected the upstream's 200 ok: {e}")),
        },
        Answer::StatusOrClose(status) => {
            let (got, closed) = client.read_to_close();
            let prefix = format!("HTTP/1.1 {status} ");
            if !closed {
                Err(format!("connection neither closed nor answered within the timeout; got:\n    {}", show(&got)))
            } else if !got.is_empty() && !got.starts_with(prefix.as_bytes()) {
                Err(format!("expected {status} or a bare close, got:\n    {}", show(&got)))
            } else if !got.is_empty() && got.windows(5).filter(|w| w == b"HTTP/").count() > 1 {
                Err(format!("more than one response:\n    {}", show(&got)))
            } else {
                Ok(())
            }
        }
    };

    std::thread::sleep(SETTLE);
    let upstream_result: Result<(), String> = match seen {
        Seen::Nothing => {
            if up.total_received() == 0 {
                Ok(())
            } else {
                Err("the upstream received bytes (expected nothing)".into())
            }
        }
        Seen::Exactly(expected) => {
            let all = up.received_all();
            if all.len() != 1 {
                Err(format!("expected 1 upstream connection, got {}", all.len()))
            } else {
                check_bytes("upstream received", expected, &all[0])
            }
        }
        Seen::NoCompleteMessage(prefix) => {
            let mut errs = Vec::new();
            let reqs = up.requests();
            if !reqs.is_empty() {
                errs.push(format!("the upstream parsed {} complete request(s), first: {}", reqs.len(), show(&reqs[0].raw)));
            }
            for (i, got) in up.received_all().iter().enumerate() {
                if !prefix.starts_with(got) {
                    errs.push(format!("upstream conn {i} got bytes the client did not send as this message"));
                }
                if !got.is_empty() && !up.wait_closed(i, Duration::from_secs(2)) {
                    errs.push(format!("upstream conn {i} holds a half-sent message and was not closed by the proxy"));
                }
            }
            if errs.is_empty() { Ok(()) } else { Err(errs.join("; ")) }
        }
    };

    let alive = if proxy.alive() { Ok(()) } else { Err("the proxy process died".to_string()) };

    let errs: Vec<String> = [client_result, upstream_result, alive].into_iter().filter_map(Result::err).collect();
    if errs.is_empty() {
        // Written down for the record: for streamed bodies, whether the head went upstream.
        if matches!(seen, Seen::NoCompleteMessage(_)) {
            eprintln!("    note {}: upstream received {} byte(s) before the cut", case.name, up.total_received());
        }
        Ok(())
    } else {
        Err(format!(
            "{}\n  request:\n    {}\n  upstream:\n{}  proxy stderr:\n{}",
            errs.join("\n  "),
            show(&bytes),
            up.dump(),
            proxy.stderr()
        ))
    }
}

/// Runs a table, reporting every case (not only the first failure).
fn run_table(cases: Vec<Case>, streamed: bool) {
    let only = std::env::var("ADVERSARIAL_CASE").ok();
    let mut failed = Vec::new();
    let mut ran = 0;
    for case in &cases {
        if only.as_deref().is_some_and(|o| o != case.name) {
            continue;
        }
        ran += 1;
        match run(case, streamed) {
            Ok(()) => eprintln!("ok   {}", case.name),
            Err(e) => {
                eprintln!("FAIL {} ({})\n  {e}", case.name, case.why);
                failed.push(case.name);
            }
        }
    }
    assert!(failed.is_empty(), "{} of {ran} cases failed: {failed:?} (details above)", failed.len());
}

#[test]
fn malformed_requests_are_rejected_and_nothing_reaches_the_upstream() {
    run_table(rejected_cases(), false);
}

#[test]
fn accepted_requests_reach_the_upstream_byte_for_byte() {
    run_table(relayed_cases(), false);
}

#[test]
fn broken_chunked_bodies_never_reach_the_upstream_as_a_complete_message() {
    run_table(bad_body_cases(), false);
}

#[test]
fn broken_chunked_bodies_after_the_head_went_upstream_cut_that_upstream_connection() {
    run_table(bad_body_cases(), true);
}

/// The table can fail: a wrong expectation in each outcome kind is reported, not passed.
#[test]
fn the_adversarial_runner_detects_wrong_expectations() {
    let valid = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let wrong = [
        reject("valid_request_declared_rejected", valid, &[400], "self-test"),
        relayed("wrong_upstream_bytes", valid, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "self-test"),
        bad_body("valid_chunked_body_declared_broken", b"5\r\nhello\r\n0\r\n\r\n", 400, "self-test"),
    ];
    for case in &wrong {
        assert!(run(case, false).is_err(), "{}: a wrong expectation passed", case.name);
    }
    assert!(run(&wrong[2], true).is_err(), "streamed: a wrong expectation passed");
}

/// An upgrade the upstream declines (200, not 101) must not open a tunnel: the next bytes on the
/// client connection are parsed and rewritten as a request, not relayed raw (websocket smuggling).
#[test]
fn declined_upgrade_does_not_open_a_tunnel() {
    let up = Upstream::start(|req| Reply::Send(ok(req.target.as_bytes())));
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"/ws".as_slice()));
    if r.says_close() {
        c.expect_eof().unwrap();
        return;
    }
    let r = c.roundtrip(b"GET /internal HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"/internal".as_slice()));
    let second = up.requests().into_iter().find(|r| r.target == "/internal").expect("second request upstream");
    assert_bytes("second request", concat!("GET /internal HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(), &second.raw);
}

/// A 101 the client did not ask for is not a tunnel: RFC 9110 §15.2.2, a server MUST NOT switch
/// to a protocol the client did not offer in Upgrade. The client must not see a 101.
#[test]
fn unsolicited_101_from_the_upstream_is_not_relayed() {
    let up = Upstream::start(|_| {
        Reply::Tunnel(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec())
    });
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    match c.read_response() {
        Ok(r) => assert_eq!(r.status, 502, "got {}", show(&r.raw)),
        Err(e) => assert!(!e.contains("HTTP/1.1 101") && !e.contains("read from proxy failed"), "{e}"),
    }
    assert!(up.wait_closed(0, Duration::from_secs(2)), "the switched upstream connection was kept");
}

/// A valid request, then a malformed one, pipelined: the first is answered normally, the second
/// gets 400 and the connection closes; the request pipelined after the bad one never goes upstream.
#[test]
fn malformed_request_pipelined_after_a_valid_one() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    let bad = b"POST /2 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    c.send(&[b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n".as_slice(), bad, SMUGGLE].concat());
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 400, "{}", show(&r.raw));
    assert!(r.says_close());
    c.expect_eof().unwrap();
    std::thread::sleep(SETTLE);
    assert_bytes("upstream received", concat!("GET /1 HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(), &up.received(0));
    assert_eq!(up.accepted(), 1);
}

/// The upstream answers (here 413) before it has read the body. The rest of the body keeps
/// arriving from the client; it is body, and must never be taken as a request by the proxy or
/// reach the upstream as one.
#[test]
fn upstream_answering_before_the_body_ends_does_not_turn_the_body_into_requests() {
    let up = Upstream::start_opts(crate::support::UpstreamOpts { answer_before_body: true, ..Default::default() }, |req| {
        if req.target == "/upload" {
            Reply::Send(crate::support::response("413 Content Too Large", &[], b""))
        } else {
            Reply::Send(ok(req.target.as_bytes()))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let body: Vec<u8> = SMUGGLE.repeat(200);
    c.send(format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    c.send(&body[..SMUGGLE.len() * 10]);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413, "{}", show(&r.raw));
    // The client keeps sending the rest of its body, as clients do.
    let _ = c.try_send(&body[SMUGGLE.len() * 10..]);
    if !r.says_close() {
        let _ = c.try_send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let r2 = c.read_response();
        if let Ok(r2) = &r2 {
            assert_eq!((r2.status, r2.body.as_slice()), (200, b"/after".as_slice()), "{}", show(&r2.raw));
        }
    }
    std::thread::sleep(SETTLE);
    let smuggled = up.requests().iter().filter(|r| r.target == "/smuggled").count();
    assert_eq!(smuggled, 0, "body bytes became requests upstream:\n{}", up.dump());
    assert!(!c.pending().windows(9).any(|w| w == b"/smuggled"), "{}", show(c.pending()));
}

/// `Expect: 100-continue` answered with a final status (no 100): the client may still send the
/// body (RFC 9110 §10.1.1). Those bytes are body; they must never be parsed as the next request.
#[test]
fn body_sent_after_a_final_answer_to_expect_100_continue_is_never_a_request() {
    let up = Upstream::start_opts(crate::support::UpstreamOpts { answer_before_body: true, ..Default::default() }, |req| {
        if req.target == "/guarded" {
            Reply::Send(crate::support::response("401 Unauthorized", &[], b""))
        } else {
            Reply::Send(ok(req.target.as_bytes()))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(
        format!("POST /guarded HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", SMUGGLE.len()).as_bytes(),
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 401, "{}", show(&r.raw));
    let _ = c.try_send(SMUGGLE);
    if !r.says_close()
        && let Ok(r2) = c.read_response()
    {
        panic!("a response to the body bytes: {}", show(&r2.raw));
    }
    std::thread::sleep(SETTLE);
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert!(!targets.iter().any(|t| t == "/smuggled"), "body became a request upstream: {targets:?}");
}

/// Found by the fuzzer (tests/fuzz): a status line without a reason phrase, or with a non-ASCII
/// one, made the response rewrite panic; the client got a closed connection instead of the
/// response. Both are relayed (the reason as the upstream sent it, or empty).
#[test]
fn status_line_without_reason_or_with_non_ascii_reason_is_relayed() {
    for line in ["HTTP/1.1 200", "HTTP/1.1 200 Caf\u{e9}"] {
        let up = Upstream::start(move |_| Reply::Send(format!("{line}\r\nContent-Length: 2\r\n\r\nok").into_bytes()));
        let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
        let mut c = proxy.connect();
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()), "{line:?}: {}", show(&r.raw));
    }
}

/// Found by the fuzzer (tests/fuzz): an HTTP/1.0 request without Host went upstream as an
/// HTTP/1.1 request without Host, which an HTTP/1.1 origin must refuse (RFC 9112 §3.2). It goes
/// with an empty Host, the value for a target without authority.
#[test]
fn http10_request_without_host_goes_upstream_with_an_empty_host() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    c.send(b"GET /old HTTP/1.0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    std::thread::sleep(SETTLE);
    let want = "GET /old HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nVia: 1.1 fastproxy\r\n\r\n";
    assert_bytes("upstream received", want.as_bytes(), &up.received(0));
}
