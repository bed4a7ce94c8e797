//! Every gate proven able to fail: each test plants a regression and runs the real gate runner
//! (`gates` binary) against it, expecting a red row; the clean tree is expected green.
//!
//! Planted builds use `target/gates-<features>` so they never overwrite the clean binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// The gates measure time and CPU: they must not run beside each other (or beside a build).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let _one_at_a_time = serial();
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
    // A copy of the contract over a fixture tree whose hot-path file holds a Mutex.
    let fixture = out_dir("static-fixture");
    std::fs::create_dir_all(fixture.join("contracts")).expect("mkdir");
    std::fs::copy(root().join("contracts/phase1.toml"), fixture.join("contracts/phase1.toml")).expect("copy contract");
    std::fs::create_dir_all(fixture.join("proxy/src/data")).expect("mkdir");
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
    assert!(r["note"].as_str().is_some_and(|n| n.contains("proxy/src/data/conn.rs:1") && n.contains("std-mutex")), "{r:#}");
}

#[test]
fn static_gate_fails_when_a_mutex_is_planted_in_the_proxy() {
    let out = out_dir("static-lock");
    let (code, report) = gates(&["--only", "static", "--features", "planted-lock"], &out, &root());
    let r = row(&report, "phase1:static");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL");
    let hits = r["details"]["violations"].as_array().expect("violations");
    assert!(hits.iter().any(|v| v["prohibition"] == "std-mutex" && v["file"].as_str().is_some_and(|f| f.ends_with("planted.rs"))), "{r:#}");
}

#[test]
fn static_and_alloc_gates_pass_on_the_clean_tree_and_hyper_is_the_control() {
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

#[test]
fn alloc_gate_fails_with_one_planted_allocation_per_request() {
    let out = out_dir("alloc");
    let (code, report) = gates(&["--only", "alloc", "--features", "planted-alloc"], &out, &root());
    let r = row(&report, "phase1:alloc");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL", "{r:#}");
    assert_eq!(r["measured"].as_f64(), Some(1.0), "exactly the planted allocation: {r:#}");
}

#[test]
fn alloc_gate_fails_with_a_planted_format_per_request() {
    let out = out_dir("format");
    let (code, report) = gates(&["--only", "alloc", "--features", "planted-format"], &out, &root());
    let r = row(&report, "phase1:alloc");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL", "{r:#}");
    assert!(r["measured"].as_f64().is_some_and(|n| n >= 1.0), "{r:#}");
}

#[test]
fn latency_gate_fails_with_a_planted_sleep() {
    let out = out_dir("sleep");
    let (code, report) = gates(&["--only", "latency", "--features", "planted-sleep"], &out, &root());
    let r = row(&report, "phase1:latency");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL", "a 2 ms sleep per request must breach +300 µs: {r:#}");
    assert!(r["measured"].as_f64().is_some_and(|n| n > 1500.0), "{r:#}");
}

#[test]
fn syscall_gate_fails_with_one_planted_syscall_per_request() {
    let out = out_dir("syscall");
    let (code, report) = gates(&["--only", "syscalls", "--features", "planted-syscall"], &out, &root());
    let r = row(&report, "phase1:syscalls");
    assert_eq!(code, 1);
    assert_eq!(r["status"], "FAIL", "one getpid per request must breach 6.5: {r:#}");
    let getpid = r["details"]["by_syscall_per_request"]["getpid"].as_f64();
    assert!(getpid.is_some_and(|n| (n - 1.0).abs() < 0.01), "exactly the planted syscall: {r:#}");
}

#[test]
fn instruction_gate_fails_on_a_planted_format_against_a_clean_baseline() {
    let out = out_dir("instr");
    let baseline = out.join("baseline.json");
    let b = baseline.to_str().expect("utf-8 path");
    let (code, report) = gates(&["--only", "instructions", "--save-baseline", "--baseline", b], &out, &root());
    let clean = row(&report, "phase1:instructions");
    assert_eq!(clean["status"], "PASS", "{clean:#}");
    assert_eq!(code, 0);
    let (code, report) = gates(&["--only", "instructions", "--baseline", b, "--features", "planted-format"], &out, &root());
    let r = row(&report, "phase1:instructions");
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["status"], "FAIL", "{r:#}");
    assert!(r["delta_pct"].as_f64().is_some_and(|d| d > 2.0), "{r:#}");
    assert!(r["note"].as_str().is_some_and(|n| n.contains("soft limit")), "{r:#}");
}

#[test]
fn instruction_counts_are_exact_run_to_run() {
    let out = out_dir("instr-repeat");
    let (_, a) = gates(&["--only", "instructions"], &out, &root());
    let (_, b) = gates(&["--only", "instructions"], &out, &root());
    let (a, b) = (row(&a, "phase1:instructions"), row(&b, "phase1:instructions"));
    assert!(a["measured"].as_f64().is_some());
    assert_eq!(a["measured"], b["measured"], "{a:#}\n{b:#}");
}
