//! The Python scripts' own unit tests (verdict logic of the reliability scripts), run under
//! `cargo test` so the README's one test command covers them.

use std::path::Path;
use std::process::Command;

#[test]
fn reliability_script_verdicts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reliability");
    let out = Command::new("python3")
        .args(["-B", "-m", "unittest", "discover", "-s"])
        .arg(&dir)
        .args(["-p", "test_*.py"])
        .output()
        .expect("python3 is needed by the scripts and their tests");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK") && !text.contains("Ran 0 tests"), "{text}");
}
