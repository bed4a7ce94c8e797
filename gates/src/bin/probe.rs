//! Readings the Python scripts take from the gates' own code, so each has one owner
//! (scripts/lib/probe.py calls this binary):
//!
//! - `probe schedstat PID...`: time on CPU of every thread of each process, in ns (the first
//!   field of `/proc/PID/task/*/schedstat`; [`gates::floor::cpu_ns`], the floor gate's reading).
//!   Prints `{"total_ns": N, "by_pid": {"PID": N, ...}}`.
//! - `probe strace-summary FILE`: the per-syscall counts of an `strace -c` summary
//!   ([`gates::floor::parse_strace_summary`], the syscall gate's parser), in the file's order,
//!   and their sum. Prints `{"calls": [["sendto", 16000], ...], "total": N}`.
//!
//! One JSON line on stdout; exit 1 with the reason on stderr when a file cannot be read (a
//! process that is gone, a missing summary), 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gates::error::Chain;
use gates::floor::{FloorError, cpu_ns, parse_strace_summary};
use serde_json::{Map, Value, json};

#[derive(Debug, Parser)]
#[command(name = "probe", about = "schedstat and strace -c readings as JSON, for the scripts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// CPU time (ns, schedstat) of every thread of each PID, and their sum.
    Schedstat {
        #[arg(required = true)]
        pids: Vec<u32>,
    },
    /// Per-syscall counts of an `strace -c` summary file, and their sum.
    StraceSummary { file: PathBuf },
}

/// A reading that cannot be taken (exit 1).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// A process that is gone (its `/proc/PID/task` or a thread's schedstat).
    #[error(transparent)]
    Schedstat(#[from] FloorError),
    #[error("{}", file.display())]
    Summary { file: PathBuf, source: std::io::Error },
}

fn schedstat(pids: &[u32]) -> Result<Value, ProbeError> {
    let mut by_pid = Map::new();
    let mut total: u64 = 0;
    for &pid in pids {
        let ns = cpu_ns(pid)?;
        total += ns;
        by_pid.insert(pid.to_string(), json!(ns));
    }
    Ok(json!({ "total_ns": total, "by_pid": by_pid }))
}

fn strace_summary(text: &str) -> Value {
    let calls = parse_strace_summary(text);
    let total: u64 = calls.iter().map(|(_, n)| n).sum();
    json!({ "calls": calls, "total": total })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let out = match cli.cmd {
        Cmd::Schedstat { pids } => schedstat(&pids),
        Cmd::StraceSummary { file } => {
            std::fs::read_to_string(&file).map(|t| strace_summary(&t)).map_err(|source| ProbeError::Summary { file, source })
        }
    };
    match out {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("probe: {}", Chain(&e));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn schedstat_sums_the_threads_of_each_pid() {
        let me = std::process::id();
        // Spend some CPU so this process's counter is above zero.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let v = schedstat(&[me, me]).unwrap();
        let one = v["by_pid"][me.to_string()].as_u64().unwrap();
        assert!(one > 0, "{v}");
        assert!(v["total_ns"].as_u64().unwrap() >= 2 * one, "{v}");
        let e = schedstat(&[me, u32::MAX]).unwrap_err();
        assert!(matches!(e, ProbeError::Schedstat(FloorError::Tasks { .. })), "{e:?}");
        let shown = Chain(&e).to_string();
        assert!(shown.starts_with(&format!("/proc/{}/task: ", u32::MAX)), "{shown}");
    }

    #[test]
    fn strace_summary_keeps_the_file_order_and_sums_the_calls() {
        let text = "% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 55.00    0.100000           5     16000           sendto
 40.00    0.080000           4     16000      8000 recvfrom
  5.00    0.010000           1       320           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.190000           5     32320      8000 total
";
        assert_eq!(strace_summary(text), json!({"calls": [["sendto", 16000], ["recvfrom", 16000], ["epoll_wait", 320]], "total": 32320}));
        assert_eq!(strace_summary(""), json!({"calls": [], "total": 0}));
    }
}
