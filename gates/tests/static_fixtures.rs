//! The static gate against constructs that once slipped past it. Each test writes a small tree
//! (the workspace's contract, a hot-path file or two, optionally manifests and a crate root)
//! and runs the real `scan_contract` over it: a construct is caught when a violation is
//! reported at its file and line.
//!
//! Only `scan_contract`, `Violation` and `contract::load` are used, so the same file also runs
//! against an older scanner (that is how each fixture was shown to fail before the allowlist).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gates::contract::{self, Contract};
use gates::scan::{Violation, scan_contract};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn contract() -> Contract {
    contract::load(&workspace().join("contracts/phase1.toml")).unwrap()
}

/// A tree with the contract and `files` (path, text); `proxy/src/snapshot.rs` is added empty
/// when not given. Scanned without features.
fn scan(name: &str, files: &[(&str, &str)]) -> Vec<Violation> {
    scan_with(name, files, &[])
}

fn scan_with(name: &str, files: &[(&str, &str)], features: &[String]) -> Vec<Violation> {
    let root = std::env::temp_dir().join(format!("gates-static-fixture-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut all: Vec<(&str, &str)> = files.to_vec();
    if !files.iter().any(|(p, _)| *p == "proxy/src/snapshot.rs") {
        all.push(("proxy/src/snapshot.rs", "pub struct Snapshot;\n"));
    }
    for (p, text) in all {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
    let (v, _) = scan_contract(&root, &contract(), features).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    v
}

const CONN: &str = "proxy/src/data/conn.rs";

/// A violation with prohibition `id` (any when `None`) at `file:line`.
#[track_caller]
fn caught(v: &[Violation], file: &str, line: usize, id: Option<&str>) {
    assert!(
        v.iter().any(|x| x.file == Path::new(file) && x.line == line && id.is_none_or(|id| x.prohibition == id)),
        "expected {} at {file}:{line}; got {v:#?}",
        id.unwrap_or("a violation")
    );
}

#[track_caller]
fn clean(v: &[Violation]) {
    assert!(v.is_empty(), "expected no violation; got {v:#?}");
}

// 1. cfg predicates: only a predicate that implies `test` hides an item.

#[test]
fn cfg_not_test_is_scanned() {
    let v = scan("cfg-not-test", &[(CONN, "#[cfg(not(test))]\nfn f() -> usize { format!(\"x\").len() }\n")]);
    caught(&v, CONN, 2, Some("format"));
}

#[test]
fn cfg_any_test_or_feature_is_scanned() {
    let v = scan("cfg-any", &[(CONN, "#[cfg(any(test, feature = \"x\"))]\nmod m {\n    fn f() -> usize { format!(\"x\").len() }\n}\n")]);
    caught(&v, CONN, 3, Some("format"));
}

#[test]
fn cfg_attr_attribute_macro_is_scanned() {
    let v = scan("cfg-attr", &[(CONN, "#[cfg_attr(not(test), some_crate::hook)]\nfn f() {}\n")]);
    caught(&v, CONN, 1, None);
}

#[test]
fn cfg_all_test_and_more_is_skipped() {
    let v = scan("cfg-all", &[(CONN, "#[cfg(all(test, feature = \"x\"))]\nfn f() -> usize { format!(\"x\").len() }\n")]);
    clean(&v);
}

// 2. Macros renamed by `use`.

#[test]
fn renamed_format_macro() {
    let v = scan("rename-format", &[(CONN, "use std::format as f;\nfn g() -> usize { f!(\"x\").len() }\n")]);
    caught(&v, CONN, 2, Some("format"));
}

#[test]
fn renamed_tracing_macro() {
    let v = scan("rename-info", &[(CONN, "use tracing::info as i;\nfn g() { i!(\"x\"); }\n")]);
    caught(&v, CONN, 2, Some("tracing-unsampled"));
}

// 3. Paths shortened by `use`.

#[test]
fn module_alias_io_stderr() {
    let v = scan("io-stderr", &[(CONN, "use std::io;\nfn g() { let _ = io::stderr(); }\n")]);
    caught(&v, CONN, 2, Some("blocking-io"));
}

#[test]
fn module_alias_sync_mutex() {
    let v = scan("sync-mutex", &[(CONN, "use std::sync;\nfn g() { let _ = sync::Mutex::new(0); }\n")]);
    caught(&v, CONN, 2, Some("std-mutex"));
}

#[test]
fn module_alias_renamed_sync_condvar() {
    let v = scan("sync-condvar", &[(CONN, "use std::sync as s;\nfn g() { let _ = s::Condvar::new(); }\n")]);
    caught(&v, CONN, 2, Some("not-allowlisted"));
}

#[test]
fn module_alias_thread_sleep() {
    let v = scan("thread-sleep", &[(CONN, "use std::thread as t;\nfn g() { t::sleep(std::time::Duration::from_millis(1)); }\n")]);
    caught(&v, CONN, 2, Some("blocking-io"));
}

#[test]
fn glob_import_of_std_sync() {
    let v = scan("glob-sync", &[(CONN, "use std::sync::*;\nfn g() { let _ = Mutex::new(0); }\n")]);
    caught(&v, CONN, 1, Some("glob-import"));
    caught(&v, CONN, 2, Some("std-mutex"));
}

#[test]
fn glob_import_hides_a_barrier() {
    let v = scan("glob-barrier", &[(CONN, "use std::sync::*;\nfn g() { let _ = Barrier::new(2); }\n")]);
    caught(&v, CONN, 1, None);
}

#[test]
fn several_glob_imports_resolve_quickly() {
    let src = "use std::sync::*;\nuse std::io::*;\nuse tokio::time::*;\nfn g(a: u8, b: u8) -> u8 {\n    let _ = stderr();\n    a + b\n}\n";
    let started = std::time::Instant::now();
    let v = scan("many-globs", &[(CONN, src)]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    for line in 1..=3 {
        caught(&v, CONN, line, Some("glob-import"));
    }
}

// 4. A banned single segment used as a method or a macro.

#[test]
fn block_on_as_a_method() {
    let v = scan("block-on", &[(CONN, "async fn g(h: &Handle) {\n    h.block_on(async {});\n}\n")]);
    caught(&v, CONN, 2, Some("blocking-io"));
}

#[test]
fn block_on_as_a_method_inside_select() {
    let v = scan(
        "block-on-select",
        &[(CONN, "async fn g(h: &Handle) {\n    tokio::select! {\n        _ = a() => { h.block_on(b()); }\n    }\n}\n")],
    );
    caught(&v, CONN, 3, Some("blocking-io"));
}

#[test]
fn block_on_as_a_macro() {
    let v = scan("block-on-macro", &[(CONN, "fn g() {\n    block_on!(x);\n}\n")]);
    caught(&v, CONN, 2, Some("blocking-io"));
}

// 5. The sampled-branch exemption holds only where the branch runs for sampled requests only.

#[test]
fn negated_sampled_is_not_sampled() {
    let v = scan("not-sampled", &[(CONN, "fn g(sampled: bool) {\n    if !sampled { tracing::info!(\"x\"); }\n}\n")]);
    caught(&v, CONN, 2, Some("tracing-unsampled"));
}

#[test]
fn sampled_or_true_is_not_sampled() {
    let v = scan("sampled-or", &[(CONN, "fn g(sampled: bool) {\n    if sampled || true { tracing::info!(\"x\"); }\n}\n")]);
    caught(&v, CONN, 2, Some("tracing-unsampled"));
}

#[test]
fn sampled_compared_is_not_sampled() {
    let v = scan("sampled-eq", &[(CONN, "fn g(sampled: bool) {\n    if sampled == false { tracing::info!(\"x\"); }\n}\n")]);
    caught(&v, CONN, 2, Some("tracing-unsampled"));
}

#[test]
fn the_else_of_a_sampled_branch_is_not_sampled() {
    let v = scan("sampled-else", &[(CONN, "fn g(sampled: bool) {\n    if sampled {} else {\n        tracing::info!(\"x\");\n    }\n}\n")]);
    caught(&v, CONN, 3, Some("tracing-unsampled"));
}

#[test]
fn sampled_and_chains_fields_and_methods_are_sampled() {
    let src = "struct W { sampled: bool }\nimpl W {\n    fn is_sampled(&self) -> bool { self.sampled }\n    fn g(&self, x: bool) {\n        if x && (self.sampled) { tracing::info!(\"a\"); }\n        if self.is_sampled() && x { tracing::info!(\"b\"); }\n    }\n}\n";
    clean(&scan("sampled-ok", &[(CONN, src)]));
}

// 6. Renamed crates.

#[test]
fn extern_crate_alias_in_the_file() {
    let v = scan("extern-crate", &[(CONN, "extern crate hyper as h;\nfn g() { let _ = h::Client::new(); }\n")]);
    caught(&v, CONN, 1, Some("data-plane-crates"));
    caught(&v, CONN, 2, Some("data-plane-crates"));
}

#[test]
fn extern_crate_alias_in_the_crate_root() {
    let v = scan(
        "extern-crate-root",
        &[("proxy/src/lib.rs", "extern crate hyper as h;\npub mod data;\n"), (CONN, "fn g() { let _ = h::Client::new(); }\n")],
    );
    caught(&v, CONN, 1, Some("data-plane-crates"));
}

const PACKAGE: &str = "[package]\nname = \"proxy\"\nversion = \"0.1.0\"\nedition = \"2024\"\n";

#[test]
fn cargo_rename_in_the_package_manifest() {
    let manifest = format!("{PACKAGE}\n[dependencies]\nh = {{ package = \"hyper\", version = \"1\" }}\n");
    let v = scan("cargo-rename", &[("proxy/Cargo.toml", &manifest), (CONN, "use h::Client;\nfn g() { let _ = h::Client::new(); }\n")]);
    caught(&v, CONN, 1, Some("data-plane-crates"));
    caught(&v, CONN, 2, Some("data-plane-crates"));
}

#[test]
fn cargo_rename_through_the_workspace() {
    let ws = "[workspace]\nmembers = [\"proxy\"]\n\n[workspace.dependencies]\nh = { package = \"hyper\", version = \"1\" }\n";
    let manifest = format!("{PACKAGE}\n[dependencies]\nh = {{ workspace = true }}\n");
    let v =
        scan("cargo-rename-ws", &[("Cargo.toml", ws), ("proxy/Cargo.toml", &manifest), (CONN, "fn g() { let _ = h::Client::new(); }\n")]);
    caught(&v, CONN, 1, Some("data-plane-crates"));
}

// 7. Calls out of the hot path into the control plane.

#[test]
fn crate_path_into_the_control_plane() {
    let v = scan("crate-control", &[(CONN, "fn g() {\n    crate::control::state::bump();\n}\n")]);
    caught(&v, CONN, 2, Some("not-allowlisted"));
}

#[test]
fn super_path_into_the_control_plane() {
    let v = scan("super-control", &[(CONN, "fn g() {\n    super::super::control::x();\n}\n")]);
    caught(&v, CONN, 2, Some("not-allowlisted"));
}

#[test]
fn re_export_of_the_control_plane_inside_the_data_plane() {
    let v = scan(
        "reexport-control",
        &[
            ("proxy/src/data/mod.rs", "pub mod conn;\npub use crate::control::state as y;\n"),
            (CONN, "fn g() {\n    crate::data::y::bump();\n}\n"),
        ],
    );
    caught(&v, "proxy/src/data/mod.rs", 2, Some("not-allowlisted"));
    caught(&v, CONN, 2, Some("not-allowlisted"));
}

#[test]
fn nested_use_inside_a_function() {
    let v = scan("nested-use", &[(CONN, "fn g() {\n    use crate::control::state;\n    state::bump();\n}\n")]);
    caught(&v, CONN, 2, Some("not-allowlisted"));
    caught(&v, CONN, 3, Some("not-allowlisted"));
}

#[test]
fn an_alias_reached_through_another_hot_path_module() {
    let v = scan(
        "cross-module-alias",
        &[
            ("proxy/src/data/mod.rs", "pub mod conn;\npub mod head;\n"),
            (CONN, "use std::io;\n"),
            ("proxy/src/data/head.rs", "fn g() {\n    let _ = crate::data::conn::io::stderr();\n}\n"),
        ],
    );
    caught(&v, "proxy/src/data/head.rs", 2, Some("blocking-io"));
}

#[test]
fn macro_rules_body_calling_the_control_plane() {
    let v = scan("macro-rules", &[(CONN, "macro_rules! bump {\n    () => { crate::control::state::bump() };\n}\nfn g() { bump!(); }\n")]);
    caught(&v, CONN, 2, Some("not-allowlisted"));
}

#[test]
fn alias_resolved_inside_a_token_scanned_macro_body() {
    let v = scan(
        "select-alias",
        &[(CONN, "use std::io;\nasync fn g() {\n    tokio::select! {\n        _ = a() => { let _ = io::stderr(); }\n    }\n}\n")],
    );
    caught(&v, CONN, 4, Some("blocking-io"));
}

#[test]
fn crate_root_alias_shadowing_core() {
    let v = scan(
        "shadow-core",
        &[("proxy/src/lib.rs", "extern crate hyper as core;\npub mod data;\n"), (CONN, "fn g() { let _ = core::Client::new(); }\n")],
    );
    caught(&v, CONN, 1, Some("data-plane-crates"));
}

// Attributes, #[path], include!, child modules outside the hot path.

#[test]
fn unknown_attribute_macro() {
    let v = scan("attr-macro", &[(CONN, "#[some_crate::x]\nfn f() {}\n")]);
    caught(&v, CONN, 1, Some("not-allowlisted"));
}

#[test]
fn path_attribute_on_a_module() {
    let v = scan("path-attr", &[(CONN, "#[path = \"../control/state.rs\"]\nmod s;\n")]);
    caught(&v, CONN, 1, None);
}

#[test]
fn include_macro() {
    let v = scan("include", &[(CONN, "fn g() {\n    include!(\"../control/x.rs\");\n}\n")]);
    caught(&v, CONN, 2, None);
}

#[test]
fn child_module_outside_the_hot_path_globs() {
    let v = scan("mod-outside", &[("proxy/src/snapshot.rs", "mod sub;\npub struct Snapshot;\n")]);
    caught(&v, "proxy/src/snapshot.rs", 1, None);
}

// What the hot path legitimately writes stays clean.

#[test]
fn committed_style_code_is_clean() {
    let src = r#"use std::io::{ErrorKind, Write as _};
use std::rc::Rc;
use tokio::net::TcpStream;
use crate::data::conn as this;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind { A, B }

/// Off the request path: an accept error, backed off.
#[cold]
fn on_error(e: std::io::Error) { tracing::warn!(error = %e, "x"); }

async fn g(s: &TcpStream, sampled: bool, r: Rc<u8>) -> Result<usize, ()> {
    let mut ip = [0u8; 8];
    let mut w: &mut [u8] = &mut ip;
    let _ = write!(w, "{}", 1);
    if sampled { tracing::info!(target: "proxy::trace", n = *r, "x"); }
    let _ = this::Kind::A;
    match s.try_read(&mut ip) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        Ok(n) => Ok(n),
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn t() { let _ = format!("{:?}", Kind::B); let _ = std::sync::Mutex::new(0); }
}
"#;
    clean(&scan("clean", &[(CONN, src)]));
}

/// An excluded file is skipped, and scanned once the build has one of its `unless_features`
/// (the names are read from the contract).
#[test]
fn excluded_file_is_scanned_when_its_feature_is_built() {
    let c = contract();
    for e in &c.hot_path.exclude {
        let files = [(e.path.as_str(), "fn per_request() { let _ = std::sync::Mutex::new(0); }\n"), (CONN, "\n")];
        let v = scan("exclude-off", &files);
        assert!(!v.iter().any(|x| x.file == Path::new(&e.path)), "{v:#?}");
        for f in &e.unless_features {
            let v = scan_with("exclude-on", &files, std::slice::from_ref(f));
            caught(&v, &e.path, 1, Some("std-mutex"));
        }
    }
}

// Layering: which hot-path module may use which ([[hot_path.layers]], docs/architecture.md).

#[test]
fn the_shared_pool_may_not_use_a_protocol() {
    let pool = "proxy/src/data/upstream/pool.rs";
    let v = scan(
        "layer-pool",
        &[
            ("proxy/src/data/mod.rs", "pub mod h1;\npub mod upstream;\n"),
            ("proxy/src/data/upstream/mod.rs", "pub mod pool;\n"),
            ("proxy/src/data/h1/mod.rs", "pub mod head;\n"),
            ("proxy/src/data/h1/head.rs", "pub struct Head;\n"),
            (pool, "use crate::data::h1::head::Head;\n\npub fn f(_: &Head) {}\n"),
        ],
    );
    caught(&v, pool, 1, Some("layering"));
}

#[test]
fn a_protocol_may_not_use_its_sibling_or_the_accept_loop() {
    let conn = "proxy/src/data/h1/conn.rs";
    let v = scan(
        "layer-h1",
        &[
            ("proxy/src/data/mod.rs", "pub mod accept;\npub mod h1;\npub mod h2;\n"),
            ("proxy/src/data/h1/mod.rs", "pub mod conn;\n"),
            ("proxy/src/data/h2/mod.rs", "pub struct Frame;\n"),
            ("proxy/src/data/accept.rs", "pub fn run() {}\n"),
            (conn, "use super::super::h2::Frame;\n\npub fn f(_: Frame) { crate::data::accept::run(); }\n"),
        ],
    );
    caught(&v, conn, 1, Some("layering"));
    caught(&v, conn, 3, Some("layering"));
}

/// HTTP/2 reaches HTTP/1.1 upstreams through HTTP/1.1's codec and client side (allowed), never
/// its server side (the connection loop, its working sets, its relay) nor TLS.
#[test]
fn http2_may_use_http11s_client_side_but_not_its_server_side() {
    let stream = "proxy/src/data/h2/stream.rs";
    let v = scan(
        "layer-h2",
        &[
            ("proxy/src/data/mod.rs", "pub mod h1;\npub mod h2;\npub mod tls;\n"),
            ("proxy/src/data/h1/mod.rs", "pub mod client;\npub mod head;\npub mod conn;\npub mod scratch;\npub mod upstream;\n"),
            ("proxy/src/data/h1/client.rs", "pub struct ClientSet;\n"),
            ("proxy/src/data/h1/head.rs", "pub struct ResponseHead;\n"),
            ("proxy/src/data/h1/conn.rs", "pub struct Active;\n"),
            ("proxy/src/data/h1/scratch.rs", "pub struct Scratch;\n"),
            ("proxy/src/data/h1/upstream.rs", "pub struct SendError;\n"),
            ("proxy/src/data/tls/mod.rs", "pub struct TlsStream;\n"),
            ("proxy/src/data/h2/mod.rs", "pub mod stream;\n"),
            (
                stream,
                "use crate::data::h1::client::ClientSet;\nuse crate::data::h1::head::ResponseHead;\nuse crate::data::h1::conn::Active;\nuse super::super::h1::scratch::Scratch;\nuse crate::data::h1::upstream::SendError;\nuse crate::data::tls::TlsStream;\n\npub fn f(_: &ClientSet, _: &ResponseHead, _: &Active, _: &Scratch, _: &SendError, _: &TlsStream) {}\n",
            ),
        ],
    );
    for line in [3, 4, 5, 6] {
        caught(&v, stream, line, Some("layering"));
    }
    assert!(
        !v.iter().any(|x| x.file == Path::new(stream) && (x.line == 1 || x.line == 2)),
        "the codec and client side are allowed: {v:#?}"
    );
}

#[test]
fn the_accept_loop_may_use_a_protocol_and_the_shared_parts() {
    let v = scan(
        "layer-accept",
        &[
            ("proxy/src/data/mod.rs", "pub mod accept;\npub mod h1;\npub mod buf;\n"),
            ("proxy/src/data/h1/mod.rs", "pub fn serve() {}\n"),
            ("proxy/src/data/buf.rs", "pub struct Buf;\n"),
            ("proxy/src/data/accept.rs", "use crate::data::buf::Buf;\n\npub fn run(_: Buf) { crate::data::h1::serve(); }\n"),
        ],
    );
    clean(&v);
}
