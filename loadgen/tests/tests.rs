//! Integration tests of the `loadgen` binary, loopback only, each bounded in time.
//!
//! Timing-sensitive tests take [`util::timing_lock`] so they do not run at the same time on the
//! 2-core machine (the test harness runs tests in parallel threads).

#![allow(clippy::unwrap_used)]

mod util {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Output, Stdio};
    use std::sync::{Mutex, MutexGuard};

    pub const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

    static TIMING: Mutex<()> = Mutex::new(());

    /// Serializes the tests whose numbers depend on having the CPU.
    pub fn timing_lock() -> MutexGuard<'static, ()> {
        TIMING.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A child server (`upstream` or `relay`), killed on drop.
    pub struct Server {
        child: Child,
        pub addr: SocketAddr,
        /// A file of the server's removed with it (its certificate).
        file: Option<std::path::PathBuf>,
    }

    impl Server {
        pub fn start(args: &[&str]) -> Server {
            let mut child = Command::new(BIN).args(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            let addr = line.trim().strip_prefix("listening ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).parse().unwrap();
            Server { child, addr, file: None }
        }

        pub fn upstream(extra: &[&str]) -> Server {
            let mut args = vec!["upstream", "--listen", "127.0.0.1:0"];
            args.extend_from_slice(extra);
            Server::start(&args)
        }

        pub fn url(&self) -> String {
            format!("http://{}/", self.addr)
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// `loadgen upstream --tls` with its generated certificate written to a temporary file;
        /// returns the server and the certificate's path (for `--ca`).
        pub fn upstream_tls(extra: &[&str]) -> (Server, std::path::PathBuf) {
            let ca = temp_path("ca.pem");
            let mut args = vec!["upstream", "--listen", "127.0.0.1:0", "--tls", "--cert-out", ca.to_str().unwrap()];
            args.extend_from_slice(extra);
            let mut s = Server::start(&args);
            s.file = Some(ca.clone());
            (s, ca)
        }

        /// `https://localhost:PORT/` (the generated certificate names localhost and 127.0.0.1).
        pub fn https_url(&self) -> String {
            format!("https://localhost:{}/", self.addr.port())
        }
    }

    /// A fresh path in the temporary directory, unique to this process and call.
    pub fn temp_path(name: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("loadgen-test-{}-{n}-{name}", std::process::id()))
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(p) = &self.file {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Generator lag tolerated by tests whose subject is not the lag: this 2-core machine is
    /// shared with compilers, and a descheduled generator thread is late by a few ms (which the
    /// run would rightly flag with the default `--max-lag 1ms`).
    pub const LENIENT_LAG: [&str; 2] = ["--max-lag", "25ms"];

    /// Runs `loadgen run ARGS --json TMP` and returns (exit code, stdout, parsed JSON).
    pub fn run_json(args: &[&str]) -> (i32, String, serde_json::Value) {
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("out.json");
        let lenient = !args.contains(&"--max-lag") && !args.contains(&"10000000");
        let out = Command::new(BIN)
            .arg("run")
            .args(args)
            .args(if lenient { &LENIENT_LAG[..] } else { &[] })
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let text = std::fs::read_to_string(&json)
            .unwrap_or_else(|_| panic!("no json; stdout {stdout} stderr {}", String::from_utf8_lossy(&out.stderr)));
        let _ = std::fs::remove_dir_all(&dir);
        (code, stdout, serde_json::from_str(&text).unwrap())
    }

    pub fn loadgen(args: &[&str]) -> Output {
        Command::new(BIN).args(args).output().unwrap()
    }

    pub fn f(v: &serde_json::Value, path: &str) -> f64 {
        let mut cur = v;
        for k in path.split('.') {
            cur = &cur[k];
        }
        cur.as_f64().unwrap_or_else(|| panic!("{path} missing in {v}"))
    }
}

mod rate {
    use super::util::*;

    #[test]
    fn achieved_rate_is_within_one_percent_of_target() {
        let _g = timing_lock();
        let up = Server::upstream(&[]);
        let url = up.url();
        let (code, stdout, j) = run_json(&["--url", &url, "--rate", "2000", "--duration", "3s", "--warmup", "1s", "--connections", "8"]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["valid"], true, "{stdout}");
        for k in ["sent_rate", "achieved_rate"] {
            let r = f(&j, k);
            assert!((r - 2000.0).abs() <= 20.0, "{k} {r}\n{stdout}");
        }
        assert!(f(&j, "counts.responses") >= 5940.0);
        assert_eq!(j["status_codes"]["200"].as_u64(), Some(f(&j, "counts.responses") as u64));
        assert_eq!(f(&j, "errors.read") + f(&j, "errors.connect") + f(&j, "errors.timeout"), 0.0);
    }

    #[test]
    fn poisson_arrivals_average_the_target_rate() {
        let _g = timing_lock();
        let up = Server::upstream(&[]);
        let url = up.url();
        let (code, stdout, j) = run_json(&[
            "--url",
            &url,
            "--rate",
            "3000",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--arrival",
            "poisson",
            "--connections",
            "8",
        ]);
        assert_eq!(code, 0, "{stdout}");
        // A Poisson count over 2 s at 3000/s has sd ~ 0.9 %: allow 4 sd.
        let r = f(&j, "sent_rate");
        assert!((r - 3000.0).abs() < 110.0, "{r}");
    }
}

mod coordinated_omission {
    use super::util::*;

    /// The origin stops answering for 100 ms once a second. Open loop: every request due during
    /// a stall waits for its end, and that wait is measured from the intended send time. Closed
    /// loop (and service time): only the few in-flight requests see it, so P99 hides it.
    ///
    /// With a 10 % stall duty cycle the requests due during stalls are 10 % of all, with waits
    /// spread evenly over 0..100 ms, so the corrected P99 is ~90 ms (the top 1 % = the first
    /// tenth of each stall), and the max is ~100 ms.
    #[test]
    fn stall_shows_in_corrected_p99_but_not_in_closed_loop_or_service_time() {
        let _g = timing_lock();
        let up = Server::upstream(&["--stall-every", "1s", "--stall-for", "100ms"]);
        let url = up.url();
        let (code, stdout, open) =
            run_json(&["--url", &url, "--rate", "2000", "--duration", "3s", "--warmup", "500ms", "--connections", "4"]);
        assert_eq!(code, 0, "{stdout}");
        let p99 = f(&open, "latency.corrected.p99_us");
        let max = f(&open, "latency.corrected.max_us");
        let service_p99 = f(&open, "latency.uncorrected.p99_us");
        assert!(p99 >= 80_000.0, "corrected p99 {p99}us should show the 100 ms stall\n{stdout}");
        assert!(max >= 95_000.0, "corrected max {max}us\n{stdout}");
        assert!(service_p99 < 20_000.0, "service p99 {service_p99}us\n{stdout}");
        assert!(f(&open, "counts.queued") > 100.0, "requests waited for a connection during stalls");

        let (code, stdout, closed) = run_json(&["--url", &url, "--closed", "--duration", "3s", "--warmup", "500ms", "--connections", "4"]);
        assert_eq!(code, 0, "{stdout}");
        let closed_p99 = f(&closed, "latency.corrected.p99_us");
        assert!(closed_p99 < 20_000.0, "closed p99 {closed_p99}us\n{stdout}");
        assert!(f(&closed, "latency.corrected.max_us") >= 50_000.0, "closed max still sees a stall");
        assert!(p99 > 4.0 * closed_p99);
    }
}

mod errors {
    use super::util::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Duration;

    fn short_run(url: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec![
            "--url",
            url,
            "--rate",
            "50",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "1",
            "--timeout",
            "200ms",
            "--allow-invalid",
        ];
        args.extend_from_slice(extra);
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        j
    }

    #[test]
    fn connection_refused_is_a_connect_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let j = short_run(&format!("http://127.0.0.1:{port}/"), &[]);
        assert!(f(&j, "errors.connect") >= 40.0, "{}", j["errors"]);
        assert_eq!(f(&j, "errors.connect"), f(&j, "error_causes.refused"));
        assert_eq!(f(&j, "counts.responses"), 0.0);
    }

    #[test]
    fn reset_is_a_read_error_with_cause_reset() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        l.set_nonblocking(true).unwrap();
        let t = std::thread::spawn(move || {
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let mut b = [0u8; 1024];
                        let _ = c.read(&mut b);
                        // SO_LINGER 0: close sends RST instead of FIN.
                        let s = socket2::SockRef::from(&c);
                        s.set_linger(Some(Duration::ZERO)).unwrap();
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let j = short_run(&format!("http://{addr}/"), &[]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap();
        assert!(f(&j, "error_causes.reset") >= 40.0, "{} {}", j["errors"], j["error_causes"]);
        assert_eq!(f(&j, "errors.read") + f(&j, "errors.write"), f(&j, "error_causes.reset"));
    }

    #[test]
    fn silent_server_is_a_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        // Accepted by the kernel backlog, never answered.
        let j = short_run(&format!("http://{addr}/"), &["--max-connections", "64"]);
        drop(l);
        assert!(f(&j, "errors.timeout") >= 10.0, "{}", j["errors"]);
        assert_eq!(f(&j, "errors.timeout"), f(&j, "error_causes.timeout"));
        assert_eq!(f(&j, "counts.responses"), 0.0);
    }

    #[test]
    fn http_error_status_is_a_status_error() {
        // The upstream answers 400 to a malformed request: make every request malformed.
        let up = Server::upstream(&[]);
        let j = short_run(&up.url(), &["-H", "Content-Length: 1", "-H", "Transfer-Encoding: chunked"]);
        assert!(f(&j, "errors.status") >= 40.0, "{}", j["errors"]);
        assert_eq!(j["status_codes"]["400"].as_f64(), Some(f(&j, "errors.status")));
    }
}

mod client {
    use super::util::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// A raw origin that answers each GET with a chunked body (extension + trailer), written in
    /// pieces with pauses so the client sees split reads everywhere.
    #[test]
    fn chunked_responses_in_split_writes_are_parsed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                c.set_nodelay(true).unwrap();
                let mut pending = Vec::new();
                let mut b = [0u8; 4096];
                let pieces: [&[u8]; 6] = [
                    b"HTTP/1.1 200 OK\r\nTransfer-",
                    b"Encoding: chunked\r\n\r\n5;ext=1\r",
                    b"\nhel",
                    b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: t\r",
                    b"\n",
                    b"\r\n",
                ];
                loop {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&b[..n]),
                    }
                    while let Some(p) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..p + 4);
                        for piece in pieces {
                            if c.write_all(piece).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                }
            }
        });
        let (code, stdout, j) = run_json(&[
            "--url",
            &format!("http://{addr}/"),
            "--rate",
            "100",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "1",
            "--timeout",
            "1s",
        ]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(100.0), "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 100.0);
    }
}

mod busy_policy {
    use super::util::*;

    /// Origin takes ~10 ms per response: 200 req/s needs ~2-3 connections in flight.
    #[test]
    fn pool_grows_up_to_max_connections_when_all_are_busy() {
        let _g = timing_lock();
        let up = Server::upstream(&["--delay", "10ms"]);
        let (code, stdout, j) = run_json(&[
            "--url",
            &up.url(),
            "--rate",
            "200",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "1",
            "--max-connections",
            "8",
        ]);
        assert_eq!(code, 0, "{stdout}");
        let grown = f(&j, "counts.new_connections");
        assert!((1.0..=7.0).contains(&grown), "{grown}\n{stdout}");
        assert_eq!(f(&j, "counts.responses"), 200.0);
    }

    #[test]
    fn drop_policy_counts_drops_and_invalidates_the_run() {
        let _g = timing_lock();
        let up = Server::upstream(&["--delay", "10ms"]);
        let (code, stdout, j) = run_json(&[
            "--url",
            &up.url(),
            "--rate",
            "500",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "1",
            "--on-busy",
            "drop",
        ]);
        assert_eq!(code, 3, "{stdout}");
        let dropped = f(&j, "counts.dropped");
        assert!(dropped > 300.0, "{dropped}\n{stdout}");
        assert_eq!(f(&j, "counts.queued"), 0.0);
        assert_eq!(f(&j, "counts.scheduled"), 500.0);
        // Every scheduled request was either sent or dropped (a late send at the very end aside).
        assert!((f(&j, "counts.sent_in_window") + dropped - 500.0).abs() <= 2.0, "{stdout}");
        assert!(j["invalid_reasons"][0].as_str().unwrap().contains("dropped"), "{}", j["invalid_reasons"]);
    }
}

mod validity {
    use super::util::*;

    #[test]
    fn impossible_rate_is_flagged_invalid_with_exit_3() {
        let _g = timing_lock();
        let up = Server::upstream(&[]);
        let url = up.url();
        let (code, stdout, j) =
            run_json(&["--url", &url, "--rate", "10000000", "--duration", "1s", "--warmup", "0s", "--connections", "1", "--timeout", "1s"]);
        assert_eq!(code, 3, "{stdout}");
        assert_eq!(j["valid"], false);
        assert!(!j["invalid_reasons"].as_array().unwrap().is_empty());
        assert!(stdout.contains("INVALID"), "{stdout}");
        // Never report a rate that was not achieved.
        assert!(f(&j, "achieved_rate") < 1_000_000.0);
    }
}

mod report {
    use super::util::*;

    #[test]
    fn json_has_schema_metadata_series_and_decodable_histograms() {
        let _g = timing_lock();
        let up = Server::upstream(&[]);
        let url = up.url();
        let (code, _, j) = run_json(&["--url", &url, "--rate", "500", "--duration", "2s", "--warmup", "0s", "--connections", "2"]);
        assert_eq!(code, 0);
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["meta"]["tool"], "loadgen");
        assert!(j["meta"]["command_line"].as_array().unwrap().len() > 3);
        assert!(j["meta"]["start_time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(j["meta"]["target_rate"], 500.0);
        let series = j["time_series"].as_array().unwrap();
        assert_eq!(series.len(), 2);
        for s in series {
            assert!((s["scheduled"].as_f64().unwrap() - 500.0).abs() <= 1.0, "{s}");
        }
        for k in ["corrected", "uncorrected", "send_lag"] {
            let h = loadgen::report::decode_hist(j["histograms"][k].as_str().unwrap()).unwrap();
            assert_eq!(h.len() as f64, f(&j, &format!("latency.{k}.count")), "{k}");
        }
        for k in ["p50_us", "p90_us", "p99_us", "p99_9_us", "p99_99_us", "max_us"] {
            assert!(f(&j, &format!("latency.corrected.{k}")) > 0.0);
        }
    }

    #[test]
    fn hist_merges_groups_read_from_stdin() {
        use std::io::Write;
        let enc = |vals: &[u64]| {
            let mut h = loadgen::stats::new_hist(3);
            for &v in vals {
                h.record(v).unwrap();
            }
            loadgen::report::encode_hist(&h)
        };
        let stdin = serde_json::json!([[enc(&[1_000; 99]), enc(&[2_000_000])], []]).to_string();
        let run = |input: &str, args: &[&str]| {
            let mut child = std::process::Command::new(BIN)
                .arg("hist")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        };
        let out = run(&stdin, &["--quantiles", "0.5,0.995"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["count"], 100);
        assert_eq!(v[0]["quantiles"][0], 1_000);
        let p995 = v[0]["quantiles"][1].as_u64().unwrap();
        assert!((2_000_000..2_002_000).contains(&p995), "{v}");
        assert_eq!(v[0]["max"], p995);
        assert_eq!(v[1], serde_json::json!({"count": 0, "quantiles": [null, null], "max": null}));
        let bad = run("{}", &[]);
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).starts_with("loadgen: hist: stdin must be"));
    }

    #[test]
    fn hlog_is_an_interval_log() {
        let up = Server::upstream(&[]);
        let dir = std::env::temp_dir().join(format!("loadgen-hlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.hlog");
        let out = loadgen(&[
            "run",
            "--url",
            &up.url(),
            "--rate",
            "200",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--connections",
            "1",
            "--hlog",
            p.to_str().unwrap(),
            LENIENT_LAG[0],
            LENIENT_LAG[1],
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let text = std::fs::read(&p).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let mut intervals = 0;
        let mut count = 0;
        for e in IntervalLogIterator::new(&text) {
            if let Ok(LogEntry::Interval(h)) = e
                && h.tag().is_none()
            {
                intervals += 1;
                let b = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, h.encoded_histogram()).unwrap();
                let hist: hdrhistogram::Histogram<u64> =
                    hdrhistogram::serialization::Deserializer::new().deserialize(&mut std::io::Cursor::new(b)).unwrap();
                count += hist.len();
            }
        }
        assert_eq!(intervals, 2);
        assert!((count as i64 - 400).abs() <= 2, "{count}");
    }
}

mod ladder {
    use super::util::*;

    #[test]
    fn ladder_reports_the_highest_rate_under_the_slo() {
        let _g = timing_lock();
        let up = Server::upstream(&["--delay", "2ms"]);
        let dir = std::env::temp_dir().join(format!("loadgen-ladder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("l.json");
        // With a 2 ms origin delay and 2 connections the ceiling is ~1000 req/s (less with the
        // tokio timer's rounding), so 200 passes and 4000 cannot.
        let out = loadgen(&[
            "ladder",
            "--url",
            &up.url(),
            "--rates",
            "200,4000",
            "--slo-p99",
            "50ms",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--timeout",
            "1s",
            "--json",
            p.to_str().unwrap(),
            LENIENT_LAG[0],
            LENIENT_LAG[1],
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(j["max_sustainable_rate"], 200.0, "{stdout}");
        let steps = j["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[1]["pass"], false);
    }
}

mod upstream {
    use super::util::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    /// Sends `req` and reads until `want` bytes arrived or the server closed.
    fn exchange(addr: std::net::SocketAddr, req: &[u8], want: usize) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let mut b = [0u8; 4096];
        while out.len() < want {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&b[..n]),
            }
        }
        out
    }

    const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nxxxxx";

    #[test]
    fn pipelined_requests_with_bodies_are_answered_in_order() {
        let up = Server::upstream(&["--body-bytes", "5"]);
        let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
        let head_only = &OK5[..OK5.len() - 5];
        let mut want = OK5.repeat(3);
        want.extend_from_slice(head_only);
        let got = exchange(up.addr, req, want.len());
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    }

    #[test]
    fn request_split_into_single_bytes_is_parsed() {
        let up = Server::upstream(&["--body-bytes", "5"]);
        let mut s = TcpStream::connect(up.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for b in b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n" {
            s.write_all(&[*b]).unwrap();
        }
        let mut got = vec![0u8; OK5.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, OK5);
    }

    #[test]
    fn smuggling_shape_gets_400_and_close() {
        let up = Server::upstream(&[]);
        let got = exchange(up.addr, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1 << 20);
        assert_eq!(got, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn connection_close_and_http10_close_after_response() {
        let up = Server::upstream(&["--body-bytes", "0"]);
        for req in
            [&b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n"[..], b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n"]
        {
            let got = exchange(up.addr, req, 1 << 20);
            assert_eq!(
                got, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                "only one response, then close"
            );
        }
    }

    #[test]
    fn head_larger_than_the_initial_buffer_is_accepted() {
        let up = Server::upstream(&["--body-bytes", "5"]);
        let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 40 * 1024));
        req.extend_from_slice(b"\r\n\r\n");
        let got = exchange(up.addr, &req, OK5.len());
        assert_eq!(got, OK5);
    }

    #[test]
    fn large_request_and_response_bodies_under_load() {
        let up = Server::upstream(&["--body-bytes", "1000000"]);
        let (code, stdout, j) = run_json(&[
            "--url",
            &up.url(),
            "--rate",
            "50",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--method",
            "POST",
            "--body-bytes",
            "300000",
        ]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(50.0), "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 50.0);
    }

    #[test]
    fn oversized_head_gets_431() {
        let up = Server::upstream(&[]);
        let mut req = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 70 * 1024));
        let got = exchange(up.addr, &req, 1 << 20);
        assert!(got.starts_with(b"HTTP/1.1 431 "), "{}", String::from_utf8_lossy(&got));
    }
}

mod relay {
    use super::util::*;

    #[test]
    fn relay_forwards_load_to_the_upstream() {
        let up = Server::upstream(&[]);
        let upstream = up.addr.to_string();
        let relay = Server::start(&["relay", "--listen", "127.0.0.1:0", "--upstream", &upstream]);
        let (code, stdout, j) =
            run_json(&["--url", &relay.url(), "--rate", "500", "--duration", "1s", "--warmup", "0s", "--connections", "4"]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(f(&j, "counts.responses")));
        assert!(f(&j, "counts.responses") >= 495.0);
    }

    /// `relay --tls ARGS`, its generated certificate written for the client's `--ca`.
    fn tls_relay(upstream: std::net::SocketAddr, extra: &[&str]) -> (Server, std::path::PathBuf) {
        let ca = temp_path("relay-ca.pem");
        let upstream = upstream.to_string();
        let mut args = vec!["relay", "--listen", "127.0.0.1:0", "--upstream", &upstream, "--tls", "--cert-out", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        (Server::start(&args), ca)
    }

    /// The TLS floor: `relay --tls` terminates TLS (ALPN http/1.1, its certificate verified
    /// with `--ca`) and relays the plaintext to a cleartext `loadgen upstream`. Every request of
    /// a fixed-rate run gets its 200 with its whole 3,000-byte body (the client reads the body
    /// to its Content-Length: a short one would be a read error or a timeout), on kept
    /// connections and with a new (resumed) TLS connection per request.
    #[test]
    fn tls_relay_terminates_tls_and_forwards_plaintext() {
        let _g = timing_lock();
        let up = Server::upstream(&["--body-bytes", "3000"]);
        let (relay, ca) = tls_relay(up.addr, &[]);
        let url = format!("https://localhost:{}/", relay.addr.port());
        let ca_s = ca.to_str().unwrap();
        let base = ["--url", &url, "--ca", ca_s, "--rate", "400", "--duration", "1s", "--warmup", "0s", "--connections", "4"];
        for churn in [&[][..], &["--new-connection-every", "1"][..]] {
            let mut args = base.to_vec();
            args.extend_from_slice(churn);
            let (code, stdout, j) = run_json(&args);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(f(&j, "counts.scheduled"), 400.0, "{stdout}");
            assert_eq!(f(&j, "counts.responses"), 400.0, "{stdout}");
            assert_eq!(j["status_codes"]["200"].as_f64(), Some(400.0), "{stdout}");
            let errors: u64 = j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
            assert_eq!(errors, 0, "{stdout}");
            let n = &j["tls_negotiated"][0];
            assert_eq!((n["version"].as_str(), n["alpn"].as_str()), (Some("TLSv1.3"), Some("http/1.1")), "{stdout}");
            if !churn.is_empty() {
                // The 4 pre-opened connections carry their first request without a set-up.
                assert_eq!(f(&j, "handshakes.full") + f(&j, "handshakes.resumed"), 396.0, "{stdout}");
                assert!(f(&j, "handshakes.resumed") >= 300.0, "the relay's session tickets resume\n{stdout}");
            }
        }
        let _ = std::fs::remove_file(&ca);
    }

    /// Byte-exact through the TLS relay: two pipelined requests in one TLS record, answered with
    /// 40,000-byte bodies (several TLS records each), arrive complete and in order; when the
    /// client closes, the relay closes too.
    #[test]
    fn tls_relay_is_byte_exact_over_many_records() {
        use std::io::{Read, Write};
        let up = Server::upstream(&["--body-bytes", "40000"]);
        let (relay, ca) = tls_relay(up.addr, &[]);
        let pem = std::fs::read(&ca).unwrap();
        let _ = std::fs::remove_file(&ca);
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(relay.addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let req = b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let mut two = req.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(&two).unwrap();
        s.flush().unwrap();
        // ALPN: the relay offers http/1.1 only (it relays to an HTTP/1.1 upstream as is).
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            // The upstream's FIN reaches the client as a TCP close after close_notify, or not.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("{e}"),
        }
        let text = String::from_utf8(got).unwrap();
        let body = "x".repeat(40_000);
        let parts: Vec<&str> = text.split("HTTP/1.1 200 OK\r\n").collect();
        assert_eq!(parts.len(), 3, "two responses: {}", &text[..200.min(text.len())]);
        assert_eq!(parts[0], "");
        for (i, p) in parts[1..].iter().enumerate() {
            let (head, got_body) = p.split_once("\r\n\r\n").unwrap();
            assert!(head.contains("Content-Length: 40000"), "{head}");
            assert_eq!(head.contains("Connection: close"), i == 1, "only the second response closes: {head}");
            assert!(got_body == body, "response {i}: {} body bytes", got_body.len());
        }
    }
}

mod tls {
    use super::util::*;

    /// A new TLS connection for every request at a modest fixed rate: the rate holds to 1 %,
    /// every request in the window paid a handshake (counted, timed), and with the session cache
    /// on nearly all of them resume; with `--resume off` all are full.
    #[test]
    fn churn_at_a_fixed_rate_counts_a_handshake_per_request_and_resumes() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&[]);
        let url = up.https_url();
        let ca = ca.to_str().unwrap();
        let base = ["--url", &url, "--ca", ca, "--connections", "4", "--new-connection-every", "1", "--warmup", "500ms"];
        let mut args = base.to_vec();
        args.extend_from_slice(&["--rate", "400", "--duration", "2s"]);
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["valid"], true, "{stdout}");
        for k in ["sent_rate", "achieved_rate"] {
            let r = f(&j, k);
            assert!((r - 400.0).abs() <= 4.0, "{k} {r}\n{stdout}");
        }
        let responses = f(&j, "counts.responses");
        assert_eq!(responses, f(&j, "counts.scheduled"), "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(responses), "{stdout}");
        let errors: u64 = j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(errors, 0, "{stdout}");
        let (full, resumed) = (f(&j, "handshakes.full"), f(&j, "handshakes.resumed"));
        assert_eq!(full + resumed, responses, "one handshake per request\n{stdout}");
        assert_eq!(f(&j, "latency.handshake.count"), responses);
        assert!(resumed >= 0.9 * responses, "resumed {resumed} of {responses}\n{stdout}");
        assert_eq!(f(&j, "handshakes.tcp"), 0.0);
        let n = &j["tls_negotiated"][0];
        assert_eq!((n["version"].as_str(), n["alpn"].as_str()), (Some("TLSv1.3"), Some("http/1.1")), "{}", j["tls_negotiated"]);
        assert_eq!(j["meta"]["tls"]["insecure"], false);
        assert_eq!(j["meta"]["tls"]["server_name"], "localhost");
        assert_eq!(j["meta"]["new_connection_every"], 1);
        assert!(stdout.contains("http/1.1 over TLS TLSv1.3"), "{stdout}");
        // Latency is from the intended time, so the handshake is inside it; service time is not.
        assert!(f(&j, "latency.corrected.p50_us") >= f(&j, "latency.handshake.p50_us"), "{stdout}");

        let mut args = base.to_vec();
        args.extend_from_slice(&["--rate", "200", "--duration", "1s", "--resume", "off"]);
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        let responses = f(&j, "counts.responses");
        assert_eq!(responses, 200.0, "{stdout}");
        assert_eq!((f(&j, "handshakes.full"), f(&j, "handshakes.resumed")), (responses, 0.0), "{stdout}");
        assert_eq!(j["meta"]["tls"]["resume"], false);
    }

    /// Connections kept (the default): no handshake in the window; `--insecure` accepts the
    /// self-signed certificate for an IP address, and the report says it was not verified.
    #[test]
    fn insecure_accepts_any_certificate_and_says_so() {
        let (up, _ca) = Server::upstream_tls(&[]);
        let url = format!("https://{}/", up.addr);
        let (code, stdout, j) =
            run_json(&["--url", &url, "--insecure", "--rate", "200", "--duration", "1s", "--warmup", "0s", "--connections", "2"]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(200.0), "{stdout}");
        assert_eq!(j["meta"]["tls"]["insecure"], true);
        assert!(stdout.contains("NOT verified"), "{stdout}");
        assert_eq!(f(&j, "handshakes.full") + f(&j, "handshakes.resumed"), 0.0, "{stdout}");
        // The two pre-opened connections' handshakes still say what was negotiated.
        assert_eq!(j["tls_negotiated"][0]["handshakes"].as_u64(), Some(2), "{}", j["tls_negotiated"]);
    }

    fn failing_run(url: &str, extra: &[&str]) -> (String, serde_json::Value) {
        let mut args = vec!["--url", url, "--rate", "50", "--duration", "1s", "--warmup", "0s", "--connections", "1"];
        args.extend_from_slice(&["--timeout", "500ms", "--allow-invalid"]);
        args.extend_from_slice(extra);
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        (stdout, j)
    }

    /// A certificate from another CA, and a server that does not speak TLS: every request is a
    /// counted handshake error with its cause, nothing panics, no response is invented.
    #[test]
    fn wrong_ca_and_cleartext_server_are_counted_handshake_errors() {
        let (up, ca) = Server::upstream_tls(&[]);
        let (_other, other_ca) = Server::upstream_tls(&[]);
        let (stdout, j) = failing_run(&up.https_url(), &["--ca", other_ca.to_str().unwrap()]);
        assert!(f(&j, "errors.handshake") >= 45.0, "{stdout}");
        assert_eq!(f(&j, "error_causes.certificate"), f(&j, "errors.handshake"), "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0);
        assert_eq!(j["tls_negotiated"].as_array().map(Vec::len), Some(0));

        // The right CA, but a name the certificate does not carry.
        let (stdout, j) = failing_run(&up.https_url(), &["--ca", ca.to_str().unwrap(), "--sni", "wrong.example"]);
        assert!(f(&j, "errors.handshake") >= 45.0, "{stdout}");
        assert_eq!(f(&j, "error_causes.certificate"), f(&j, "errors.handshake"), "{stdout}");

        let plain = Server::upstream(&[]);
        let (stdout, j) = failing_run(&format!("https://{}/", plain.addr), &["--insecure"]);
        assert!(f(&j, "errors.handshake") >= 45.0, "{stdout}");
        assert_eq!(f(&j, "error_causes.tls") + f(&j, "error_causes.eof") + f(&j, "error_causes.reset"), f(&j, "errors.handshake"));
        assert_eq!(f(&j, "counts.responses"), 0.0);
    }

    /// The phase-1 stall test over TLS: the upstream holds responses 100 ms once a second; the
    /// corrected P99 shows it, the service time does not.
    #[test]
    fn stall_shows_in_corrected_p99_but_not_in_service_time() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&["--stall-every", "1s", "--stall-for", "100ms"]);
        let url = up.https_url();
        let (code, stdout, j) = run_json(&[
            "--url",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--rate",
            "2000",
            "--duration",
            "3s",
            "--warmup",
            "500ms",
            "--connections",
            "4",
        ]);
        assert_eq!(code, 0, "{stdout}");
        let p99 = f(&j, "latency.corrected.p99_us");
        let max = f(&j, "latency.corrected.max_us");
        let service_p99 = f(&j, "latency.uncorrected.p99_us");
        assert!(p99 >= 80_000.0, "corrected p99 {p99}us should show the 100 ms stall\n{stdout}");
        assert!(max >= 95_000.0, "corrected max {max}us\n{stdout}");
        assert!(service_p99 < 20_000.0, "service p99 {service_p99}us\n{stdout}");
        assert!(f(&j, "counts.queued") > 100.0, "requests waited for a connection during stalls");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(f(&j, "counts.responses")));
    }
}

mod connect_rate {
    use super::util::*;

    fn errors_total(j: &serde_json::Value) -> u64 {
        j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
    }

    /// `--connect-rate 300`: over cleartext and over TLS, the schedule holds within 3 % (sent and
    /// answered), and every request in the window had a connection of its own: one set-up each
    /// (TCP only in cleartext; full or resumed handshakes over TLS, none pre-opened), timed in
    /// the handshake histogram and inside the corrected latency.
    #[test]
    fn connections_open_at_the_asked_rate_one_request_each() {
        let _g = timing_lock();
        let plain = Server::upstream(&[]);
        let (tls, ca) = Server::upstream_tls(&[]);
        let ca = ca.to_str().unwrap();
        let (plain_url, tls_url) = (plain.url(), tls.https_url());
        let runs: [(&str, &[&str]); 3] = [(&plain_url, &[]), (&tls_url, &["--ca", ca]), (&tls_url, &["--ca", ca, "--resume", "off"])];
        for (url, extra) in runs {
            // No warmup: a pre-opened connection would carry a request of the window without a
            // set-up (and show as a missing handshake below).
            let mut args = vec!["--url", url, "--connect-rate", "300", "--duration", "2s", "--warmup", "0s"];
            args.extend_from_slice(extra);
            let (code, stdout, j) = run_json(&args);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(j["valid"], true, "{stdout}");
            for k in ["sent_rate", "achieved_rate"] {
                let r = f(&j, k);
                assert!((r - 300.0).abs() <= 9.0, "{k} {r}\n{stdout}");
            }
            let responses = f(&j, "counts.responses");
            assert_eq!(responses, f(&j, "counts.scheduled"), "{stdout}");
            assert_eq!(j["status_codes"]["200"].as_f64(), Some(responses), "{stdout}");
            assert_eq!(errors_total(&j), 0, "{stdout}");
            let setups = f(&j, "handshakes.tcp") + f(&j, "handshakes.full") + f(&j, "handshakes.resumed");
            assert_eq!(setups, responses, "a connection per request, none pre-opened\n{stdout}");
            assert_eq!(f(&j, "latency.handshake.count"), responses, "{stdout}");
            assert!(f(&j, "latency.corrected.p50_us") >= f(&j, "latency.handshake.p50_us"), "{stdout}");
            assert_eq!(j["meta"]["connect_rate"], 300.0);
            assert_eq!(j["meta"]["new_connection_every"], 1);
            assert!(stdout.contains("connect rate 300 new connections/s"), "{stdout}");
            if url == tls_url {
                assert_eq!(f(&j, "handshakes.tcp"), 0.0, "{stdout}");
                if extra.contains(&"off") {
                    assert_eq!(f(&j, "handshakes.full"), responses, "--resume off: all full\n{stdout}");
                }
                // Every handshake of the run was one of the window's: none was pre-opened.
                assert_eq!(j["tls_negotiated"][0]["handshakes"].as_f64(), Some(responses), "{stdout}");
            } else {
                assert_eq!(f(&j, "handshakes.tcp"), responses, "{stdout}");
            }
        }
    }

    /// A refused port and a server that does not speak TLS: every scheduled connection is a
    /// counted error with its cause, at the schedule's pace, and the run ends on time.
    #[test]
    fn failed_connections_are_counted_errors_not_hangs() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/");
        let t0 = std::time::Instant::now();
        let (code, stdout, j) =
            run_json(&["--url", &url, "--connect-rate", "200", "--duration", "1s", "--warmup", "0s", "--timeout", "1s"]);
        assert!(t0.elapsed() < std::time::Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "counts.scheduled"), 200.0, "{stdout}");
        assert_eq!(f(&j, "errors.connect"), 200.0, "{stdout}");
        assert_eq!(f(&j, "error_causes.refused"), 200.0, "{stdout}");
        assert_eq!(errors_total(&j), 200, "{stdout}");
        assert_eq!(f(&j, "counts.responses") + f(&j, "latency.handshake.count"), 0.0, "{stdout}");

        let plain = Server::upstream(&[]);
        let url = format!("https://{}/", plain.addr);
        let (code, stdout, j) =
            run_json(&["--url", &url, "--insecure", "--connect-rate", "100", "--duration", "1s", "--warmup", "0s", "--timeout", "1s"]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "errors.handshake"), 100.0, "{stdout}");
        assert_eq!(errors_total(&j), 100, "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
    }

    #[test]
    fn connect_rate_usage_errors() {
        for bad in [
            &["--connect-rate", "10", "--rate", "10"][..],
            &["--connect-rate", "10", "--closed"],
            &["--connect-rate", "10", "--new-connection-every", "2"],
            &["--connect-rate", "10", "--http2"],
            &["--connect-rate", "0"],
        ] {
            let mut args = vec!["run", "--url", "http://127.0.0.1:9/"];
            args.extend_from_slice(bad);
            let out = loadgen(&args);
            assert_eq!(out.status.code(), Some(2), "{bad:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}

mod hold {
    use super::util::*;

    /// `hold` over https against `upstream --tls`: 200 connections, each a TLS handshake (counted
    /// full or resumed) and a verified GET, held idle and still open when the RSS is read, and
    /// the upstream's resident memory grew with them (its TLS state and buffers). A wrong CA is
    /// one clear handshake error (exit 1), a TLS option on http:// a usage error.
    #[test]
    fn holds_tls_connections_against_a_tls_upstream() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&[]);
        let json = temp_path("hold.json");
        let (url, pid) = (up.https_url(), up.pid().to_string());
        let base = ["hold", "--url", &url, "--pid", &pid, "--connections", "200", "--settle", "300ms", "--settle-before", "100ms"];
        let mut args = base.to_vec();
        args.extend_from_slice(&["--ca", ca.to_str().unwrap(), "--json", json.to_str().unwrap()]);
        let out = loadgen(&args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        let c = &j["counts"][0];
        assert_eq!((c["n_ok"].as_u64(), c["valid"].as_bool()), (Some(200), Some(true)), "{c}");
        assert_eq!(c["failures"]["handshake"], 0, "{c}");
        let hs = c["tls_handshakes"]["full"].as_u64().unwrap() + c["tls_handshakes"]["resumed"].as_u64().unwrap();
        assert_eq!(hs, 200, "a handshake per held connection: {c}");
        assert!(c["kib_per_conn"].as_f64().unwrap() > 1.0, "the upstream holds TLS state per connection: {c}");
        assert!(j["meta"]["url"].as_str().unwrap().starts_with("https://localhost:"), "{}", j["meta"]);
        assert_eq!(j["meta"]["tls"]["insecure"], false);
        assert!(stdout.contains("held connections handshook"), "{stdout}");

        let (_other, other_ca) = Server::upstream_tls(&[]);
        let mut args = base.to_vec();
        args.extend_from_slice(&["--ca", other_ca.to_str().unwrap()]);
        let out = loadgen(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("(handshake)") && stderr.contains("certificate"), "{stderr}");

        let plain_url = format!("http://{}/", up.addr);
        let out = loadgen(&["hold", "--url", &plain_url, "--pid", &pid, "--insecure"]);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

mod h2 {
    use super::util::*;

    fn errors_total(j: &serde_json::Value) -> u64 {
        j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
    }

    /// Asserts an HTTP/2 run at 400 req/s was clean: valid, rate within 1 %, every scheduled
    /// request answered 200, no error of any kind, protocol h2 with the streams asked for.
    /// 40 POSTs of 100,000 bytes each (past the initial stream window) at 40 req/s over HTTP/2
    /// through `url`: every one answered 200, no error.
    fn assert_h2_posts_past_the_window(url: &str) {
        let (code, stdout, j) = run_json(&[
            "--url",
            url,
            "--http2",
            "--streams",
            "2",
            "--connections",
            "1",
            "--rate",
            "40",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--method",
            "POST",
            "--body-bytes",
            "100000",
        ]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(40.0), "{stdout}");
        assert_eq!(errors_total(&j), 0, "{stdout}");
    }

    fn assert_clean_h2_run(code: i32, stdout: &str, j: &serde_json::Value, streams: u64) {
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["valid"], true, "{stdout}");
        for k in ["sent_rate", "achieved_rate"] {
            let r = f(j, k);
            assert!((r - 400.0).abs() <= 4.0, "{k} {r}\n{stdout}");
        }
        let responses = f(j, "counts.responses");
        assert_eq!(responses, f(j, "counts.scheduled"), "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(responses), "{stdout}");
        assert_eq!(errors_total(j), 0, "{stdout}");
        assert_eq!(j["meta"]["protocol"], "h2", "{stdout}");
        assert_eq!(j["meta"]["streams"].as_u64(), Some(streams), "{stdout}");
    }

    /// `relay --h2` (the HTTP/2 floor) in front of `loadgen upstream`: streams relayed over its
    /// h2c connection to the upstream, cleanly at a fixed rate with several streams per
    /// connection; 100,000-byte POST bodies (past the 65,535-byte initial window, so the relay
    /// must release capacity as it forwards) arrive whole; over TLS it negotiates ALPN h2.
    #[test]
    fn h2_relay_forwards_streams_over_h2c_and_over_tls() {
        let _g = timing_lock();
        let up = Server::upstream(&[]);
        let upstream = up.addr.to_string();
        let relay = Server::start(&["relay", "--listen", "127.0.0.1:0", "--upstream", &upstream, "--h2"]);
        let url = relay.url();
        let (code, stdout, j) = run_json(&[
            "--url",
            &url,
            "--http2",
            "--streams",
            "4",
            "--connections",
            "2",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ]);
        assert_clean_h2_run(code, &stdout, &j, 4);

        assert_h2_posts_past_the_window(&url);

        let ca = temp_path("h2-relay-ca.pem");
        let relay = Server::start(&[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--h2",
            "--tls",
            "--cert-out",
            ca.to_str().unwrap(),
        ]);
        let url = format!("https://localhost:{}/", relay.addr.port());
        let (code, stdout, j) = run_json(&[
            "--url",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--http2",
            "--streams",
            "4",
            "--connections",
            "2",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ]);
        assert_clean_h2_run(code, &stdout, &j, 4);
        assert_eq!(j["tls_negotiated"][0]["alpn"].as_str(), Some("h2"), "{stdout}");
        let _ = std::fs::remove_file(&ca);
    }

    /// `relay --h2 --upstream-http1` (the floor of the HTTP/2 comparison's TLS cases) in front of
    /// `loadgen upstream --http1-only`: clean at a fixed rate over h2c and over TLS (ALPN h2),
    /// several streams per connection, and with POST bodies past the initial window.
    #[test]
    fn h2_relay_to_an_http1_origin_is_clean_over_h2c_and_tls() {
        let _g = timing_lock();
        let up = Server::upstream(&["--http1-only", "--body-bytes", "1024"]);
        let upstream = up.addr.to_string();
        let relay = Server::start(&["relay", "--listen", "127.0.0.1:0", "--upstream", &upstream, "--h2", "--upstream-http1"]);
        let url = relay.url();
        let common = ["--http2", "--streams", "4", "--connections", "2", "--rate", "400", "--duration", "2s", "--warmup", "500ms"];
        let mut args = vec!["--url", url.as_str()];
        args.extend_from_slice(&common);
        let (code, stdout, j) = run_json(&args);
        assert_clean_h2_run(code, &stdout, &j, 4);

        assert_h2_posts_past_the_window(&url);

        let ca = temp_path("h2-h1-relay-ca.pem");
        let relay = Server::start(&[
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--h2",
            "--upstream-http1",
            "--tls",
            "--cert-out",
            ca.to_str().unwrap(),
        ]);
        let url = format!("https://localhost:{}/", relay.addr.port());
        let mut args = vec!["--url", url.as_str(), "--ca", ca.to_str().unwrap()];
        args.extend_from_slice(&common);
        let (code, stdout, j) = run_json(&args);
        assert_clean_h2_run(code, &stdout, &j, 4);
        assert_eq!(j["tls_negotiated"][0]["alpn"].as_str(), Some("h2"), "{stdout}");
        let _ = std::fs::remove_file(&ca);
    }

    /// h2c (prior knowledge) against `loadgen upstream` at a modest fixed rate, one stream per
    /// connection and then 10 streams on each of 3 connections.
    #[test]
    fn h2c_at_a_fixed_rate_is_clean_with_one_or_many_streams() {
        let _g = timing_lock();
        let up = Server::upstream(&[]);
        let url = up.url();
        let base = ["--url", &url, "--http2", "--rate", "400", "--duration", "2s", "--warmup", "500ms"];
        let mut args = base.to_vec();
        args.extend_from_slice(&["--connections", "2"]);
        let (code, stdout, j) = run_json(&args);
        assert_clean_h2_run(code, &stdout, &j, 1);
        assert!(stdout.contains("h2, 1 streams per connection, cleartext (h2c"), "{stdout}");

        let mut args = base.to_vec();
        args.extend_from_slice(&["--connections", "3", "--streams", "10"]);
        let (code, stdout, j) = run_json(&args);
        assert_clean_h2_run(code, &stdout, &j, 10);
        assert_eq!(f(&j, "counts.new_connections"), 0.0, "{stdout}");
    }

    /// h2 over TLS (ALPN h2) at a modest fixed rate with several streams and connections.
    #[test]
    fn h2_over_tls_at_a_fixed_rate_is_clean_and_negotiates_alpn_h2() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&[]);
        let url = up.https_url();
        let (code, stdout, j) = run_json(&[
            "--url",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--http2",
            "--streams",
            "4",
            "--connections",
            "2",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
        ]);
        assert_clean_h2_run(code, &stdout, &j, 4);
        let n = &j["tls_negotiated"][0];
        assert_eq!((n["version"].as_str(), n["alpn"].as_str()), (Some("TLSv1.3"), Some("h2")), "{}", j["tls_negotiated"]);
        assert!(stdout.contains("h2, 4 streams per connection, over TLS"), "{stdout}");
        assert_eq!(j["meta"]["tls"]["alpn_offered"][0], "h2");
    }

    /// The stall test over HTTP/2 (cleartext and TLS): the corrected P99 shows the 100 ms stall,
    /// the service time does not (2 connections × 4 streams: 8 requests per stall are caught
    /// in service, 0.4 % of the run).
    #[test]
    fn stall_shows_in_corrected_p99_but_not_in_service_time() {
        let _g = timing_lock();
        let stall = ["--stall-every", "1s", "--stall-for", "100ms"];
        let plain = Server::upstream(&stall);
        let (tls, ca) = Server::upstream_tls(&stall);
        let (plain_url, tls_url) = (plain.url(), tls.https_url());
        let ca = ca.to_str().unwrap();
        for url in [&plain_url, &tls_url] {
            let mut args = vec!["--url", url.as_str(), "--http2", "--streams", "4", "--connections", "2"];
            args.extend_from_slice(&["--rate", "2000", "--duration", "3s", "--warmup", "500ms"]);
            if url.starts_with("https") {
                args.extend_from_slice(&["--ca", ca]);
            }
            let (code, stdout, j) = run_json(&args);
            assert_eq!(code, 0, "{stdout}");
            let p99 = f(&j, "latency.corrected.p99_us");
            let max = f(&j, "latency.corrected.max_us");
            let service_p99 = f(&j, "latency.uncorrected.p99_us");
            assert!(p99 >= 80_000.0, "corrected p99 {p99}us should show the 100 ms stall\n{stdout}");
            assert!(max >= 95_000.0, "corrected max {max}us\n{stdout}");
            assert!(service_p99 < 20_000.0, "service p99 {service_p99}us\n{stdout}");
            assert!(f(&j, "counts.queued") > 100.0, "requests waited for a stream during stalls\n{stdout}");
            assert_eq!(j["status_codes"]["200"].as_f64(), Some(f(&j, "counts.responses")));
            assert_eq!(errors_total(&j), 0, "{stdout}");
        }
    }

    /// `--timeout` over HTTP/2 (each slot's timer is re-armed only when it fires before the
    /// current request's deadline): against 300 ms stalls every second with a 150 ms timeout, the
    /// requests caught early in a stall time out, the others are answered, every request sent is
    /// one or the other, no response took longer than the timeout, and a timeout resets its
    /// stream only (no other error: the connection stays).
    #[test]
    fn timeouts_fail_the_stream_only_and_bound_every_request() {
        let _g = timing_lock();
        let up = Server::upstream(&["--stall-every", "1s", "--stall-for", "300ms"]);
        let url = up.url();
        let (_, stdout, j) = run_json(&[
            "--url",
            &url,
            "--http2",
            "--streams",
            "20",
            "--connections",
            "1",
            "--rate",
            "200",
            "--duration",
            "3s",
            "--warmup",
            "0s",
            "--timeout",
            "150ms",
            "--max-lag",
            "25ms",
        ]);
        let timeouts = f(&j, "errors.timeout");
        assert!(timeouts >= 20.0, "{stdout}");
        assert_eq!(timeouts, f(&j, "error_causes.timeout"), "{stdout}");
        assert_eq!(errors_total(&j), timeouts as u64, "only timeouts\n{stdout}");
        assert!(f(&j, "counts.responses") >= 400.0, "{stdout}");
        assert_eq!(f(&j, "counts.responses") + timeouts, f(&j, "counts.sent_in_window"), "{stdout}");
        let max = f(&j, "latency.uncorrected.max_us");
        assert!(max < 150_000.0, "service max {max}us: a response later than the timeout was counted\n{stdout}");
    }

    /// `--http2` against servers without HTTP/2 (the upstream with `--http1-only`, cleartext and
    /// TLS): every request is a counted error of a kind, no response is invented, no panic.
    #[test]
    fn a_server_without_http2_gives_counted_errors() {
        let plain = Server::upstream(&["--http1-only"]);
        let (tls, ca) = Server::upstream_tls(&["--http1-only"]);
        let common = ["--http2", "--streams", "4", "--rate", "50", "--duration", "1s", "--warmup", "0s", "--connections", "1"];
        let common2 = ["--timeout", "500ms", "--allow-invalid"];
        let url = plain.url();
        let mut args = vec!["--url", url.as_str()];
        args.extend_from_slice(&common);
        args.extend_from_slice(&common2);
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
        assert!(errors_total(&j) >= 45, "{stdout}");
        assert!(f(&j, "errors.protocol") + f(&j, "errors.read") + f(&j, "errors.goaway") >= 45.0, "{stdout}");

        let url = tls.https_url();
        let mut args = vec!["--url", url.as_str(), "--ca", ca.to_str().unwrap()];
        args.extend_from_slice(&common);
        args.extend_from_slice(&common2);
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
        // No ALPN in common: the server refuses the handshake.
        assert!(f(&j, "errors.handshake") >= 45.0, "{stdout}");
    }

    /// An h2c server (in this test, with the `h2` crate) that answers every stream with
    /// RST_STREAM, or every connection's first request with GOAWAY; returns its address.
    fn misbehaving_h2_server(goaway: bool) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    tokio::spawn(async move {
                        let Ok(mut c) = h2::server::handshake(s).await else { return };
                        while let Some(r) = c.accept().await {
                            let Ok((_req, mut respond)) = r else { break };
                            if goaway {
                                c.abrupt_shutdown(h2::Reason::INTERNAL_ERROR);
                            } else {
                                respond.send_reset(h2::Reason::REFUSED_STREAM);
                            }
                        }
                        // Keep the socket open a while: closing it with unread requests would
                        // reset it, and the client would see the reset before the GOAWAY.
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                        drop(c);
                    });
                }
            });
        });
        addr
    }

    /// A server (the `h2` crate) that never reads request bodies, with a 1,024-byte stream
    /// window (and never answers): 100,000-byte POSTs time out as `flow_stall`, none as a plain
    /// `timeout`.
    #[test]
    fn a_body_the_server_never_takes_is_a_flow_stall() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    tokio::spawn(async move {
                        let Ok(mut c) = h2::server::Builder::new().initial_window_size(1024).handshake::<_, bytes::Bytes>(s).await else {
                            return;
                        };
                        let mut held = Vec::new();
                        while let Some(Ok(stream)) = c.accept().await {
                            held.push(stream);
                        }
                    });
                }
            });
        });
        let url = format!("http://{addr}/");
        let (code, stdout, j) = run_json(&[
            "--url",
            &url,
            "--http2",
            "--streams",
            "4",
            "--connections",
            "1",
            "--rate",
            "8",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--timeout",
            "500ms",
            "--method",
            "POST",
            "--body-bytes",
            "100000",
            "--allow-invalid",
        ]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
        assert_eq!(f(&j, "errors.flow_stall"), 8.0, "{stdout}");
        assert_eq!(f(&j, "errors.timeout"), 0.0, "{stdout}");
    }

    /// RST_STREAM and GOAWAY from the server are counted under `reset` and `goaway`.
    #[test]
    fn resets_and_goaways_are_counted_by_kind() {
        for goaway in [false, true] {
            let addr = misbehaving_h2_server(goaway);
            let url = format!("http://{addr}/");
            let (code, stdout, j) = run_json(&[
                "--url",
                &url,
                "--http2",
                "--streams",
                "2",
                "--connections",
                "1",
                "--rate",
                "50",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--timeout",
                "500ms",
                "--allow-invalid",
            ]);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
            let kind = if goaway { "errors.goaway" } else { "errors.reset" };
            assert!(f(&j, kind) >= 45.0, "{kind}\n{stdout}");
        }
    }

    /// Bad input: --streams 0 and --streams without --http2 are usage errors, not panics.
    #[test]
    fn bad_streams_are_usage_errors() {
        let out = loadgen(&["run", "--url", "http://127.0.0.1:9/", "--http2", "--streams", "0", "--rate", "1"]);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("--streams"));
        let out = loadgen(&["run", "--url", "http://127.0.0.1:9/", "--streams", "4", "--rate", "1"]);
        assert_eq!(out.status.code(), Some(2));
    }
}

/// `relay --h2 --upstream-http1` and `upstream --trailers`, driven by an `h2` crate client in the
/// test, with a test origin that shows what the relay sent it and counts its connections.
mod h2_to_h1 {
    use super::util::*;
    use bytes::Bytes;
    use loadgen::body::{BodySkipper, Framing};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An HTTP/1.1 origin (std threads) that answers each request with the request's own bytes
    /// (head and body as received) as a `content-length` body, on keep-alive connections; except
    /// `/bad-head` (a status line that is not HTTP, then close) and `/bad-chunk` (a good head, then
    /// a chunk size that is not hex, then close). Returns its address and its accepted-connection
    /// count.
    pub(super) fn echo_origin() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve_echo(s));
            }
        });
        (addr, accepted)
    }

    fn serve_echo(mut s: TcpStream) {
        let mut buf = Vec::new();
        let mut b = [0u8; 16384];
        loop {
            let (head_len, framing, path) = loop {
                let mut fields = [httparse::EMPTY_HEADER; 64];
                let mut r = httparse::Request::new(&mut fields);
                if let Ok(httparse::Status::Complete(n)) = r.parse(&buf) {
                    let get = |name: &str| {
                        r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).to_string())
                    };
                    let framing = match (get("transfer-encoding"), get("content-length")) {
                        (Some(_), _) => Framing::Chunked,
                        (None, Some(l)) => Framing::Length(l.parse().unwrap()),
                        (None, None) => Framing::None,
                    };
                    break (n, framing, r.path.unwrap().to_string());
                }
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&b[..k]),
                }
            };
            let mut body = BodySkipper::new(framing);
            let mut used = head_len;
            loop {
                used += body.feed(&buf[used..]).unwrap();
                if body.is_done() {
                    break;
                }
                match s.read(&mut b) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&b[..k]),
                }
            }
            let req: Vec<u8> = buf.drain(..used).collect();
            let resp = match path.as_str() {
                "/bad-head" => b"HTTP/1.1 abc\r\n\r\n".to_vec(),
                "/bad-chunk" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
                _ => {
                    let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: echo\r\n\r\n", req.len()).into_bytes();
                    v.extend_from_slice(&req);
                    v
                }
            };
            if s.write_all(&resp).is_err() || path.starts_with("/bad") {
                return;
            }
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: http::HeaderMap,
        body: Vec<u8>,
        trailers: Option<http::HeaderMap>,
    }

    impl Reply {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).to_string()
        }
    }

    /// Sends one request (headers, then each of `data` as a DATA frame, then `trailers`) and
    /// reads the whole response.
    async fn request(
        send: &h2::client::SendRequest<Bytes>,
        req: http::Request<()>,
        data: &[&[u8]],
        trailers: Option<http::HeaderMap>,
    ) -> Result<Reply, h2::Error> {
        let mut send = send.clone().ready().await?;
        let end = data.is_empty() && trailers.is_none();
        let (resp, mut tx) = send.send_request(req, end)?;
        for (i, d) in data.iter().enumerate() {
            tx.send_data(Bytes::copy_from_slice(d), i + 1 == data.len() && trailers.is_none())?;
        }
        if let Some(t) = trailers {
            tx.send_trailers(t)?;
        }
        let resp = resp.await?;
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let mut rx = resp.into_body();
        let mut body = Vec::new();
        while let Some(d) = rx.data().await {
            let d = d?;
            let _ = rx.flow_control().release_capacity(d.len());
            body.extend_from_slice(&d);
        }
        let trailers = rx.trailers().await?;
        Ok(Reply { status, headers, body, trailers })
    }

    fn req(method: &str, addr: SocketAddr, path: &str, fields: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// Runs `f` with an h2c client connection to `addr`, on a current-thread runtime, within 20 s.
    fn with_h2<F, Fut>(addr: SocketAddr, f: F)
    where
        F: FnOnce(h2::client::SendRequest<Bytes>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (send, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            tokio::time::timeout(Duration::from_secs(20), f(send)).await.expect("timed out");
        });
    }

    fn relay_to(upstream: SocketAddr) -> Server {
        Server::start(&["relay", "--listen", "127.0.0.1:0", "--upstream", &upstream.to_string(), "--h2", "--upstream-http1"])
    }

    /// A GET, a POST with a content-length, a POST without one (chunked, with trailers) and a
    /// 100,000-byte POST each arrive at the origin as one HTTP/1.1 request (method, path, host
    /// from :authority, the fields, the body framed as said), and the origin's response comes
    /// back whole; sequential streams share one origin connection, concurrent ones open more,
    /// which are reused afterwards.
    #[test]
    fn streams_become_http1_requests_on_pooled_connections() {
        let (origin, accepted) = echo_origin();
        let relay = relay_to(origin);
        let addr = relay.addr;
        with_h2(addr, |send| async move {
            let r = request(&send, req("GET", addr, "/a?q=1", &[("x-test", "1")]), &[], None).await.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.headers["x-origin"], "echo");
            let t = r.text();
            assert!(t.starts_with(&format!("GET /a?q=1 HTTP/1.1\r\nhost: {addr}\r\n")), "{t}");
            assert!(t.contains("\r\nx-test: 1\r\n") && t.ends_with("\r\n\r\n"), "{t}");
            assert!(!t.contains("transfer-encoding") && !t.contains("content-length"), "{t}");
            assert_eq!(r.trailers, None);

            let r = request(&send, req("POST", addr, "/p", &[("content-length", "5")]), &[b"hello"], None).await.unwrap();
            let t = r.text();
            assert!(t.starts_with("POST /p HTTP/1.1\r\n") && t.ends_with("\r\ncontent-length: 5\r\n\r\nhello"), "{t}");

            let mut tr = http::HeaderMap::new();
            tr.insert("x-t", http::HeaderValue::from_static("yes"));
            let r = request(&send, req("POST", addr, "/c", &[("te", "trailers")]), &[b"abc", b"defg"], Some(tr)).await.unwrap();
            let t = r.text();
            assert!(t.contains("\r\nte: trailers\r\n"), "{t}");
            assert!(t.ends_with("\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-t: yes\r\n\r\n"), "{t}");

            let big = vec![b'y'; 100_000];
            let r = request(&send, req("POST", addr, "/big", &[("content-length", "100000")]), &[&big], None).await.unwrap();
            assert_eq!(r.status, 200);
            assert!(r.body.ends_with(&big) && r.body.len() < 100_000 + 200, "{}", r.body.len());
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "sequential streams share one origin connection");

            let tasks: Vec<_> = (0..5)
                .map(|_| {
                    let send = send.clone();
                    tokio::spawn(async move {
                        let big = vec![b'z'; 50_000];
                        request(&send, req("POST", addr, "/x", &[("content-length", "50000")]), &[&big], None).await.unwrap().status
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), 200);
            }
            let after_concurrent = accepted.load(Ordering::SeqCst);
            assert!((1..=6).contains(&after_concurrent), "{after_concurrent}");
            for _ in 0..10 {
                assert_eq!(request(&send, req("GET", addr, "/", &[]), &[], None).await.unwrap().status, 200);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), after_concurrent, "idle pooled connections are reused");
        });
    }

    /// A response head that is not HTTP is a 502; a bad chunk after a good head resets the
    /// stream; an origin that refuses connections is a 502; the relay (and the client's
    /// connection) carry on.
    #[test]
    fn malformed_upstream_responses_are_502_or_reset_not_a_panic() {
        let (origin, _) = echo_origin();
        let relay = relay_to(origin);
        let addr = relay.addr;
        with_h2(addr, |send| async move {
            let r = request(&send, req("GET", addr, "/bad-head", &[]), &[], None).await.unwrap();
            assert_eq!((r.status, r.body.len()), (502, 0), "{r:?}");
            let e = request(&send, req("GET", addr, "/bad-chunk", &[]), &[], None).await.unwrap_err();
            assert_eq!(e.reason(), Some(h2::Reason::INTERNAL_ERROR), "{e}");
            let r = request(&send, req("GET", addr, "/fine", &[]), &[], None).await.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
        });
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let relay = relay_to(closed);
        let addr = relay.addr;
        with_h2(addr, |send| async move {
            let r = request(&send, req("GET", addr, "/", &[]), &[], None).await.unwrap();
            assert_eq!(r.status, 502, "{r:?}");
        });
    }

    fn assert_grpc_trailers(r: &Reply, body_bytes: usize) {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.headers["content-type"], "application/grpc", "{r:?}");
        assert_eq!(r.body, vec![b'x'; body_bytes]);
        let t = r.trailers.as_ref().unwrap_or_else(|| panic!("no trailers: {r:?}"));
        assert_eq!((t["grpc-status"].as_bytes(), t["grpc-message"].as_bytes()), (&b"0"[..], &b"ok"[..]), "{t:?}");
    }

    /// `upstream --trailers` sends `grpc-status: 0` and `grpc-message: ok` after every body: over
    /// h2c as trailers (HEAD: the head alone), over HTTP/1.1 as a chunked body's trailer section
    /// (which `loadgen run` reads as a response), and `relay --h2 --upstream-http1` in front of
    /// `upstream --http1-only --trailers` relays them as HTTP/2 trailers, for a GET and a POST.
    #[test]
    fn upstream_trailers_over_h2_and_h1_and_through_the_relay() {
        let up = Server::upstream(&["--trailers", "--body-bytes", "100"]);
        let addr = up.addr;
        with_h2(addr, |send| async move {
            let r = request(&send, req("GET", addr, "/", &[]), &[], None).await.unwrap();
            assert_grpc_trailers(&r, 100);
            let r = request(&send, req("POST", addr, "/", &[("content-type", "application/grpc")]), &[b"12345"], None).await.unwrap();
            assert_grpc_trailers(&r, 100);
            let r = request(&send, req("HEAD", addr, "/", &[]), &[], None).await.unwrap();
            assert_eq!((r.status, r.body.len(), r.trailers), (200, 0, None));
        });

        let h1 = Server::upstream(&["--http1-only", "--trailers", "--body-bytes", "5"]);
        let mut s = TcpStream::connect(h1.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let want: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/grpc\r\n\
            Trailer: grpc-status, grpc-message\r\n\r\n5\r\nxxxxx\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n";
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        let url = h1.url();
        let (code, stdout, j) = run_json(&["--url", &url, "--rate", "100", "--duration", "1s", "--warmup", "0s", "--connections", "2"]);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(100.0), "{stdout}");

        let h1 = Server::upstream(&["--http1-only", "--trailers", "--body-bytes", "100"]);
        let relay = relay_to(h1.addr);
        let addr = relay.addr;
        with_h2(addr, |send| async move {
            let r = request(&send, req("GET", addr, "/", &[]), &[], None).await.unwrap();
            assert_grpc_trailers(&r, 100);
            let fields = [("content-type", "application/grpc"), ("te", "trailers")];
            let r = request(&send, req("POST", addr, "/svc/M", &fields), &[&[0u8; 64]], None).await.unwrap();
            assert_grpc_trailers(&r, 100);
        });
    }
}

mod cli {
    use super::util::*;

    #[test]
    fn ctrl_c_ends_the_window_and_still_writes_the_report() {
        let up = Server::upstream(&[]);
        let dir = std::env::temp_dir().join(format!("loadgen-int-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("i.json");
        let child = std::process::Command::new(BIN)
            .args(["run", "--url", &up.url(), "--rate", "200", "--duration", "20s", "--warmup", "0s"])
            .args(["--connections", "2", "--json", p.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let st = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(130), "{stdout}");
        assert!(stdout.contains("stopped     early"), "{stdout}");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(j["meta"]["stopped_early"], true);
        let w = f(&j, "meta.window_s");
        assert!((0.5..3.0).contains(&w), "{w}");
        // Rates are over the measured window, not the 20 s asked for.
        assert!((f(&j, "sent_rate") - 200.0).abs() < 10.0, "{}", j["sent_rate"]);
    }

    #[test]
    fn usage_errors_are_one_line_and_exit_2() {
        for args in [
            &["run", "--url", "http://127.0.0.1:1/", "--rate", "abc"][..],
            &["run", "--url", "http://127.0.0.1:1/"],
            &["run", "--url", "ftp://x/", "--rate", "10"],
            &["run", "--url", "http://127.0.0.1:1/", "--rate", "10", "--duration", "5parsecs"],
            &["run", "--url", "http://127.0.0.1:1/", "--rate", "10", "-H", "nocolon"],
            &["upstream", "--stall-every", "1s"],
            &["nosuchcommand"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10"],
            &["run", "--url", "http://127.0.0.1:1/", "--rate", "10", "--insecure"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--ca", "/nonexistent/ca.pem"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--ca", "/proc/self/status"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--insecure", "--sni", "not a name"],
            &["run", "--url", "http://127.0.0.1:1/", "--rate", "10", "--new-connection-every", "0"],
            &["upstream", "--tls", "--cert", "/nonexistent/c.pem", "--key", "/nonexistent/k.pem"],
            &["upstream", "--cert-out", "/tmp/x.pem"],
            &["relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--upstream-http1"],
            &["relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--h3", "--h2"],
            &["relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--h3", "--tls"],
            &["relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--cert-out", "/tmp/x.pem"],
            &[
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
                "--h3",
                "--cert",
                "/nonexistent/c.pem",
                "--key",
                "/nonexistent/k.pem",
            ],
            &["relay", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:1", "--h3", "--threads", "0"],
            &["run", "--url", "http://127.0.0.1:1/", "--rate", "10", "--http3"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--insecure", "--http3", "--http2"],
            &["run", "--url", "https://127.0.0.1:1/", "--insecure", "--http3", "--connect-rate", "10"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--insecure", "--streams", "2"],
            &["upstream", "--http3"],
            &["upstream", "--tls", "--http3", "--http1-only"],
            &["upstream", "--tls", "--early-data"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--insecure", "--early-data"],
            &["run", "--url", "https://127.0.0.1:1/", "--rate", "10", "--insecure", "--http3", "--early-data", "--resume", "off"],
        ] {
            let out = loadgen(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
            assert!(err.starts_with("loadgen: "), "{err}");
        }
    }
}

/// HTTP/3 (`--http3`, quinn + h3) against `loadgen upstream --tls --http3`, which serves it on
/// the TLS port's number over UDP: clean at a fixed rate, the stall test, handshake churn with
/// and without resumption, bodies past the flow-control windows, certificate refusal, and a
/// misbehaving server's resets and GOAWAYs counted by kind.
mod h3 {
    use super::util::*;
    use bytes::Bytes;

    fn errors_total(j: &serde_json::Value) -> u64 {
        j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
    }

    /// `--url URL --ca CA --http3` and then `extra`.
    fn h3_args<'a>(url: &'a str, ca: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--url", url, "--ca", ca, "--http3"];
        v.extend_from_slice(extra);
        v
    }

    /// One connection with one stream, then 3 connections of 10 streams: valid, rate within 1 %,
    /// every request answered 200, no error, and the report says h3 over QUIC, TLS 1.3 with the
    /// one suite offered, ALPN h3.
    #[test]
    fn h3_at_a_fixed_rate_is_clean_with_one_or_many_streams() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&["--http3"]);
        let url = up.https_url();
        let ca = ca.to_str().unwrap();
        for (conns, streams) in [("1", "1"), ("3", "10")] {
            let args = h3_args(
                &url,
                ca,
                &["--connections", conns, "--streams", streams, "--rate", "400", "--duration", "2s", "--warmup", "500ms"],
            );
            let (code, stdout, j) = run_json(&args);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(j["valid"], true, "{stdout}");
            for k in ["sent_rate", "achieved_rate"] {
                let r = f(&j, k);
                assert!((r - 400.0).abs() <= 4.0, "{k} {r}\n{stdout}");
            }
            let responses = f(&j, "counts.responses");
            assert_eq!(responses, f(&j, "counts.scheduled"), "{stdout}");
            assert_eq!(j["status_codes"]["200"].as_f64(), Some(responses), "{stdout}");
            assert_eq!(errors_total(&j), 0, "{stdout}");
            assert_eq!(j["meta"]["protocol"], "h3", "{stdout}");
            assert_eq!(j["meta"]["streams"].as_u64(), Some(streams.parse().unwrap()), "{stdout}");
            assert_eq!(j["meta"]["tls"]["alpn_offered"][0], "h3", "{stdout}");
            let n = &j["tls_negotiated"][0];
            assert_eq!(
                (n["version"].as_str(), n["cipher_suite"].as_str(), n["alpn"].as_str()),
                (Some("TLSv1.3"), Some("TLS13_AES_128_GCM_SHA256"), Some("h3")),
                "{}",
                j["tls_negotiated"]
            );
            assert_eq!(f(&j, "counts.new_connections"), 0.0, "{stdout}");
            assert!(stdout.contains(&format!("h3, {streams} streams per connection, over QUIC")), "{stdout}");
        }
    }

    /// The stall test over HTTP/3: the corrected P99 shows the 100 ms stall, the service time
    /// does not.
    #[test]
    fn h3_stall_shows_in_corrected_p99_but_not_in_service_time() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&["--http3", "--stall-every", "1s", "--stall-for", "100ms"]);
        let url = up.https_url();
        let args = h3_args(
            &url,
            ca.to_str().unwrap(),
            &["--streams", "4", "--connections", "2", "--rate", "1000", "--duration", "3s", "--warmup", "500ms"],
        );
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        let p99 = f(&j, "latency.corrected.p99_us");
        let max = f(&j, "latency.corrected.max_us");
        let service_p99 = f(&j, "latency.uncorrected.p99_us");
        assert!(p99 >= 80_000.0, "corrected p99 {p99}us should show the 100 ms stall\n{stdout}");
        assert!(max >= 95_000.0, "corrected max {max}us\n{stdout}");
        assert!(service_p99 < 20_000.0, "service p99 {service_p99}us\n{stdout}");
        assert!(f(&j, "counts.queued") > 50.0, "requests waited for a stream during stalls\n{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(f(&j, "counts.responses")));
        assert_eq!(errors_total(&j), 0, "{stdout}");
    }

    /// A new QUIC connection every 10 requests: with the session cache every handshake in the
    /// window is resumed (a ticket offered and accepted: no refusal counted), without it every
    /// one is full; each is in the handshake histogram.
    #[test]
    fn h3_churn_counts_full_and_resumed_handshakes() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&["--http3"]);
        let url = up.https_url();
        let ca = ca.to_str().unwrap();
        for resume in ["on", "off"] {
            let args = h3_args(
                &url,
                ca,
                &[
                    "--resume",
                    resume,
                    "--new-connection-every",
                    "10",
                    "--connections",
                    "2",
                    "--rate",
                    "200",
                    "--duration",
                    "2s",
                    "--warmup",
                    "500ms",
                ],
            );
            let (code, stdout, j) = run_json(&args);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(errors_total(&j), 0, "{stdout}");
            let (full, resumed) = (f(&j, "handshakes.full"), f(&j, "handshakes.resumed"));
            assert!(full + resumed >= 36.0, "~40 handshakes in the window: full {full} resumed {resumed}\n{stdout}");
            if resume == "on" {
                assert_eq!(full, 0.0, "{stdout}");
                assert_eq!(j["resumption_refused"].as_u64(), Some(0), "{stdout}");
            } else {
                assert_eq!(resumed, 0.0, "{stdout}");
            }
            assert!(f(&j, "latency.handshake.count") >= full + resumed, "{stdout}");
        }
    }

    /// 100,000-byte POST bodies (past QUIC's and HTTP/3's initial windows) over 2 streams, and
    /// gRPC-shaped responses with trailers: every one answered 200, no error.
    #[test]
    fn h3_posts_past_the_window_and_trailers_are_clean() {
        let (up, ca) = Server::upstream_tls(&["--http3", "--trailers"]);
        let url = up.https_url();
        let args = h3_args(
            &url,
            ca.to_str().unwrap(),
            &[
                "--streams",
                "2",
                "--connections",
                "1",
                "--rate",
                "40",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--method",
                "POST",
                "--body-bytes",
                "100000",
            ],
        );
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(40.0), "{stdout}");
        assert_eq!(errors_total(&j), 0, "{stdout}");
    }

    /// A certificate the client does not trust: every request is a `handshake` error with cause
    /// `certificate`, no response is invented.
    #[test]
    fn h3_untrusted_certificate_is_a_counted_handshake_error() {
        let (up, _ca) = Server::upstream_tls(&["--http3"]);
        let (_other, other_ca) = Server::upstream_tls(&[]);
        let url = up.https_url();
        let args = h3_args(
            &url,
            other_ca.to_str().unwrap(),
            &["--connections", "1", "--rate", "20", "--duration", "1s", "--warmup", "0s", "--allow-invalid"],
        );
        let (code, stdout, j) = run_json(&args);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
        assert!(f(&j, "errors.handshake") >= 18.0, "{stdout}");
        assert_eq!(f(&j, "errors.handshake"), f(&j, "error_causes.certificate"), "{stdout}");
    }

    /// A UDP port where nothing answers (a socket bound and never read): the run does not wait
    /// for each of the 20 pre-opened connections' handshakes to time out in turn (20 × 1 s); it
    /// says once that the first could not be opened, and every request of the window is a
    /// counted `handshake` error with cause `timeout`, none answered.
    #[test]
    fn h3_to_a_silent_udp_port_fails_fast_and_counts_every_request() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/", silent.local_addr().unwrap());
        let json = temp_path("h3-silent.json");
        let t0 = std::time::Instant::now();
        let out = std::process::Command::new(BIN)
            .args(["run", "--url", &url, "--insecure", "--http3", "--connections", "20", "--rate", "20"])
            .args(["--duration", "1s", "--warmup", "0s", "--timeout", "1s", "--max-lag", "1s", "--json", json.to_str().unwrap()])
            .output()
            .unwrap();
        let took = t0.elapsed();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(took < std::time::Duration::from_secs(10), "{took:?}\n{stdout}\n{stderr}");
        assert!(stderr.contains("could not open a connection") && stderr.contains("0 of 20 pre-opened"), "{stderr}");
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
        let scheduled = f(&j, "counts.scheduled");
        assert!(scheduled >= 19.0, "{stdout}");
        assert_eq!(f(&j, "errors.handshake"), scheduled, "{stdout}");
        assert_eq!(f(&j, "error_causes.timeout"), scheduled, "{stdout}");
        assert_eq!(errors_total(&j), scheduled as u64, "{stdout}");
        drop(silent);
    }

    /// How [`misbehaving_h3_server`] misbehaves.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Bad {
        /// Resets every request stream (H3_REQUEST_REJECTED).
        Reset,
        /// Answers each connection's first request with a GOAWAY and closes the connection under it.
        GoAway,
        /// Never reads a request body, with a 1,024-byte stream window: a larger body stalls.
        NoRead,
    }

    /// An HTTP/3 server (quinn + h3 in this test) that misbehaves as `bad` says; returns its
    /// address and its certificate's PEM path.
    fn misbehaving_h3_server(bad: Bad) -> (std::net::SocketAddr, std::path::PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let pem = temp_path("h3-bad.pem");
        std::fs::write(&pem, ck.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let mut config = quinn::ServerConfig::with_crypto(std::sync::Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(quinn::VarInt::from_u32(1024));
        config.transport_config(std::sync::Arc::new(transport));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let ep = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
                tx.send(ep.local_addr().unwrap()).unwrap();
                while let Some(incoming) = ep.accept().await {
                    tokio::spawn(async move {
                        let Ok(conn) = incoming.await else { return };
                        let quic = conn.clone();
                        let Ok(mut h) = h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await else { return };
                        while let Ok(Some(resolver)) = h.accept().await {
                            if bad == Bad::GoAway {
                                // GOAWAY, then the connection closed (H3_NO_ERROR) under the
                                // request, which gets no answer.
                                let _ = h.shutdown(0).await;
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                                quic.close(quinn::VarInt::from_u32(0x100), b"going away");
                                drop(resolver);
                                return;
                            }
                            if let Ok((_req, mut stream)) = resolver.resolve_request().await {
                                if bad == Bad::NoRead {
                                    tokio::spawn(async move {
                                        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                                        drop(stream);
                                    });
                                    continue;
                                }
                                stream.stop_stream(h3::error::Code::H3_REQUEST_REJECTED);
                                stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                            }
                        }
                    });
                }
            });
        });
        (rx.recv().unwrap(), pem)
    }

    /// Stream resets and GOAWAYs from an HTTP/3 server are counted under `reset` and `goaway`
    /// (or, for requests the closing connection cut, `read`), never as responses.
    #[test]
    fn h3_resets_and_goaways_are_counted_by_kind() {
        for goaway in [false, true] {
            let (addr, pem) = misbehaving_h3_server(if goaway { Bad::GoAway } else { Bad::Reset });
            let url = format!("https://localhost:{}/", addr.port());
            let args = h3_args(
                &url,
                pem.to_str().unwrap(),
                &[
                    "--streams",
                    "2",
                    "--connections",
                    "1",
                    "--rate",
                    "50",
                    "--duration",
                    "1s",
                    "--warmup",
                    "0s",
                    "--timeout",
                    "500ms",
                    "--allow-invalid",
                ],
            );
            let (code, stdout, j) = run_json(&args);
            let _ = std::fs::remove_file(&pem);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
            let kind = if goaway { "errors.goaway" } else { "errors.reset" };
            assert!(f(&j, kind) >= 20.0, "{kind}\n{stdout}");
            assert!(errors_total(&j) >= 45, "{stdout}");
        }
    }

    /// `--early-data`: against `upstream --http3 --early-data` every new connection in the window
    /// resumes in 0-RTT (none refused, no error); against an upstream whose tickets do not allow
    /// early data they are plain resumed handshakes; without `--early-data` never 0-RTT.
    #[test]
    fn h3_early_data_only_when_asked_and_allowed() {
        let _g = timing_lock();
        let (early, early_ca) = Server::upstream_tls(&["--http3", "--early-data"]);
        let (plain, plain_ca) = Server::upstream_tls(&["--http3"]);
        let (early_url, plain_url) = (early.https_url(), plain.https_url());
        let churn = ["--new-connection-every", "10", "--connections", "2", "--rate", "200", "--duration", "2s", "--warmup", "500ms"];
        for (url, ca, ask, zero_rtt) in
            [(&early_url, &early_ca, true, true), (&plain_url, &plain_ca, true, false), (&early_url, &early_ca, false, false)]
        {
            let mut args = h3_args(url, ca.to_str().unwrap(), &churn);
            if ask {
                args.push("--early-data");
            }
            let (code, stdout, j) = run_json(&args);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(errors_total(&j), 0, "{stdout}");
            assert_eq!(f(&j, "counts.responses"), f(&j, "counts.scheduled"), "{stdout}");
            let (full, resumed, zrtt) = (f(&j, "handshakes.full"), f(&j, "handshakes.resumed"), f(&j, "handshakes.zero_rtt"));
            if zero_rtt {
                assert!(zrtt >= 36.0 && resumed == 0.0 && full == 0.0, "0-RTT {zrtt} resumed {resumed} full {full}\n{stdout}");
                assert_eq!(j["early_data_rejected"].as_u64(), Some(0), "{stdout}");
            } else {
                assert!(zrtt == 0.0 && resumed >= 36.0, "0-RTT {zrtt} resumed {resumed}\n{stdout}");
            }
            if !ask {
                assert!(j["early_data_rejected"].is_null(), "{stdout}");
            }
        }
    }

    /// `hold --http3` against `upstream --tls --http3`: 200 QUIC connections, each a handshake
    /// (counted full or resumed) and a verified GET, held idle and still open when the RSS is
    /// read; the upstream's memory grew with them. `--http3` on http:// is a usage error.
    #[test]
    fn hold_holds_http3_connections() {
        let _g = timing_lock();
        let (up, ca) = Server::upstream_tls(&["--http3"]);
        let json = temp_path("hold-h3.json");
        let (url, pid) = (up.https_url(), up.pid().to_string());
        let out = loadgen(&[
            "hold",
            "--url",
            &url,
            "--pid",
            &pid,
            "--http3",
            "--connections",
            "200",
            "--settle",
            "300ms",
            "--settle-before",
            "100ms",
            "--ca",
            ca.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ]);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let _ = std::fs::remove_file(&json);
        let c = &j["counts"][0];
        assert_eq!((c["n_ok"].as_u64(), c["valid"].as_bool()), (Some(200), Some(true)), "{c}");
        let hs = c["tls_handshakes"]["full"].as_u64().unwrap() + c["tls_handshakes"]["resumed"].as_u64().unwrap();
        assert_eq!(hs, 200, "a handshake per held connection: {c}");
        assert!(c["kib_per_conn"].as_f64().unwrap() > 1.0, "the upstream holds QUIC state per connection: {c}");
        assert_eq!(j["meta"]["http3"], true, "{}", j["meta"]);
        assert_eq!(j["meta"]["tls"]["alpn_offered"][0], "h3", "{}", j["meta"]);

        let plain_url = format!("http://{}/", up.addr);
        let out = loadgen(&["hold", "--url", &plain_url, "--pid", &pid, "--http3"]);
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// A server that stops granting flow-control window (it never reads the body, 1,024-byte
    /// stream window): 100,000-byte POSTs time out as `flow_stall`, not as a plain `timeout`.
    #[test]
    fn h3_a_body_the_server_never_takes_is_a_flow_stall() {
        let (addr, pem) = misbehaving_h3_server(Bad::NoRead);
        let url = format!("https://localhost:{}/", addr.port());
        let args = h3_args(
            &url,
            pem.to_str().unwrap(),
            &[
                "--streams",
                "4",
                "--connections",
                "1",
                "--rate",
                "8",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--timeout",
                "500ms",
                "--method",
                "POST",
                "--body-bytes",
                "100000",
                "--allow-invalid",
            ],
        );
        let (code, stdout, j) = run_json(&args);
        let _ = std::fs::remove_file(&pem);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(f(&j, "counts.responses"), 0.0, "{stdout}");
        assert_eq!(f(&j, "errors.flow_stall"), 8.0, "{stdout}");
        assert_eq!(f(&j, "errors.timeout"), 0.0, "{stdout}");
    }
}

/// `relay --h3` (the HTTP/3 floor): `loadgen run --http3` through it to `loadgen upstream` over
/// h2c and, with `--upstream-http1`, over HTTP/1.1; bodies past the flow-control windows, trailers
/// back to an HTTP/3 client (a small one here, on quinn + h3), the request as the HTTP/1.1 origin
/// sees it, and an upstream that is down.
mod h3_relay {
    use super::util::*;
    use bytes::{Buf, Bytes};
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    fn errors_total(j: &serde_json::Value) -> u64 {
        j["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
    }

    /// `relay --h3` to `upstream` (with `extra` flags), its certificate written to a temporary
    /// file that goes with the server; returns the relay and `https://localhost:PORT/`.
    fn relay_h3(upstream: SocketAddr, extra: &[&str]) -> (Server, String, std::path::PathBuf) {
        let ca = temp_path("h3-relay-ca.pem");
        let up = upstream.to_string();
        let mut args = vec!["relay", "--listen", "127.0.0.1:0", "--upstream", &up, "--h3", "--cert-out", ca.to_str().unwrap()];
        args.extend_from_slice(extra);
        let relay = Server::start(&args);
        let url = relay.https_url();
        (relay, url, ca)
    }

    /// `loadgen run --http3` through `url` with `extra`.
    fn run_h3(url: &str, ca: &Path, extra: &[&str]) -> (i32, String, serde_json::Value) {
        let mut args = vec!["--url", url, "--ca", ca.to_str().unwrap(), "--http3"];
        args.extend_from_slice(extra);
        run_json(&args)
    }

    /// Valid, rate within 1 %, every scheduled request answered 200, no error of any kind, h3.
    fn assert_clean_400(code: i32, stdout: &str, j: &serde_json::Value) {
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(j["valid"], true, "{stdout}");
        for k in ["sent_rate", "achieved_rate"] {
            let r = f(j, k);
            assert!((r - 400.0).abs() <= 4.0, "{k} {r}\n{stdout}");
        }
        let responses = f(j, "counts.responses");
        assert_eq!(responses, f(j, "counts.scheduled"), "{stdout}");
        assert_eq!(j["status_codes"]["200"].as_f64(), Some(responses), "{stdout}");
        assert_eq!(errors_total(j), 0, "{stdout}");
        assert_eq!(j["meta"]["protocol"], "h3", "{stdout}");
        assert_eq!(j["tls_negotiated"][0]["alpn"].as_str(), Some("h3"), "{stdout}");
    }

    /// At 400 req/s on 2 connections × 4 streams, through `relay --h3` to `upstream` over h2c and
    /// through `relay --h3 --upstream-http1` to `upstream --http1-only`: clean; then 40 POSTs of
    /// 100,000 bytes each (past QUIC's and HTTP/2's initial windows) on 2 streams, all 200, no
    /// error: the upstream reads each body by its `content-length` (the `h2` crate refuses a
    /// stream whose DATA does not add up to it; over HTTP/1.1 a short body would never end), so
    /// a body that did not arrive whole would be an error or a timeout, not a 200.
    #[test]
    fn h3_relay_is_clean_at_a_fixed_rate_and_with_large_posts_to_h2c_and_http1() {
        let _g = timing_lock();
        for h1 in [false, true] {
            let up = Server::upstream(if h1 { &["--http1-only"][..] } else { &[] });
            let (_relay, url, ca) = relay_h3(up.addr, if h1 { &["--upstream-http1"][..] } else { &[] });
            let rate = ["--streams", "4", "--connections", "2", "--rate", "400", "--duration", "2s", "--warmup", "500ms"];
            let (code, stdout, j) = run_h3(&url, &ca, &rate);
            assert_clean_400(code, &stdout, &j);
            assert_eq!(j["meta"]["streams"].as_u64(), Some(4), "{stdout}");

            let posts = [
                "--streams",
                "2",
                "--connections",
                "1",
                "--rate",
                "40",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--method",
                "POST",
                "--body-bytes",
                "100000",
            ];
            let (code, stdout, j) = run_h3(&url, &ca, &posts);
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(j["status_codes"]["200"].as_f64(), Some(40.0), "{stdout}");
            assert_eq!(errors_total(&j), 0, "{stdout}");
            let _ = std::fs::remove_file(&ca);
        }
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: http::HeaderMap,
        body: Vec<u8>,
        trailers: Option<http::HeaderMap>,
    }

    type Send = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

    /// One request on a new stream (head, `body` if any, FIN), the whole response read.
    async fn request(send: &mut Send, method: &str, uri: &str, fields: &[(&str, &str)], body: &[u8]) -> Reply {
        let data: &[&[u8]] = if body.is_empty() { &[] } else { &[body] };
        try_request(send, method, uri, fields, data, None).await.unwrap()
    }

    /// One request on a new stream: the head, each of `data` as a DATA frame, `trailers`, FIN;
    /// then the whole response, or the stream's error.
    async fn try_request(
        send: &mut Send,
        method: &str,
        uri: &str,
        fields: &[(&str, &str)],
        data: &[&[u8]],
        trailers: Option<http::HeaderMap>,
    ) -> Result<Reply, h3::error::StreamError> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in fields {
            b = b.header(*k, *v);
        }
        let mut s = send.send_request(b.body(()).unwrap()).await?;
        for d in data {
            s.send_data(Bytes::copy_from_slice(d)).await?;
        }
        if let Some(t) = trailers {
            s.send_trailers(t).await?;
        }
        s.finish().await?;
        let resp = s.recv_response().await?;
        let mut got = Vec::new();
        while let Some(mut d) = s.recv_data().await? {
            got.extend_from_slice(&d.copy_to_bytes(d.remaining()));
        }
        let trailers = s.recv_trailers().await?;
        Ok(Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), body: got, trailers })
    }

    /// Runs `f` with an HTTP/3 connection to `localhost:port` trusting `ca`, within 20 s.
    fn with_h3<F, Fut>(port: u16, ca: &Path, f: F)
    where
        F: FnOnce(Send) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut roots = rustls::RootCertStore::empty();
        for c in loadgen::tls::read_certs(ca).unwrap() {
            roots.add(c).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let conn = ep.connect_with(config, addr, "localhost").unwrap().await.unwrap();
            let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn)).await.unwrap();
            tokio::spawn(async move {
                let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            });
            tokio::time::timeout(Duration::from_secs(20), f(send)).await.expect("timed out");
        });
    }

    fn assert_grpc_trailers(r: &Reply) {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.headers["content-type"], "application/grpc", "{r:?}");
        assert_eq!(r.body, vec![b'x'; 100]);
        let t = r.trailers.as_ref().unwrap_or_else(|| panic!("no trailers: {r:?}"));
        assert_eq!((t["grpc-status"].as_bytes(), t["grpc-message"].as_bytes()), (&b"0"[..], &b"ok"[..]), "{t:?}");
    }

    /// `upstream --trailers` behind `relay --h3` (over h2c: HTTP/2 trailers; with
    /// `--upstream-http1` to `--http1-only`: a chunked trailer section) reaches an HTTP/3 client
    /// as HTTP/3 trailers, for a GET and a POST; HEAD gets the head alone.
    #[test]
    fn h3_relay_relays_response_trailers_to_an_http3_client() {
        for h1 in [false, true] {
            let up = Server::upstream(if h1 { &["--http1-only", "--trailers"][..] } else { &["--trailers"] });
            let (relay, url, ca) = relay_h3(up.addr, if h1 { &["--upstream-http1"][..] } else { &[] });
            with_h3(relay.addr.port(), &ca, |mut send| async move {
                let r = request(&mut send, "GET", &url, &[], b"").await;
                assert_grpc_trailers(&r);
                let fields = [("content-type", "application/grpc"), ("te", "trailers")];
                let r = request(&mut send, "POST", &format!("{url}svc/M"), &fields, &[0u8; 64]).await;
                assert_grpc_trailers(&r);
                let r = request(&mut send, "HEAD", &url, &[], b"").await;
                assert_eq!((r.status, r.body.len(), r.trailers.is_none()), (200, 0, true), "{r:?}");
            });
            let _ = std::fs::remove_file(&ca);
        }
    }

    /// What an HTTP/1.1 origin receives through `relay --h3 --upstream-http1` (the origin in
    /// `h2_to_h1` answers with the request's own bytes): a GET is `GET path HTTP/1.1`, `host` from
    /// `:authority`, the client's fields, no body framing (its end came with its head); a
    /// 100,000-byte POST with a `content-length` arrives byte-exact; a POST without one (two
    /// DATA frames and trailers) arrives chunked with the trailers as its trailer section;
    /// sequential streams share one origin connection. A response head that is not HTTP is a
    /// `502`, a bad chunk after a good head resets the stream, and the connection carries on.
    #[test]
    fn h3_relay_sends_http1_requests_as_they_came() {
        let (origin, accepted) = super::h2_to_h1::echo_origin();
        let (relay, url, ca) = relay_h3(origin, &["--upstream-http1"]);
        let port = relay.addr.port();
        with_h3(port, &ca, |mut send| async move {
            let r = request(&mut send, "GET", &format!("{url}a?q=1"), &[("x-test", "1")], b"").await;
            assert_eq!((r.status, r.headers["x-origin"].as_bytes()), (200, &b"echo"[..]), "{r:?}");
            let t = String::from_utf8_lossy(&r.body).to_string();
            assert!(t.starts_with(&format!("GET /a?q=1 HTTP/1.1\r\nhost: localhost:{port}\r\n")), "{t}");
            assert!(t.contains("\r\nx-test: 1\r\n") && t.ends_with("\r\n\r\n"), "{t}");
            assert!(!t.contains("transfer-encoding") && !t.contains("content-length"), "{t}");

            let big = vec![b'y'; 100_000];
            let r = request(&mut send, "POST", &format!("{url}big"), &[("content-length", "100000")], &big).await;
            assert_eq!(r.status, 200);
            assert!(r.body.ends_with(&big) && r.body.len() < 100_000 + 200, "{}", r.body.len());
            let head = String::from_utf8_lossy(&r.body[..r.body.len() - big.len()]).to_string();
            assert!(head.starts_with("POST /big HTTP/1.1\r\n") && head.ends_with("\r\ncontent-length: 100000\r\n\r\n"), "{head}");

            let mut tr = http::HeaderMap::new();
            tr.insert("x-t", http::HeaderValue::from_static("yes"));
            let r = try_request(&mut send, "POST", &format!("{url}c"), &[], &[b"abc", b"defg"], Some(tr)).await.unwrap();
            let t = String::from_utf8_lossy(&r.body).to_string();
            assert!(t.ends_with("\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-t: yes\r\n\r\n"), "{t}");
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "sequential streams share one origin connection");

            let r = request(&mut send, "GET", &format!("{url}bad-head"), &[], b"").await;
            assert_eq!((r.status, r.body.len()), (502, 0), "{r:?}");
            let e = try_request(&mut send, "GET", &format!("{url}bad-chunk"), &[], &[], None).await.unwrap_err();
            assert!(e.to_string().contains("INTERNAL_ERROR"), "{e}");
            assert_eq!(request(&mut send, "GET", &url, &[], b"").await.status, 200);
        });
        let _ = std::fs::remove_file(&ca);
    }

    /// An upstream that refuses connections, over h2c and over HTTP/1.1: every request is a
    /// counted `502` (a `status` error), the run ends in time, and the relay is still serving.
    #[test]
    fn h3_relay_to_an_upstream_that_is_down_answers_502() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        for h1 in [false, true] {
            let (relay, url, ca) = relay_h3(closed, if h1 { &["--upstream-http1"][..] } else { &[] });
            let args = ["--streams", "2", "--connections", "2", "--rate", "20", "--duration", "1s", "--warmup", "0s", "--timeout", "2s"];
            let started = std::time::Instant::now();
            let (code, stdout, j) = run_h3(&url, &ca, &args);
            assert!(started.elapsed() < Duration::from_secs(10), "{stdout}");
            assert_eq!(code, 0, "{stdout}");
            assert_eq!(j["status_codes"]["502"].as_f64(), Some(20.0), "{stdout}");
            assert_eq!(f(&j, "errors.status"), 20.0, "{stdout}");
            assert_eq!(errors_total(&j), 20, "{stdout}");
            assert!(Path::new(&format!("/proc/{}/stat", relay.pid())).exists(), "the relay is still running");
            let state = std::fs::read_to_string(format!("/proc/{}/stat", relay.pid())).unwrap();
            assert!(!state.contains(") Z "), "the relay exited: {state}");
            let _ = std::fs::remove_file(&ca);
        }
    }
}
