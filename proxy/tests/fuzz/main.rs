//! Fuzzing on stable Rust, bounded for CI: arbitrary bytes through the HTTP/1.1 codec and the
//! real proxy service, checked against an independent referee (`oracle.rs`, over `httparse`).
//!
//! `cargo fuzz` needs nightly, so this is a seeded mutational fuzzer in an ordinary test target:
//! every case is a pure function of `(FUZZ_SEED, case index)`; a failure prints the seed, the
//! index, the input and a minimized input, and `FUZZ_CASE=<index>` replays exactly that case.
//!
//! - `codec_*`: the codec in memory (request heads + rewrite, chunked bodies in every split,
//!   response heads + rewrite); hundreds of thousands of cases per run.
//! - `service_*`: a real `Worker` serving client connections on loopback in this thread (one
//!   `current_thread` runtime, like a proxy worker), against a recording upstream in the same
//!   runtime; thousands of connections per run.
//!
//! Inputs: valid requests, the request bytes of every row of the adversarial table (read as values
//! from `support::adversarial_cases`, the rows `tests/adversarial.rs` runs), grammar-generated
//! requests, then byte-level mutations (flips, CR, LF, NUL, SP, colon, duplicated lines, number
//! swaps, splices of other inputs, truncation).
//!
//! Budget (see `proxy/TESTING.md`): `FUZZ_SECS` per target (default a few seconds each),
//! `FUZZ_ITERS` (case cap), `FUZZ_SEED`, `FUZZ_CASE`. Example, one hour per target:
//! `FUZZ_SECS=3600 cargo test --release -p proxy --test fuzz -- --nocapture`.
#![allow(clippy::unwrap_used)] // reason: a test harness; failures are reported, not recovered

#[path = "../support/mod.rs"]
mod support;

mod codec;
mod inputs;
mod oracle;
mod service;

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::time::Duration;

use inputs::{Budget, Rng};
use support::escape_quoted;

thread_local! {
    /// Panics on this thread so far (the service layer's proxy tasks run on the test thread,
    /// and tokio catches their panics: this is how the harness sees them).
    static PANICS: Cell<u64> = const { Cell::new(0) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    /// While set, panics are counted and kept but not printed (minimization replays them).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            LAST_PANIC.with(|l| *l.borrow_mut() = info.to_string());
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

pub fn panics() -> u64 {
    PANICS.with(Cell::get)
}

pub fn last_panic() -> String {
    LAST_PANIC.with(|l| l.borrow().clone())
}

/// Runs `check`, turning a panic into an error.
fn guarded<T>(check: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match panic::catch_unwind(AssertUnwindSafe(check)) {
        Ok(r) => r,
        Err(_) => Err(format!("panic: {}", last_panic())),
    }
}

/// What one target did.
#[derive(Debug)]
pub struct Summary {
    pub name: &'static str,
    pub cases: u64,
    pub accepted: u64,
    pub elapsed: Duration,
    pub failures: Vec<String>,
}

impl Summary {
    fn report(&self, seed: u64) {
        eprintln!(
            "fuzz {}: {} cases in {:.1}s ({:.0}/s), {} accepted by the proxy, {} failing, seed {seed:#x}",
            self.name,
            self.cases,
            self.elapsed.as_secs_f64(),
            self.cases as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.accepted,
            self.failures.len()
        );
        assert!(self.failures.is_empty(), "fuzz {}: {} failing case(s):\n\n{}", self.name, self.failures.len(), self.failures.join("\n\n"));
    }
}

/// The first line of an error, digits removed: failures of the same kind are reported once.
fn kind(err: &str) -> String {
    err.lines().next().unwrap_or("").chars().filter(|c| !c.is_ascii_digit()).take(80).collect()
}

/// The fuzz loop: for each case, `make` draws an input and parameters from the case's RNG, and
/// `check` says whether it failed. Each distinct failure kind is minimized and reported once.
pub fn fuzz<P: std::fmt::Debug>(
    name: &'static str,
    budget: &Budget,
    floor: u64,
    minimize_tries: usize,
    mut make: impl FnMut(&mut Rng) -> (Vec<u8>, P),
    mut check: impl FnMut(&[u8], &P) -> Result<bool, String>,
) -> Summary {
    install_panic_hook();
    let mut cases = budget.cases(floor);
    let mut s = Summary { name, cases: 0, accepted: 0, elapsed: Duration::ZERO, failures: Vec::new() };
    let mut kinds = Vec::new();
    for i in cases.by_ref() {
        let mut rng = Rng::for_case(budget.seed, i);
        let (input, params) = make(&mut rng);
        s.cases += 1;
        QUIET.with(|q| q.set(true));
        let r = guarded(|| check(&input, &params));
        QUIET.with(|q| q.set(false));
        match r {
            Ok(accepted) => s.accepted += u64::from(accepted),
            Err(e) => {
                let k = kind(&e);
                if kinds.contains(&k) {
                    continue;
                }
                kinds.push(k.clone());
                QUIET.with(|q| q.set(true));
                let min = inputs::minimize(&input, minimize_tries, |cand| guarded(|| check(cand, &params)).is_err_and(|e| kind(&e) == k));
                let min_err = guarded(|| check(&min, &params)).err().unwrap_or_default();
                QUIET.with(|q| q.set(false));
                let mut msg = String::new();
                let _ = writeln!(msg, "case {i} (replay: FUZZ_SEED={:#x} FUZZ_CASE={i}): {e}", budget.seed);
                let _ = writeln!(msg, "  params: {params:?}");
                let _ = writeln!(msg, "  input:     \"{}\"", escape_quoted(&input));
                let _ = writeln!(msg, "  minimized: \"{}\"\n  which gives: {min_err}", escape_quoted(&min));
                eprintln!("FAIL fuzz {name} {msg}");
                s.failures.push(msg);
                if s.failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    s.elapsed = cases.elapsed();
    s
}

// ---------------------------------------------------------------------------------------------
// The targets. Default budgets: ~6 s of CPU each for the codec, more for the service layer;
// the test binary runs them two at a time on a 2-core machine.
// ---------------------------------------------------------------------------------------------

#[test]
fn codec_request_heads() {
    let budget = Budget::from_env(5.0);
    let corpus = inputs::corpus();
    let s =
        fuzz("codec_request_heads", &budget, 2_000, 4_000, |rng| (inputs::input(rng, &corpus), codec::head_params(rng)), codec::check_head);
    s.report(budget.seed);
    assert!(s.accepted > 0 || budget.only.is_some(), "no input was ever accepted: the fuzzer tests nothing past the parser");
}

#[test]
fn codec_chunked_bodies() {
    let budget = Budget::from_env(4.0);
    let corpus = inputs::corpus();
    let s = fuzz(
        "codec_chunked_bodies",
        &budget,
        2_000,
        4_000,
        |rng| (codec::chunk_input(rng, &corpus), codec::chunk_params(rng)),
        codec::check_chunked,
    );
    s.report(budget.seed);
    assert!(s.accepted > 0 || budget.only.is_some(), "no body was ever accepted");
}

#[test]
fn codec_response_heads() {
    let budget = Budget::from_env(4.0);
    let corpus = inputs::corpus();
    let s = fuzz(
        "codec_response_heads",
        &budget,
        2_000,
        4_000,
        |rng| (codec::response_input(rng, &corpus), codec::res_params(rng)),
        codec::check_response,
    );
    s.report(budget.seed);
    assert!(s.accepted > 0 || budget.only.is_some(), "no response head was ever accepted");
}

#[test]
fn service_connections() {
    let budget = Budget::from_env(12.0);
    let corpus = inputs::corpus();
    let mut h = service::Harness::start();
    let s = fuzz(
        "service_connections",
        &budget,
        300,
        300,
        |rng| (inputs::input(rng, &corpus), service::cuts(rng)),
        |input, cuts| h.check(input, &cuts.0),
    );
    // The worker still serves a plain request after everything above.
    let after = h.check(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n", &[]);
    let (requests, interim) = h.counts();
    eprintln!("fuzz service_connections: the upstream answered {requests} requests; clients got {interim} interim responses");
    s.report(budget.seed);
    assert_eq!(after, Ok(true), "the worker no longer serves after the fuzz run");
    assert!(s.accepted > 0 || budget.only.is_some(), "no request ever reached the upstream");
}

/// The service checks fail a "proxy" that relays bytes unchanged (the client talks to the
/// recording upstream directly): a forwarded head without the proxy's fields, a body smuggled
/// as a second request, a request line hidden in a body that the relay would pipeline.
#[test]
fn service_checks_can_fail() {
    let mut h = service::Harness::start();
    let err = h.check_without_proxy(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap_err();
    assert!(err.contains("X-Forwarded-For") && err.contains("Via"), "{err}");
    // CL.TE: the upstream (strict) refuses; a lenient front end would have forwarded it.
    let err = h
        .check_without_proxy(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX")
        .unwrap_err();
    assert!(err.contains("invalid message"), "{err}");
    // Two requests in one write: the second is pipelined behind the first before it is answered.
    let err = h.check_without_proxy(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap_err();
    assert!(err.contains("smuggled:"), "{err}");
    // And the real proxy passes the same inputs.
    assert_eq!(h.check(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", &[]), Ok(true));
    assert_eq!(h.check(b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n", &[7, 40]), Ok(true));
}
