//! TLS termination over loopback with certificates generated per test: HTTP/1.1 over TLS 1.3 and
//! 1.2 (every cipher suite the proxy's record layer seals and opens), large bodies both ways,
//! key updates, SNI (exact, wildcard, default, strict), ECDSA and RSA certificates for one name,
//! resumption, certificate reload, and bad input at the TLS layer (plaintext on a TLS port,
//! garbage hellos, tampered and truncated records, renegotiation, a silent client), each counted
//! in `/metrics` and none disturbing another connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring::cipher_suite;

use crate::support::tls::{
    Pki, Site, TlsClient, cert_entry, peer_leaf, refused, site, tls_connect, tls_proxy_with, write_ticket_keys, write_ticket_lines,
};
use crate::support::{Proxy, Upstream, run_proxy_cmd, temp_dir, wait_until};

/// A TLS proxy in front of `upstream` (see [`tls_proxy_with`]).
fn tls_proxy(dir: &std::path::Path, upstream: &Upstream, certs: &[String], extra: &str) -> Proxy {
    tls_proxy_with(dir, upstream, certs, extra, "")
}

fn get(c: &mut TlsClient, path: &str) -> crate::support::Response {
    c.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
}

#[test]
fn http11_over_tls_keeps_the_connection_and_says_https_upstream() {
    let Site { pki, leaf: _leaf, up, proxy } = site("");
    let config = Arc::new(pki.client());
    let mut c = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(c.stream.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(c.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    for i in 0..50 {
        let r = get(&mut c, &format!("/n{i}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    assert!(up.wait_requests(50, Duration::from_secs(3)));
    let reqs = up.requests();
    assert_eq!(reqs.len(), 50);
    assert!(reqs.iter().all(|r| r.conn == 0), "one upstream connection, reused");
    assert_eq!(reqs[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(proxy.metric("proxy_tls_handshakes_total{kind=\"full\"}"), 1.0);
    assert_eq!(proxy.metric("proxy_client_connections_total"), 1.0);
}

#[test]
fn large_bodies_cross_in_both_directions_over_tls_12_and_13_with_every_cipher_suite() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    // Echoes the request body's length and answers a 200 KiB body of a pattern.
    let body: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = body.clone();
    let up = Upstream::start(move |r| {
        let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Got: {}\r\n\r\n", reply.len(), r.body.len()).into_bytes();
        head.extend_from_slice(&reply);
        crate::support::Reply::Send(head)
    });
    let proxy = tls_proxy(&dir, &up, &[cert_entry(&leaf)], "");
    let cases = [
        (&rustls::version::TLS13, cipher_suite::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, cipher_suite::TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256),
        (&rustls::version::TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        (&rustls::version::TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (&rustls::version::TLS12, cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ];
    let upload: Vec<u8> = (0..100 * 1024).map(|i| (i % 13) as u8).collect();
    for (version, suite) in cases {
        let config = Arc::new(pki.client_with(&[version], Some(suite)));
        let mut c = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
        assert_eq!(c.stream.conn.negotiated_cipher_suite(), Some(suite));
        for _ in 0..3 {
            let r = get(&mut c, "/big");
            assert_eq!(r.status, 200, "{suite:?}");
            assert!(r.body == body, "{suite:?}: response body differs ({} bytes)", r.body.len());
            let mut req = format!("POST /up HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n", upload.len()).into_bytes();
            req.extend_from_slice(&upload);
            let r = c.roundtrip(&req);
            assert_eq!(r.header("x-got"), Some("102400"), "{suite:?}");
        }
    }
    let posted: Vec<_> = up.requests().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posted.len(), 18);
    assert!(posted.iter().all(|r| r.body == upload), "every upload arrived whole");
}

#[test]
fn a_key_update_from_the_client_is_followed_in_both_directions() {
    let Site { pki, leaf: _leaf, up: _up, proxy } = site("");
    let config = Arc::new(pki.client());
    let mut c = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(get(&mut c, "/a").status, 200);
    for round in 0..3 {
        // rustls sends KeyUpdate(update_requested): the proxy must switch its receiving key and
        // answer with its own KeyUpdate, then use its next sending key.
        c.stream.conn.refresh_traffic_keys().unwrap();
        assert_eq!(get(&mut c, &format!("/after-update-{round}")).status, 200, "round {round}");
    }
    assert_eq!(proxy.metric("proxy_tls_failures_total{kind=\"record\"}"), 0.0);
}

#[test]
fn sni_picks_exact_then_wildcard_then_the_default_and_strict_sni_refuses_the_rest() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let default = pki.leaf("default", &["default.test"]);
    let exact = pki.leaf("exact", &["api.example.test"]);
    let wild = pki.leaf("wild", &["*.example.test"]);
    let up = Upstream::ok();
    let entries = [cert_entry(&default), cert_entry(&exact), cert_entry(&wild)];
    let proxy = tls_proxy(&dir, &up, &entries, "");
    // The client trusts the CA but does not check the name against what it asked for (the test
    // looks at which certificate came back).
    let config = Arc::new(pki.client());
    let leaf_for = |name: &str| {
        let mut c = tls_connect(proxy.addr, Some(name), &config).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(get(&mut c, "/").status, 200);
        peer_leaf(&c).unwrap()
    };
    assert_eq!(leaf_for("api.example.test"), exact.der, "exact name");
    assert_eq!(leaf_for("www.example.test"), wild.der, "wildcard");
    assert_eq!(leaf_for("default.test"), default.der, "the default's own name");
    // A name no certificate has gets the default, which the client then rejects (wrong name):
    // the handshake fails on the client's side, as it should.
    assert!(tls_connect(proxy.addr, Some("other.test"), &config).is_err());
    // A wildcard covers one label only.
    assert!(tls_connect(proxy.addr, Some("a.b.example.test"), &config).is_err());
    drop(proxy);

    let dir = temp_dir();
    let pki2 = Pki::new(&dir);
    let exact = pki2.leaf("exact", &["api.example.test"]);
    let strict = tls_proxy(&dir, &up, &[cert_entry(&exact)], "strict_sni = true");
    let config = Arc::new(pki2.client());
    let mut ok = tls_connect(strict.addr, Some("api.example.test"), &config).unwrap();
    assert_eq!(get(&mut ok, "/").status, 200);
    assert!(tls_connect(strict.addr, Some("unknown.test"), &config).is_err(), "unknown name refused");
    assert!(tls_connect(strict.addr, None, &config).is_err(), "no name refused");
    assert!(wait_until(Duration::from_secs(2), || strict.metric("proxy_tls_failures_total{kind=\"handshake\"}") == 2.0));
    // The refused handshakes did not disturb the established connection.
    assert_eq!(get(&mut ok, "/").status, 200);
}

#[test]
fn one_name_with_ecdsa_and_rsa_certificates_serves_each_client_what_it_can_verify() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let ecdsa = pki.leaf("ecdsa", &["dual.test"]);
    let rsa = pki.rsa_leaf("rsa", &["dual.test"]);
    let up = Upstream::ok();
    let proxy = tls_proxy(&dir, &up, &[cert_entry(&ecdsa), cert_entry(&rsa)], "");
    let modern = Arc::new(pki.client());
    let c = tls_connect(proxy.addr, Some("dual.test"), &modern).unwrap();
    assert_eq!(peer_leaf(&c).unwrap(), ecdsa.der, "a client that verifies ECDSA gets the ECDSA certificate");
    // A client that can verify only RSA signatures (an old client) gets the RSA certificate.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.signature_verification_algorithms.mapping = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(scheme, _)| format!("{scheme:?}").starts_with("RSA"))
        .copied()
        .collect::<Vec<_>>()
        .leak();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let old = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = tls_connect(proxy.addr, Some("dual.test"), &Arc::new(old)).unwrap();
    assert_eq!(peer_leaf(&c).unwrap(), rsa.der, "an RSA-only client gets the RSA certificate");
    assert_eq!(get(&mut c, "/").status, 200);
}

#[test]
fn a_second_connection_resumes_the_session() {
    let Site { pki, leaf: _leaf, up: _up, proxy } = site("");
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One client config (its session cache) for both connections.
        let config = Arc::new(pki.client_with(&[version], None));
        let mut first = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
        // The TLS 1.3 tickets arrive after the handshake: a request makes the client read them.
        assert_eq!(get(&mut first, "/").status, 200);
        assert_eq!(first.stream.conn.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let mut second = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
        assert_eq!(second.stream.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{version:?}");
        assert_eq!(get(&mut second, "/").status, 200);
    }
    assert_eq!(proxy.metric("proxy_tls_handshakes_total{kind=\"resumed\"}"), 2.0);
    assert_eq!(proxy.metric("proxy_tls_handshakes_total{kind=\"full\"}"), 2.0);
}

#[test]
fn min_version_1_3_refuses_a_tls_12_client() {
    let Site { pki, leaf: _leaf, up: _up, proxy } = site("min_version = \"1.3\"");
    let old = Arc::new(pki.client_with(&[&rustls::version::TLS12], None));
    assert!(tls_connect(proxy.addr, Some("localhost"), &old).is_err());
    let new = Arc::new(pki.client_with(&[&rustls::version::TLS13], None));
    let mut c = tls_connect(proxy.addr, Some("localhost"), &new).unwrap();
    assert_eq!(get(&mut c, "/").status, 200);
}

#[test]
fn a_reload_brings_new_certificates_to_new_connections_and_keeps_the_old_ones_serving() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let before = pki.leaf("site", &["localhost"]);
    let up = Upstream::ok();
    let proxy = tls_proxy(&dir, &up, &[cert_entry(&before)], "");
    let config = Arc::new(pki.client());
    let mut old = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(get(&mut old, "/").status, 200);
    // Same file names, new certificate: the reload reads the files again.
    let after = pki.leaf("site", &["localhost"]);
    assert_ne!(before.der, after.der);
    let (status, body) = proxy.admin("POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    let fresh = Arc::new(pki.client()); // no session to resume
    let new = tls_connect(proxy.addr, Some("localhost"), &fresh).unwrap();
    assert_eq!(peer_leaf(&new).unwrap(), after.der);
    assert_eq!(get(&mut old, "/").status, 200, "the established connection keeps serving");
    // A bad PEM is refused with the file and the reason; the running certificates stay.
    std::fs::write(&after.cert, "not a certificate").unwrap();
    let (status, body) = proxy.admin("POST", "/reload", "");
    assert_ne!(status, 200);
    assert!(body.contains("site.pem"), "{body}");
    let again = tls_connect(proxy.addr, Some("localhost"), &Arc::new(pki.client())).unwrap();
    assert_eq!(peer_leaf(&again).unwrap(), after.der);
}

/// Bad input at the TLS layer: each case closes its connection (with an alert where TLS allows),
/// is counted by kind, and leaves a connection made before it serving.
#[test]
fn bad_tls_input_is_closed_counted_and_disturbs_no_other_connection() {
    let Site { pki, leaf: _leaf, up, proxy } = site("handshake_timeout = \"500ms\"");
    let config = Arc::new(pki.client());
    let mut bystander = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(get(&mut bystander, "/").status, 200);

    let raw = || {
        let s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let closes = |mut s: TcpStream| {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // an alert, then the close
            }
        }
    };
    // Plain HTTP on the TLS port.
    let mut s = raw();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closes(s));
    // A handshake record of garbage.
    let mut s = raw();
    s.write_all(&[22, 3, 1, 0, 8, 1, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef]).unwrap();
    assert!(closes(s));
    // A record header announcing more than a record may hold.
    let mut s = raw();
    s.write_all(&[22, 3, 1, 0xff, 0xff]).unwrap();
    assert!(closes(s));
    // Connects and sends nothing: closed at the handshake timeout.
    let started = std::time::Instant::now();
    assert!(closes(raw()));
    assert!(started.elapsed() < Duration::from_secs(2), "closed at the 500 ms handshake timeout");
    // Sends half a hello and goes quiet: the same.
    let mut s = raw();
    s.write_all(&[22, 3, 1, 0, 200, 1, 0, 0]).unwrap();
    assert!(closes(s));

    // After the handshake (a request first, so the bad record reaches the proxy's record layer and
    // not rustls's last handshake flight): a tampered record.
    let mut c = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(get(&mut c, "/").status, 200);
    let mut record = Vec::new();
    c.stream.conn.writer().write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.stream.conn.write_tls(&mut record).unwrap();
    let last = record.len() - 1;
    record[last] ^= 0x40;
    c.stream.sock.write_all(&record).unwrap();
    assert!(closes(c.stream.sock.try_clone().unwrap()));

    // After the handshake: half a record, then the client closes.
    let mut c = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(get(&mut c, "/").status, 200);
    let mut record = Vec::new();
    c.stream.conn.writer().write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.stream.conn.write_tls(&mut record).unwrap();
    c.stream.sock.write_all(&record[..record.len() / 2]).unwrap();
    c.stream.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closes(c.stream.sock.try_clone().unwrap()));

    // After the handshake: a plaintext handshake record (a renegotiation attempt in cleartext).
    let mut c = tls_connect(proxy.addr, Some("localhost"), &config).unwrap();
    assert_eq!(get(&mut c, "/").status, 200);
    c.stream.sock.write_all(&[22, 3, 3, 0, 4, 1, 0, 0, 0]).unwrap();
    assert!(closes(c.stream.sock.try_clone().unwrap()));

    let m = |k: &str| proxy.metric(&format!("proxy_tls_failures_total{{kind=\"{k}\"}}"));
    assert!(wait_until(Duration::from_secs(3), || m("record") == 3.0), "record failures: {}", m("record"));
    assert_eq!(m("not_tls"), 1.0);
    assert_eq!(m("handshake"), 2.0, "garbage hello and oversized record");
    assert_eq!(m("handshake_timeout"), 2.0);
    assert_eq!(up.requests().len(), 4, "nothing from the bad connections reached the upstream");
    assert_eq!(get(&mut bystander, "/").status, 200, "the connection made before still serves");
}

/// A handshake message inside the encrypted stream after the handshake: a TLS 1.2 renegotiation
/// attempt (a ClientHello) and, in TLS 1.3, a message other than KeyUpdate. The client's keys are
/// taken out of rustls so the test can seal a record rustls's client would never send.
#[test]
fn a_handshake_message_after_the_handshake_ends_the_connection_and_is_counted() {
    use proxy::data::tls::record::{HANDSHAKE, Keys};
    let Site { pki, leaf: _leaf, up: _up, proxy } = site("");
    for (version, tls13) in [(&rustls::version::TLS12, false), (&rustls::version::TLS13, true)] {
        let mut config = pki.client_with(&[version], None);
        config.enable_secret_extraction = true;
        let mut c = tls_connect(proxy.addr, Some("localhost"), &Arc::new(config)).unwrap();
        assert_eq!(get(&mut c, "/").status, 200);
        let sock = c.stream.sock.try_clone().unwrap();
        let secrets = c.stream.conn.dangerous_extract_secrets().unwrap();
        let mut tx = Keys::new(secrets.tx.0, &secrets.tx.1, tls13).unwrap();
        // A ClientHello header (type 1) with an empty body: a renegotiation in TLS 1.2, an
        // unexpected message in TLS 1.3.
        let mut out = vec![0u8; 256];
        let n = tx.seal(HANDSHAKE, &[1, 0, 0, 0], &mut out).unwrap();
        (&sock).write_all(&out[..n]).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut b = [0u8; 256];
        let closed = matches!((&sock).read(&mut b), Ok(0) | Err(_));
        assert!(closed, "{version:?}: the connection is closed");
    }
    assert!(wait_until(Duration::from_secs(3), || proxy.metric("proxy_tls_failures_total{kind=\"renegotiation\"}") == 2.0));
}

/// Connects with `config` (whose session cache holds what earlier connections left) and says how
/// the handshake went, after a request (which also makes the client read TLS 1.3 tickets).
fn handshake_kind(proxy: &Proxy, config: &Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    let mut c = tls_connect(proxy.addr, Some("localhost"), config).unwrap();
    assert_eq!(get(&mut c, "/").status, 200);
    c.stream.conn.handshake_kind().unwrap()
}

#[test]
fn ticket_keys_from_one_file_let_a_session_from_one_process_resume_on_another() {
    use rustls::HandshakeKind::{Full, Resumed};
    let dir_a = temp_dir();
    let pki = Pki::new(&dir_a);
    let leaf = pki.leaf("site", &["localhost"]);
    let shared = dir_a.join("ticket.keys");
    write_ticket_keys(&shared, 3);
    let other = dir_a.join("other.keys");
    write_ticket_keys(&other, 3);
    let up = Upstream::ok();
    let keys = |p: &std::path::Path| format!("ticket_keys = \"{}\"", p.display());
    let a = tls_proxy(&dir_a, &up, &[cert_entry(&leaf)], &keys(&shared));
    let b = tls_proxy(&temp_dir(), &up, &[cert_entry(&leaf)], &keys(&shared));
    let c = tls_proxy(&temp_dir(), &up, &[cert_entry(&leaf)], &keys(&other));
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // A session made on A resumes on B: both encrypt with the file's first key.
        let config = Arc::new(pki.client_with(&[version], None));
        assert_eq!(handshake_kind(&a, &config), Full);
        assert_eq!(handshake_kind(&b, &config), Resumed, "{version:?}: A's session on B");
        // ... and not on C, whose file holds other keys: a full handshake, no failure.
        let config = Arc::new(pki.client_with(&[version], None));
        assert_eq!(handshake_kind(&a, &config), Full);
        assert_eq!(handshake_kind(&c, &config), Full, "{version:?}: A's session on C");
    }
    assert_eq!(b.metric("proxy_tls_handshakes_total{kind=\"resumed\"}"), 2.0);
    assert_eq!(c.metric("proxy_tls_handshakes_total{kind=\"resumed\"}"), 0.0);
    assert_eq!(c.metric("proxy_tls_handshakes_total{kind=\"full\"}"), 2.0);
    assert_eq!(c.metric("proxy_tls_failures_total{kind=\"handshake\"}"), 0.0);
}

#[test]
fn rotating_ticket_keys_by_reload_keeps_old_tickets_until_their_key_leaves_the_file() {
    use rustls::HandshakeKind::{Full, Resumed};
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let file = dir.join("ticket.keys");
    let k1 = write_ticket_keys(&file, 1);
    let up = Upstream::ok();
    let a = tls_proxy(&dir, &up, &[cert_entry(&leaf)], &format!("ticket_keys = \"{}\"", file.display()));
    let old = Arc::new(pki.client_with(&[&rustls::version::TLS13], None));
    assert_eq!(handshake_kind(&a, &old), Full); // tickets under k1

    // Rotate: a new key first, k1 still listed.
    let k2 = write_ticket_keys(&dir.join("k2"), 1);
    write_ticket_lines(&file, &[k2[0].clone(), k1[0].clone()]);
    let (status, body) = a.admin("POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(handshake_kind(&a, &old), Resumed, "a ticket under the old key still resumes");

    // New tickets are made with the new first key: a process that has only k2 resumes them.
    let fresh = Arc::new(pki.client_with(&[&rustls::version::TLS13], None));
    assert_eq!(handshake_kind(&a, &fresh), Full);
    let k2_file = dir.join("k2-only.keys");
    write_ticket_lines(&k2_file, &k2);
    let b = tls_proxy(&temp_dir(), &up, &[cert_entry(&leaf)], &format!("ticket_keys = \"{}\"", k2_file.display()));
    assert_eq!(handshake_kind(&b, &fresh), Resumed, "the new ticket is under k2");

    // k2 leaves the file: its tickets no longer resume (a full handshake, not a failure).
    write_ticket_keys(&file, 1);
    let (status, body) = a.admin("POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(handshake_kind(&a, &fresh), Full, "a ticket under a dropped key");

    // A bad file is refused with the file and the reason; the running keys stay.
    std::fs::write(&file, "not a key\n").unwrap();
    let (status, body) = a.admin("POST", "/reload", "");
    assert_ne!(status, 200);
    assert!(body.contains("ticket.keys: line 1: a key is 160 hex digits"), "{body}");
    assert_eq!(a.metric("proxy_tls_failures_total{kind=\"handshake\"}"), 0.0);
}

#[test]
fn without_ticket_keys_the_process_keys_survive_a_reload() {
    let Site { pki, leaf: _leaf, up: _up, proxy } = site("");
    let config = Arc::new(pki.client_with(&[&rustls::version::TLS13], None));
    assert_eq!(handshake_kind(&proxy, &config), rustls::HandshakeKind::Full);
    let (status, body) = proxy.admin("POST", "/reload", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(handshake_kind(&proxy, &config), rustls::HandshakeKind::Resumed);
}

#[test]
fn client_certificates_required_refuses_none_and_a_foreign_ca_and_optional_lets_none_in() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    // Client certificates come from their own CA; a third CA's certificate must not pass.
    let clients = Pki::new(&dir);
    let ca = clients.write_ca("clients-ca.pem");
    let good = clients.client_leaf("alice", "alice.clients.test");
    let foreign = Pki::new(&dir).client_leaf("mallory", "mallory.clients.test");
    let up = Upstream::ok();
    let required = tls_proxy(&dir, &up, &[cert_entry(&leaf)], &format!("client_ca = \"{}\"\nclient_auth = \"required\"", ca.display()));
    let optional =
        tls_proxy(&temp_dir(), &up, &[cert_entry(&leaf)], &format!("client_ca = \"{}\"\nclient_auth = \"optional\"", ca.display()));

    let with_good = Arc::new(pki.client_with_cert(&good));
    let with_foreign = Arc::new(pki.client_with_cert(&foreign));
    let none13 = Arc::new(pki.client_with(&[&rustls::version::TLS13], None));
    let none12 = Arc::new(pki.client_with(&[&rustls::version::TLS12], None));
    let m = |p: &Proxy| p.metric("proxy_tls_failures_total{kind=\"handshake\"}");

    let mut c = tls_connect(required.addr, Some("localhost"), &with_good).unwrap();
    assert_eq!(get(&mut c, "/").status, 200, "a certificate from client_ca");
    assert!(refused(required.addr, Some("localhost"), &none13), "TLS 1.3 without a certificate");
    assert!(refused(required.addr, Some("localhost"), &none12), "TLS 1.2 without a certificate");
    assert!(refused(required.addr, Some("localhost"), &with_foreign), "a certificate from another CA");
    // Counted: the TLS 1.2 refusal. The TLS 1.3 ones are not yet (see the ignored test below).
    assert!(wait_until(Duration::from_secs(3), || m(&required) >= 1.0), "handshake failures: {}", m(&required));
    assert_eq!(required.metric("proxy_tls_handshakes_total{kind=\"full\"}"), 1.0, "only the verified client finished");
    assert_eq!(get(&mut c, "/").status, 200, "the verified connection still serves");

    let mut c = tls_connect(optional.addr, Some("localhost"), &with_good).unwrap();
    assert_eq!(get(&mut c, "/").status, 200, "optional: a certificate from client_ca");
    let mut c = tls_connect(optional.addr, Some("localhost"), &none13).unwrap();
    assert_eq!(get(&mut c, "/").status, 200, "optional: no certificate");
    assert!(refused(optional.addr, Some("localhost"), &with_foreign), "optional: a certificate presented is still verified");
    assert_eq!(optional.metric("proxy_tls_handshakes_total{kind=\"full\"}"), 2.0, "the foreign certificate did not finish");
    assert_eq!(up.requests().len(), 4, "no refused connection reached the upstream");
}

/// Every refused client certificate is counted as a handshake failure, and none panics the
/// connection's task. In TLS 1.3 the client's Certificate and Finished come in one record; rustls
/// rejects the Certificate with the Finished still pending in its deframer. `data::tls::send_alert`
/// once called `process_tls_records` with an empty buffer then, and rustls's deframer indexed out
/// of it and panicked (`msgs/deframer/buffers.rs:59`): the connection closed without an alert and
/// was not counted. It now hands rustls the bytes it still holds.
#[test]
fn every_refused_client_certificate_is_counted_and_nothing_panics() {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let clients = Pki::new(&dir);
    let ca = clients.write_ca("clients-ca.pem");
    let foreign = Pki::new(&dir).client_leaf("mallory", "mallory.clients.test");
    let up = Upstream::ok();
    let proxy = tls_proxy(&dir, &up, &[cert_entry(&leaf)], &format!("client_ca = \"{}\"", ca.display()));
    assert!(refused(proxy.addr, Some("localhost"), &Arc::new(pki.client_with(&[&rustls::version::TLS13], None))));
    assert!(refused(proxy.addr, Some("localhost"), &Arc::new(pki.client_with_cert(&foreign))));
    let m = || proxy.metric("proxy_tls_failures_total{kind=\"handshake\"}");
    assert!(wait_until(Duration::from_secs(3), || m() == 2.0), "handshake failures: {}", m());
    assert!(!proxy.stderr().contains("panicked"), "{}", proxy.stderr());
}

#[test]
fn a_listener_limited_to_one_suite_and_one_group_negotiates_them_and_refuses_clients_without() {
    use rustls::crypto::ring::kx_group;
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let up = Upstream::ok();
    let proxy =
        tls_proxy(&dir, &up, &[cert_entry(&leaf)], "cipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\"]\nkx_groups = [\"secp384r1\"]");
    // rustls's client prefers AES-GCM and sends an X25519 key share: the listener gets ChaCha20
    // and P-384 (after a HelloRetryRequest) all the same.
    let mut c = tls_connect(proxy.addr, Some("localhost"), &Arc::new(pki.client())).unwrap();
    assert_eq!(c.stream.conn.negotiated_cipher_suite(), Some(cipher_suite::TLS13_CHACHA20_POLY1305_SHA256));
    assert_eq!(c.stream.conn.negotiated_key_exchange_group().map(|g| g.name()), Some(rustls::NamedGroup::secp384r1));
    assert_eq!(get(&mut c, "/").status, 200);
    let aes_only = Arc::new(pki.client_with(&[&rustls::version::TLS13], Some(cipher_suite::TLS13_AES_128_GCM_SHA256)));
    assert!(tls_connect(proxy.addr, Some("localhost"), &aes_only).is_err(), "a client without the suite");
    let x25519_only = Arc::new(pki.client_with_groups(&[kx_group::X25519]));
    assert!(tls_connect(proxy.addr, Some("localhost"), &x25519_only).is_err(), "a client without the group");
    let tls12 = Arc::new(pki.client_with(&[&rustls::version::TLS12], None));
    assert!(tls_connect(proxy.addr, Some("localhost"), &tls12).is_err(), "TLS 1.2: no suite left for it");
    let m = || proxy.metric("proxy_tls_failures_total{kind=\"handshake\"}");
    assert!(wait_until(Duration::from_secs(3), || m() == 3.0), "handshake failures: {}", m());

    // A TLS 1.2 suite alone: a client offering 1.3 and 1.2 settles on 1.2 with it.
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let proxy = tls_proxy(&dir, &up, &[cert_entry(&leaf)], "cipher_suites = [\"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]");
    let mut c = tls_connect(proxy.addr, Some("localhost"), &Arc::new(pki.client())).unwrap();
    assert_eq!(c.stream.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(c.stream.conn.negotiated_cipher_suite(), Some(cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384));
    assert_eq!(get(&mut c, "/").status, 200);
}

/// `proxy/examples/tls.toml` is valid once the files it names exist: its commented commands (the
/// lines from `mkdir -p certs` to the next bare `#`) are run as written in a copy's directory, and
/// `proxy check` accepts the copy.
#[test]
fn the_tls_example_is_valid_once_its_commented_commands_made_its_files() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tls.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let script: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("#   mkdir -p certs"))
        .take_while(|l| *l != "#")
        .map(|l| l.strip_prefix("#   ").unwrap_or_else(|| panic!("not a command line: {l}")))
        .collect();
    assert!(script.len() > 5, "the commands in the example's header");
    let dir = temp_dir();
    let copy = dir.join("tls.toml");
    std::fs::write(&copy, &text).unwrap();
    let out = std::process::Command::new("sh").arg("-ec").arg(script.join("\n")).current_dir(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, stdout, stderr) = run_proxy_cmd(&["check", "--config", copy.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(std::fs::read_to_string(dir.join("certs/ticket.keys")).unwrap().lines().count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Certificates reloaded ten times while four clients keep making TLS connections (a handshake
/// each, full or resumed, then five requests): not one request or handshake fails, and new
/// connections end up with the last certificate.
#[test]
fn certificate_reloads_under_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let mut leaf = pki.leaf("site", &["localhost"]);
    let up = Upstream::ok();
    let proxy = tls_proxy(&dir, &up, &[cert_entry(&leaf)], "");
    let config = Arc::new(pki.client());
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served, failures, config, addr) =
                (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&failures), Arc::clone(&config), proxy.addr);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut c = match tls_connect(addr, Some("localhost"), &config) {
                        Ok(c) => c,
                        Err(e) => {
                            failures.lock().unwrap().push(format!("handshake: {e}"));
                            continue;
                        }
                    };
                    for _ in 0..5 {
                        match c
                            .try_send(b"GET /load HTTP/1.1\r\nHost: test.local\r\n\r\n")
                            .map_err(|e| e.to_string())
                            .and_then(|()| c.read_response())
                        {
                            Ok(r) if r.status == 200 => {
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => failures.lock().unwrap().push(format!("status {}", r.status)),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                }
            })
        })
        .collect();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        leaf = pki.leaf("site", &["localhost"]);
        let (status, body) = proxy.admin("POST", "/reload", "");
        assert_eq!(status, 200, "{body}");
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failures, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(served.load(Ordering::SeqCst) >= 100, "only {} requests served", served.load(Ordering::SeqCst));
    let fresh = tls_connect(proxy.addr, Some("localhost"), &Arc::new(pki.client())).unwrap();
    assert_eq!(peer_leaf(&fresh).unwrap(), leaf.der, "new connections get the last certificate");
}
