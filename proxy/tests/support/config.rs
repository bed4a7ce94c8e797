//! Config text and the files it goes in: unique temp paths and directories, the generated
//! configs, and the headers this proxy appends to a forwarded request.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A unique path in the temp dir (no tempfile crate): pid + counter + name.
pub fn temp_path(name: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("proxy-it-{}-{n}-{name}", std::process::id()))
}

/// Writes `text` to a fresh temp file; the caller removes it.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let path = temp_path(name);
    std::fs::write(&path, text).expect("write temp config");
    path
}

/// A fresh, empty directory for one test's files (config, access log); a `Proxy` started in it
/// removes it on drop.
pub fn temp_dir() -> PathBuf {
    let dir = temp_path("dir");
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A config with one listener on a free port, a catch-all route to group `u` with the given
/// servers, optional `[limits]` lines, and extra lines for the `[upstreams.u]` table.
pub fn config(servers: &[SocketAddr], limits: &str, upstream_extra: &str) -> String {
    let mut c = String::from("[[listeners]]\naddress = \"127.0.0.1:0\"\n\n");
    if !limits.trim().is_empty() {
        let _ = writeln!(c, "[limits]\n{limits}\n");
    }
    let _ = write!(
        c,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [{}]\n{upstream_extra}\n",
        server_list(servers)
    );
    c
}

/// A config with the admin API on a free port, one listener, one catch-all route to group `up`
/// with the given servers, and `extra` (whole tables) appended.
pub fn admin_config(servers: &[SocketAddr], extra: &str) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n\n[upstreams.up]\nservers = [{}]\n\n{extra}",
        server_list(servers)
    )
}

/// `"a", "b"`: the servers as TOML strings.
fn server_list(servers: &[SocketAddr]) -> String {
    let quoted: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    quoted.join(", ")
}

/// The headers the proxy appends to every forwarded request for a client on 127.0.0.1 that sent no
/// X-Forwarded-For, with `Host: a.test`. Usable inside `concat!`.
#[macro_export]
macro_rules! fwd_tail {
    () => {
        "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nVia: 1.1 fastproxy\r\n\r\n"
    };
}

/// The appended headers for an arbitrary Host value and X-Forwarded-For value.
pub fn fwd_tail(host: &str, xff: &str) -> String {
    format!("X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: {host}\r\nVia: 1.1 fastproxy\r\n\r\n")
}
