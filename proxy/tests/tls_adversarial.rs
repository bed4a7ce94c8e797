//! Adversarial input on TLS listeners, table-driven and bounded in time: malformed ClientHellos (a
//! few hundred seeded mutations of a real one), handshake floods, a slow handshake, TLS on a
//! plaintext listener, plaintext on a TLS listener, and bad records after the handshake (sealed
//! with the client's own keys, taken out of rustls). Every case asserts that its connection is
//! closed (EOF or reset within the socket timeout, an alert before it allowed), that the right
//! `proxy_tls_failures_total{kind}` rose, that a TLS connection made before still serves, that
//! nothing reached the upstream, and that the proxy did not panic.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proxy::data::tls::record::{ALERT, APPLICATION_DATA, HANDSHAKE, Keys};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::support::tls::{Pki, Site, TlsClient, site_with, tls_connect};
use crate::support::{Proxy, Upstream, temp_dir, wait_until};

/// The failure kinds `/metrics` reports, in the proxy's order.
const KINDS: [&str; 7] = ["handshake_timeout", "not_tls", "handshake", "closed_in_handshake", "record", "alert", "renegotiation"];

/// How long a case may take to see its connection closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

struct Fixture {
    pki: Pki,
    up: Upstream,
    proxy: Proxy,
    config: Arc<ClientConfig>,
}

/// A proxy with one TLS listener (`handshake_timeout = 500ms`, `extra` lines in
/// `[listeners.tls]`) in front of a recording upstream, with the admin API on.
fn fixture(extra: &str) -> Fixture {
    fixture_with(extra, "")
}

/// [`fixture`] with `tables` (whole TOML tables, `[limits]` say) added to the config.
fn fixture_with(extra: &str, tables: &str) -> Fixture {
    let Site { pki, up, proxy, .. } = site_with(&format!("handshake_timeout = \"500ms\"\n{extra}"), tables);
    let config = Arc::new(pki.client());
    Fixture { pki, up, proxy, config }
}

impl Fixture {
    /// Every failure counter, in [`KINDS`] order, and the handshakes completed (full + resumed).
    fn counters(&self) -> ([f64; 7], f64) {
        let (status, body) = self.proxy.admin("GET", "/metrics", "");
        assert_eq!(status, 200);
        let f = KINDS.map(|k| crate::support::metric(&body, &format!("proxy_tls_failures_total{{kind=\"{k}\"}}")));
        let h = crate::support::metric(&body, "proxy_tls_handshakes_total{kind=\"full\"}")
            + crate::support::metric(&body, "proxy_tls_handshakes_total{kind=\"resumed\"}");
        (f, h)
    }

    /// A TLS connection that has served one request.
    fn bystander(&self) -> TlsClient {
        let mut c = tls_connect(self.proxy.addr, Some("localhost"), &self.config).unwrap();
        assert_eq!(get(&mut c, "/bystander").status, 200);
        c
    }

    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.proxy.addr, CLOSE_WITHIN).unwrap();
        s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
        s.set_write_timeout(Some(CLOSE_WITHIN)).unwrap();
        let _ = s.set_nodelay(true);
        s
    }

    /// An established connection (one request served, so rustls's side of the handshake is over
    /// on both ends) and the client's keys, taken out of rustls: (socket, sending, receiving).
    fn established(&self, tls13: bool) -> (TcpStream, Keys, Keys) {
        let version = if tls13 { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
        let mut config = self.pki.client_with(&[version], None);
        config.enable_secret_extraction = true;
        let mut c = tls_connect(self.proxy.addr, Some("localhost"), &Arc::new(config)).unwrap();
        assert_eq!(get(&mut c, "/established").status, 200);
        let sock = c.stream.sock.try_clone().unwrap();
        let secrets = c.stream.conn.dangerous_extract_secrets().unwrap();
        let tx = Keys::new(secrets.tx.0, &secrets.tx.1, tls13).unwrap();
        let rx = Keys::new(secrets.rx.0, &secrets.rx.1, tls13).unwrap();
        (sock, tx, rx)
    }

    /// How many requests the upstream has seen that did not come from a bystander or from
    /// setting up an established connection.
    fn stray_requests(&self) -> Vec<String> {
        self.up
            .requests()
            .into_iter()
            .map(|r| r.target)
            .filter(|t| !matches!(t.as_str(), "/bystander" | "/established" | "/ok" | "/after-flood" | "/after-key-updates"))
            .collect()
    }

    /// The checks after every batch: alive, no panic, the bystander serves.
    fn still_well(&mut self, bystander: &mut TlsClient, what: &str) {
        assert!(self.proxy.alive(), "{what}: the proxy exited");
        let err = self.proxy.stderr();
        assert!(!err.contains("panicked"), "{what}: the proxy panicked:\n{err}");
        assert_eq!(get(bystander, "/bystander").status, 200, "{what}: the connection made before still serves");
        assert!(self.stray_requests().is_empty(), "{what}: reached the upstream: {:?}", self.stray_requests());
    }
}

fn get(c: &mut TlsClient, path: &str) -> crate::support::Response {
    c.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
}

/// Reads until the peer closes (EOF or reset): `Ok(bytes read)`, or `Err` when the connection is
/// still open after the socket's read timeout.
fn closes(s: &TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut b = [0u8; 16 * 1024];
    let mut s = s;
    loop {
        match s.read(&mut b) {
            Ok(0) => return Ok(got),
            Ok(n) => {
                if got.len() < 1 << 20 {
                    got.extend_from_slice(&b[..n]);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("still open after the read timeout ({} bytes read)", got.len()));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(got), // reset
        }
    }
}

/// `after - before`, per kind, for the kinds that moved.
fn moved(before: &[f64; 7], after: &[f64; 7]) -> Vec<(&'static str, f64)> {
    KINDS.iter().zip(before.iter().zip(after)).filter(|(_, (b, a))| a != b).map(|(k, (b, a))| (*k, a - b)).collect()
}

/// The proxy's resident set (`VmRSS` in `/proc/PID/status`), KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---- ClientHello building and mutation ----

/// The first flight of a rustls client for `name`: one handshake record holding a ClientHello.
fn client_hello(config: &Arc<ClientConfig>, name: &str) -> Vec<u8> {
    let mut c = ClientConnection::new(Arc::clone(config), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

/// A ClientHello taken apart: legacy version, random and session id; cipher suites; compression
/// methods (with their length byte); extensions.
#[derive(Clone)]
struct Hello {
    head: Vec<u8>,
    suites: Vec<u8>,
    compression: Vec<u8>,
    exts: Vec<(u16, Vec<u8>)>,
}

fn be16(b: &[u8]) -> usize {
    u16::from_be_bytes([b[0], b[1]]) as usize
}

impl Hello {
    fn parse(record: &[u8]) -> Hello {
        assert_eq!(record[0], HANDSHAKE);
        assert_eq!(be16(&record[3..]), record.len() - 5, "one record");
        let hs = &record[5..];
        assert_eq!(hs[0], 1, "a ClientHello");
        let body = &hs[4..];
        let mut i = 34;
        i += 1 + body[i] as usize;
        let head = body[..i].to_vec();
        let n = be16(&body[i..]);
        let suites = body[i + 2..i + 2 + n].to_vec();
        i += 2 + n;
        let n = body[i] as usize;
        let compression = body[i..i + 1 + n].to_vec();
        i += 1 + n;
        let end = i + 2 + be16(&body[i..]);
        assert_eq!(end, body.len());
        i += 2;
        let mut exts = Vec::new();
        while i < end {
            let typ = be16(&body[i..]) as u16;
            let n = be16(&body[i + 2..]);
            exts.push((typ, body[i + 4..i + 4 + n].to_vec()));
            i += 4 + n;
        }
        Hello { head, suites, compression, exts }
    }

    /// The handshake message (header included), lengths consistent.
    fn message(&self) -> Vec<u8> {
        let mut body = self.head.clone();
        body.extend_from_slice(&(self.suites.len() as u16).to_be_bytes());
        body.extend_from_slice(&self.suites);
        body.extend_from_slice(&self.compression);
        let exts: Vec<u8> = self
            .exts
            .iter()
            .flat_map(|(t, b)| t.to_be_bytes().into_iter().chain((b.len() as u16).to_be_bytes()).chain(b.iter().copied()))
            .collect();
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut msg = vec![1];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    fn with_ext(&self, typ: u16, body: Vec<u8>) -> Hello {
        let mut h = self.clone();
        match h.exts.iter_mut().find(|(t, _)| *t == typ) {
            Some(e) => e.1 = body,
            None => h.exts.insert(0, (typ, body)),
        }
        h
    }
}

/// `msg` as handshake records of at most `frag` bytes each, with record version `version`.
fn records(msg: &[u8], version: [u8; 2], frag: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in msg.chunks(frag) {
        out.extend_from_slice(&[HANDSHAKE, version[0], version[1]]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A server_name extension body for one host name.
fn sni(name: &[u8]) -> Vec<u8> {
    let mut b = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(&(name.len() as u16).to_be_bytes());
    b.extend_from_slice(name);
    b
}

/// xorshift64*: deterministic mutations from a seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The mutation table: (name, the bytes a client sends before closing its sending side).
fn hello_mutations(hello: &[u8]) -> Vec<(String, Vec<u8>)> {
    let h = Hello::parse(hello);
    let msg = h.message();
    assert_eq!(records(&msg, [3, 1], 1 << 14), hello, "the parse round-trips");
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| cases.push((name, bytes));

    // Truncated at every length (the record header then announces more than comes).
    for n in 1..hello.len() {
        add(format!("truncated to {n}"), hello[..n].to_vec());
    }
    // Seeded bit flips: 1 to 4 bits anywhere.
    let mut rng = Rng(0x5eed_7e57_0000_0001);
    for i in 0..200 {
        let mut b = hello.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(b.len());
            b[at] ^= 1 << rng.below(8);
        }
        add(format!("bit flips #{i}"), b);
    }
    // Length fields too large and too small: record, handshake, session id, suites, compression,
    // extensions block.
    let sid_at = 5 + 4 + 34;
    let suites_at = sid_at + 1 + hello[sid_at] as usize;
    let comp_at = suites_at + 2 + be16(&hello[suites_at..]);
    let exts_at = comp_at + 1 + hello[comp_at] as usize;
    for (field, at, width) in [
        ("record", 3, 2),
        ("handshake", 6, 3),
        ("session id", sid_at, 1),
        ("suites", suites_at, 2),
        ("compression", comp_at, 1),
        ("extensions", exts_at, 2),
    ] {
        for delta in [-1i64, 1, -256, 255, 0x7fff, -0x7fff, 0xffff] {
            let mut b = hello.to_vec();
            let mut v: i64 = 0;
            for i in 0..width {
                v = v << 8 | b[at + i] as i64;
            }
            let max = (1i64 << (8 * width)) - 1;
            let nv = (v + delta).clamp(0, max);
            for i in 0..width {
                b[at + i] = (nv >> (8 * (width - 1 - i))) as u8;
            }
            add(format!("{field} length {v} -> {nv}"), b);
        }
    }
    // Every extension emptied, every extension twice, every extension dropped.
    for (i, (typ, _)) in h.exts.iter().enumerate() {
        let mut e = h.clone();
        e.exts[i].1.clear();
        add(format!("extension {typ} empty"), records(&e.message(), [3, 1], 1 << 14));
        let mut d = h.clone();
        d.exts.insert(i, h.exts[i].clone());
        add(format!("extension {typ} twice"), records(&d.message(), [3, 1], 1 << 14));
        let mut r = h.clone();
        r.exts.remove(i);
        add(format!("extension {typ} dropped"), records(&r.message(), [3, 1], 1 << 14));
    }
    // No cipher suites; an odd suites length; only unknown suites; no compression methods.
    let mut e = h.clone();
    e.suites.clear();
    add("no cipher suites".into(), records(&e.message(), [3, 1], 1 << 14));
    let mut e = h.clone();
    e.suites.push(0x13);
    add("odd cipher suites length".into(), records(&e.message(), [3, 1], 1 << 14));
    let mut e = h.clone();
    e.suites = vec![0xfe, 0xfe, 0x00, 0x0a];
    add("only unknown cipher suites".into(), records(&e.message(), [3, 1], 1 << 14));
    let mut e = h.clone();
    e.compression = vec![0];
    add("no compression methods".into(), records(&e.message(), [3, 1], 1 << 14));
    // No extensions at all (a TLS 1.2-only hello without the extensions rustls requires).
    let mut e = h.clone();
    e.exts.clear();
    add("no extensions".into(), records(&e.message(), [3, 1], 1 << 14));
    // Server names: huge (one record and several), empty, with a NUL, not a name.
    for (what, name) in [
        ("SNI 255 bytes", vec![b'a'; 255]),
        ("SNI 16000 bytes", vec![b'a'; 16000]),
        ("SNI 65000 bytes", vec![b'a'; 65000]),
        ("SNI 65300 bytes", vec![b'a'; 65300 - 4 * 64]),
        ("SNI empty", Vec::new()),
        ("SNI with a NUL", b"local\0host".to_vec()),
        ("SNI an IP address", b"127.0.0.1".to_vec()),
        ("SNI 0xff bytes", vec![0xff; 40]),
    ] {
        let big = h.with_ext(0, sni(&name));
        let m = big.message();
        if big.exts.iter().map(|(_, b)| 4 + b.len()).sum::<usize>() > 0xffff {
            continue;
        }
        add(what.into(), records(&m, [3, 1], 1 << 14));
    }
    let mut e = h.with_ext(0, sni(b"localhost"));
    let last = e.exts.iter().position(|(t, _)| *t == 0).unwrap();
    e.exts[last].1.truncate(3);
    add("SNI list cut short".into(), records(&e.message(), [3, 1], 1 << 14));
    // Record versions other than 3.1.
    for v in [[3, 0], [3, 3], [3, 4], [3, 0xff], [2, 0], [0, 0], [0xfe, 0xfd]] {
        add(format!("record version {v:?}"), records(&msg, v, 1 << 14));
    }
    // Fragmented: one byte per record, 7, and the hello followed by a second one in its record.
    add("one byte per record".into(), records(&msg, [3, 1], 1));
    add("seven bytes per record".into(), records(&msg, [3, 1], 7));
    let mut two = msg.clone();
    two.extend_from_slice(&msg);
    add("two hellos in one record".into(), records(&two, [3, 1], 1 << 14));
    // Empty records: a handshake record of 0 length, alone and before the hello; an alert and a
    // change_cipher_spec before the hello; application data first.
    add("empty handshake record".into(), vec![HANDSHAKE, 3, 1, 0, 0]);
    let mut b = vec![HANDSHAKE, 3, 1, 0, 0];
    b.extend_from_slice(hello);
    add("empty handshake record, then the hello".into(), b);
    let mut b = vec![ALERT, 3, 1, 0, 2, 2, 40];
    b.extend_from_slice(hello);
    add("an alert first".into(), b);
    let mut b = vec![20, 3, 1, 0, 1, 1];
    b.extend_from_slice(hello);
    add("change_cipher_spec first".into(), b);
    add("application data first".into(), vec![APPLICATION_DATA, 3, 3, 0, 4, 1, 2, 3, 4]);
    // Handshake messages that are not a ClientHello, and a ClientHello of length 0.
    for typ in [0u8, 2, 11, 20, 24, 0xff] {
        add(format!("handshake type {typ}"), records(&[typ, 0, 0, 4, 0, 0, 0, 0], [3, 1], 1 << 14));
    }
    add("ClientHello of length 0".into(), records(&[1, 0, 0, 0], [3, 1], 1 << 14));
    add("ClientHello announcing 16 MiB".into(), records(&[1, 0xff, 0xff, 0xff, 3, 3], [3, 1], 1 << 14));
    // SSLv2-style hellos (a 2-byte header with the high bit set).
    add("SSLv2 hello".into(), {
        let mut b = vec![0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10];
        b.extend_from_slice(&[
            0x07, 0x00, 0xc0, 0x05, 0x00, 0x80, 0x03, 0x00, 0x80, 0x01, 0x00, 0x80, 0x06, 0x00, 0x40, 0x04, 0x00, 0x80, 0x02, 0x00, 0x80,
        ]);
        b.extend_from_slice(&[0x11; 16]);
        b
    });
    add("SSLv2 header, 3-byte form".into(), vec![0x00, 0x2e, 0x00, 0x01, 0x03, 0x01]);
    add("a lone 0x16".into(), vec![HANDSHAKE]);
    add("record header only".into(), hello[..5].to_vec());
    add("random bytes".into(), (0..300).map(|_| rng.next() as u8).collect());
    add("zeros".into(), vec![0; 300]);
    add("0x16 then zeros".into(), {
        let mut b = vec![0; 300];
        b[0] = HANDSHAKE;
        b
    });
    cases
}

/// A few hundred malformed ClientHellos, each on its own connection, eight at a time: each is
/// closed (within the socket timeout), each is counted as exactly one failure of some kind, no
/// handshake completes, the proxy does not panic, and a connection made before still serves.
#[test]
fn malformed_client_hellos_are_each_closed_and_counted_and_nothing_panics() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let hello = client_hello(&f.config, "localhost");
    let cases = hello_mutations(&hello);
    assert!(cases.len() > 300, "{} cases", cases.len());
    let (before, hs_before) = f.counters();

    let addr = f.proxy.addr;
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = cases
            .chunks(cases.len().div_ceil(8))
            .map(|chunk| {
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (name, bytes) in chunk {
                        if let Err(e) = send_and_close(addr, bytes) {
                            bad.push(format!("{name}: {e}"));
                        }
                    }
                    bad
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert!(failures.is_empty(), "{} of {} cases not closed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // Each connection is one failure, whatever its kind; none finished a handshake.
    let n = cases.len() as f64;
    let total = |c: &[f64; 7]| c.iter().sum::<f64>();
    let settled = wait_until(Duration::from_secs(3), || total(&f.counters().0) - total(&before) >= n);
    let (after, hs_after) = f.counters();
    assert!(settled && total(&after) - total(&before) == n, "{} cases, failures moved: {:?}", n, moved(&before, &after));
    assert_eq!(hs_after, hs_before, "no mutated hello completed a handshake");
    assert_eq!(after[0], before[0], "none waited for the handshake timeout: {:?}", moved(&before, &after));
    f.still_well(&mut bystander, "after the mutated hellos");

    // The hello one byte per record is still a hello: the proxy answers it with its flight.
    let s = f.raw();
    (&s).write_all(&records(&Hello::parse(&hello).message(), [3, 1], 1)).unwrap();
    let mut b = [0u8; 5];
    (&s).read_exact(&mut b).unwrap();
    assert_eq!(b[0], HANDSHAKE, "a ServerHello record");
}

/// Connects, sends `bytes` (the proxy may close first), closes the sending side, and waits for
/// the proxy to close.
fn send_and_close(addr: SocketAddr, bytes: &[u8]) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, CLOSE_WITHIN).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    s.set_write_timeout(Some(CLOSE_WITHIN)).unwrap();
    let _ = (&s).write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    closes(&s).map(|_| ())
}

/// A handshake flood: 200 connections each send half a ClientHello and stay, then all leave;
/// then 4 threads make 50 full handshakes each (a request on each). The counters add up, the
/// bystander serves throughout, and the proxy's resident set returns near where it started.
#[test]
fn a_handshake_flood_is_counted_and_its_memory_returns() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let hello = client_hello(&f.config, "localhost");
    // Warm up (the worker's pools, the allocator's arenas) before the baseline.
    for _ in 0..20 {
        f.bystander();
    }
    let (before, hs_before) = f.counters();
    let rss_start = rss_kib(f.proxy.pid());

    let half: Vec<TcpStream> = (0..200)
        .map(|_| {
            let s = f.raw();
            (&s).write_all(&hello[..hello.len() / 2]).unwrap();
            s
        })
        .collect();
    assert_eq!(get(&mut bystander, "/bystander").status, 200, "serves while 200 handshakes hang");
    let rss_peak = rss_kib(f.proxy.pid());
    drop(half);
    let closed = |c: &[f64; 7]| c[3] - before[3];
    assert!(wait_until(Duration::from_secs(3), || closed(&f.counters().0) == 200.0), "{:?}", moved(&before, &f.counters().0));

    let addr = f.proxy.addr;
    let config = &f.config;
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..50 {
                    // A fresh config per connection: full handshakes, not resumptions.
                    let fresh = Arc::new((**config).clone());
                    let mut c = tls_connect(addr, Some("localhost"), &fresh).unwrap_or_else(|e| panic!("thread {t} #{i}: {e}"));
                    assert_eq!(get(&mut c, "/ok").status, 200);
                }
            });
        }
    });
    let (after, hs_after) = f.counters();
    assert_eq!(hs_after - hs_before, 200.0, "200 handshakes");
    assert_eq!(moved(&before, &after), vec![("closed_in_handshake", 200.0)], "only the half hellos failed");
    assert_eq!(f.up.requests().iter().filter(|r| r.target == "/ok").count(), 200);
    f.still_well(&mut bystander, "after the flood");

    let settled = wait_until(Duration::from_secs(5), || rss_kib(f.proxy.pid()) < rss_start + 20 * 1024);
    let rss_end = rss_kib(f.proxy.pid());
    eprintln!("proxy VmRSS: start {rss_start} KiB, 200 half handshakes {rss_peak} KiB, end {rss_end} KiB");
    assert!(settled, "VmRSS {rss_start} KiB -> {rss_end} KiB after the flood left");
}

/// A ClientHello one byte every 100 ms is closed at the 500 ms handshake timeout and counted.
#[test]
fn a_slow_handshake_is_closed_at_the_handshake_timeout() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let hello = client_hello(&f.config, "localhost");
    let (before, _) = f.counters();
    let s = f.raw();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let result = std::thread::scope(|scope| {
        let w = s.try_clone().unwrap();
        let stop = &stop;
        let hello = &hello;
        scope.spawn(move || {
            for b in hello.iter() {
                if stop.load(Ordering::Relaxed) || (&w).write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = closes(&s);
        stop.store(true, Ordering::Relaxed);
        r
    });
    let took = started.elapsed();
    assert!(result.is_ok(), "{result:?}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1500), "closed after {took:?}");
    assert!(wait_until(Duration::from_secs(2), || f.counters().0[0] == before[0] + 1.0));
    assert_eq!(moved(&before, &f.counters().0), vec![("handshake_timeout", 1.0)]);
    f.still_well(&mut bystander, "after the slow handshake");
}

/// A TLS client on a plaintext listener: its ClientHello gets the HTTP parser's 400 or a close,
/// at once (the client waits for a ServerHello and sends nothing more). Nothing reaches the
/// upstream, and the listener keeps serving HTTP.
#[test]
fn a_client_hello_on_a_plaintext_listener_gets_a_400_or_a_close_not_a_hang() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&crate::support::config(&[up.addr], "", ""));
    let pki = Pki::new(&temp_dir());
    let hello = client_hello(&Arc::new(pki.client()), "localhost");
    for (what, bytes) in [("a ClientHello", hello.clone()), ("a lone 0x16", vec![HANDSHAKE]), ("a record header", hello[..5].to_vec())] {
        let s = TcpStream::connect_timeout(&proxy.addr, CLOSE_WITHIN).unwrap();
        s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
        (&s).write_all(&bytes).unwrap();
        let started = Instant::now();
        let got = closes(&s).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(got.is_empty() || got.starts_with(b"HTTP/1.1 400"), "{what}: {}", crate::support::show(&got));
        assert!(started.elapsed() < Duration::from_secs(2), "{what}: closed after {:?}", started.elapsed());
    }
    // A real rustls client: its handshake fails (no hang) rather than waiting.
    assert!(tls_connect(proxy.addr, Some("localhost"), &Arc::new(pki.client())).is_err());
    assert!(up.requests().is_empty());
    let mut c = proxy.connect();
    assert_eq!(c.get("/").unwrap().status, 200, "the listener still serves HTTP");
}

/// Plain HTTP on the TLS port, a pipelined burst of 100 requests in one write: closed, counted
/// once as not_tls, and none reaches the upstream.
#[test]
fn a_pipelined_plaintext_burst_on_the_tls_port_is_closed_and_counted_once() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let (before, _) = f.counters();
    let burst: Vec<u8> = (0..100).flat_map(|i| format!("GET /plain-{i} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()).collect();
    let s = f.raw();
    (&s).write_all(&burst).unwrap();
    let got = closes(&s).unwrap();
    assert!(!got.starts_with(b"HTTP/1.1 200"), "{}", crate::support::show(&got));
    assert!(wait_until(Duration::from_secs(2), || f.counters().0[1] == before[1] + 1.0));
    assert_eq!(moved(&before, &f.counters().0), vec![("not_tls", 1.0)]);
    f.still_well(&mut bystander, "after the plaintext burst");
}

/// A bad record after the handshake, sealed with the client's own keys where it needs to be.
struct RecordCase {
    name: &'static str,
    tls13: bool,
    /// The bytes to send, given the client's sending keys.
    bytes: fn(&mut Keys) -> Vec<u8>,
    /// Close the sending side after them (a truncation).
    then_eof: bool,
    /// The failure kind it must count (`None`: a clean close, nothing counted).
    kind: Option<&'static str>,
}

fn sealed(tx: &mut Keys, typ: u8, plain: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; plain.len() + 64];
    let n = tx.seal(typ, plain, &mut out).unwrap();
    out.truncate(n);
    out
}

const REQUEST: &[u8] = b"GET /after-bad-record HTTP/1.1\r\nHost: x\r\n\r\n";

fn record_cases() -> Vec<RecordCase> {
    let c = |name, tls13, bytes, then_eof, kind| RecordCase { name, tls13, bytes, then_eof, kind };
    vec![
        c("length shorter than a tag", true, |_| vec![APPLICATION_DATA, 3, 3, 0, 5, 1, 2, 3, 4, 5], false, Some("record")),
        c("length 0", true, |_| vec![APPLICATION_DATA, 3, 3, 0, 0], false, Some("record")),
        c(
            "length one more than sealed",
            true,
            |tx| {
                let mut r = sealed(tx, APPLICATION_DATA, REQUEST);
                let n = be16(&r[3..]) + 1;
                r[3..5].copy_from_slice(&(n as u16).to_be_bytes());
                r.push(0);
                r
            },
            false,
            Some("record"),
        ),
        c(
            "length one less than sealed",
            true,
            |tx| {
                let mut r = sealed(tx, APPLICATION_DATA, REQUEST);
                let n = be16(&r[3..]) - 1;
                r[3..5].copy_from_slice(&(n as u16).to_be_bytes());
                r
            },
            false,
            Some("record"),
        ),
        c(
            "length more than sent, then EOF",
            true,
            |tx| {
                let mut r = sealed(tx, APPLICATION_DATA, REQUEST);
                r[3..5].copy_from_slice(&1000u16.to_be_bytes());
                r
            },
            true,
            Some("record"),
        ),
        c("a record header alone, then EOF", true, |_| vec![APPLICATION_DATA, 3, 3, 0, 40], true, Some("record")),
        c(
            "unknown outer content type",
            true,
            |tx| {
                let mut r = sealed(tx, APPLICATION_DATA, REQUEST);
                r[0] = 99;
                r
            },
            false,
            Some("record"),
        ),
        c("unknown inner content type", true, |tx| sealed(tx, 99, REQUEST), false, Some("record")),
        c("change_cipher_spec after the handshake", true, |_| vec![20, 3, 3, 0, 1, 1], false, Some("record")),
        c(
            "record version 2.0",
            true,
            |tx| {
                let mut r = sealed(tx, APPLICATION_DATA, REQUEST);
                r[1] = 2;
                r
            },
            false,
            Some("record"),
        ),
        c(
            "larger than 2^14 + 256 (TLS 1.3)",
            true,
            |_| {
                let mut r = vec![APPLICATION_DATA, 3, 3];
                r.extend_from_slice(&((1u16 << 14) + 257).to_be_bytes());
                r.extend(std::iter::repeat_n(0u8, (1 << 14) + 257));
                r
            },
            false,
            Some("record"),
        ),
        c(
            "larger than 2^14 + 2048 (TLS 1.2)",
            false,
            |_| {
                let mut r = vec![APPLICATION_DATA, 3, 3];
                r.extend_from_slice(&((1u16 << 14) + 2049).to_be_bytes());
                r.extend(std::iter::repeat_n(0u8, (1 << 14) + 2049));
                r
            },
            false,
            Some("record"),
        ),
        c(
            "more plaintext than 2^14 in one record",
            true,
            |tx| {
                // Sealed by hand: Keys::seal refuses more than 2^14.
                let _ = tx;
                let mut r = vec![APPLICATION_DATA, 3, 3];
                r.extend_from_slice(&((1u16 << 14) + 100).to_be_bytes());
                r.extend(std::iter::repeat_n(7u8, (1 << 14) + 100));
                r
            },
            false,
            Some("record"),
        ),
        c("a handshake_failure alert", true, |tx| sealed(tx, ALERT, &[2, 40]), false, Some("alert")),
        c("a warning alert other than close_notify", true, |tx| sealed(tx, ALERT, &[1, 90]), false, Some("alert")),
        c("an alert of one byte", true, |tx| sealed(tx, ALERT, &[2]), false, Some("alert")),
        c("a TLS 1.2 fatal alert", false, |tx| sealed(tx, ALERT, &[2, 80]), false, Some("alert")),
        c("a TLS 1.2 ClientHello (renegotiation)", false, |tx| sealed(tx, HANDSHAKE, &[1, 0, 0, 0]), false, Some("renegotiation")),
        c("a TLS 1.2 plaintext ClientHello", false, |_| vec![HANDSHAKE, 3, 3, 0, 4, 1, 0, 0, 0], false, Some("record")),
        c("a TLS 1.3 ClientHello", true, |tx| sealed(tx, HANDSHAKE, &[1, 0, 0, 0]), false, Some("renegotiation")),
        c("a KeyUpdate with request_update 2", true, |tx| sealed(tx, HANDSHAKE, &[24, 0, 0, 1, 2]), false, Some("renegotiation")),
        c("a KeyUpdate with a long body", true, |tx| sealed(tx, HANDSHAKE, &[24, 0, 0, 2, 1, 0]), false, Some("renegotiation")),
        c("a KeyUpdate in TLS 1.2", false, |tx| sealed(tx, HANDSHAKE, &[24, 0, 0, 1, 0]), false, Some("renegotiation")),
        c("an empty handshake record", true, |tx| sealed(tx, HANDSHAKE, &[]), false, Some("renegotiation")),
        c(
            "close_notify, then a request",
            true,
            |tx| {
                let mut r = sealed(tx, ALERT, &[1, 0]);
                r.extend(sealed(tx, APPLICATION_DATA, REQUEST));
                r
            },
            false,
            None,
        ),
        c(
            "TLS 1.2 close_notify, then a request",
            false,
            |tx| {
                let mut r = sealed(tx, ALERT, &[1, 0]);
                r.extend(sealed(tx, APPLICATION_DATA, REQUEST));
                r
            },
            false,
            None,
        ),
        c(
            "a replayed record",
            true,
            |tx| {
                let r = sealed(tx, APPLICATION_DATA, b"GET /after-bad-record HTTP/1.1\r\n");
                [r.clone(), r].concat()
            },
            false,
            Some("record"),
        ),
    ]
}

/// The table of bad records after the handshake: each connection is closed, the right kind
/// counted (nothing for close_notify), nothing reaches the upstream, the bystander serves.
#[test]
fn bad_records_after_the_handshake_are_closed_and_counted_by_kind() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    for case in record_cases() {
        let (sock, mut tx, _rx) = f.established(case.tls13);
        let (before, _) = f.counters();
        let _ = (&sock).write_all(&(case.bytes)(&mut tx));
        if case.then_eof {
            sock.shutdown(Shutdown::Write).unwrap();
        }
        if let Err(e) = closes(&sock) {
            panic!("{}: {e}", case.name);
        }
        match case.kind {
            Some(kind) => {
                let i = KINDS.iter().position(|k| *k == kind).unwrap();
                assert!(wait_until(Duration::from_secs(2), || f.counters().0[i] > before[i]), "{}: {kind} not counted", case.name);
                assert_eq!(moved(&before, &f.counters().0), vec![(kind, 1.0)], "{}", case.name);
            }
            None => {
                std::thread::sleep(crate::support::SETTLE);
                assert_eq!(moved(&before, &f.counters().0), vec![], "{}", case.name);
            }
        }
        f.still_well(&mut bystander, case.name);
    }
}

/// Reads records from `sock` with `rx` until the plaintext holds a whole response head.
fn read_response_head(sock: &TcpStream, rx: &mut Keys) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut plain = Vec::new();
    let mut b = [0u8; 16 * 1024];
    let mut s = sock;
    loop {
        while buf.len() >= 5 && buf.len() >= 5 + be16(&buf[3..]) {
            let n = 5 + be16(&buf[3..]);
            let mut rec: Vec<u8> = buf.drain(..n).collect();
            let (typ, a, z) = rx.open(&mut rec).map_err(|e| format!("{e:?}"))?;
            if typ == APPLICATION_DATA {
                plain.extend_from_slice(&rec[a..z]);
            } else {
                return Err(format!("a record of type {typ}: {:?}", &rec[a..z]));
            }
        }
        if crate::support::find(&plain, b"\r\n\r\n").is_some() {
            return Ok(plain);
        }
        match s.read(&mut b) {
            Ok(0) => return Err(format!("closed; plaintext so far {}", crate::support::show(&plain))),
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// 1,000,000 empty application-data records (TLS 1.3), sent as fast as the socket takes them,
/// then a request: the proxy does not spin, its memory does not grow, the bystander is served
/// meanwhile, and the connection either answers the request or is closed and counted.
#[test]
fn a_flood_of_empty_records_neither_spins_nor_grows_nor_starves_others() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let (sock, mut tx, mut rx) = f.established(true);
    let rss_start = rss_kib(f.proxy.pid());
    let (before, _) = f.counters();
    let mut flood = Vec::with_capacity(1_000_000 * 22);
    for _ in 0..1_000_000 {
        flood.extend(sealed(&mut tx, APPLICATION_DATA, &[]));
    }
    flood.extend(sealed(&mut tx, APPLICATION_DATA, b"GET /after-flood HTTP/1.1\r\nHost: x\r\n\r\n"));
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    std::thread::scope(|s| {
        let w = sock.try_clone().unwrap();
        let flood = &flood;
        let writer = s.spawn(move || (&w).write_all(flood));
        while !writer.is_finished() {
            let t = Instant::now();
            assert_eq!(get(&mut bystander, "/bystander").status, 200, "the bystander during the flood");
            slowest = slowest.max(t.elapsed());
        }
        let _ = writer.join().unwrap(); // reset, once the proxy closed the connection
    });
    let reply = read_response_head(&sock, &mut rx);
    eprintln!(
        "empty-record flood: {:?} to send, slowest bystander request {slowest:?}, reply {:?}, VmRSS {rss_start} -> {} KiB",
        started.elapsed(),
        reply.as_ref().map(|p| String::from_utf8_lossy(&p[..12.min(p.len())]).into_owned()),
        rss_kib(f.proxy.pid())
    );
    match reply {
        Ok(head) => assert!(head.starts_with(b"HTTP/1.1 200"), "{}", crate::support::show(&head)),
        Err(e) => {
            assert!(closes(&sock).is_ok(), "neither answered nor closed: {e}");
            assert!(wait_until(Duration::from_secs(2), || f.counters().0[4] > before[4]), "closed but not counted: {e}");
        }
    }
    assert!(slowest < Duration::from_millis(500), "a bystander request took {slowest:?} during the flood");
    assert!(rss_kib(f.proxy.pid()) < rss_start + 20 * 1024, "VmRSS grew");
    f.still_well(&mut bystander, "after the empty-record flood");
}

/// KeyUpdates: 10 rounds of 30 KeyUpdates with update_requested from rustls's client (each moves
/// its sending key), each round then a request: the proxy follows every update, answers (RFC 8446
/// §4.6.3: once is enough before its next application data) and serves. Then 3,000 in one burst:
/// more than 32 records without data in a row, so the connection is closed and counted as a
/// record failure (as BoringSSL would), with memory bounded and the bystander served.
#[test]
fn key_updates_are_followed_and_a_flood_of_them_is_closed_and_counted() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let rss_start = rss_kib(f.proxy.pid());
    let mut c = tls_connect(f.proxy.addr, Some("localhost"), &f.config).unwrap();
    assert_eq!(get(&mut c, "/established").status, 200);
    let (before, _) = f.counters();
    let burst = |c: &mut TlsClient, n: usize| {
        for _ in 0..n {
            c.stream.conn.refresh_traffic_keys().unwrap();
        }
        let mut out = Vec::new();
        while c.stream.conn.wants_write() {
            c.stream.conn.write_tls(&mut out).unwrap();
        }
        let _ = c.stream.sock.write_all(&out);
    };
    for round in 0..10 {
        burst(&mut c, 30);
        c.send(b"GET /after-key-updates HTTP/1.1\r\nHost: x\r\n\r\n");
        let resp = c.read_response();
        assert!(resp.is_ok(), "round {round}: {resp:?}; failures moved {:?}", moved(&before, &f.counters().0));
        assert_eq!(resp.unwrap().status, 200);
    }
    assert_eq!(moved(&before, &f.counters().0), vec![]);

    burst(&mut c, 3000);
    let _ = c.try_send(b"GET /after-key-updates HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.read_response().is_err(), "the flooding connection is closed");
    assert!(wait_until(Duration::from_secs(2), || f.counters().0[4] == before[4] + 1.0));
    assert_eq!(moved(&before, &f.counters().0), vec![("record", 1.0)]);
    assert_eq!(f.up.requests().iter().filter(|r| r.target == "/after-key-updates").count(), 10);
    assert!(rss_kib(f.proxy.pid()) < rss_start + 20 * 1024, "VmRSS grew");
    f.still_well(&mut bystander, "after the key-update flood");
}

/// The limit on records without data: 32 empty records, then a request, is served; 33 in a row
/// close the connection, counted as a record failure.
#[test]
fn thirty_two_empty_records_in_a_row_pass_and_thirty_three_are_closed() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let (sock, mut tx, mut rx) = f.established(true);
    let (before, _) = f.counters();
    for round in 0..3 {
        let mut b: Vec<u8> = (0..32).flat_map(|_| sealed(&mut tx, APPLICATION_DATA, &[])).collect();
        b.extend(sealed(&mut tx, APPLICATION_DATA, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
        (&sock).write_all(&b).unwrap();
        let head = read_response_head(&sock, &mut rx).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(head.starts_with(b"HTTP/1.1 200"), "{}", crate::support::show(&head));
    }
    let b: Vec<u8> = (0..33).flat_map(|_| sealed(&mut tx, APPLICATION_DATA, &[])).collect();
    (&sock).write_all(&b).unwrap();
    closes(&sock).unwrap();
    assert!(wait_until(Duration::from_secs(2), || f.counters().0[4] == before[4] + 1.0));
    assert_eq!(moved(&before, &f.counters().0), vec![("record", 1.0)]);
    f.still_well(&mut bystander, "after 33 empty records");
}

/// Sends `flood` on `sock` from a thread while the bystander makes requests; returns how long the
/// flood took to send and the slowest bystander request meanwhile.
fn bystander_during(sock: &TcpStream, flood: &[u8], bystander: &mut TlsClient) -> (Duration, Duration) {
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    std::thread::scope(|s| {
        let w = sock.try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = s.spawn(move || (&w).write_all(flood));
        while !writer.is_finished() {
            let t = Instant::now();
            assert_eq!(get(bystander, "/bystander").status, 200, "the bystander during the flood");
            slowest = slowest.max(t.elapsed());
        }
        if let Err(e) = writer.join().unwrap() {
            eprintln!("the flood's write ended: {e}");
        }
    });
    (started.elapsed(), slowest)
}

/// One connection's flood of records that carry no data must not monopolize the worker: 4
/// million empty application-data records (88 MB, sealed beforehand, sent as fast as the socket
/// takes them) while a bystander on the same worker makes requests, each answered within 200 ms
/// (before the limit on records without data, one request waited for the whole flood: 405 ms).
/// The flooding connection is closed after 32 of them, counted as a record failure.
#[test]
fn a_sustained_empty_record_flood_does_not_starve_the_worker() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let (sock, mut tx, _rx) = f.established(true);
    let one = 5 + 1 + 16; // header, inner content type, tag
    let mut flood = vec![0u8; 4_000_000 * one];
    for rec in flood.chunks_mut(one) {
        let n = tx.seal(APPLICATION_DATA, &[], rec).unwrap_or_else(|_| {
            let mut out = [0u8; 64];
            let n = tx.seal(APPLICATION_DATA, &[], &mut out).unwrap();
            rec.copy_from_slice(&out[..n]);
            n
        });
        assert_eq!(n, one);
    }
    let (took, slowest) = bystander_during(&sock, &flood, &mut bystander);
    eprintln!("sustained empty-record flood: {took:?} to send, slowest bystander request {slowest:?}, failures {:?}", f.counters().0);
    assert!(slowest < Duration::from_millis(200), "a bystander request took {slowest:?} during a {took:?} flood");
    assert!(wait_until(Duration::from_secs(2), || f.counters().0[4] == 1.0), "closed as a record failure");
    f.still_well(&mut bystander, "after the sustained empty-record flood");
}

/// The same with 150,000 KeyUpdates from rustls's client in one burst: the bystander is answered
/// within 200 ms throughout (before the limit: 288 ms, the whole flood), the flooding connection
/// closed and counted.
#[test]
fn a_sustained_key_update_flood_does_not_starve_the_worker() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let mut c = tls_connect(f.proxy.addr, Some("localhost"), &f.config).unwrap();
    assert_eq!(get(&mut c, "/established").status, 200);
    for _ in 0..150_000 {
        c.stream.conn.refresh_traffic_keys().unwrap();
    }
    let mut flood = Vec::new();
    while c.stream.conn.wants_write() {
        c.stream.conn.write_tls(&mut flood).unwrap();
    }
    let sock = c.stream.sock.try_clone().unwrap();
    let (took, slowest) = bystander_during(&sock, &flood, &mut bystander);
    eprintln!("sustained key-update flood: {} bytes, {took:?} to send, slowest bystander request {slowest:?}", flood.len());
    assert!(slowest < Duration::from_millis(200), "a bystander request took {slowest:?} during a {took:?} flood");
    assert!(wait_until(Duration::from_secs(2), || f.counters().0[4] == 1.0), "closed as a record failure");
    f.still_well(&mut bystander, "after the sustained key-update flood");
}

/// The failure kinds a mutated hello may be counted under, by its name in the table: bytes that
/// do not start with a handshake record are `not_tls`; a hello cut short, or one the proxy could
/// answer (then the client closed), `closed_in_handshake`; the rest `handshake` or, where the
/// mutation left a hello rustls accepts, `closed_in_handshake`.
fn allowed_kinds(name: &str) -> &'static [&'static str] {
    const NOT_TLS: &[&str] = &["not_tls"];
    const CLOSED: &[&str] = &["closed_in_handshake"];
    const REFUSED: &[&str] = &["handshake"];
    const EITHER: &[&str] = &["handshake", "closed_in_handshake"];
    const ANY: &[&str] = &["handshake", "closed_in_handshake", "not_tls"];
    match name {
        n if n.starts_with("truncated") => CLOSED,
        n if n.starts_with("bit flips") => ANY,
        "SSLv2 hello"
        | "SSLv2 header, 3-byte form"
        | "random bytes"
        | "zeros"
        | "an alert first"
        | "change_cipher_spec first"
        | "application data first" => NOT_TLS,
        "a lone 0x16" | "record header only" | "one byte per record" | "seven bytes per record" => CLOSED,
        "no cipher suites"
        | "only unknown cipher suites"
        | "no compression methods"
        | "empty handshake record"
        | "ClientHello of length 0"
        | "ClientHello announcing 16 MiB"
        | "two hellos in one record"
        | "odd cipher suites length"
        | "SNI list cut short" => REFUSED,
        n if n.starts_with("handshake type") => REFUSED,
        _ => EITHER,
    }
}

/// Each mutated hello alone (one at a time, so each one's counter can be told apart): counted
/// once, under a kind its bytes call for.
#[test]
fn each_malformed_hello_is_counted_once_under_the_kind_its_bytes_call_for() {
    let mut f = fixture("");
    let mut bystander = f.bystander();
    let hello = client_hello(&f.config, "localhost");
    let mut wrong = Vec::new();
    let mut tally: std::collections::BTreeMap<&str, usize> = Default::default();
    for (name, bytes) in hello_mutations(&hello) {
        let (before, _) = f.counters();
        if let Err(e) = send_and_close(f.proxy.addr, &bytes) {
            wrong.push(format!("{name}: {e}"));
            continue;
        }
        let total = |c: &[f64; 7]| c.iter().sum::<f64>();
        wait_until(Duration::from_secs(2), || total(&f.counters().0) > total(&before));
        let m = moved(&before, &f.counters().0);
        match m.as_slice() {
            [(kind, 1.0)] if allowed_kinds(&name).contains(kind) => *tally.entry(kind).or_default() += 1,
            _ => wrong.push(format!("{name}: counted {m:?}, expected one of {:?}", allowed_kinds(&name))),
        }
    }
    eprintln!("malformed hellos by kind: {tally:?}");
    assert!(wrong.is_empty(), "{} cases:\n{}", wrong.len(), wrong.join("\n"));
    f.still_well(&mut bystander, "after the mutated hellos, one at a time");
}

/// 100 established connections each send most of a record (a header announcing 16,000 bytes,
/// then 8,000) and go quiet: the proxy holds a bounded buffer for each (VmRSS within +20 MiB)
/// and closes each at its client idle timeout (2 s), while a bystander that keeps making requests
/// is served throughout. Nothing reaches the upstream.
#[test]
fn partial_records_after_the_handshake_hold_bounded_memory_and_are_closed_by_the_idle_timeout() {
    let mut f = fixture_with("", "[limits]\nclient_idle_timeout = \"2s\"\nheader_read_timeout = \"2s\"");
    let mut bystander = f.bystander();
    let rss_start = rss_kib(f.proxy.pid());
    let mut partial = vec![APPLICATION_DATA, 3, 3];
    partial.extend_from_slice(&16000u16.to_be_bytes());
    partial.extend(std::iter::repeat_n(0x5a, 8000));
    let socks: Vec<TcpStream> = (0..100)
        .map(|i| {
            if i % 10 == 0 {
                // Not idle long enough for the idle timeout.
                assert_eq!(get(&mut bystander, "/bystander").status, 200);
            }
            let (sock, _, _) = f.established(true);
            (&sock).write_all(&partial).unwrap();
            sock.set_nonblocking(true).unwrap();
            sock
        })
        .collect();
    let sent = Instant::now();
    assert_eq!(get(&mut bystander, "/bystander").status, 200);
    let rss_peak = rss_kib(f.proxy.pid());
    let mut open: Vec<&TcpStream> = socks.iter().collect();
    let mut b = [0u8; 1024];
    while !open.is_empty() && sent.elapsed() < Duration::from_secs(5) {
        open.retain(|s| {
            let mut s = *s;
            matches!(s.read(&mut b), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
        });
        assert_eq!(get(&mut bystander, "/bystander").status, 200, "the bystander while partial records wait");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = sent.elapsed();
    eprintln!(
        "partial records: VmRSS {rss_start} KiB, {rss_peak} KiB with 100 waiting; all closed after {took:?}; failures {:?}",
        f.counters().0
    );
    assert!(open.is_empty(), "{} connections still open after {took:?}", open.len());
    assert!(took > Duration::from_millis(1500), "closed before the idle timeout: {took:?}");
    assert!(rss_peak < rss_start + 20 * 1024, "VmRSS {rss_start} -> {rss_peak} KiB");
    f.still_well(&mut bystander, "after the partial records");
}
