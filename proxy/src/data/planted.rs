//! Planted regressions, compiled only with the `planted` feature. The gates' own tests build the
//! proxy once with it and select, at run time, which regressions are live with the
//! `PROXY_PLANTED` environment variable, to prove that each gate turns red (and to measure how
//! small a regression each gate can see). Never enabled in a release build. Excluded from the
//! static scan unless the run builds with `planted` (contracts/phase1.toml says so).
//!
//! `PROXY_PLANTED` is a comma-separated list of `KIND[@SITE][/EVERY][:VALUE]`, or `none`:
//!
//! | kind | what it adds where it fires |
//! |---|---|
//! | `alloc` | one heap allocation (a boxed `usize`) |
//! | `format` | one `format!` (allocation and formatting) |
//! | `lock` | one `std::sync::Mutex` lock/unlock |
//! | `syscall` | one `getpid` system call |
//! | `instr:N` | a loop of `N` iterations the optimiser cannot remove (~`4 N` instructions) |
//! | `spin:US` | `US` µs of busy CPU on the worker |
//! | `sleep:US` | a blocking sleep of `US` µs on the worker (every connection of the worker waits) |
//! | `hold` | an idle keep-alive connection never gives its working set back (memory gate) |
//! | `leak` | a working set given back to the pool is leaked instead: never reused, never freed (memory gate; `leak/100` leaks one in a hundred); an HTTP/3 connection's state (`h3`'s connection, and through it `quinn`'s) is leaked when the connection ends (phase 3 memory gate, its `http3_after_release` row; one `/EVERY` count shared with the working sets) |
//! | `conn:BYTES` | every client connection carries `BYTES` more (written, so resident) for its whole life, freed when it closes (memory gate: a connection grown just past the limit) |
//! | `h2-hold:BYTES` | every HTTP/2 client connection holds `BYTES` more (written, so resident) for its whole life, freed when it closes (phase 2 memory gate, its `http2` rows). Set up once per connection, after the HTTP/2 handshake |
//! | `h3-hold:BYTES` | every HTTP/3 client connection holds `BYTES` more (written, so resident) for its whole life, freed when it closes (phase 3 memory gate, its `http3` rows). Set up once per connection, after the QUIC handshake |
//! | `tls-hold:BYTES` | every TLS connection holds `BYTES` more (written, so resident) beside its keys for its whole life, freed when it closes, as one that kept the touched pages of its record read buffer would: an idle TLS connection holds a buffer (phase 2 memory gate). Set up once per handshake, so the per-request path of a planted build is the clean one's |
//!
//! `SITE` is where it fires: `request` (default: the start of every proxied exchange),
//! `chunked` (a response relayed with chunked framing), `error` (an error response sent by the
//! proxy), `tls-record` (a TLS record sealed, either side), `handshake` (a TLS listener's
//! handshake completed), `upstream-tls` (bytes written to an upstream TLS connection), `h2-stream` (an HTTP/2 stream
//! accepted: once per HTTP/2 request, beside `request`, which fires for HTTP/1.1, HTTP/2 and
//! HTTP/3 alike), `h3-stream` (an HTTP/3 request's head resolved: once per HTTP/3 request). `/EVERY` fires it on one request in `EVERY` at that site. Unknown text aborts the
//! process at the first request with a message: a planted run that plants nothing would prove
//! nothing.
//!
//! Every plant is synchronous, so the hooks add no await point to the connection's future: a
//! planted build with nothing planted costs the same instructions as a clean one, give or take the
//! plan lookup.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    Request,
    Chunked,
    Error,
    /// A TLS record sealed (data::tls: every response record).
    TlsRecord,
    /// A TLS handshake completed (on a TLS listener).
    Handshake,
    /// Bytes written to an upstream TLS connection (a group with `tls = true`).
    UpstreamTls,
    /// An HTTP/2 stream accepted (data::h2::conn: once per HTTP/2 request).
    H2Stream,
    /// An HTTP/3 request stream's head resolved (data::h3::stream: once per HTTP/3 request).
    H3Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Alloc,
    Format,
    Lock,
    Syscall,
    Instr(u64),
    Spin(u64),
    Sleep(u64),
    Hold,
    Leak,
    Conn(u64),
    TlsHold(u64),
    H2Hold(u64),
    H3Hold(u64),
}

#[derive(Debug, Clone, Copy)]
struct Plant {
    kind: Kind,
    site: Site,
    every: u64,
}

/// At most this many plants at once (a fixed array: the plan itself allocates nothing).
const MAX: usize = 8;

#[derive(Debug)]
struct Plan {
    plants: [Option<Plant>; MAX],
    /// Per-plant counters for `/EVERY`.
    seen: [AtomicU64; MAX],
}

fn parse_one(item: &str) -> Result<Plant, String> {
    let (head, value) = match item.split_once(':') {
        Some((h, v)) => (h, Some(v.parse::<u64>().map_err(|_| format!("{item:?}: the value after ':' must be a number"))?)),
        None => (item, None),
    };
    let (head, every) = match head.split_once('/') {
        Some((h, e)) => (h, e.parse::<u64>().ok().filter(|e| *e > 0).ok_or_else(|| format!("{item:?}: '/EVERY' must be a number > 0"))?),
        None => (head, 1),
    };
    let (kind, site) = match head.split_once('@') {
        Some((k, s)) => (k, s),
        None => (head, "request"),
    };
    let site = match site {
        "request" => Site::Request,
        "chunked" => Site::Chunked,
        "error" => Site::Error,
        "tls-record" => Site::TlsRecord,
        "handshake" => Site::Handshake,
        "upstream-tls" => Site::UpstreamTls,
        "h2-stream" => Site::H2Stream,
        "h3-stream" => Site::H3Stream,
        other => {
            return Err(format!(
                "{item:?}: unknown site {other:?} (request, chunked, error, tls-record, handshake, upstream-tls, h2-stream, h3-stream)"
            ));
        }
    };
    let need = |v: Option<u64>| v.ok_or_else(|| format!("{item:?}: {kind} needs ':VALUE'"));
    let kind = match kind {
        "alloc" => Kind::Alloc,
        "format" => Kind::Format,
        "lock" => Kind::Lock,
        "syscall" => Kind::Syscall,
        "instr" => Kind::Instr(need(value)?),
        "spin" => Kind::Spin(need(value)?),
        "sleep" => Kind::Sleep(need(value)?),
        "hold" => Kind::Hold,
        "leak" => Kind::Leak,
        "conn" => Kind::Conn(need(value)?),
        "tls-hold" => Kind::TlsHold(need(value)?),
        "h2-hold" => Kind::H2Hold(need(value)?),
        "h3-hold" => Kind::H3Hold(need(value)?),
        other => {
            return Err(format!(
                "{item:?}: unknown kind {other:?} (alloc, format, lock, syscall, instr, spin, sleep, hold, leak, conn, tls-hold, h2-hold, h3-hold)"
            ));
        }
    };
    Ok(Plant { kind, site, every })
}

fn parse(spec: &str) -> Result<Plan, String> {
    let mut plan = Plan { plants: [None; MAX], seen: Default::default() };
    // "none": the planted build with nothing live (the reference a plant is measured against).
    for (i, item) in spec.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none").enumerate() {
        let slot = plan.plants.get_mut(i).ok_or_else(|| format!("at most {MAX} plants"))?;
        let plant = parse_one(item)?;
        if matches!(plant.kind, Kind::TlsHold(_) | Kind::H2Hold(_) | Kind::H3Hold(_)) && (plant.every != 1 || plant.site != Site::Request) {
            return Err(format!(
                "{item:?}: tls-hold, h2-hold and h3-hold apply to every TLS, HTTP/2 or HTTP/3 connection (no '@SITE', no '/EVERY')"
            ));
        }
        *slot = Some(plant);
    }
    Ok(plan)
}

fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var("PROXY_PLANTED").unwrap_or_default();
        match parse(&spec) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("proxy: PROXY_PLANTED: {e}");
                std::process::exit(2);
            }
        }
    })
}

/// Fires the plants of `site`.
#[inline(never)]
pub fn at(site: Site, len: usize) {
    let plan = plan();
    for (i, p) in plan.plants.iter().enumerate() {
        let Some(p) = p else { continue };
        if p.site != site || !plan.seen[i].fetch_add(1, Ordering::Relaxed).is_multiple_of(p.every) {
            continue;
        }
        match p.kind {
            Kind::Alloc => drop(std::hint::black_box(Box::new(len))),
            Kind::Format => drop(std::hint::black_box(format!("request head of {len} bytes"))),
            Kind::Lock => {
                static LOCK: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
                if let Ok(mut g) = LOCK.lock() {
                    *g += std::hint::black_box(len);
                }
            }
            // getpid: glibc does not cache it.
            Kind::Syscall => drop(std::hint::black_box(std::process::id())),
            Kind::Instr(n) => {
                let mut x = len as u64;
                for i in 0..n {
                    x = std::hint::black_box(x ^ i);
                }
                std::hint::black_box(x);
            }
            Kind::Spin(us) => {
                let until = std::time::Instant::now() + std::time::Duration::from_micros(us);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Kind::Sleep(us) => std::thread::sleep(std::time::Duration::from_micros(us)),
            // Behaviour switches, asked for where they apply (see below), not fired at a site.
            Kind::Hold | Kind::Leak | Kind::Conn(_) | Kind::TlsHold(_) | Kind::H2Hold(_) | Kind::H3Hold(_) => {}
        }
    }
}

/// Whether the `kind` switch is planted and fires this time (its `/EVERY` counted per call).
fn switch(kind: Kind) -> bool {
    let plan = plan();
    plan.plants
        .iter()
        .enumerate()
        .any(|(i, p)| p.is_some_and(|p| p.kind == kind && plan.seen[i].fetch_add(1, Ordering::Relaxed).is_multiple_of(p.every)))
}

/// `hold`: idle connections keep their working set (asked when a connection starts idling).
pub fn holds_working_sets() -> bool {
    switch(Kind::Hold)
}

/// Leaks `t`: never freed, never reused (the `leak` plant).
pub fn leak<T>(t: T) {
    std::mem::forget(t);
}

/// `conn:BYTES`: the bytes a new client connection carries for its life (written, so they are
/// resident, not just reserved); `None` when not planted.
pub fn per_connection_bytes() -> Option<Box<[u8]>> {
    let plan = plan();
    plan.plants.iter().flatten().find_map(|p| match p.kind {
        Kind::Conn(n) => Some(vec![0xA5u8; usize::try_from(n).unwrap_or(usize::MAX)].into_boxed_slice()),
        _ => None,
    })
}

/// `leak`: this working set, given back, is leaked (asked for each one given back).
pub fn leaks_working_set() -> bool {
    switch(Kind::Leak)
}

/// `tls-hold:BYTES`: the bytes a TLS connection holds beside its keys for its life (asked once,
/// when its handshake completes); `None` when not planted.
pub fn tls_held_bytes() -> Option<usize> {
    plan().plants.iter().flatten().find_map(|p| match p.kind {
        Kind::TlsHold(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        _ => None,
    })
}

/// `h2-hold:BYTES`: the bytes an HTTP/2 connection holds for its life (written, so resident;
/// asked once, when its HTTP/2 handshake completes); `None` when not planted.
pub fn h2_held_bytes() -> Option<Box<[u8]>> {
    plan().plants.iter().flatten().find_map(|p| match p.kind {
        Kind::H2Hold(n) => Some(vec![0xA5u8; usize::try_from(n).unwrap_or(usize::MAX)].into_boxed_slice()),
        _ => None,
    })
}

/// `h3-hold:BYTES`: the bytes an HTTP/3 connection holds for its life (written, so resident;
/// asked once, when its QUIC handshake completes); `None` when not planted.
pub fn h3_held_bytes() -> Option<Box<[u8]>> {
    plan().plants.iter().flatten().find_map(|p| match p.kind {
        Kind::H3Hold(n) => Some(vec![0xA5u8; usize::try_from(n).unwrap_or(usize::MAX)].into_boxed_slice()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_are_refused() {
        let p = parse("alloc, format@error, syscall/4, instr:300, sleep@chunked:2000").expect("valid");
        let got: Vec<Plant> = p.plants.iter().flatten().copied().collect();
        assert_eq!(got.len(), 5);
        assert_eq!((got[1].kind, got[1].site), (Kind::Format, Site::Error));
        assert_eq!((got[2].kind, got[2].every), (Kind::Syscall, 4));
        assert_eq!(got[3].kind, Kind::Instr(300));
        assert_eq!((got[4].kind, got[4].site), (Kind::Sleep(2000), Site::Chunked));
        assert!(parse("conn").is_err(), "conn without :BYTES accepted");
        let p = parse("instr@h2-stream:500").expect("valid");
        assert_eq!(p.plants[0].map(|p| (p.kind, p.site)), Some((Kind::Instr(500), Site::H2Stream)));
        let p = parse("hold, leak/100, tls-hold:4096, h2-hold:8192, alloc@h2-stream").expect("valid");
        let got: Vec<Plant> = p.plants.iter().flatten().copied().collect();
        assert_eq!((got[0].kind, got[1].kind, got[1].every, got[2].kind), (Kind::Hold, Kind::Leak, 100, Kind::TlsHold(4096)));
        assert_eq!((got[3].kind, got[4].kind, got[4].site), (Kind::H2Hold(8192), Kind::Alloc, Site::H2Stream));
        let p = parse("h3-hold:8192, leak/100, spin@h3-stream:400").expect("valid");
        let got: Vec<Plant> = p.plants.iter().flatten().copied().collect();
        assert_eq!((got[0].kind, got[0].site, got[0].every), (Kind::H3Hold(8192), Site::Request, 1));
        assert_eq!((got[1].kind, got[1].every), (Kind::Leak, 100));
        assert_eq!((got[2].kind, got[2].site), (Kind::Spin(400), Site::H3Stream));
        for bad in [
            "alloc@nowhere",
            "instr",
            "spin:x",
            "syscall/0",
            "teleport",
            "a,b,c,d,e,f,g,h,i",
            "tls-hold",
            "tls-hold/2:4096",
            "tls-hold@error:4096",
            "h2-hold",
            "h2-hold/2:4096",
            "h3-hold",
            "h3-hold/2:4096",
            "h3-hold@h3-stream:4096",
            "h3-hold:x",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
        assert!(parse("").is_ok_and(|p| p.plants.iter().all(Option::is_none)));
        assert!(parse("none").is_ok_and(|p| p.plants.iter().all(Option::is_none)));
    }
}
