//! The Python scripts' own unit tests, run under `cargo test` so the README's one test command
//! covers them: the reliability scripts' verdicts (scripts/reliability/test_*.py) and the shared
//! plumbing and the comparison's modules (scripts/tests/test_*.py). The latter call the Rust
//! owners of what they read: gates' `probe` binary (schedstat, strace summaries) and
//! `loadgen hist` (merged HdrHistograms), passed as PROBE_BIN and LOADGEN_BIN.

use std::path::{Path, PathBuf};
use std::process::Command;

use gates::runner::{Options, cargo_build_plain};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs `python3 -m unittest discover` over `dir` with `env`; fails with its output unless
/// every test passed and there was at least one.
fn unittest(dir: &Path, env: &[(&str, &Path)]) {
    let mut cmd = Command::new("python3");
    cmd.args(["-B", "-m", "unittest", "discover", "-s"]).arg(dir).args(["-p", "test_*.py"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3 is needed by the scripts and their tests");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK") && !text.contains("Ran 0 tests"), "{text}");
}

#[test]
fn reliability_script_verdicts() {
    unittest(&root().join("scripts/reliability"), &[]);
}

#[test]
fn shared_plumbing_and_comparison_modules() {
    let opts =
        Options { root: root(), phases: None, only: None, plant: None, memory_rounds: None, instruction_groups: None, verbose: false };
    let loadgen = cargo_build_plain(&opts, "loadgen", "loadgen").expect("build loadgen");
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_probe"));
    unittest(&root().join("scripts/tests"), &[("PROBE_BIN", &probe), ("LOADGEN_BIN", &loadgen)]);
}
