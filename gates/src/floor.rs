//! Distance to the physical floor (issue 8): syscalls per request under `strace -c -f`, and CPU per
//! request relative to the byte-relay floor (`loadgen relay`) measured in the same run.
//!
//! Both start the bundled upstream (CPU 0), the release proxy and the relay (CPU 1), and drive
//! them with loadgen's open loop (CPU 0) at the contract's rate. The relay parses nothing: it
//! copies bytes between one client connection and one upstream connection, so its cost is what
//! any proxy pays in the kernel on this machine.
//!
//! - syscalls: after a warm-up run, `strace -c -f -p PID` is attached, one run of the contract's
//!   length is sent, strace is detached with SIGINT and its summary parsed; calls / responses.
//! - floor: interleaved rounds (the order alternates); in each, a warm-up run, then the CPU the
//!   target's threads spent (the first field of `/proc/PID/task/*/schedstat`, nanoseconds) around
//!   one measured run, divided by the responses it served; the row is the median over rounds of
//!   the within-round ratio proxy ÷ relay.
//!
//! Rows without a `hard_limit` in the contract are reported (`INFO`), not gated.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::contract::FloorGate;
use crate::error::chain;
use crate::runner::{
    ChildGuard, LoadRun, Options, Row, RunnerError, Stage, Status, error_row, median, scratch_dir, start_stage_tls, which,
};

/// What keeps the floor rows from a figure: the stage, strace, schedstat, errors under load.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("strace is not installed: apt-get install -y strace")]
    NoStrace,
    /// `/proc/PID/task` cannot be listed: the process is gone.
    #[error("{}", dir.display())]
    Tasks { dir: PathBuf, source: std::io::Error },
    #[error("{}", path.display())]
    Schedstat { path: PathBuf, source: std::io::Error },
    #[error("cannot start strace")]
    StraceStart(#[source] std::io::Error),
    #[error("strace exited at once ({0}): is ptrace allowed (kernel.yama.ptrace_scope)?")]
    StraceExited(ExitStatus),
    /// `target`: `proxy` or `relay`.
    #[error("{target}: {errors} errors during the strace run")]
    StraceRunErrors { target: String, errors: u64 },
    #[error("{}", path.display())]
    StraceSummary { path: PathBuf, source: std::io::Error },
    #[error("{target}: strace counted {calls} calls for {responses} responses")]
    NothingCounted { target: String, calls: u64, responses: u64 },
    #[error("{target}: {errors} errors in round {round}")]
    RoundErrors { target: String, errors: u64, round: u32 },
}

/// The processes every floor measurement needs: the upstream and the proxy ([`Stage`]) plus the
/// relay on the proxy's CPU.
struct Setup {
    stage: Stage,
    relay: ChildGuard,
    relay_addr: String,
    tmp: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn setup(opts: &Options, g: &FloorGate, what: &str) -> Result<Setup, RunnerError> {
    let tmp = scratch_dir(what)?;
    let stage = start_stage_tls(opts, g.body_bytes, &tmp, "", g.tls)?;
    let (relay, relay_addr) = stage.start_relay()?;
    Ok(Setup { stage, relay, relay_addr, tmp })
}

/// One open-loop run at the contract's rate; returns (responses, errors, valid).
fn load(s: &Setup, g: &FloorGate, addr: &str, duration: &str, name: &str) -> Result<(u64, u64, bool), RunnerError> {
    let json = s.tmp.join(format!("{name}.json"));
    let run = LoadRun { addr, rate: g.rate, connections: g.connections, duration, warmup: "0s" };
    let v = s.stage.load(&run, &[], &json)?;
    let responses = v["counts"]["responses"].as_u64().unwrap_or(0);
    let errors = v["errors"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    Ok((responses, errors, v["valid"].as_bool() == Some(true)))
}

/// Nanoseconds on CPU of every thread of `pid` (schedstat), or an error naming the file.
/// Also the scripts' schedstat reading (`probe schedstat`, scripts/lib/probe.py).
pub fn cpu_ns(pid: u32) -> Result<u64, FloorError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let tasks = |source| FloorError::Tasks { dir: dir.clone(), source };
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).map_err(tasks)? {
        let path = entry.map_err(tasks)?.path().join("schedstat");
        let text = std::fs::read_to_string(&path).map_err(|source| FloorError::Schedstat { path: path.clone(), source })?;
        total += text.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

/// Per-syscall counts from an `strace -c` summary file (`total` excluded), in the file's order.
/// Also the scripts' parser (`probe strace-summary`, scripts/lib/probe.py).
pub fn parse_strace_summary(text: &str) -> Vec<(String, u64)> {
    let mut calls = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if parts.len() < 5 || parts[0].starts_with('%') || parts[0].starts_with('-') {
            continue;
        }
        let Some(name) = parts.last() else { continue };
        if *name == "total" || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Ok(n) = parts[3].parse::<u64>() {
            calls.push(((*name).to_owned(), n));
        }
    }
    calls
}

/// Syscalls per request of `pid` over one run; (per request, by syscall per request, responses).
fn strace_run(s: &Setup, g: &FloorGate, pid: u32, addr: &str, name: &str) -> Result<(f64, Value, u64), FloorError> {
    load(s, g, addr, &g.warmup, &format!("{name}-strace-warmup"))?;
    let file = s.tmp.join(format!("{name}.strace"));
    let child = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&file)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(FloorError::StraceStart)?;
    let mut st = ChildGuard(child);
    // strace attaches to every thread before the run starts.
    std::thread::sleep(Duration::from_millis(1000));
    if let Ok(Some(status)) = st.0.try_wait() {
        return Err(FloorError::StraceExited(status));
    }
    let (responses, errors, _) = load(s, g, addr, &g.duration, &format!("{name}-strace"))?;
    // SIGINT makes strace detach and write its summary.
    let _ = Command::new("kill").args(["-INT", &st.0.id().to_string()]).status();
    for _ in 0..100 {
        if let Ok(Some(_)) = st.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(st);
    if errors > 0 {
        return Err(FloorError::StraceRunErrors { target: name.to_owned(), errors });
    }
    let text = std::fs::read_to_string(&file).map_err(|source| FloorError::StraceSummary { path: file.clone(), source })?;
    let calls = parse_strace_summary(&text);
    let total: u64 = calls.iter().map(|(_, n)| n).sum();
    if responses == 0 || total == 0 {
        return Err(FloorError::NothingCounted { target: name.to_owned(), calls: total, responses });
    }
    let per = |n: u64| (n as f64 / responses as f64 * 1000.0).round() / 1000.0;
    let by: serde_json::Map<String, Value> = calls.iter().map(|(k, n)| (k.clone(), json!(per(*n)))).collect();
    Ok((total as f64 / responses as f64, Value::Object(by), responses))
}

/// System calls that wait for events or time: their count per request moves with load (how many
/// events one wake-up finds), so the exact comparison leaves them out.
const WAITING: [&str; 8] =
    ["epoll_wait", "epoll_pwait", "epoll_pwait2", "futex", "nanosleep", "clock_nanosleep", "sched_yield", "restart_syscall"];

/// Per-request calls of every system call but the waiting ones.
fn non_waiting(by: &Value) -> f64 {
    by.as_object().map_or(0.0, |m| m.iter().filter(|(k, _)| !WAITING.contains(&k.as_str())).filter_map(|(_, v)| v.as_f64()).sum())
}

fn status_for(measured: f64, limit: Option<f64>) -> Status {
    match limit {
        None => Status::Info,
        Some(l) if measured <= l => Status::Pass,
        Some(_) => Status::Fail,
    }
}

fn goal_note(goal: Option<f64>, measured: f64) -> String {
    match goal {
        Some(g) if measured <= g => format!("goal ≤ {g}: met"),
        Some(g) => format!("goal ≤ {g}: not met"),
        None => String::new(),
    }
}

/// The `syscalls` rows: the proxy's (gated when the contract sets a limit) and the relay's (info).
pub fn syscalls_gate(opts: &Options, g: &FloorGate, prefix: &str) -> Vec<Row> {
    let key = format!("{prefix}:syscalls");
    if !which("strace") {
        return vec![error_row(key, &g.metric, &g.unit, g.hard_limit, FloorError::NoStrace.to_string())];
    }
    let run = || -> Result<Vec<Row>, FloorError> {
        let s = setup(opts, g, "syscalls")?;
        let (px, px_by, px_n) = strace_run(&s, g, s.stage.proxy.0.id(), &s.stage.proxy_addr, "proxy")?;
        let (rl, rl_by, rl_n) = strace_run(&s, g, s.relay.0.id(), &s.relay_addr, "relay")?;
        let mut proxy = base_row(&key, g);
        proxy.measured = Some(px);
        proxy.status = status_for(px, g.hard_limit);
        let io_delta = non_waiting(&px_by) - non_waiting(&rl_by);
        proxy.note = format!(
            "{px:.2} vs floor {rl:.2} ({:.2}× floor); non-waiting calls {:+.3}/request over the floor's; {}",
            px / rl,
            io_delta,
            goal_note(g.goal, px)
        );
        if let Some(limit) = g.io_delta_limit
            && io_delta > limit
        {
            proxy.status = Status::Fail;
            proxy.note = format!("non-waiting system calls {io_delta:+.3}/request over the floor's (limit +{limit}); {}", proxy.note);
        }
        proxy.details = json!({
            "responses": px_n, "by_syscall_per_request": px_by, "floor": rl, "floor_ratio": px / rl,
            "non_waiting_per_request": non_waiting(&px_by), "floor_non_waiting_per_request": non_waiting(&rl_by),
            "io_delta_per_request": io_delta, "io_delta_limit": g.io_delta_limit,
        });
        let mut relay = base_row(&format!("{key}[relay]"), g);
        relay.measured = Some(rl);
        relay.status = Status::Info;
        relay.limit = None;
        relay.note = "the byte-relay floor, same run".to_owned();
        relay.details = json!({ "responses": rl_n, "by_syscall_per_request": rl_by });
        Ok(vec![proxy, relay])
    };
    run().unwrap_or_else(|e| vec![error_row(key, &g.metric, &g.unit, g.hard_limit, chain(&e))])
}

/// The `floor` row: proxy CPU per request ÷ relay CPU per request, median of within-round ratios.
pub fn floor_gate(opts: &Options, g: &FloorGate, prefix: &str) -> Vec<Row> {
    let key = format!("{prefix}:floor");
    let run = || -> Result<Vec<Row>, FloorError> {
        let s = setup(opts, g, "floor")?;
        let targets = [("proxy", s.stage.proxy.0.id(), s.stage.proxy_addr.clone()), ("relay", s.relay.0.id(), s.relay_addr.clone())];
        let mut rounds = Vec::new();
        for r in 0..g.rounds.max(1) {
            let mut cpu = [f64::NAN; 2];
            let mut valid = true;
            for i in 0..2 {
                // Alternate which target goes first.
                let t = if r % 2 == 0 { i } else { 1 - i };
                let (name, pid, addr) = &targets[t];
                load(&s, g, addr, &g.warmup, &format!("{name}-{r}-warmup"))?;
                let before = cpu_ns(*pid)?;
                let (responses, errors, ok) = load(&s, g, addr, &g.duration, &format!("{name}-{r}"))?;
                let after = cpu_ns(*pid)?;
                if errors > 0 {
                    return Err(FloorError::RoundErrors { target: (*name).to_owned(), errors, round: r });
                }
                valid &= ok && responses > 0;
                cpu[t] = (after.saturating_sub(before)) as f64 / 1000.0 / responses.max(1) as f64;
            }
            rounds.push((cpu[0], cpu[1], valid));
        }
        let valid: Vec<&(f64, f64, bool)> = rounds.iter().filter(|r| r.2).collect();
        let details = json!({
            "rate": g.rate,
            "rounds": rounds.iter().map(|(p, f, v)| json!({"proxy_cpu_us": p, "relay_cpu_us": f, "ratio": p / f, "valid": v})).collect::<Vec<_>>(),
        });
        let mut row = base_row(&key, g);
        row.details = details;
        if valid.len() * 2 < rounds.len() || valid.is_empty() {
            row.status = Status::Error;
            row.note =
                format!("the load generator fell behind in {} of {} rounds: machine too loaded", rounds.len() - valid.len(), rounds.len());
            return Ok(vec![row]);
        }
        let ratios: Vec<f64> = valid.iter().map(|r| r.0 / r.1).collect();
        let ratio = median(ratios.clone());
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        row.measured = Some((ratio * 1000.0).round() / 1000.0);
        row.status = status_for(ratio, g.hard_limit);
        row.note = format!(
            "CPU/request at {} req/s: proxy {:.1} µs, floor {:.1} µs (median of {} rounds; ratio {lo:.2}–{hi:.2}); {}",
            g.rate,
            median(valid.iter().map(|r| r.0).collect()),
            median(valid.iter().map(|r| r.1).collect()),
            valid.len(),
            goal_note(g.goal, ratio)
        );
        Ok(vec![row])
    };
    run().unwrap_or_else(|e| vec![error_row(key, &g.metric, &g.unit, g.hard_limit, chain(&e))])
}

fn base_row(key: &str, g: &FloorGate) -> Row {
    Row {
        key: key.to_owned(),
        metric: g.metric.clone(),
        unit: g.unit.clone(),
        measured: None,
        limit: g.hard_limit,
        soft_limit_pct: g.soft_limit_pct,
        baseline: None,
        delta_pct: None,
        status: Status::Error,
        note: String::new(),
        details: Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_is_parsed_with_and_without_error_column() {
        let text = "% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 55.00    0.100000           5     16000           sendto
 40.00    0.080000           4     16000      8000 recvfrom
  5.00    0.010000           1       320           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.190000           5     32320      8000 total
";
        let calls = parse_strace_summary(text);
        assert_eq!(calls, vec![("sendto".to_owned(), 16000), ("recvfrom".to_owned(), 16000), ("epoll_wait".to_owned(), 320)]);
    }

    #[test]
    fn waiting_calls_are_left_out_of_the_exact_count() {
        let by = json!({"recvfrom": 2.0, "sendto": 2.0, "epoll_wait": 2.1, "futex": 0.01, "getpid": 0.25});
        assert!((non_waiting(&by) - 4.25).abs() < 1e-9);
    }

    #[test]
    fn report_only_rows_are_info_and_limits_gate() {
        assert_eq!(status_for(6.0, None), Status::Info);
        assert_eq!(status_for(6.0, Some(6.5)), Status::Pass);
        assert_eq!(status_for(7.0, Some(6.5)), Status::Fail);
    }
}
