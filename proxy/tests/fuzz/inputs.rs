//! Inputs: a seeded RNG, the seed corpus (the adversarial table's rows, read as values from
//! `support::adversarial_cases`, plus valid requests), a grammar-ish request generator, a byte
//! mutator, a minimizer, and the run budget from the environment. Nothing here knows about the
//! proxy.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::support::adversarial_cases::{SMUGGLE, Seen, request_tables};

/// splitmix64: tiny, seedable, and every case is a pure function of `(seed, index)`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator of case `index` of a run seeded with `seed` (independent of other cases, so
    /// `FUZZ_CASE` replays one case without replaying the ones before it).
    pub fn for_case(seed: u64, index: u64) -> Self {
        let mut r = Rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn pick_ref<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// Budget
// ---------------------------------------------------------------------------------------------

/// How long one fuzz target runs: `FUZZ_SECS` (wall-clock cap), `FUZZ_ITERS` (case cap),
/// `FUZZ_SEED` (decimal or 0x-hex), `FUZZ_CASE` (run only that case index, for reproducing).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub seed: u64,
    pub secs: Duration,
    pub iters: u64,
    pub only: Option<u64>,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    match parsed {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

impl Budget {
    /// `default_secs` is the CI budget of this target; the env vars override it.
    pub fn from_env(default_secs: f64) -> Self {
        let secs = std::env::var("FUZZ_SECS")
            .ok()
            .map(|v| v.trim().parse::<f64>().unwrap_or_else(|_| panic!("FUZZ_SECS={v:?} is not a number")))
            .unwrap_or(default_secs);
        Budget {
            seed: env_u64("FUZZ_SEED").unwrap_or(0x5EED_F022),
            secs: Duration::from_secs_f64(secs),
            iters: env_u64("FUZZ_ITERS").unwrap_or(u64::MAX),
            only: env_u64("FUZZ_CASE"),
        }
    }

    /// Case indices to run, stopping at the time or iteration cap (at least `floor` cases are
    /// run whatever the clock says, so a loaded machine still tests something).
    pub fn cases(&self, floor: u64) -> Cases {
        Cases { budget: *self, next: self.only.unwrap_or(0), started: Instant::now(), floor }
    }
}

#[derive(Debug)]
pub struct Cases {
    budget: Budget,
    next: u64,
    started: Instant,
    floor: u64,
}

impl Cases {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Iterator for Cases {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if let Some(only) = self.budget.only {
            return (self.next == only).then(|| {
                self.next += 1;
                only
            });
        }
        let i = self.next;
        if i >= self.budget.iters {
            return None;
        }
        if i >= self.floor && i.is_multiple_of(64) && self.started.elapsed() >= self.budget.secs {
            return None;
        }
        self.next += 1;
        Some(i)
    }
}

// ---------------------------------------------------------------------------------------------
// Seed corpus
// ---------------------------------------------------------------------------------------------

/// Valid requests of every framing and shape the proxy accepts.
pub const VALID: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"GET /a/b?c=d HTTP/1.1\r\nHost: a.test\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",
    b"PUT /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /old HTTP/1.0\r\nHost: a.test\r\nConnection: keep-alive\r\n\r\n",
    b"POST /e HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET http://a.test:8080/abs?q HTTP/1.1\r\nHost: other\r\n\r\n",
    b"GET http://a.test HTTP/1.1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: trailers\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 42\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n2a\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n\r\n0\r\n\r\n",
];

/// Request bytes of the adversarial table: every row's request as the client sends it, each
/// relayed row's forwarded bytes (what the upstream must receive), and the pipelined `SMUGGLE`
/// request. A row added to the table is fuzzed here without being listed twice.
pub fn adversarial_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (_, cases) in request_tables() {
        for case in cases {
            seeds.push(case.request);
            if let Seen::Exactly(forwarded) = case.seen {
                seeds.push(forwarded);
            }
        }
    }
    seeds.push(SMUGGLE.to_vec());
    seeds
}

/// The whole seed corpus: valid requests, the adversarial cases, and a few pipelines of both.
pub fn corpus() -> Vec<Vec<u8>> {
    let mut c: Vec<Vec<u8>> = VALID.iter().map(|v| v.to_vec()).collect();
    c.extend(adversarial_seeds());
    c.push([VALID[0], VALID[3], VALID[5]].concat());
    c
}

// ---------------------------------------------------------------------------------------------
// Generator and mutator
// ---------------------------------------------------------------------------------------------

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "get", "X-M"];
const TARGETS: &[&str] = &[
    "/",
    "/a",
    "/a/b?c=d",
    "/%0d%0a",
    "*",
    "http://a.test/x",
    "http://a.test",
    "http://a.test?q",
    "https://b.test:443/y",
    "http://u@a.test/",
    "a",
    "/a#f",
    "//x",
];
const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2"];
/// Header lines (without CRLF) the generator draws from: framing, hop-by-hop, forwarding and
/// plain fields, valid and subtly invalid.
const FIELDS: &[&str] = &[
    "Host: a.test",
    "Host: a.test:8080",
    "Host: ",
    "Host: [::1]:80",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: keep-alive, X-Hop",
    "Connection: Upgrade",
    "Connection: Content-Length",
    "Connection: Transfer-Encoding, Host",
    "Connection: ,,te, Via",
    "X-Hop: 1",
    "Keep-Alive: timeout=5",
    "Proxy-Connection: keep-alive",
    "TE: trailers",
    "TE: gzip",
    "Upgrade: websocket",
    "Upgrade: h2c",
    "Expect: 100-continue",
    "Expect: nope",
    "X-Forwarded-For: 1.2.3.4",
    "X-Forwarded-Proto: https",
    "X-Forwarded-Host: evil",
    "Via: 1.0 other",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: CHUNKED",
    "Transfer-Encoding: gzip, chunked",
    "Content-Length: 0",
    "Content-Length: 5",
    "Content-Length: 00005",
    "Content-Length: 99999999999999999999",
    "X-A: b",
    "x-empty:",
    "X-Obs: caf\u{e9}",
    "Accept: */*",
];

/// A request built from the grammar above, body framed to match its header (usually).
pub fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut s = String::new();
    let _ = write!(s, "{} {} {}\r\n", rng.pick(METHODS), rng.pick(TARGETS), rng.pick(VERSIONS));
    if rng.chance(9, 10) {
        s.push_str("Host: a.test\r\n");
    }
    for _ in 0..rng.below(5) {
        s.push_str(rng.pick(FIELDS));
        s.push_str("\r\n");
    }
    let body: Vec<u8> = match rng.below(4) {
        0 => Vec::new(),
        1 => {
            let body = rng.pick(BODIES).to_vec();
            let _ = write!(s, "Content-Length: {}\r\n", body.len());
            body
        }
        2 => {
            s.push_str("Transfer-Encoding: chunked\r\n");
            chunked_body(rng)
        }
        _ => rng.pick(BODIES).to_vec(), // a body with no framing: the next "request"
    };
    s.push_str("\r\n");
    let mut out = s.into_bytes();
    out.extend_from_slice(&body);
    out
}

const BODIES: &[&[u8]] = &[b"", b"hello", b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n", b"0\r\n\r\n", b"\r\n\r\n", b"x=1&y=2"];

/// A well-formed chunked body (sizes, extensions and trailers varied).
pub fn chunked_body(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(4) {
        let data = rng.pick(BODIES);
        if data.is_empty() {
            continue;
        }
        let zeros = "0".repeat(rng.below(3));
        let _ = if rng.chance(1, 2) {
            write!(Hex(&mut out), "{zeros}{:x}", data.len())
        } else {
            write!(Hex(&mut out), "{zeros}{:X}", data.len())
        };
        if rng.chance(1, 4) {
            out.extend_from_slice(rng.pick(&[b";a=b".as_slice(), b" ;x", b";q=\"v\""]));
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if rng.chance(1, 3) {
        out.extend_from_slice(b"X-Trailer: t\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `write!` into a byte vector.
struct Hex<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for Hex<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

const SPECIAL_BYTES: &[u8] = b"\r\n\0 :\t,;0aA/\x7f\x80\xff\x0b\"";
const SPECIAL_STRS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive, X-A\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n",
    b"Host: a.test\r\n",
    b"Expect: 100-continue\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b" HTTP/1.0",
    b"HEAD",
    b"http://a.test",
    b"ffffffffffffffff",
    b"18446744073709551616",
    b";ext",
];

/// Applies one random mutation to `buf`; `corpus` is for splicing.
pub fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = buf.len();
    let at = rng.below(len + 1);
    match rng.below(12) {
        0 if len > 0 => {
            let i = rng.below(len);
            buf[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            buf[i] = rng.pick(SPECIAL_BYTES);
        }
        2 => buf.insert(at, rng.pick(SPECIAL_BYTES)),
        3 => {
            let s = rng.pick(SPECIAL_STRS);
            buf.splice(at..at, s.iter().copied());
        }
        4 if len > 0 => {
            let end = (at + 1 + rng.below(16)).min(len);
            let start = at.min(len - 1);
            buf.drain(start..end);
        }
        5 => duplicate_line(rng, buf),
        6 => {
            // Splice: another corpus entry before, after or inside this one (pipelining).
            let other = rng.pick_ref(corpus);
            if rng.chance(1, 2) {
                buf.extend_from_slice(other);
            } else {
                let from = rng.below(other.len() + 1);
                buf.splice(at..at, other[from..].iter().copied());
            }
        }
        7 if len > 0 => buf.truncate(rng.below(len)),
        8 => replace_number(rng, buf),
        9 if len > 0 => {
            let i = rng.below(len);
            buf[i] = if buf[i].is_ascii_lowercase() { buf[i].to_ascii_uppercase() } else { buf[i].to_ascii_lowercase() };
        }
        10 => fix_content_length(buf),
        _ => {
            // Repeat a byte run (long lines, many spaces, long numbers).
            if len > 0 {
                let i = rng.below(len);
                let n = 1 + rng.below(64);
                let b = buf[i];
                buf.splice(i..i, std::iter::repeat_n(b, n));
            }
        }
    }
    if buf.len() > 64 * 1024 {
        buf.truncate(64 * 1024);
    }
}

/// Duplicates one CRLF-terminated line in place (a header twice, a chunk line twice).
fn duplicate_line(rng: &mut Rng, buf: &mut Vec<u8>) {
    let lines: Vec<usize> = buf.windows(2).enumerate().filter(|(_, w)| *w == b"\r\n").map(|(i, _)| i + 2).collect();
    if lines.len() < 2 {
        return;
    }
    let k = rng.below(lines.len() - 1);
    let (start, end) = (lines[k], lines[k + 1]);
    let line = buf[start..end].to_vec();
    buf.splice(end..end, line);
}

/// Replaces one run of digits with an interesting number.
fn replace_number(rng: &mut Rng, buf: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..buf.len()).filter(|&i| buf[i].is_ascii_digit() && (i == 0 || !buf[i - 1].is_ascii_digit())).collect();
    if starts.is_empty() {
        return;
    }
    let s = rng.pick(&starts);
    let e = (s..buf.len()).find(|&i| !buf[i].is_ascii_digit()).unwrap_or(buf.len());
    let n: &[u8] = rng.pick(&[
        b"0".as_slice(),
        b"1",
        b"2",
        b"5",
        b"10",
        b"42",
        b"1000",
        b"1001",
        b"4294967296",
        b"18446744073709551615",
        b"-1",
        b"1 0",
        b"5, 5",
    ]);
    buf.splice(s..e, n.iter().copied());
}

/// Sets the first Content-Length value to the number of bytes after the head (turns a mangled
/// request back into a well-framed one, so mutations reach past the framing checks).
fn fix_content_length(buf: &mut Vec<u8>) {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else { return };
    let Some(cl) = buf[..head_end].windows(16).position(|w| w.eq_ignore_ascii_case(b"content-length: ")) else { return };
    let vs = cl + 16;
    let ve = (vs..head_end).find(|&i| buf[i] == b'\r').unwrap_or(vs);
    // The value is in the head, so replacing it does not change the body length.
    let body = (buf.len() - head_end).to_string();
    buf.splice(vs..ve, body.bytes());
}

/// One fuzz input: a generated or mutated request stream.
pub fn input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut buf = if rng.chance(1, 3) { generate(rng) } else { rng.pick_ref(corpus).clone() };
    if rng.chance(1, 4) {
        let more = if rng.chance(1, 2) { generate(rng) } else { rng.pick_ref(corpus).clone() };
        buf.extend_from_slice(&more);
    }
    let rounds = match rng.below(8) {
        0 => 0,
        1..=4 => 1,
        5 | 6 => 2,
        _ => 2 + rng.below(6),
    };
    for _ in 0..rounds {
        mutate(rng, &mut buf, corpus);
    }
    buf
}

// ---------------------------------------------------------------------------------------------
// Minimizer
// ---------------------------------------------------------------------------------------------

/// Shrinks `input` while `fails` still holds (delta debugging over byte ranges, then single
/// bytes), within `max_tries` calls.
pub fn minimize(input: &[u8], max_tries: usize, mut fails: impl FnMut(&[u8]) -> bool) -> Vec<u8> {
    let mut cur = input.to_vec();
    let mut tries = 0;
    let mut chunk = cur.len().next_power_of_two() / 2;
    while chunk >= 1 && tries < max_tries {
        let mut i = 0;
        let mut progressed = false;
        while i < cur.len() && tries < max_tries {
            let end = (i + chunk).min(cur.len());
            let mut cand = cur[..i].to_vec();
            cand.extend_from_slice(&cur[end..]);
            tries += 1;
            if fails(&cand) {
                cur = cand;
                progressed = true;
            } else {
                i += chunk;
            }
        }
        if !progressed {
            chunk /= 2;
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::escape_quoted;

    #[test]
    fn seeds_hold_every_adversarial_request() {
        let seeds = adversarial_seeds();
        // rejected + relayed + bad bodies: well over 60 rows today.
        assert!(seeds.len() >= 60, "only {} adversarial seeds", seeds.len());
        let has = |needle: &[u8]| seeds.iter().any(|s| s.windows(needle.len()).any(|w| w == needle));
        assert!(has(b"Transfer-Encoding:\x0bchunked"), "te_vertical_tab row missing");
        assert!(has(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), "cl_and_te_together row missing");
        assert!(has(b"Transfer-Encoding: chunked\r\n\r\n0x10\r\n"), "bad_body rows missing");
        assert!(has(b"X-\xc3\xa9: 1"), "header_name_non_ascii row missing");
        let rows: usize = request_tables().iter().map(|(_, cases)| cases.len()).sum();
        for (_, cases) in request_tables() {
            for case in cases {
                assert!(seeds.contains(&case.request), "{}: request not a seed", case.name);
            }
        }
        assert!(seeds.len() > rows, "relayed rows' forwarded bytes missing");
    }

    #[test]
    fn minimize_shrinks_to_the_cause() {
        let input = b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: \x00\r\n\r\n";
        let min = minimize(input, 10_000, |b| b.contains(&0));
        assert_eq!(min, b"\x00");
    }

    #[test]
    fn cases_are_reproducible() {
        let corpus = corpus();
        let a = input(&mut Rng::for_case(7, 1234), &corpus);
        let b = input(&mut Rng::for_case(7, 1234), &corpus);
        assert_eq!(a, b);
        let distinct: std::collections::HashSet<Vec<u8>> = (0..50).map(|i| input(&mut Rng::for_case(7, i), &corpus)).collect();
        assert!(distinct.len() > 25, "cases barely vary: {} distinct of 50", distinct.len());
    }

    #[test]
    fn fix_content_length_frames_the_body() {
        let mut b = b"POST / HTTP/1.1\r\nContent-Length: 999\r\n\r\nhello world".to_vec();
        fix_content_length(&mut b);
        assert!(b.windows(19).any(|w| w == b"Content-Length: 11\r"), "{}", escape_quoted(&b));
    }
}
