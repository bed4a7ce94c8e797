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

use crate::support::tls::{Pki, TlsClient, cert_entry, tls_connect};
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
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let up = Upstream::ok();
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{}]\n\
         handshake_timeout = \"500ms\"\n{extra}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\"]\n",
        cert_entry(&leaf),
        up.addr
    );
    let proxy = Proxy::start_in(&dir, &config, 1);
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
        self.up.requests().into_iter().map(|r| r.target).filter(|t| t != "/bystander" && t != "/established" && t != "/ok").collect()
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
