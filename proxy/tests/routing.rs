//! Routing: exact host beats wildcard beats any host; then the longest path prefix; strip_prefix;
//! Host with a port; no match is 404. Plus round robin and several listeners.

use crate::support::{Proxy, Reply, SETTLE, Upstream, assert_bytes, fwd_tail, ok, show};
use std::collections::HashMap;

/// One upstream per group, answering with the group's name.
fn groups(names: &[&'static str]) -> HashMap<&'static str, Upstream> {
    names.iter().map(|&n| (n, Upstream::start(move |_| Reply::Send(ok(n.as_bytes()))))).collect()
}

fn routing_config(g: &HashMap<&'static str, Upstream>) -> String {
    let mut c = String::from(
        r#"[[listeners]]
address = "127.0.0.1:0"

[[routes]]
host = "api.example.com"
path_prefix = "/v1/"
strip_prefix = true
upstream = "api"

[[routes]]
host = "api.example.com"
path_prefix = "/"
upstream = "exact"

[[routes]]
host = "*.example.com"
path_prefix = "/"
upstream = "wild"

[[routes]]
host = "*.example.com"
path_prefix = "/w/"
upstream = "wild_w"

[[routes]]
path_prefix = "/any/"
upstream = "any"

[[routes]]
path_prefix = "/any/deeper/"
upstream = "deeper"
"#,
    );
    let mut names: Vec<_> = g.keys().collect();
    names.sort();
    for n in names {
        c.push_str(&format!("\n[upstreams.{n}]\nservers = [\"{}\"]\n", g[n].addr));
    }
    c
}

#[test]
fn host_then_longest_prefix_picks_the_group() {
    let g = groups(&["api", "exact", "wild", "wild_w", "any", "deeper"]);
    let proxy = Proxy::start(&routing_config(&g));
    // (host, target, expected group or None for 404, target the group must see, why)
    #[rustfmt::skip]
    let table: &[(&str, &str, Option<&str>, &str, &str)] = &[
        ("api.example.com", "/v1/users?id=3", Some("api"), "/users?id=3", "strip_prefix removes /v1, keeps the query"),
        ("api.example.com", "/v1/", Some("api"), "/", "stripping the whole prefix leaves /"),
        ("api.example.com", "/v2/x", Some("exact"), "/v2/x", "exact host, shorter prefix"),
        ("API.Example.COM", "/x", Some("exact"), "/x", "host names are case-insensitive (RFC 3986 §3.2.2)"),
        ("api.example.com:8080", "/x", Some("exact"), "/x", "the port is not part of the host match"),
        ("api.example.com", "/w/x", Some("exact"), "/w/x", "exact host beats a wildcard even with a longer prefix"),
        ("www.example.com", "/x", Some("wild"), "/x", "wildcard"),
        ("www.example.com:443", "/x", Some("wild"), "/x", "wildcard, host with port"),
        ("www.example.com", "/w/x", Some("wild_w"), "/w/x", "longest prefix among the wildcard's routes"),
        ("a.b.example.com", "/x", Some("wild"), "/x", "wildcard matches any subdomain depth"),
        ("www.example.com", "/any/x", Some("wild"), "/any/x", "wildcard host beats any-host even with a longer prefix"),
        ("other.test", "/any/x", Some("any"), "/any/x", "any host"),
        ("other.test", "/any/deeper/x", Some("deeper"), "/any/deeper/x", "longest prefix wins"),
        ("other.test", "/any/deeperx", Some("any"), "/any/deeperx", "prefix /any/deeper/ does not match /any/deeperx"),
        ("example.com", "/any/x", Some("any"), "/any/x", "*.example.com does not match the apex"),
        ("example.com", "/", None, "", "apex: no wildcard, no any-host route for /"),
        ("other.test", "/anything", None, "", "/any/ is not a prefix of /anything"),
        ("other.test", "/", None, "", "no route"),
    ];
    let mut failures = Vec::new();
    for &(host, target, group, seen, why) in table {
        let before: HashMap<&str, usize> = g.iter().map(|(n, u)| (*n, u.requests().len())).collect();
        let mut c = proxy.connect();
        let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        c.send(req.as_bytes());
        let r = match c.read_response() {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{host}{target} ({why}): {e}"));
                continue;
            }
        };
        std::thread::sleep(SETTLE);
        let got: Vec<&str> = g.iter().filter(|(n, u)| u.requests().len() > before[*n]).map(|(n, _)| *n).collect();
        match group {
            Some(name) => {
                let last = g[name].requests().last().map(|r| r.target.clone());
                if r.status != 200 || r.body != name.as_bytes() || got != [name] {
                    failures.push(format!(
                        "{host}{target} ({why}): expected group {name}, got status {} body {:?}, reached {got:?}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                } else if last.as_deref() != Some(seen) {
                    failures.push(format!("{host}{target} ({why}): group {name} saw target {last:?}, expected {seen:?}"));
                }
            }
            None => {
                if r.status != 404 || !got.is_empty() {
                    failures.push(format!(
                        "{host}{target} ({why}): expected 404 and no upstream, got {} and {got:?}: {}",
                        r.status,
                        show(&r.raw)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "routing failures:\n{}", failures.join("\n"));
}

#[test]
fn strip_prefix_keeps_host_and_rewrites_only_the_target() {
    let g = groups(&["api", "exact", "wild", "wild_w", "any", "deeper"]);
    let proxy = Proxy::start(&routing_config(&g));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"POST /v1/users HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(r.status, 200);
    let expected =
        format!("POST /users HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 2\r\n{}hi", fwd_tail("api.example.com", "127.0.0.1"));
    assert_bytes("upstream api received", expected.as_bytes(), &g["api"].received(0));
}

#[test]
fn absolute_form_target_is_routed_and_sent_in_origin_form() {
    let g = groups(&["api", "exact", "wild", "wild_w", "any", "deeper"]);
    let proxy = Proxy::start(&routing_config(&g));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET http://api.example.com/v1/abs?x=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"api".as_slice()));
    let expected = format!("GET /abs?x=1 HTTP/1.1\r\nHost: api.example.com\r\n{}", fwd_tail("api.example.com", "127.0.0.1"));
    assert_bytes("upstream api received", expected.as_bytes(), &g["api"].received(0));
}

#[test]
fn round_robin_alternates_between_servers() {
    let a = Upstream::start(|_| Reply::Send(ok(b"a")));
    let b = Upstream::start(|_| Reply::Send(ok(b"b")));
    let cfg = crate::support::config(&[a.addr, b.addr], "", "balance = \"round_robin\"");
    let proxy = Proxy::start(&cfg);
    let mut c = proxy.connect();
    let mut bodies = Vec::new();
    for _ in 0..6 {
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(r.status, 200);
        bodies.push(String::from_utf8_lossy(&r.body).into_owned());
    }
    assert_eq!(a.requests().len(), 3, "order seen: {bodies:?}");
    assert_eq!(b.requests().len(), 3, "order seen: {bodies:?}");
    assert!(bodies.windows(2).all(|w| w[0] != w[1]), "round robin must alternate: {bodies:?}");
}

#[test]
fn every_listener_serves() {
    let up = Upstream::ok();
    let cfg = format!(
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\"]\n",
        up.addr
    );
    let proxy = Proxy::start(&cfg);
    assert_eq!(proxy.addrs.len(), 2);
    assert_ne!(proxy.addrs[0], proxy.addrs[1]);
    for addr in &proxy.addrs {
        let mut c = crate::support::Client::connect(*addr);
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()), "listener {addr}");
    }
}

/// RFC 9112 §3.2.2: with an absolute-form target a proxy MUST ignore Host and use the target's
/// authority. Whatever the proxy routes on, the group it picks and the Host the upstream sees must
/// agree (or the request is refused): otherwise a client reaches one upstream claiming another host.
#[test]
fn absolute_form_authority_wins_over_a_disagreeing_host_header() {
    let g = groups(&["api", "exact", "wild", "wild_w", "any", "deeper"]);
    let proxy = Proxy::start(&routing_config(&g));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET http://api.example.com/v1/x HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
    if r.status == 400 {
        return;
    }
    assert_eq!((r.status, r.body.as_slice()), (200, b"api".as_slice()), "routed by the Host header, not the target");
    let req = g["api"].requests().pop().unwrap();
    assert_eq!(req.target, "/x");
    assert_eq!(req.header("host"), Some("api.example.com"), "upstream saw {}", show(&req.raw));
}

#[test]
fn least_in_flight_sends_new_requests_away_from_the_busy_server() {
    let slow_then_fast = |name: &'static str| {
        Upstream::start(move |req| {
            if req.target == "/slow" {
                Reply::Delay(std::time::Duration::from_millis(1200), ok(name.as_bytes()))
            } else {
                Reply::Send(ok(name.as_bytes()))
            }
        })
    };
    let a = slow_then_fast("a");
    let b = slow_then_fast("b");
    let cfg = crate::support::config(&[a.addr, b.addr], "", "balance = \"least_in_flight\"");
    let proxy = Proxy::start(&cfg);
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || {
        let mut c = crate::support::Client::connect(addr);
        c.roundtrip(b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n").body
    });
    assert!(
        crate::support::wait_until(std::time::Duration::from_secs(2), || a.requests().len() + b.requests().len() == 1),
        "the slow request did not arrive"
    );
    let busy = if a.requests().is_empty() { "b" } else { "a" };
    let mut c = proxy.connect();
    for i in 0..6 {
        let r = c.roundtrip(b"GET /fast HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_ne!(r.body, busy.as_bytes(), "request {i} went to the server with a request in flight");
    }
    assert_eq!(slow.join().unwrap(), busy.as_bytes());
}
