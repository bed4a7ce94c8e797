//! The `proxy` binary as a child process: config file, start, wait until it prints its
//! addresses, stderr capture, signals, the admin API, stop. Also `proxy ARGS...` run to
//! completion.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::client::{Client, admin_call};
use super::config::temp_dir;

/// How long the proxy may take to print its addresses after it is spawned.
const STARTUP: Duration = Duration::from_secs(10);

/// The binary under test: `PROXY_BIN` if set (to run the suite against another build, or against
/// a deliberately naive relay to prove the tests can fail), else this crate's `proxy`.
pub fn proxy_bin() -> PathBuf {
    // option_env!: the peer runner (an example) includes this module and has no such variable.
    std::env::var_os("PROXY_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(option_env!("CARGO_BIN_EXE_proxy").unwrap_or("proxy")))
}

/// The proxy child process. Dropping it kills and reaps the process and removes its directory
/// (the config and anything the test put beside it).
pub struct Proxy {
    child: Child,
    /// Every bound listener, in the order the proxy printed them.
    pub addrs: Vec<SocketAddr>,
    /// The first listener.
    pub addr: SocketAddr,
    /// The admin API, when the config has an `[admin]` table.
    pub admin: Option<SocketAddr>,
    /// The config file (`proxy.toml` in the proxy's directory): rewrite it to reload.
    pub config: PathBuf,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Proxy {
    /// Starts `proxy --config FILE --workers 1` with `config` in a fresh temp directory.
    pub fn start(config: &str) -> Proxy {
        Self::start_in(&temp_dir(), config, 1)
    }

    /// Writes `config` to `dir/proxy.toml`, starts `proxy --config it --workers N` and waits for
    /// one `listening ADDR` line per `[[listeners]]` table and, with an `[admin]` table, the
    /// `admin listening ADDR` line. `dir` is removed when the proxy is dropped.
    pub fn start_in(dir: &Path, config: &str, workers: usize) -> Proxy {
        let expected = config.matches("[[listeners]]").count().max(1);
        let wants_admin = config.contains("[admin]");
        let path = dir.join("proxy.toml");
        std::fs::write(&path, config).expect("write the proxy config");
        let mut child = Command::new(proxy_bin())
            .arg("--config")
            .arg(&path)
            .arg("--workers")
            .arg(workers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn proxy binary");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

        // stdout: forward lines over a channel, and keep draining so the proxy never blocks on a
        // full pipe.
        let out = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });

        let mut proxy = Proxy { child, addrs: Vec::new(), addr: "127.0.0.1:1".parse().unwrap(), admin: None, config: path, stderr };
        let deadline = Instant::now() + STARTUP;
        while proxy.addrs.len() < expected || (wants_admin && proxy.admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let line = line.trim();
                    if let Some(a) = line.strip_prefix("admin listening ") {
                        match a.trim().parse() {
                            Ok(addr) => proxy.admin = Some(addr),
                            Err(_) => proxy.fail(&format!("bad admin listening line {line:?}")),
                        }
                    } else if let Some(a) = line.strip_prefix("listening ") {
                        match a.trim().parse() {
                            Ok(addr) => proxy.addrs.push(addr),
                            Err(_) => proxy.fail(&format!("bad listening line {line:?}")),
                        }
                    }
                }
                Err(_) => {
                    let status = proxy.child.try_wait().ok().flatten();
                    let admin = if wants_admin { " and its `admin listening` line" } else { "" };
                    proxy.fail(&format!(
                        "proxy did not print {expected} `listening` line(s){admin} within {}s (exit status: {status:?})",
                        STARTUP.as_secs()
                    ));
                }
            }
        }
        proxy.addr = proxy.addrs[0];
        proxy
    }

    /// Everything the proxy wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `stderr` contains `needle` (the log writer is asynchronous).
    pub fn wait_stderr(&self, needle: &str, within: Duration) -> bool {
        super::wait_until(within, || self.stderr().contains(needle))
    }

    /// Open file descriptors of the proxy process (Linux `/proc`).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Sends `sig` to the child (not reaped before drop, so the pid is still ours).
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `METHOD path` on the admin API (one connection per call): (status, body).
    #[track_caller]
    pub fn admin(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let addr = self.admin.expect("the proxy has no admin API (no `[admin]` table in its config)");
        admin_call(addr, method, path, body)
    }

    /// A metric's value from `/metrics` (the whole series name, labels included), or 0.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.admin("GET", "/metrics", "");
        assert_eq!(status, 200);
        metric(&body, series)
    }

    /// A client connected to the first listener.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    #[track_caller]
    fn fail(&mut self, msg: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(Duration::from_millis(50));
        let cfg = std::fs::read_to_string(&self.config).unwrap_or_default();
        panic!("{msg}\n--- config ---\n{cfg}\n--- proxy stderr ---\n{}", self.stderr());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The proxy's directory (config, access log) goes with it.
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A metric's value in a `/metrics` body (the whole series name, labels included), or 0.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Runs `proxy ARGS...` to completion (bounded: killed after 10 s) and returns (exit code, stdout,
/// stderr).
pub fn run_proxy_cmd(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(proxy_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy binary");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    (code, out, err)
}
