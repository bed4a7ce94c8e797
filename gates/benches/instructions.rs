//! Instruction counts (callgrind, via gungraun) of keep-alive exchanges: the direct path
//! (client → origin) and the proxied path (client → proxy → origin), each at two request counts.
//! The workload is `gates::exchange` (one thread, so the count is the same on every run).
//!
//! Run by `cargo run -p gates` (the instruction gate), which sets the environment:
//! `GATES_INSTR_REQUESTS` (N), `GATES_INSTR_BODY_BYTES` and `GATES_INSTR_OUT` (a directory). The
//! bench refuses to run without them: a default would let the gate divide by a count the bench
//! did not use. Each benchmark's teardown (outside the measured region) writes what the run really
//! did to `GATES_INSTR_OUT/<function>.json` and panics, failing the bench, unless every exchange
//! was a verified 200 that the origin served.

use std::hint::black_box;
use std::path::PathBuf;

use gates::exchange::{Conn, H2Path, Outcome, Route, connections, exchange, h2_exchange, tls_floor, tls_floor_handshakes};
use gates::h3exchange::{H3Path, h3_exchange};
use gungraun::{Callgrind, LibraryBenchmarkConfig, library_benchmark, library_benchmark_group, main};

fn env_number(name: &str) -> u64 {
    match std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()) {
        Some(n) if n > 0 => n,
        _ => panic!("{name} must be set to a number > 0 (this bench is run by `cargo run -p gates`)"),
    }
}

fn requests() -> u64 {
    env_number("GATES_INSTR_REQUESTS")
}

fn body_bytes() -> usize {
    env_number("GATES_INSTR_BODY_BYTES") as usize
}

fn record(name: &str, o: Outcome) {
    let dir = PathBuf::from(std::env::var_os("GATES_INSTR_OUT").unwrap_or_else(|| panic!("GATES_INSTR_OUT must be set")));
    let text = serde_json::to_string(&o).unwrap_or_else(|e| panic!("outcome JSON: {e}"));
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Err(e) = o.verify() {
        panic!("{name}: {e}");
    }
}

fn check_direct_n(o: Outcome) {
    record("direct_n", o);
}
fn check_direct_2n(o: Outcome) {
    record("direct_2n", o);
}
fn check_proxied_n(o: Outcome) {
    record("proxied_n", o);
}
fn check_proxied_2n(o: Outcome) {
    record("proxied_2n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_direct_n)]
fn direct_n(n: u64) -> Outcome {
    black_box(exchange(Route::Direct, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_direct_2n)]
fn direct_2n(n: u64) -> Outcome {
    black_box(exchange(Route::Direct, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_n)]
fn proxied_n(n: u64) -> Outcome {
    black_box(exchange(Route::Proxied, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_2n)]
fn proxied_2n(n: u64) -> Outcome {
    black_box(exchange(Route::Proxied, n, body_bytes()))
}

library_benchmark_group!(name = exchanges; benchmarks = direct_n, direct_2n, proxied_n, proxied_2n);

// Phase 2 (TLS): the proxied path in cleartext and over TLS 1.3, and the floor, rustls alone doing
// the same records in memory. The gate runs one group at a time (`GUNGRAUN_FILTER`).

fn check_proxied_clear_n(o: Outcome) {
    record("proxied_clear_n", o);
}
fn check_proxied_clear_2n(o: Outcome) {
    record("proxied_clear_2n", o);
}
fn check_proxied_tls_n(o: Outcome) {
    record("proxied_tls_n", o);
}
fn check_proxied_tls_2n(o: Outcome) {
    record("proxied_tls_2n", o);
}
fn check_tls_floor_n(o: Outcome) {
    record("tls_floor_n", o);
}
fn check_tls_floor_2n(o: Outcome) {
    record("tls_floor_2n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_clear_n)]
fn proxied_clear_n(n: u64) -> Outcome {
    black_box(exchange(Route::Proxied, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_clear_2n)]
fn proxied_clear_2n(n: u64) -> Outcome {
    black_box(exchange(Route::Proxied, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_tls_n)]
fn proxied_tls_n(n: u64) -> Outcome {
    black_box(exchange(Route::ProxiedTls, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_tls_2n)]
fn proxied_tls_2n(n: u64) -> Outcome {
    black_box(exchange(Route::ProxiedTls, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_tls_floor_n)]
fn tls_floor_n(n: u64) -> Outcome {
    black_box(tls_floor(n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_tls_floor_2n)]
fn tls_floor_2n(n: u64) -> Outcome {
    black_box(tls_floor(n, body_bytes()))
}

library_benchmark_group!(name = tls; benchmarks = proxied_clear_n, proxied_clear_2n, proxied_tls_n, proxied_tls_2n, tls_floor_n, tls_floor_2n);

// Phase 2, per connection: a new connection per exchange through the proxy (one GET, then the
// client closes), in cleartext and over TLS 1.3 with a full or a resumed handshake each time, and
// the floors, rustls alone doing the same handshakes and exchange in memory.

fn check_proxied_clear_conn_n(o: Outcome) {
    record("proxied_clear_conn_n", o);
}
fn check_proxied_clear_conn_2n(o: Outcome) {
    record("proxied_clear_conn_2n", o);
}
fn check_proxied_tls_full_n(o: Outcome) {
    record("proxied_tls_full_n", o);
}
fn check_proxied_tls_full_2n(o: Outcome) {
    record("proxied_tls_full_2n", o);
}
fn check_proxied_tls_resumed_n(o: Outcome) {
    record("proxied_tls_resumed_n", o);
}
fn check_proxied_tls_resumed_2n(o: Outcome) {
    record("proxied_tls_resumed_2n", o);
}
fn check_tls_floor_full_n(o: Outcome) {
    record("tls_floor_full_n", o);
}
fn check_tls_floor_full_2n(o: Outcome) {
    record("tls_floor_full_2n", o);
}
fn check_tls_floor_resumed_n(o: Outcome) {
    record("tls_floor_resumed_n", o);
}
fn check_tls_floor_resumed_2n(o: Outcome) {
    record("tls_floor_resumed_2n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_clear_conn_n)]
fn proxied_clear_conn_n(n: u64) -> Outcome {
    black_box(connections(Conn::Clear, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_clear_conn_2n)]
fn proxied_clear_conn_2n(n: u64) -> Outcome {
    black_box(connections(Conn::Clear, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_tls_full_n)]
fn proxied_tls_full_n(n: u64) -> Outcome {
    black_box(connections(Conn::TlsFull, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_tls_full_2n)]
fn proxied_tls_full_2n(n: u64) -> Outcome {
    black_box(connections(Conn::TlsFull, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_tls_resumed_n)]
fn proxied_tls_resumed_n(n: u64) -> Outcome {
    black_box(connections(Conn::TlsResumed, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_tls_resumed_2n)]
fn proxied_tls_resumed_2n(n: u64) -> Outcome {
    black_box(connections(Conn::TlsResumed, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_tls_floor_full_n)]
fn tls_floor_full_n(n: u64) -> Outcome {
    black_box(tls_floor_handshakes(false, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_tls_floor_full_2n)]
fn tls_floor_full_2n(n: u64) -> Outcome {
    black_box(tls_floor_handshakes(false, n, body_bytes()))
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_tls_floor_resumed_n)]
fn tls_floor_resumed_n(n: u64) -> Outcome {
    black_box(tls_floor_handshakes(true, n, body_bytes()))
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_tls_floor_resumed_2n)]
fn tls_floor_resumed_2n(n: u64) -> Outcome {
    black_box(tls_floor_handshakes(true, n, body_bytes()))
}

library_benchmark_group!(
    name = tls_handshakes;
    benchmarks = proxied_clear_conn_n, proxied_clear_conn_2n, proxied_tls_full_n, proxied_tls_full_2n, proxied_tls_resumed_n,
        proxied_tls_resumed_2n, tls_floor_full_n, tls_floor_full_2n, tls_floor_resumed_n, tls_floor_resumed_2n
);

// Phase 2, HTTP/2 (issue 17): GETs on one HTTP/2 connection with 1, 10 or 100 streams in flight,
// the same h2 client straight to the h2c origin (the base), through the proxy (h2c listener, h2c
// upstream group) and through the floor, a relay built on the `h2` crate alone.

fn check_h2_direct_s1_n(o: Outcome) {
    record("h2_direct_s1_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h2_direct_s1_n)]
fn h2_direct_s1_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Direct, 1, n, body_bytes()))
}

fn check_h2_direct_s1_2n(o: Outcome) {
    record("h2_direct_s1_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h2_direct_s1_2n)]
fn h2_direct_s1_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Direct, 1, n, body_bytes()))
}

fn check_proxied_h2_s1_n(o: Outcome) {
    record("proxied_h2_s1_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_h2_s1_n)]
fn proxied_h2_s1_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Proxied, 1, n, body_bytes()))
}

fn check_proxied_h2_s1_2n(o: Outcome) {
    record("proxied_h2_s1_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_h2_s1_2n)]
fn proxied_h2_s1_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Proxied, 1, n, body_bytes()))
}

fn check_h2_relay_s1_n(o: Outcome) {
    record("h2_relay_s1_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h2_relay_s1_n)]
fn h2_relay_s1_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Relay, 1, n, body_bytes()))
}

fn check_h2_relay_s1_2n(o: Outcome) {
    record("h2_relay_s1_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h2_relay_s1_2n)]
fn h2_relay_s1_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Relay, 1, n, body_bytes()))
}

fn check_h2_direct_s10_n(o: Outcome) {
    record("h2_direct_s10_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h2_direct_s10_n)]
fn h2_direct_s10_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Direct, 10, n, body_bytes()))
}

fn check_h2_direct_s10_2n(o: Outcome) {
    record("h2_direct_s10_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h2_direct_s10_2n)]
fn h2_direct_s10_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Direct, 10, n, body_bytes()))
}

fn check_proxied_h2_s10_n(o: Outcome) {
    record("proxied_h2_s10_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_h2_s10_n)]
fn proxied_h2_s10_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Proxied, 10, n, body_bytes()))
}

fn check_proxied_h2_s10_2n(o: Outcome) {
    record("proxied_h2_s10_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_h2_s10_2n)]
fn proxied_h2_s10_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Proxied, 10, n, body_bytes()))
}

fn check_h2_relay_s10_n(o: Outcome) {
    record("h2_relay_s10_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h2_relay_s10_n)]
fn h2_relay_s10_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Relay, 10, n, body_bytes()))
}

fn check_h2_relay_s10_2n(o: Outcome) {
    record("h2_relay_s10_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h2_relay_s10_2n)]
fn h2_relay_s10_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Relay, 10, n, body_bytes()))
}

fn check_h2_direct_s100_n(o: Outcome) {
    record("h2_direct_s100_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h2_direct_s100_n)]
fn h2_direct_s100_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Direct, 100, n, body_bytes()))
}

fn check_h2_direct_s100_2n(o: Outcome) {
    record("h2_direct_s100_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h2_direct_s100_2n)]
fn h2_direct_s100_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Direct, 100, n, body_bytes()))
}

fn check_proxied_h2_s100_n(o: Outcome) {
    record("proxied_h2_s100_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_h2_s100_n)]
fn proxied_h2_s100_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Proxied, 100, n, body_bytes()))
}

fn check_proxied_h2_s100_2n(o: Outcome) {
    record("proxied_h2_s100_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_h2_s100_2n)]
fn proxied_h2_s100_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Proxied, 100, n, body_bytes()))
}

fn check_h2_relay_s100_n(o: Outcome) {
    record("h2_relay_s100_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h2_relay_s100_n)]
fn h2_relay_s100_n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Relay, 100, n, body_bytes()))
}

fn check_h2_relay_s100_2n(o: Outcome) {
    record("h2_relay_s100_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h2_relay_s100_2n)]
fn h2_relay_s100_2n(n: u64) -> Outcome {
    black_box(h2_exchange(H2Path::Relay, 100, n, body_bytes()))
}

library_benchmark_group!(
    name = h2;
    benchmarks = h2_direct_s1_n, h2_direct_s1_2n, proxied_h2_s1_n, proxied_h2_s1_2n, h2_relay_s1_n, h2_relay_s1_2n,
        h2_direct_s10_n, h2_direct_s10_2n, proxied_h2_s10_n, proxied_h2_s10_2n, h2_relay_s10_n, h2_relay_s10_2n,
        h2_direct_s100_n, h2_direct_s100_2n, proxied_h2_s100_n, proxied_h2_s100_2n, h2_relay_s100_n, h2_relay_s100_2n
);

// Phase 3, HTTP/3: GETs on one HTTP/3 connection with 1 or 10 streams in flight, the same quinn
// + h3 client straight to an HTTP/3 origin (the base), through the proxy (TLS listener with
// `http3 = true`, HTTP/1.1 upstream) and through the floor, `loadgen relay --h3 --upstream-http1`'s
// code; the proxy and the floor relay to the HTTP/1.1 origin of the other groups
// (gates/src/h3exchange.rs).

fn check_h3_direct_s1_n(o: Outcome) {
    record("h3_direct_s1_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h3_direct_s1_n)]
fn h3_direct_s1_n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Direct, 1, n, body_bytes()))
}

fn check_h3_direct_s1_2n(o: Outcome) {
    record("h3_direct_s1_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h3_direct_s1_2n)]
fn h3_direct_s1_2n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Direct, 1, n, body_bytes()))
}

fn check_proxied_h3_s1_n(o: Outcome) {
    record("proxied_h3_s1_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_h3_s1_n)]
fn proxied_h3_s1_n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Proxied, 1, n, body_bytes()))
}

fn check_proxied_h3_s1_2n(o: Outcome) {
    record("proxied_h3_s1_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_h3_s1_2n)]
fn proxied_h3_s1_2n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Proxied, 1, n, body_bytes()))
}

fn check_h3_relay_s1_n(o: Outcome) {
    record("h3_relay_s1_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h3_relay_s1_n)]
fn h3_relay_s1_n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Relay, 1, n, body_bytes()))
}

fn check_h3_relay_s1_2n(o: Outcome) {
    record("h3_relay_s1_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h3_relay_s1_2n)]
fn h3_relay_s1_2n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Relay, 1, n, body_bytes()))
}

fn check_h3_direct_s10_n(o: Outcome) {
    record("h3_direct_s10_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h3_direct_s10_n)]
fn h3_direct_s10_n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Direct, 10, n, body_bytes()))
}

fn check_h3_direct_s10_2n(o: Outcome) {
    record("h3_direct_s10_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h3_direct_s10_2n)]
fn h3_direct_s10_2n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Direct, 10, n, body_bytes()))
}

fn check_proxied_h3_s10_n(o: Outcome) {
    record("proxied_h3_s10_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_proxied_h3_s10_n)]
fn proxied_h3_s10_n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Proxied, 10, n, body_bytes()))
}

fn check_proxied_h3_s10_2n(o: Outcome) {
    record("proxied_h3_s10_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_proxied_h3_s10_2n)]
fn proxied_h3_s10_2n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Proxied, 10, n, body_bytes()))
}

fn check_h3_relay_s10_n(o: Outcome) {
    record("h3_relay_s10_n", o);
}

#[library_benchmark]
#[bench::n(args = (requests()), teardown = check_h3_relay_s10_n)]
fn h3_relay_s10_n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Relay, 10, n, body_bytes()))
}

fn check_h3_relay_s10_2n(o: Outcome) {
    record("h3_relay_s10_2n", o);
}

#[library_benchmark]
#[bench::n2(args = (2 * requests()), teardown = check_h3_relay_s10_2n)]
fn h3_relay_s10_2n(n: u64) -> Outcome {
    black_box(h3_exchange(H3Path::Relay, 10, n, body_bytes()))
}

library_benchmark_group!(
    name = h3;
    benchmarks = h3_direct_s1_n, h3_direct_s1_2n, proxied_h3_s1_n, proxied_h3_s1_2n, h3_relay_s1_n, h3_relay_s1_2n,
        h3_direct_s10_n, h3_direct_s10_2n, proxied_h3_s10_n, proxied_h3_s10_2n, h3_relay_s10_n, h3_relay_s10_2n
);

main!(
    config = LibraryBenchmarkConfig::default()
        .env_clear(false)
        .tool(Callgrind::with_args(["--cache-sim=no"]));
    library_benchmark_groups = exchanges, tls, tls_handshakes, h2, h3
);
