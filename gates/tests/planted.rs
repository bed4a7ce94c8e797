//! Every gate proven able to fail: each test plants a regression and runs the real gate runner
//! (`gates` binary) against it, expecting a red row; the clean tree is expected green.
//!
//! One planted build serves every test: the proxy is built once with the `planted` feature (in
//! `target/gates-planted`, so it never overwrites the clean binaries) and each test selects its
//! regression at run time (`--plant`, i.e. `PROXY_PLANTED`). Tests that count (static, alloc,
//! instructions: exact figures that load cannot move) run in parallel; tests that time
//! (latency, syscalls) run alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::Value;

/// Counting gates share the machine; timing gates have it to themselves.
static MACHINE: RwLock<()> = RwLock::new(());

fn counting() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn timing() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gates-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs the gate runner; returns its exit code and the JSON report it wrote.
fn gates(args: &[&str], out: &Path, root: &Path) -> (i32, Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_gates")).args(args).arg("--out").arg(out).arg("--root").arg(root).output().expect("run gates");
    let text = std::fs::read_to_string(out.join("latest.json")).unwrap_or_else(|e| {
        panic!("no report ({e}); stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    });
    (o.status.code().unwrap_or(-1), serde_json::from_str(&text).expect("report is JSON"))
}

fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["rows"].as_array().and_then(|rows| rows.iter().find(|r| r["key"] == key)).unwrap_or_else(|| panic!("no row {key}: {report:#}"))
}

#[test]
fn static_gate_fails_on_a_fixture_with_a_banned_type() {
    let _m = counting();
    // A copy of the contract over a fixture tree whose hot-path file holds a Mutex.
    let fixture = out_dir("static-fixture");
    std::fs::create_dir_all(fixture.join("contracts")).expect("mkdir");
    std::fs::copy(root().join("contracts/phase1.toml"), fixture.join("contracts/phase1.toml")).expect("copy contract");
    std::fs::create_dir_all(fixture.join("proxy/src/data")).expect("mkdir");
    std::fs::copy(root().join("proxy/Cargo.toml"), fixture.join("proxy/Cargo.toml")).expect("copy manifest");
    std::fs::copy(root().join("Cargo.toml"), fixture.join("Cargo.toml")).expect("copy workspace manifest");
    std::fs::write(
        fixture.join("proxy/src/data/conn.rs"),
        "use std::sync::Mutex;\n\npub fn per_request(m: &Mutex<u64>) {\n    if let Ok(mut g) = m.lock() { *g += 1; }\n}\n",
    )
    .expect("write fixture");
    std::fs::write(fixture.join("proxy/src/snapshot.rs"), "pub struct Snapshot;\n").expect("write fixture");
    let out = out_dir("static-out");
    let (code, report) = gates(&["--only", "static"], &out, &fixture);
    let r = row(&report, "phase1:static");
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(r["status"], "FAIL");
    assert!(r["measured"].as_f64().is_some_and(|n| n >= 1.0));
    assert!(r["note"].as_str().is_some_and(|n| n.contains("proxy/src/data/conn.rs:1")), "{r:#}");
}

#[test]
fn static_gate_fails_when_a_mutex_is_planted_in_the_proxy() {
    let _m = counting();
    let out = out_dir("static-lock");
    let (code, report) = gates(&["--only", "static", "--plant", "lock"], &out, &root());
    let r = row(&report, "phase1:static");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL");
    let hits = r["details"]["violations"].as_array().expect("violations");
    assert!(
        hits.iter()
            .any(|v| v["item"].as_str().is_some_and(|i| i.contains("Mutex"))
                && v["file"].as_str().is_some_and(|f| f.ends_with("planted.rs"))),
        "{r:#}"
    );
}

#[test]
fn static_and_alloc_gates_pass_on_the_clean_tree_and_hyper_is_the_control() {
    let _m = counting();
    let out = out_dir("clean");
    let (code, report) = gates(&["--only", "static,alloc"], &out, &root());
    assert_eq!(row(&report, "phase1:static")["status"], "PASS", "{report:#}");
    let a = row(&report, "phase1:alloc");
    assert_eq!(a["status"], "PASS", "{a:#}");
    assert_eq!(a["measured"].as_f64(), Some(0.0));
    let h = row(&report, "phase1:alloc[hyper]");
    assert_eq!(h["status"], "CONTROL", "the hyper baseline must breach the allocation limit: {h:#}");
    assert!(h["measured"].as_f64().is_some_and(|n| n >= 5.0), "{h:#}");
    assert_eq!(code, 0, "{report:#}");
}

/// One allocation per request, one per ten requests, and a `format!` per request: each red.
#[test]
fn alloc_gate_fails_on_one_planted_allocation_per_request_and_on_one_in_ten() {
    let _m = counting();
    for (plant, want) in [("alloc", Some(1.0)), ("alloc/10", Some(0.1)), ("format", None)] {
        let out = out_dir(&format!("alloc-{}", plant.replace('/', "-")));
        let (code, report) = gates(&["--phase", "1", "--only", "alloc", "--plant", plant], &out, &root());
        let r = row(&report, "phase1:alloc");
        assert_eq!(code, 1, "{plant}: {r:#}");
        assert_eq!(r["status"], "FAIL", "{plant}: {r:#}");
        match want {
            Some(w) => assert_eq!(r["measured"].as_f64(), Some(w), "{plant}: exactly the planted allocations: {r:#}"),
            None => assert!(r["measured"].as_f64().is_some_and(|n| n >= 1.0), "{plant}: {r:#}"),
        }
    }
}

/// Instruction counts are exact run to run, so the gate sees a regression just above its +2 % soft
/// limit and passes one just below it. The
/// reference is the planted build with nothing live (`--plant none`, its own baseline file), so
/// the figure moves by the plant alone: a loop of N iterations per request, about
/// `INSTR_PER_ITERATION` instructions each (measured: see contracts/README.md).
#[test]
fn instruction_gate_sees_a_regression_just_above_its_soft_limit() {
    let _m = counting();
    let out = out_dir("instr");
    let baseline = out.join("baseline.json");
    let b = baseline.to_str().expect("utf-8 path");
    let (code, report) = gates(&["--only", "instructions", "--save-baseline", "--baseline", b, "--plant", "none"], &out, &root());
    let reference = row(&report, "phase1:instructions").clone();
    assert_eq!((code, reference["status"].as_str()), (0, Some("PASS")), "{reference:#}");
    let base = reference["measured"].as_f64().expect("measured");
    // Exact run to run: the same build measures the same figure again.
    let (_, again) = gates(&["--only", "instructions", "--baseline", b, "--plant", "none"], &out, &root());
    assert_eq!(row(&again, "phase1:instructions")["measured"], reference["measured"], "{again:#}");

    let iterations = |pct: f64| ((base * pct / 100.0) / INSTR_PER_ITERATION).round() as u64;
    let above = format!("instr:{}", iterations(2.3));
    let (code, report) = gates(&["--only", "instructions", "--baseline", b, "--plant", &above], &out, &root());
    let r = row(&report, "phase1:instructions");
    assert_eq!(code, 1, "{above}: {r:#}");
    assert_eq!(r["status"], "FAIL", "{above}: {r:#}");
    assert!(r["delta_pct"].as_f64().is_some_and(|d| d > 2.0 && d < 2.9), "{above}: {r:#}");
    assert!(r["note"].as_str().is_some_and(|n| n.contains("soft limit")), "{r:#}");

    let below = format!("instr:{}", iterations(1.5));
    let (code, report) = gates(&["--only", "instructions", "--baseline", b, "--plant", &below], &out, &root());
    let r = row(&report, "phase1:instructions");
    assert_eq!((code, r["status"].as_str()), (0, Some("PASS")), "{below} is within +2 %: {r:#}");
    assert!(r["delta_pct"].as_f64().is_some_and(|d| d > 1.2 && d < 2.0), "{below}: the plant must show: {r:#}");
}

/// Instructions one planted loop iteration costs: 4.04 measured (instr:1000 vs instr:0).
const INSTR_PER_ITERATION: f64 = 4.04;

/// 400 µs of CPU per request on the proxy's worker: +3.4 and +3.7 ms of P99 over the floor at
/// 2,000 req/s on a quiet machine (two runs, 5 of 5 rounds over the limit each). A 200 µs step
/// is at the edge of what the gate sees (+868 and +467 µs FAIL in two quiet runs, +122 µs PASS in
/// a fresh-clone CI run): contracts/README.md. On a noisy machine the gate may say INCONCLUSIVE.
#[test]
fn latency_gate_fails_with_a_planted_cpu_step() {
    let _m = timing();
    let out = out_dir("spin");
    let (code, report) = gates(&["--phase", "1", "--only", "latency", "--plant", "spin:400"], &out, &root());
    let r = row(&report, "phase1:latency");
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "FAIL", "400 µs of CPU per request must breach +300 µs over the floor: {r:#}");
    assert!(r["measured"].as_f64().is_some_and(|n| n > 300.0), "{r:#}");
}

/// The HTTP/2 latency row (phase 2: h2c end to end, beside the relay built on `h2` alone): the
/// same CPU step at the start of every stream's exchange (`spin` fires at `request`, which HTTP/2
/// streams pass as HTTP/1.1 exchanges do) breaches it; the row's key says which protocol it ran.
#[test]
fn h2_latency_gate_fails_with_a_planted_cpu_step() {
    let _m = timing();
    let out = out_dir("h2-spin");
    let (code, report) = gates(&["--phase", "2", "--only", "latency", "--plant", "spin:400"], &out, &root());
    let r = row(&report, "phase2:latency");
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "FAIL", "400 µs of CPU per HTTP/2 stream must breach the limit over the h2 relay: {r:#}");
    assert!(r["measured"].as_f64().is_some_and(|n| n > 300.0), "{r:#}");
    assert!(r["details"]["http2_streams"].as_u64().is_some_and(|n| n > 1), "the row ran over HTTP/2 with streams: {r:#}");
}

/// The HTTP/3 latency row (phase 3: QUIC from the client, HTTP/1.1 to the origin, beside the
/// relay built on quinn + h3 alone): the same CPU step at the start of every stream's exchange
/// (`spin` fires at `request`, in `data::exchange::route`, which HTTP/3 streams pass as HTTP/2
/// streams do) breaches it; the planted build with nothing live does not.
#[test]
fn h3_latency_gate_fails_with_a_planted_cpu_step() {
    let _m = timing();
    let out = out_dir("h3-spin");
    let (code, report) = gates(&["--phase", "3", "--only", "latency", "--plant", "spin:400"], &out, &root());
    let r = row(&report, "phase3:latency");
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "FAIL", "400 µs of CPU per HTTP/3 stream must breach the limit over the h3 relay: {r:#}");
    assert!(r["measured"].as_f64().is_some_and(|n| n > 300.0), "{r:#}");
    assert!(r["details"]["http3_streams"].as_u64().is_some_and(|n| n > 1), "the row ran over HTTP/3 with streams: {r:#}");
    let out = out_dir("h3-spin-none");
    let (_, report) = gates(&["--phase", "3", "--only", "latency", "--plant", "none"], &out, &root());
    let r = row(&report, "phase3:latency");
    assert!(r["status"] == "PASS" || r["status"] == "INCONCLUSIVE", "the planted build with nothing live: {r:#}");
}

#[test]
fn syscall_gate_fails_with_one_planted_syscall_per_request() {
    let _m = timing();
    let out = out_dir("syscall");
    let (code, report) = gates(&["--only", "syscalls", "--plant", "syscall"], &out, &root());
    let r = row(&report, "phase1:syscalls");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL", "one getpid per request must breach 6.5: {r:#}");
    let getpid = r["details"]["by_syscall_per_request"]["getpid"].as_f64();
    assert!(getpid.is_some_and(|n| (n - 1.0).abs() < 0.01), "exactly the planted syscall: {r:#}");
}

/// One extra system call on one request in ten: far below the total's limit (6.5), caught by the
/// exact comparison of non-waiting calls with the relay's (`io_delta_limit`).
#[test]
fn syscall_gate_sees_one_extra_syscall_every_ten_requests() {
    let _m = timing();
    let out = out_dir("syscall-10");
    let (code, report) = gates(&["--only", "syscalls", "--plant", "syscall/10"], &out, &root());
    let r = row(&report, "phase1:syscalls");
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "FAIL", "{r:#}");
    assert!(r["measured"].as_f64().is_some_and(|m| m < 6.5), "the total alone would pass: {r:#}");
    let getpid = r["details"]["by_syscall_per_request"]["getpid"].as_f64();
    assert!(getpid.is_some_and(|n| (n - 0.1).abs() < 0.005), "exactly the planted syscalls: {r:#}");
    assert!(r["note"].as_str().is_some_and(|n| n.contains("non-waiting")), "{r:#}");
}

/// Phase 2's syscall gate over TLS: one extra call per sealed record (a response each) shows
/// against the TLS relay's non-waiting calls.
#[test]
fn tls_syscall_gate_fails_with_one_planted_syscall_per_record() {
    let _m = timing();
    let out = out_dir("syscalls-tls");
    let (code, report) = gates(&["--phase", "2", "--only", "syscalls", "--plant", "syscall@tls-record"], &out, &root());
    let r = row(&report, "phase2:syscalls");
    assert_eq!((code, r["status"].as_str()), (1, Some("FAIL")), "{r:#}");
    let getpid = r["details"]["by_syscall_per_request"]["getpid"].as_f64();
    assert!(getpid.is_some_and(|n| n >= 0.99), "a planted getpid per response record: {r:#}");
}

/// The alloc gate's rows for the native engine, each with the probe shape it measures (`get` is
/// the default row `phase1:alloc`); the controls (`alloc[hyper]`) are left out.
fn alloc_shape_rows(report: &Value) -> Vec<(String, &Value)> {
    let rows = report["rows"].as_array().map(|r| r.iter()).into_iter().flatten();
    rows.filter(|r| r["status"] != "CONTROL")
        .filter_map(|r| {
            let key = r["key"].as_str()?;
            let shape = match key.strip_prefix("phase1:alloc")? {
                "" => "get".to_owned(),
                s => s.strip_prefix('[')?.strip_suffix(']')?.to_owned(),
            };
            Some((shape, r))
        })
        .collect()
}

/// Runs the alloc gate with `plant`: each shape in `hit` must count exactly one allocation per
/// exchange above its limit (its limit is its exact clean figure) and FAIL; each shape not in
/// `hit` nor in `unasserted` must PASS.
fn alloc_shapes_with_plant(plant: &str, hit: &[&str], unasserted: &[&str]) {
    let out = out_dir(&format!("alloc-shapes-{}", plant.replace(['@', '/', ':'], "-")));
    let (code, report) = gates(&["--phase", "1", "--only", "alloc", "--plant", plant], &out, &root());
    let rows = alloc_shape_rows(&report);
    for want in hit.iter().chain(unasserted).chain(&["get"]) {
        assert!(rows.iter().any(|(s, _)| s == want), "{plant}: no alloc row for shape {want}: {report:#}");
    }
    for (shape, r) in &rows {
        let limit = r["limit"].as_f64().expect("limit");
        if hit.contains(&shape.as_str()) {
            assert_eq!(r["status"], "FAIL", "{plant} must turn {shape} red: {r:#}");
            assert_eq!(r["measured"].as_f64(), Some(limit + 1.0), "{plant}: exactly one planted allocation per exchange: {r:#}");
        } else if !unasserted.contains(&shape.as_str()) {
            assert_eq!(r["status"], "PASS", "{plant} must not reach {shape}: {r:#}");
        }
    }
    assert_eq!(code, 1, "{report:#}");
}

/// `alloc@chunked` fires where a response arrives chunked from the origin: the chunked-response
/// row, and the HTTP/1.0 row, whose response is the same chunked response de-chunked. Every
/// other row (the default one at 0 among them) is untouched.
#[test]
fn alloc_gate_sees_a_planted_allocation_on_chunked_responses_only() {
    let _m = counting();
    alloc_shapes_with_plant("alloc@chunked", &["chunked-response", "http10-dechunk"], &[]);
}

/// `alloc@error` fires where the proxy sends an error response of its own, whether it then closes
/// the client connection (413, 431, `fail` in conn.rs) or keeps it (404, 502, 504 on a keep-alive
/// request, `Conn::run`): every error row, and no other.
#[test]
fn alloc_gate_sees_a_planted_allocation_on_error_responses_only() {
    let _m = counting();
    alloc_shapes_with_plant("alloc@error", &["404", "502-refused", "502-closed", "504", "413", "431"], &[]);
}

/// `alloc` (site `request`: the start of every proxied exchange) is counted exactly once per
/// exchange in every row whose requests reach an exchange: all but 413 and 431, refused while
/// their head is read.
#[test]
fn alloc_gate_counts_one_planted_allocation_per_exchange_in_every_shape() {
    let _m = counting();
    let every = [
        "get",
        "chunked-request",
        "chunked-response",
        "post-length",
        "pipelined",
        "http10-keepalive",
        "http10-dechunk",
        "404",
        "502-refused",
        "502-closed",
        "504",
        "stale-retry",
        "upgrade",
    ];
    alloc_shapes_with_plant("alloc", &every, &[]);
}

/// Phase 2 (TLS). `alloc@tls-record` fires for every record the proxy seals: each TLS row gains
/// at least one allocation per exchange (its response's record, or over TLS to the upstream its
/// request's) and fails, the handshake row too. `alloc@handshake` fires once per completed
/// handshake on a listener: only the row that opens a connection per exchange sees it, exactly
/// one more per connection, just above its limit. `alloc@upstream-tls` fires for each write to
/// an upstream TLS connection: only the row whose workload takes that path sees it. The HTTP/2
/// rows (5.15 per stream, limit 5.20; gRPC-style 7.14, limit 7.24) pass under each but
/// `alloc@tls-record`, which reaches the one
/// over TLS (`h2-tls-get`): these runs are their clean pass; `alloc@h2-stream` is their plant.
#[test]
fn tls_alloc_rows_fail_on_one_planted_allocation_per_record_or_per_handshake() {
    let _m = counting();
    for (plant, hit) in [
        ("alloc@tls-record", &["tls-get", "tls12-get", "tls-post", "tls-handshake", "tls-upstream", "h2-tls-get"][..]),
        ("alloc@handshake", &["tls-handshake"][..]),
        ("alloc@upstream-tls", &["tls-upstream"][..]),
    ] {
        let out = out_dir(&format!("alloc-tls-{}", plant.replace(['@', '/', ':'], "-")));
        let (code, report) = gates(&["--phase", "2", "--only", "alloc", "--plant", plant], &out, &root());
        for (shape, key, clean) in PHASE2_ALLOC_ROWS {
            let r = row(&report, key);
            let m = r["measured"].as_f64().expect("measured");
            if hit.contains(&shape) {
                assert_eq!(r["status"], "FAIL", "{plant} must turn {shape} red: {r:#}");
                assert!(m - clean >= 0.99, "{plant}: at least one planted allocation per exchange in {shape}: {r:#}");
                if plant == "alloc@handshake" {
                    assert!((m - clean - 1.0).abs() < 0.05, "exactly one per connection: {r:#}");
                }
            } else {
                assert_eq!(r["status"], "PASS", "{plant} must not reach {shape}: {r:#}");
            }
        }
        assert_eq!(code, 1, "{report:#}");
    }
}

/// Phase 2's alloc rows: (probe shape, row key, clean figure per exchange).
const PHASE2_ALLOC_ROWS: [(&str, &str, f64); 10] = [
    ("tls-get", "phase2:alloc", 0.0),
    ("tls12-get", "phase2:alloc[tls12-get]", 0.0),
    ("tls-post", "phase2:alloc[tls-post]", 0.0),
    ("tls-handshake", "phase2:alloc[tls-handshake]", 196.0),
    ("tls-upstream", "phase2:alloc[tls-upstream]", 0.0),
    ("h2c-get", "phase2:alloc[h2c-get]", 5.15),
    ("h2c-post", "phase2:alloc[h2c-post]", 5.14),
    ("h2c-grpc", "phase2:alloc[h2c-grpc]", 7.1428),
    ("h2c-get-10", "phase2:alloc[h2c-get-10]", 5.15),
    ("h2-tls-get", "phase2:alloc[h2-tls-get]", 5.15),
];

/// HTTP/2 (issue 17): `alloc@h2-stream` fires once per HTTP/2 stream the proxy accepts (data::h2::
/// conn): every HTTP/2 row counts one allocation more per stream (5.15 + 1 above the 5.20 limits,
/// sequential, 10 concurrent, POST and over TLS alike; the gRPC-style row 7.14 + 1 above its 7.24)
/// and fails; no HTTP/1.1 row sees it. One in ten streams (`/10`, +0.1) fails every HTTP/2 row
/// too: the limits sit 0.05-0.06 above exact figures. The rows' clean pass is in the TLS test's
/// runs above.
#[test]
fn h2_alloc_rows_fail_on_one_planted_allocation_per_stream() {
    let _m = counting();
    let plant = "alloc@h2-stream";
    let out = out_dir("alloc-h2-stream");
    let (code, report) = gates(&["--phase", "2", "--only", "alloc", "--plant", plant], &out, &root());
    for (shape, key, clean) in PHASE2_ALLOC_ROWS {
        let r = row(&report, key);
        let m = r["measured"].as_f64().expect("measured");
        if shape.starts_with("h2") {
            assert_eq!(r["status"], "FAIL", "{plant} must turn {shape} red: {r:#}");
            assert!((m - clean - 1.0).abs() < 0.05, "{plant}: exactly one planted allocation per stream in {shape}: {r:#}");
        } else {
            assert_eq!(r["status"], "PASS", "{plant} must not reach {shape}: {r:#}");
        }
    }
    assert_eq!(code, 1, "{report:#}");
    let plant = "alloc@h2-stream/10";
    let out = out_dir("alloc-h2-stream-10");
    let (code, report) = gates(&["--phase", "2", "--only", "alloc", "--plant", plant], &out, &root());
    for (shape, key, clean) in PHASE2_ALLOC_ROWS.iter().filter(|(s, _, _)| s.starts_with("h2")) {
        let r = row(&report, key);
        let m = r["measured"].as_f64().expect("measured");
        assert_eq!(r["status"], "FAIL", "{plant} must turn {shape} red: {r:#}");
        assert!((m - clean - 0.1).abs() < 0.01, "{plant}: one planted allocation every ten streams in {shape}: {r:#}");
    }
    assert_eq!(code, 1, "{report:#}");
}

/// Phase 3's alloc rows: (probe shape, row key, the lowest and highest clean figure per request
/// measured: h3-get and h3-post repeat to ~0.002, h3-get-10 moves with how many datagrams
/// quinn reads per receive: 56.4227-56.4933 over 45 runs, then 56.4044 in a fresh-clone CI run
/// (its band here is wide, down to 56.30; contracts/phase3.toml).
const PHASE3_ALLOC_ROWS: [(&str, &str, f64, f64); 3] = [
    ("h3-get", "phase3:alloc", 57.3211, 57.3227),
    ("h3-get-10", "phase3:alloc[h3-get-10]", 56.30, 56.4933),
    ("h3-post", "phase3:alloc[h3-post]", 61.3435, 61.3463),
];

/// HTTP/3 (phase 3): `alloc@h3-stream` fires once per HTTP/3 request (data::h3::stream, where the
/// request's head is resolved): every HTTP/3 row counts one allocation more per request and
/// FAILs; one every ten requests (`/10`) FAILs h3-get and h3-post (their limits sit ~0.05 above
/// figures exact to ~0.002), not reliably h3-get-10: its clean figure moves by ~0.09 run to run,
/// so +0.1 on a low run stays under its limit (this test checks its figure, not its verdict). `alloc` (site `request`: data::exchange, which an HTTP/3 stream goes
/// through as an HTTP/2 one does) is one more per HTTP/3 request as well. The planted build with
/// nothing live (`none`) PASSes every row, within the clean spread. The client is a process of
/// its own (`h3-client`), so each figure is the proxy's alone.
#[test]
fn h3_alloc_rows_fail_on_one_planted_allocation_per_request() {
    let _m = counting();
    for (plant, per) in [("none", 0.0), ("alloc@h3-stream", 1.0), ("alloc@h3-stream/10", 0.1), ("alloc", 1.0)] {
        let out = out_dir(&format!("alloc-h3-{}", plant.replace(['@', '/', ':'], "-")));
        let (code, report) = gates(&["--phase", "3", "--only", "alloc", "--plant", plant], &out, &root());
        for (shape, key, low, high) in PHASE3_ALLOC_ROWS {
            let r = row(&report, key);
            let m = r["measured"].as_f64().expect("measured");
            assert!(m - per >= low - 0.005 && m - per <= high + 0.005, "{plant}: {per} planted allocations per request in {shape}: {r:#}");
            if per > 0.0 && per < 1.0 && shape == "h3-get-10" {
                continue; // one in ten sits inside this row's run-to-run spread
            }
            let want = if per == 0.0 { "PASS" } else { "FAIL" };
            assert_eq!(r["status"], want, "{plant} in {shape}: {r:#}");
        }
        assert_eq!(code, if per == 0.0 { 0 } else { 1 }, "{plant}: {report:#}");
    }
}

/// Phase 2's instruction gate judges what TLS adds beside rustls alone: ~400 instructions more per
/// sealed record (`instr@tls-record:100`, ~3 % of what TLS adds) fails it, on the hard limit and on
/// the ratio to the floor; the planted build with nothing live (`none`) passes. Until TLS to the
/// upstream moved the row from 11,646 to 11,707, ~80 more (`:20`) passed too; the limits stay where
/// they were set, and the planted build itself costs ~100 more than the clean one (11,806, 0.728×
/// the floor): ~40 more (`:10`, 0.732×) now fails on the ratio. The margin is ~35 instructions.
#[test]
fn tls_instruction_gate_fails_on_a_few_hundred_instructions_per_record() {
    let _m = counting();
    let out = out_dir("instr-tls-above");
    let (code, report) =
        gates(&["--phase", "2", "--only", "instructions", "--instruction-groups", "tls", "--plant", "instr@tls-record:100"], &out, &root());
    let r = row(&report, "phase2:instructions");
    assert_eq!((code, r["status"].as_str()), (1, Some("FAIL")), "{r:#}");
    let ratio = r["details"]["floor_ratio"].as_f64().expect("ratio");
    assert!(ratio > r["details"]["floor_ratio_limit"].as_f64().expect("limit"), "the ratio alone fails it: {r:#}");
    let out = out_dir("instr-tls-below");
    let (code, report) =
        gates(&["--phase", "2", "--only", "instructions", "--instruction-groups", "tls", "--plant", "none"], &out, &root());
    let r = row(&report, "phase2:instructions");
    assert_eq!((code, r["status"].as_str()), (0, Some("PASS")), "{r:#}");
}

/// Phase 2's per-connection rows judge what a TLS handshake costs, full and resumed, beside
/// rustls alone: `instr@handshake:N` burns ~4 N instructions each time the proxy completes a
/// handshake (full or resumed), so it moves both rows by the same amount. The clean figures
/// (contracts/phase2.toml) leave +66 k (full) and +44 k (resumed) instructions under the hard
/// limits, +50 k and +22 k under the ratio limits: 22,000 iterations (~89 k) fail both rows, on
/// the ratio as well as the hard limit (full 3,734,728, 20.7 k over); 4,000 (~16 k) pass both.
/// The full row is exact to ~3 k only since the test PKI stopped changing run to run (in CI with
/// a new certificate per run the same plant once read 3,708,208, under the limit:
/// results/gates/2026-12-01-vm/tls-handshake-determinism). Only the group `tls_handshakes` runs.
#[test]
fn tls_handshake_instruction_rows_fail_on_a_few_thousand_instructions_per_handshake() {
    let _m = counting();
    let keys = ["phase2:instructions@tls-full-handshake", "phase2:instructions@tls-resumed-handshake"];
    let run = |plant: &str| {
        let out = out_dir(&format!("instr-hs-{}", plant.replace(['@', ':'], "-")));
        gates(&["--phase", "2", "--only", "instructions", "--instruction-groups", "tls_handshakes", "--plant", plant], &out, &root())
    };
    let above = format!("instr@handshake:{ABOVE_HANDSHAKE}");
    let (code, report) = run(&above);
    for key in keys {
        let r = row(&report, key);
        assert_eq!(r["status"], "FAIL", "{above}: {r:#}");
        let ratio = r["details"]["floor_ratio"].as_f64().expect("ratio");
        assert!(ratio > r["details"]["floor_ratio_limit"].as_f64().expect("limit"), "the ratio alone fails it: {r:#}");
    }
    assert_eq!(code, 1, "{report:#}");
    assert!(report["rows"].as_array().is_some_and(|rows| rows.len() == 2), "only the group asked for: {report:#}");
    let below = format!("instr@handshake:{BELOW_HANDSHAKE}");
    let (code, report) = run(&below);
    for key in keys {
        let r = row(&report, key);
        assert_eq!(r["status"], "PASS", "{below}: {r:#}");
    }
    assert_eq!(code, 0, "{report:#}");
}

/// Planted loop iterations per handshake (~4.04 instructions each): see the test above.
const ABOVE_HANDSHAKE: u64 = 22_000;
const BELOW_HANDSHAKE: u64 = 4_000;

/// Phase 2's HTTP/2 rows judge the proxy's own instructions per request, at 1, 10 and 100
/// streams in flight, beside a relay built on h2 alone: `instr@h2-stream:N` burns ~4 N
/// instructions at the start of each HTTP/2 stream's exchange. The planted build with nothing
/// live leaves 1,045-1,146 instructions under the hard limits and 750-1,200 under the ratio
/// limits (contracts/phase2.toml; the 100-stream figure and its floor move by up to ~0.6 % run to
/// run): 700 iterations (~2,800) fail all three rows, on the ratio as well as the hard limit; 25
/// (~100) pass all three. Only the group `h2` runs (~15 s a run).
#[test]
fn h2_instruction_rows_fail_on_a_thousand_instructions_per_stream() {
    let _m = counting();
    let keys = ["phase2:instructions@h2-streams-1", "phase2:instructions@h2-streams-10", "phase2:instructions@h2-streams-100"];
    let run = |plant: &str| {
        let out = out_dir(&format!("instr-h2-{}", plant.replace(['@', ':'], "-")));
        gates(&["--phase", "2", "--only", "instructions", "--instruction-groups", "h2", "--plant", plant], &out, &root())
    };
    let above = format!("instr@h2-stream:{ABOVE_H2_STREAM}");
    let (code, report) = run(&above);
    for key in keys {
        let r = row(&report, key);
        assert_eq!(r["status"], "FAIL", "{above}: {r:#}");
        assert!(r["measured"].as_f64() > r["limit"].as_f64(), "over the hard limit: {r:#}");
        let ratio = r["details"]["floor_ratio"].as_f64().expect("ratio");
        assert!(ratio > r["details"]["floor_ratio_limit"].as_f64().expect("limit"), "the ratio alone fails it: {r:#}");
    }
    assert_eq!(code, 1, "{report:#}");
    assert!(report["rows"].as_array().is_some_and(|rows| rows.len() == 3), "only the group asked for: {report:#}");
    let below = format!("instr@h2-stream:{BELOW_H2_STREAM}");
    let (code, report) = run(&below);
    for key in keys {
        let r = row(&report, key);
        assert_eq!(r["status"], "PASS", "{below}: {r:#}");
    }
    assert_eq!(code, 0, "{report:#}");
}

/// Planted loop iterations per HTTP/2 stream (~4.04 instructions each): see the test above.
const ABOVE_H2_STREAM: u64 = 700;
const BELOW_H2_STREAM: u64 = 25;

/// Phase 1's memory gate with `PROXY_PLANTED`, one round (`--memory-rounds 1`: a plant every
/// round must catch, caught in one; `combine_rounds` fails a row only when every round fails).
/// RSS is the proxy's own, so the counting tests running beside these do not move it.
fn memory_gate(plant: &str, name: &str) -> (i32, Value) {
    memory_gate_of("1", plant, name)
}

/// [`memory_gate`] for the contract of `phase` (phase 2's measures idle TLS connections).
fn memory_gate_of(phase: &str, plant: &str, name: &str) -> (i32, Value) {
    let out = out_dir(name);
    gates(&["--phase", phase, "--only", "memory", "--plant", plant, "--memory-rounds", "1"], &out, &root())
}

fn memory_rows<'a>(report: &'a Value, what: &str) -> Vec<&'a Value> {
    let rows = report["rows"].as_array().expect("rows");
    rows.iter().filter(|r| r["key"].as_str().is_some_and(|k| k.contains(what))).collect()
}

/// Idle connections, and connections part-way through a head, never give their working set back
/// (`hold`): every row turns red, by far (each connection keeps ~20 KiB of buffers).
#[test]
fn memory_gate_fails_when_idle_connections_keep_their_buffers() {
    let _m = counting();
    let (code, report) = memory_gate("hold", "memory-hold");
    assert_eq!(code, 1, "{report:#}");
    let per_conn = memory_rows(&report, ":memory:per_conn@");
    assert_eq!(per_conn.len(), 2, "{report:#}");
    for r in per_conn {
        assert_eq!(r["status"], "FAIL", "{r:#}");
        assert!(r["measured"].as_f64().is_some_and(|m| m > 10.0), "a held working set is ~20 KiB: {r:#}");
    }
    let after = memory_rows(&report, ":memory:after_release@");
    assert_eq!(after.len(), 1, "{report:#}");
    assert_eq!(after[0]["status"], "FAIL", "{:#}", after[0]);
    // A slow head keeps its working set too (it never reaches `release_idle_after`).
    let partial = memory_rows(&report, ":memory:partial_head@");
    assert_eq!(partial.len(), 1, "{report:#}");
    assert_eq!(partial[0]["status"], "FAIL", "{:#}", partial[0]);
    assert!(partial[0]["measured"].as_f64().is_some_and(|m| m > 10.0), "{:#}", partial[0]);
}

/// Every connection 512 bytes bigger (`conn:512`, resident, freed when it closes): ~0.66 KiB per
/// idle connection becomes ~1.2, just above the 1 KiB limit, and both counts see it.
#[test]
fn memory_gate_fails_when_every_connection_grows_just_past_the_limit() {
    let _m = counting();
    let (code, report) = memory_gate("conn:512", "memory-conn");
    assert_eq!(code, 1, "{report:#}");
    let per_conn = memory_rows(&report, ":memory:per_conn@");
    assert_eq!(per_conn.len(), 2, "{report:#}");
    for r in per_conn {
        assert_eq!(r["status"], "FAIL", "{r:#}");
        assert!(r["measured"].as_f64().is_some_and(|m| m > 1.0 && m < 1.6), "0.5 KiB above ~0.66: {r:#}");
    }
}

/// One working set in a hundred leaked when it is given back (`leak/100`): too little per
/// connection for `per_conn@10000` to see (0.89 KiB, PASS, when this test was written), but the
/// memory never comes back: `after_release` fails (×1.45; `leak/200` measured ×1.10, at the limit).
#[test]
fn memory_gate_fails_when_a_few_working_sets_are_leaked() {
    let _m = counting();
    let (code, report) = memory_gate("leak/100", "memory-leak");
    assert_eq!(code, 1, "{report:#}");
    let after = memory_rows(&report, ":memory:after_release@");
    assert_eq!(after.len(), 1, "{report:#}");
    assert_eq!(after[0]["status"], "FAIL", "{:#}", after[0]);
}

/// Phase 2's memory gate (idle TLS connections): with `tls-hold:4096` every TLS connection holds
/// a page more (written, resident) for its life, what one that kept the touched page of its record
/// read buffer would hold: ~4.2 KiB per idle TLS connection becomes ~8, the reversal of "an idle
/// TLS connection holds its keys and no buffer". Both counts fail. The planted build with nothing
/// live (`--plant none`) is the same binary, and passes: the rows move by the plant alone.
#[test]
fn tls_memory_gate_fails_when_idle_tls_connections_hold_a_page_more() {
    let _m = counting();
    let (code, report) = memory_gate_of("2", "none", "memory-tls-none");
    let clean = memory_rows(&report, "phase2:memory:");
    // The TLS rows and the HTTP/2 rows (their clean pass: see the h2-hold test below).
    assert_eq!(clean.len(), 6, "{report:#}");
    for r in &clean {
        assert_eq!(r["status"], "PASS", "{r:#}");
    }
    assert_eq!(code, 0, "{report:#}");
    let clean_per_conn: Vec<f64> = memory_rows(&report, "phase2:memory:per_conn@").iter().filter_map(|r| r["measured"].as_f64()).collect();

    let (code, report) = memory_gate_of("2", "tls-hold:4096", "memory-tls-hold");
    assert_eq!(code, 1, "{report:#}");
    let per_conn = memory_rows(&report, "phase2:memory:per_conn@");
    assert_eq!(per_conn.len(), 2, "{report:#}");
    for (r, clean) in per_conn.iter().zip(&clean_per_conn) {
        assert_eq!(r["status"], "FAIL", "{r:#}");
        let m = r["measured"].as_f64().expect("measured");
        assert!(m > r["limit"].as_f64().expect("limit") && m > clean + 3.0, "a page more each: {r:#}");
        assert!(r["note"].as_str().is_some_and(|n| n.contains("idle TLS keep-alive connections")), "{r:#}");
    }
}

/// Phase 2's HTTP/2 memory rows (idle HTTP/2 connections over TLS, ~33 KiB each, limit 38): with
/// `h2-hold:8192` every HTTP/2 connection holds 8 KiB more (written, resident) for its life: both
/// counts fail, and the HTTP/1.1 TLS rows of the same run pass (the plant reaches HTTP/2 alone).
/// The rows' clean pass is the `none` run of the TLS test above (the same planted binary).
#[test]
fn h2_memory_rows_fail_when_idle_http2_connections_hold_more() {
    let _m = counting();
    let (code, report) = memory_gate_of("2", "h2-hold:8192", "memory-h2-hold");
    assert_eq!(code, 1, "{report:#}");
    let h2 = memory_rows(&report, "phase2:memory:http2@");
    assert_eq!(h2.len(), 2, "{report:#}");
    for r in h2 {
        assert_eq!(r["status"], "FAIL", "{r:#}");
        let m = r["measured"].as_f64().expect("measured");
        assert!(m > r["limit"].as_f64().expect("limit") && m > 38.0, "8 KiB more each: {r:#}");
        assert!(r["note"].as_str().is_some_and(|n| n.contains("idle HTTP/2 connections")), "{r:#}");
    }
    for r in memory_rows(&report, "phase2:memory:per_conn@") {
        assert_eq!(r["status"], "PASS", "h2-hold must not reach HTTP/1.1 connections: {r:#}");
    }
}

/// Phase 3's memory rows (idle HTTP/3 connections; phase 3 holds no HTTP/1.1, TLS or HTTP/2
/// connection): the planted build with nothing live passes all three; with `h3-hold:8192` every
/// HTTP/3 connection holds 8 KiB more (written, resident) from its handshake to its close: both
/// counts fail; with `leak` every HTTP/3 connection's state (h3's, and quinn's through it) is
/// leaked when it ends: the after-release row fails.
#[test]
fn h3_memory_rows_fail_when_idle_http3_connections_hold_more_or_leak() {
    let _m = timing();
    let (code, report) = memory_gate_of("3", "none", "memory-h3-none");
    let rows = memory_rows(&report, "phase3:memory:");
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, ["phase3:memory:http3@1000", "phase3:memory:http3@10000", "phase3:memory:http3_after_release@10000"], "{report:#}");
    for r in &rows {
        assert_eq!(r["status"], "PASS", "{r:#}");
    }
    assert_eq!(code, 0, "{report:#}");

    let (code, report) = memory_gate_of("3", "h3-hold:8192", "memory-h3-hold");
    assert_eq!(code, 1, "{report:#}");
    let h3 = memory_rows(&report, "phase3:memory:http3@");
    assert_eq!(h3.len(), 2, "{report:#}");
    for r in h3 {
        assert_eq!(r["status"], "FAIL", "{r:#}");
        let m = r["measured"].as_f64().expect("measured");
        assert!(m > r["limit"].as_f64().expect("limit"), "8 KiB more each: {r:#}");
        assert!(r["note"].as_str().is_some_and(|n| n.contains("idle HTTP/3 connections")), "{r:#}");
    }

    let (code, report) = memory_gate_of("3", "leak", "memory-h3-leak");
    assert_eq!(code, 1, "{report:#}");
    let after = memory_rows(&report, "phase3:memory:http3_after_release@");
    assert_eq!(after.len(), 1, "{report:#}");
    assert_eq!(after[0]["status"], "FAIL", "{:#}", after[0]);
}
