//! Hot reload: under load, with invalid configs mixed in; file watch; removed servers' pools.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{Client, LONG_IO_TIMEOUT, Proxy, Signal, Upstream, admin_config, temp_dir};

/// Counts what client threads saw while they send back to back.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    from_a: AtomicU64,
    from_b: AtomicU64,
    failed: AtomicU64,
}

fn load(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> thread::JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut errors = Vec::new();
        let mut client = Client::connect_with_timeout(addr, LONG_IO_TIMEOUT);
        while !stop.load(Ordering::Relaxed) {
            match client.get("/x") {
                Ok(r) if r.status == 200 => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    match r.body.as_slice() {
                        b"a" => tally.from_a.fetch_add(1, Ordering::Relaxed),
                        _ => tally.from_b.fetch_add(1, Ordering::Relaxed),
                    };
                    if r.says_close() {
                        client = Client::connect_with_timeout(addr, LONG_IO_TIMEOUT);
                    }
                }
                Ok(r) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("status {}", r.status));
                }
                Err(e) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{e:?}"));
                    client = Client::connect_with_timeout(addr, LONG_IO_TIMEOUT);
                }
            }
        }
        errors
    })
}

#[test]
fn reload_under_load_twenty_reloads_some_invalid_fail_no_request() {
    let a = Upstream::serving("a", Duration::ZERO);
    let b = Upstream::serving("b", Duration::ZERO);
    let dir = temp_dir();
    let extra = "[server]\nwatch_config = false\n[log]\nlevel = \"info\"\n";
    let proxy = Proxy::start_in(&dir, &admin_config(&[a.addr], extra), 2);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..3).map(|_| load(proxy.addr, Arc::clone(&stop), Arc::clone(&tally))).collect();
    thread::sleep(Duration::from_millis(200));

    let mut generation = 1;
    let mut invalid = 0;
    for i in 0..20 {
        let before = tally.ok.load(Ordering::Relaxed);
        let bad = i % 4 == 3;
        let text = if bad {
            invalid += 1;
            // An upstream group that does not exist: rejected with file, line and key.
            admin_config(&[a.addr], extra).replace("upstream = \"up\"", "upstream = \"nope\"")
        } else if i % 2 == 0 {
            admin_config(&[b.addr], extra)
        } else {
            admin_config(&[a.addr], extra)
        };
        std::fs::write(&proxy.config, text).unwrap();
        if i % 2 == 0 {
            proxy.signal(Signal::SIGHUP);
            if !bad {
                generation += 1;
            }
            // SIGHUP answers nothing: wait until the generation shows up (or stays).
            let until = Instant::now() + Duration::from_secs(5);
            while proxy.metric("proxy_config_generation") as u64 != generation && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
        } else {
            let (status, body) = proxy.admin("POST", "/reload", "");
            if bad {
                assert_eq!(status, 400, "{body}");
                assert!(body.contains("proxy.toml:") && body.contains("routes[0].upstream"), "{body}");
            } else {
                assert_eq!(status, 200, "{body}");
                generation += 1;
                assert!(body.contains(&format!("\"generation\":{generation}")), "{body}");
            }
        }
        assert_eq!(proxy.metric("proxy_config_generation") as u64, generation, "reload {i}");
        // Traffic keeps flowing between reloads.
        let until = Instant::now() + Duration::from_secs(5);
        while tally.ok.load(Ordering::Relaxed) < before + 20 && Instant::now() < until {
            thread::sleep(Duration::from_millis(5));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();

    assert!(errors.is_empty(), "failed requests during reloads: {errors:?}");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0);
    assert!(tally.ok.load(Ordering::Relaxed) > 400, "too little traffic: {}", tally.ok.load(Ordering::Relaxed));
    assert!(tally.from_a.load(Ordering::Relaxed) > 0 && tally.from_b.load(Ordering::Relaxed) > 0);
    assert_eq!(generation, 1 + 20 - invalid);
    assert_eq!(proxy.metric("proxy_config_reloads_total{result=\"error\"}") as u64, invalid);
    assert_eq!(proxy.metric("proxy_config_reloads_total{result=\"ok\"}") as u64, 20 - invalid);
    assert!(proxy.wait_stderr("config reload rejected", Duration::from_secs(2)), "{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(log.contains("proxy.toml:") && log.contains("routes[0].upstream") && log.contains("nope"), "{log}");
}

#[test]
fn file_change_is_picked_up_and_invalid_file_keeps_serving() {
    let a = Upstream::serving("a", Duration::ZERO);
    let b = Upstream::serving("b", Duration::ZERO);
    let dir = temp_dir();
    let proxy = Proxy::start_in(&dir, &admin_config(&[a.addr], ""), 1);
    let mut c = Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT);
    assert_eq!(c.get("/").unwrap().body, b"a");

    // Broken file: still served by the old config.
    std::fs::write(&proxy.config, "[[listeners]]\naddress = 7\n").unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.metric("proxy_config_reloads_total{result=\"error\"}") < 1.0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(proxy.metric("proxy_config_reloads_total{result=\"error\"}"), 1.0);
    assert_eq!(c.get("/").unwrap().body, b"a");

    std::fs::write(&proxy.config, admin_config(&[b.addr], "")).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.metric("proxy_config_generation") < 2.0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(proxy.metric("proxy_config_generation"), 2.0);
    assert_eq!(c.get("/").unwrap().body, b"b");
}

#[test]
fn pools_of_removed_servers_are_closed_and_kept_servers_reused() {
    let a = Upstream::serving("a", Duration::ZERO);
    let b = Upstream::serving("b", Duration::ZERO);
    let dir = temp_dir();
    let extra = "[server]\nwatch_config = false\n";
    let proxy = Proxy::start_in(&dir, &admin_config(&[a.addr, b.addr], extra), 1);
    let mut c = Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT);
    for _ in 0..10 {
        assert_eq!(c.get("/").unwrap().status, 200);
    }
    assert_eq!(a.open(), 1);
    assert_eq!(b.open(), 1);

    std::fs::write(&proxy.config, admin_config(&[b.addr], extra)).unwrap();
    let (status, body) = proxy.admin("POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    for _ in 0..10 {
        assert_eq!(c.get("/").unwrap().body, b"b");
    }
    // The sweeper closes a's idle pooled connection within about a second; b's is kept.
    let until = Instant::now() + Duration::from_secs(4);
    while a.open() > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.open(), 0, "the removed server's pooled connection is still open");
    assert_eq!(b.accepted(), 1, "the kept server's pool was not reused");
}

#[test]
fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let a = Upstream::serving("a", Duration::ZERO);
    let b = Upstream::serving("b", Duration::ZERO);
    let dir = temp_dir();
    let extra = "[server]\nwatch_config = false\n";
    let proxy = Proxy::start_in(&dir, &admin_config(&[a.addr], extra), 1);
    let addr = proxy.addr;
    // A 2 s request to a, in flight across the reload that removes a.
    let slow = thread::spawn(move || Client::connect_with_timeout(addr, LONG_IO_TIMEOUT).get("/slow").map(|r| r.body));
    let until = Instant::now() + Duration::from_secs(5);
    while proxy.metric("proxy_requests_in_flight") < 1.0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(&proxy.config, admin_config(&[b.addr], extra)).unwrap();
    assert_eq!(proxy.admin("POST", "/reload", "").0, 200);
    // New requests see the new config at once...
    assert_eq!(Client::connect_with_timeout(proxy.addr, LONG_IO_TIMEOUT).get("/").unwrap().body, b"b");
    // ...and the one in flight completes from the server it started on.
    assert_eq!(slow.join().unwrap().expect("the in-flight request failed across the reload"), b"a");
}
