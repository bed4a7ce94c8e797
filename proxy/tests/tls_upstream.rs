//! TLS to the upstream (`tls = true` in a group) against a rustls origin over loopback: the
//! server verified against a CA file (and refused when signed by another CA, or when its name or
//! IP does not match), SNI, the pool reusing one TLS connection, resumption when a connection is
//! replaced, client certificates (mTLS), bodies both ways through the proxy's record layer, a
//! cleartext and a TLS group on the same address kept apart, and config errors.

use crate::support::tls::{Pki, TlsOrigin, proxy_to_tls_origin};
use crate::support::{Client, Response, run_proxy_cmd, temp_dir};

fn get(c: &mut Client, path: &str) -> Response {
    c.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
}

fn body(r: &Response) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// A TLS origin for `origin.test` (no client certificates asked) and a proxy whose group reaches
/// it verified against the test CA by that name, with `extra` lines in the group.
fn verified_origin(extra: &str) -> (TlsOrigin, crate::support::Proxy) {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("origin", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, &leaf, false);
    let ca = pki.write_ca("ca.pem");
    let group = format!("tls = true\ntls_server_name = \"origin.test\"\ntls_ca = \"{}\"\n{extra}", ca.display());
    let proxy = proxy_to_tls_origin(&dir, origin.addr, &group);
    (origin, proxy)
}

#[test]
fn verified_tls_upstream_sends_sni_and_reuses_one_pooled_connection() {
    let (origin, proxy) = verified_origin("");
    let mut c = proxy.connect();
    for i in 1..=30 {
        let r = get(&mut c, "/x");
        assert_eq!(r.status, 200, "request {i}: {}", body(&r));
        assert!(body(&r).starts_with(&format!("sni=origin.test;resumed=false;client_cert=false;conn=0;req={i};")), "{}", body(&r));
    }
    let conns = origin.conns();
    assert_eq!(conns.len(), 1, "one pooled TLS connection carries every request: {conns:?}");
    assert_eq!(conns[0].requests, 30);
    assert_eq!(proxy.metric("proxy_upstream_tls_handshakes_total{kind=\"full\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_errors_total{kind=\"upstream_tls\"}"), 0.0);
}

#[test]
fn bodies_cross_the_upstream_tls_records_both_ways() {
    let (origin, proxy) = verified_origin("");
    let mut c = proxy.connect();
    // A 1 MiB response: ~64 records read and relayed.
    let r = get(&mut c, "/pad/1048576");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body.iter().rev().take(1000).all(|&b| b == b'x'));
    // A 300 KiB request body streamed to the origin over TLS, on the same connections.
    let payload = vec![b'p'; 300 * 1024];
    let mut req = format!("POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n", payload.len()).into_bytes();
    req.extend_from_slice(&payload);
    let r = c.roundtrip(&req);
    assert_eq!(r.status, 200);
    assert!(body(&r).ends_with(&format!("body={}", payload.len())), "{}", body(&r));
    assert_eq!(origin.conns().len(), 1, "{:?}", origin.conns());
}

#[test]
fn a_replaced_connection_resumes_its_session() {
    // No idle connection is kept: every request opens a new one.
    let (origin, proxy) = verified_origin("idle_pool_size = 0");
    let mut c = proxy.connect();
    for i in 0..4 {
        let r = get(&mut c, "/x");
        assert_eq!(r.status, 200, "request {i}");
    }
    let conns = origin.conns();
    assert_eq!(conns.len(), 4, "{conns:?}");
    assert!(!conns[0].resumed);
    assert!(conns[1..].iter().all(|c| c.resumed), "the later connections resume with the tickets the first got: {conns:?}");
    assert_eq!(proxy.metric("proxy_upstream_tls_handshakes_total{kind=\"resumed\"}"), 3.0);
}

#[test]
fn a_server_signed_by_another_ca_or_for_another_name_is_refused() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let other = Pki::new(&dir.join("other"));
    std::fs::create_dir_all(&other.dir).unwrap();
    let stranger = other.leaf("stranger", &["origin.test"]);
    let origin = TlsOrigin::start(&other, &stranger, false);
    let ca = pki.write_ca("ca.pem");
    let proxy =
        proxy_to_tls_origin(&dir, origin.addr, &format!("tls = true\ntls_server_name = \"origin.test\"\ntls_ca = \"{}\"", ca.display()));
    let mut c = proxy.connect();
    let r = get(&mut c, "/x");
    assert_eq!(r.status, 502);
    assert_eq!(origin.conns().len(), 0, "no request reached an unverified server");
    assert!(proxy.metric("proxy_errors_total{kind=\"upstream_tls\"}") >= 1.0);
    // The client connection is kept (the failure was upstream): a second request gets its answer.
    assert_eq!(get(&mut c, "/y").status, 502);

    // Right CA, wrong name.
    let leaf = pki.leaf("origin", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, &leaf, false);
    let proxy =
        proxy_to_tls_origin(&dir, origin.addr, &format!("tls = true\ntls_server_name = \"elsewhere.test\"\ntls_ca = \"{}\"", ca.display()));
    assert_eq!(get(&mut proxy.connect(), "/x").status, 502);
    assert_eq!(origin.conns().len(), 0);
}

#[test]
fn without_a_server_name_the_server_is_verified_by_its_ip_and_no_sni_is_sent() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("origin", &["127.0.0.1"]);
    let origin = TlsOrigin::start(&pki, &leaf, false);
    let ca = pki.write_ca("ca.pem");
    let proxy = proxy_to_tls_origin(&dir, origin.addr, &format!("tls = true\ntls_ca = \"{}\"", ca.display()));
    let r = get(&mut proxy.connect(), "/x");
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(body(&r).starts_with("sni=-;"), "{}", body(&r));

    // A certificate without that IP is refused; `tls_insecure_skip_verify` accepts it.
    let leaf = pki.leaf("named", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, &leaf, false);
    let proxy = proxy_to_tls_origin(&dir, origin.addr, &format!("tls = true\ntls_ca = \"{}\"", ca.display()));
    assert_eq!(get(&mut proxy.connect(), "/x").status, 502);
    let proxy = proxy_to_tls_origin(&dir, origin.addr, "tls = true\ntls_insecure_skip_verify = true");
    assert_eq!(get(&mut proxy.connect(), "/x").status, 200);
}

#[test]
fn client_certificates_reach_a_server_that_requires_them() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("origin", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, &leaf, true);
    let ca = pki.write_ca("ca.pem");
    let client = pki.client_leaf("proxy-client", "proxy.test");
    let base = format!("tls = true\ntls_server_name = \"origin.test\"\ntls_ca = \"{}\"", ca.display());

    let with = proxy_to_tls_origin(
        &dir,
        origin.addr,
        &format!("{base}\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"", client.cert.display(), client.key.display()),
    );
    let r = get(&mut with.connect(), "/x");
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(body(&r).contains("client_cert=true"), "{}", body(&r));

    // Without one the server ends the handshake (TLS 1.3: after the client's Finished, so the
    // proxy sees the alert when it reads the response): a 502, no request served.
    let served = origin.conns().len();
    let without = proxy_to_tls_origin(&dir, origin.addr, &base);
    assert_eq!(get(&mut without.connect(), "/x").status, 502);
    assert_eq!(origin.conns().len(), served);
    assert!(origin.failed.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn a_cleartext_and_a_tls_group_on_one_address_never_share_pooled_connections() {
    // One origin address reached two ways: the pool keys servers by address and transport.
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("origin", &["origin.test"]);
    let origin = TlsOrigin::start(&pki, &leaf, false);
    let ca = pki.write_ca("ca.pem");
    let tables = format!(
        "[[routes]]\npath_prefix = \"/plain\"\nupstream = \"plain\"\n\n[upstreams.plain]\nservers = [\"{}\"]\nresponse_header_timeout = \"1s\"\n",
        origin.addr
    );
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [[routes]]\npath_prefix = \"/tls\"\nupstream = \"secure\"\n\n{tables}\n\
         [upstreams.secure]\nservers = [\"{}\"]\ntls = true\ntls_server_name = \"origin.test\"\ntls_ca = \"{}\"\n",
        origin.addr,
        ca.display()
    );
    let proxy = crate::support::Proxy::start_in(&dir, &config, 1);
    let mut c = proxy.connect();
    for round in 0..3 {
        let r = get(&mut c, "/tls");
        assert_eq!(r.status, 200, "round {round}: {} {:?}", body(&r), origin.conns());
        // Cleartext HTTP to a TLS port: the origin's TLS refuses it; never a pooled TLS connection.
        let r = get(&mut c, "/plain");
        assert_ne!(r.status, 200, "{}", body(&r));
    }
    let conns = origin.conns();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].requests, 3);
}

#[test]
fn tls_options_are_checked_when_the_config_loads() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    pki.write_ca("ca.pem");
    let cases: &[(&str, &str)] = &[
        ("tls_ca = \"ca.pem\"", "applies to TLS upstreams only: set tls = true"),
        ("tls = true\ntls_ca = \"missing.pem\"", "missing.pem: cannot read"),
        ("tls = true\ntls_client_cert = \"ca.pem\"", "tls_client_cert needs tls_client_key"),
        ("tls = true\ntls_server_name = \"not a name!\"", "is not a DNS name or an IP address"),
        ("tls = true\ntls_insecure_skip_verify = true\ntls_ca = \"ca.pem\"", "verifies nothing"),
        ("tls = true\ntls_server_name = 7", "invalid type"),
    ];
    for (group, message) in cases {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n\
             [upstreams.u]\nservers = [\"127.0.0.1:9\"]\n{group}\n"
        );
        let path = dir.join("check.toml");
        std::fs::write(&path, text).unwrap();
        let (code, out, err) = run_proxy_cmd(&["check", "--config", path.to_str().unwrap()]);
        assert_ne!(code, Some(0), "{group}: accepted");
        let said = format!("{out}{err}");
        assert!(said.contains(message), "{group}: {said}");
    }
}

/// A server that accepts the connection and never answers the ClientHello: the handshake is
/// bounded by the group's `connect_timeout` and the request gets a 504, the client connection
/// kept.
#[test]
fn a_server_that_never_finishes_the_handshake_is_a_connect_timeout() {
    let dir = temp_dir();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        // Accept and hold (read nothing, write nothing) until the proxy gives up.
        let (s, _) = silent.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        drop(s);
    });
    let proxy = proxy_to_tls_origin(&dir, addr, "tls = true\ntls_insecure_skip_verify = true\nconnect_timeout = \"300ms\"");
    let mut c = proxy.connect();
    let started = std::time::Instant::now();
    let r = get(&mut c, "/x");
    assert_eq!(r.status, 504, "{}", body(&r));
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "bounded by connect_timeout: {:?}", started.elapsed());
    assert_eq!(proxy.metric("proxy_errors_total{kind=\"connect_timeout\"}"), 1.0);
    held.join().unwrap();
}
