//! Graceful drain: SIGTERM under load, a long request across SIGTERM, idle connections.

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Client, Failure, LONG_IO_TIMEOUT, Proxy, Signal, Upstream, admin_config, temp_dir};

/// What one client thread saw until the proxy stopped serving it.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    /// Responses that carried `Connection: close` (the drain's last response).
    closed_by_drain: u64,
    /// Requests that reached a connection the proxy closed while it was idle (never read).
    closed_idle: u64,
    broken: Vec<String>,
}

#[test]
fn drain_under_load_fails_no_in_flight_request_and_exits_zero_in_time() {
    // 5 ms per response: with 8 clients there are requests in flight when SIGTERM lands.
    let up = Upstream::serving("hello", Duration::from_millis(5));
    let dir = temp_dir();
    let mut proxy = Proxy::start_in(&dir, &admin_config(&[up.addr], "[server]\ndrain_timeout = \"10s\"\n"), 2);
    let served = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, served, started) = (proxy.addr, Arc::clone(&served), Arc::clone(&started));
            thread::spawn(move || {
                let mut seen = Seen::default();
                let mut c = Client::connect_with_timeout(addr, LONG_IO_TIMEOUT);
                started.store(true, Ordering::Relaxed);
                loop {
                    match c.get("/work") {
                        Ok(r) if r.status == 200 && r.body == b"hello" => {
                            seen.ok += 1;
                            served.fetch_add(1, Ordering::Relaxed);
                            if r.says_close() {
                                seen.closed_by_drain += 1;
                                break;
                            }
                        }
                        Ok(r) => {
                            seen.broken.push(format!("status {} body {:?}", r.status, r.body));
                            break;
                        }
                        Err(Failure::ClosedBeforeResponse) => {
                            seen.closed_idle += 1;
                            break;
                        }
                        Err(Failure::Broken(e)) => {
                            seen.broken.push(e);
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();
    while served.load(Ordering::Relaxed) < 200 {
        thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(8)).expect("the proxy did not exit within 8 s of SIGTERM");
    let took = t0.elapsed();
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let broken: Vec<&String> = seen.iter().flat_map(|s| &s.broken).collect();
    assert!(broken.is_empty(), "in-flight requests failed during the drain: {broken:?}");
    let by_drain: u64 = seen.iter().map(|s| s.closed_by_drain).sum();
    assert!(by_drain >= 1, "no response carried Connection: close: {seen:?}");
    assert_eq!(status.code(), Some(0), "not a clean drain; stderr:\n{}", proxy.stderr());
    assert!(took < Duration::from_secs(5), "the drain took {took:?}");
    // The listeners are closed.
    assert!(TcpStream::connect(proxy.addr).is_err());
}

#[test]
fn long_request_completes_across_sigterm_and_idle_connections_close_at_once() {
    let up = Upstream::serving("slow body", Duration::ZERO);
    let dir = temp_dir();
    let mut proxy = Proxy::start_in(&dir, &admin_config(&[up.addr], "[server]\ndrain_timeout = \"10s\"\n"), 1);

    // An idle keep-alive connection (one request done, waiting for the next).
    let mut idle = Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT);
    assert_eq!(idle.get("/fast").unwrap().status, 200);

    let addr = proxy.addr;
    let long = thread::spawn(move || {
        let mut c = Client::connect_with_timeout(addr, LONG_IO_TIMEOUT);
        let t = Instant::now();
        let r = c.get("/slow");
        (r, t.elapsed())
    });
    // Let the long request reach the upstream, then ask the proxy to stop.
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.metric("proxy_requests_in_flight") < 1.0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    proxy.signal(Signal::SIGTERM);

    // The idle connection is closed at once (EOF well before the long request ends).
    idle.stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 16];
    let n = idle.stream.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection got bytes instead of a close");
    // Well before the long request (2 s) ends, even on a loaded machine.
    assert!(t0.elapsed() < Duration::from_millis(1500), "idle connection closed only after {:?}", t0.elapsed());

    // While draining: health says 503, and no new connection is accepted.
    let (code, body) = proxy.admin("GET", "/healthz", "");
    assert_eq!((code, body.as_str()), (503, "draining\n"));
    assert!(TcpStream::connect(proxy.addr).is_err(), "a new connection was accepted while draining");

    let (r, took) = long.join().unwrap();
    let r = r.expect("the long request failed across SIGTERM");
    assert_eq!((r.status, r.body.as_slice()), (200, b"slow body".as_slice()));
    assert!(r.says_close(), "the last response on a draining connection must say Connection: close");
    assert!(took >= Duration::from_secs(2));
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("the proxy did not exit after the drain");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proxy.stderr());
}

#[test]
fn drain_deadline_force_closes_and_exits_nonzero() {
    let up = Upstream::serving("x", Duration::ZERO);
    let dir = temp_dir();
    let mut proxy = Proxy::start_in(&dir, &admin_config(&[up.addr], "[server]\ndrain_timeout = \"300ms\"\n"), 1);
    let addr = proxy.addr;
    let long = thread::spawn(move || Client::connect_with_timeout(addr, LONG_IO_TIMEOUT).get("/slow").map(|r| r.status));
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.metric("proxy_requests_in_flight") < 1.0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    proxy.signal(Signal::SIGTERM);
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("no exit after the drain deadline");
    assert!(t0.elapsed() < Duration::from_millis(1800), "took {:?}", t0.elapsed());
    assert_eq!(status.code(), Some(1));
    assert!(long.join().unwrap().is_err(), "the request cut by the deadline must not look complete");
}
