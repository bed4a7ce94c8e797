//! `proxy check --config FILE`: exit 0 for a valid config, otherwise a message naming the file,
//! the line and the key.

use crate::support::{run_proxy_cmd, write_temp};
use std::path::Path;

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in config")
}

fn check(text: &str) -> (Option<i32>, String, String) {
    let path = write_temp("check.toml", text);
    let out = run_proxy_cmd(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    out
}

const VALID: &str = r#"[[listeners]]
address = "127.0.0.1:0"

[[routes]]
path_prefix = "/"
upstream = "web"

[upstreams.web]
servers = ["127.0.0.1:9000"]
"#;

#[test]
fn check_accepts_the_shipped_examples_and_a_minimal_config() {
    for example in ["examples/basic.toml", "examples/full.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let (code, _, err) = run_proxy_cmd(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{example}: {err}");
    }
    let (code, _, err) = check(VALID);
    assert_eq!(code, Some(0), "{err}");
}

/// Each broken config: the key the message must name, and the text of the offending line.
#[test]
fn check_names_file_line_and_key_for_each_broken_rule() {
    #[rustfmt::skip]
    let cases: &[(&str, String, &str, &str)] = &[
        ("unknown upstream group",
         VALID.replace("upstream = \"web\"", "upstream = \"nope\""),
         "routes[0].upstream", "upstream = \"nope\""),
        ("unknown key (deny_unknown_fields)",
         VALID.replace("path_prefix = \"/\"", "path_prefix = \"/\"\nbogus_key = 1"),
         "bogus_key", "bogus_key = 1"),
        ("bad duration",
         format!("{VALID}\n[limits]\nheader_read_timeout = \"10 parsecs\"\n"),
         "header_read_timeout", "header_read_timeout = \"10 parsecs\""),
        ("bad server address",
         VALID.replace("\"127.0.0.1:9000\"", "\"not an address\""),
         "servers", "servers = [\"not an address\"]"),
        ("bad balance",
         VALID.replace("servers = [\"127.0.0.1:9000\"]", "servers = [\"127.0.0.1:9000\"]\nbalance = \"random-ish\""),
         "balance", "balance = \"random-ish\""),
    ];
    let mut failures = Vec::new();
    for (what, text, key, bad_line) in cases {
        let path = write_temp("bad.toml", text);
        let file_name = path.file_name().unwrap().to_str().unwrap().to_string();
        let (code, _, err) = run_proxy_cmd(&["check", "--config", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        let line = line_of(text, bad_line);
        let located = format!("{file_name}:{line}:");
        if code == Some(0) || code.is_none() {
            failures.push(format!("{what}: exit {code:?}, expected non-zero"));
        }
        if !err.contains(&located) || !err.contains(key) {
            failures.push(format!("{what}: stderr should contain `{located}` and `{key}`, got: {err:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_config_file_fails_fast_with_a_message() {
    let path = std::env::temp_dir().join("proxy-it-does-not-exist.toml");
    let (code, _, err) = run_proxy_cmd(&["check", "--config", path.to_str().unwrap()]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}");
    assert!(err.contains("proxy-it-does-not-exist.toml"), "stderr: {err:?}");
    let (code, _, err) = run_proxy_cmd(&["--config", path.to_str().unwrap(), "--workers", "1"]);
    assert!(code.is_some_and(|c| c != 0), "serving without a config: exit {code:?}, {err}");
}
