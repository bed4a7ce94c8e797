//! The report: a table for people (terminal and markdown) and versioned JSON for machines.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::runner::{Row, Status};

pub const SCHEMA_VERSION: u32 = 1;

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(x) if !x.is_finite() => "—".to_owned(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e12 => format!("{x:.0}"),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn status_text(s: Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Error => "ERROR",
        Status::Control => "CONTROL",
        Status::Info => "INFO",
        Status::Inconclusive => "INCONCLUSIVE",
    }
}

fn cells(r: &Row) -> [String; 7] {
    [
        r.key.clone(),
        format!("{} ({})", r.metric, r.unit),
        fmt_num(r.measured),
        fmt_num(r.limit),
        fmt_num(r.baseline),
        r.delta_pct.map_or("—".to_owned(), |d| format!("{d:+.1}%")),
        status_text(r.status).to_owned(),
    ]
}

const HEADERS: [&str; 7] = ["contract:key", "metric", "measured", "limit", "baseline", "Δ", "status"];

/// A fixed-width table for the terminal; metric names are cut to keep one screen wide.
pub fn table(rows: &[Row]) -> String {
    let mut grid: Vec<[String; 7]> = rows.iter().map(cells).collect();
    for g in &mut grid {
        if g[1].chars().count() > 48 {
            g[1] = g[1].chars().take(47).collect::<String>() + "…";
        }
    }
    let mut w = HEADERS.map(|h| h.chars().count());
    for g in &grid {
        for (i, c) in g.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |c: &[String]| c.iter().enumerate().map(|(i, s)| format!("{s:<width$}", width = w[i])).collect::<Vec<_>>().join(" | ");
    let mut out = line(&HEADERS.map(String::from));
    out.push('\n');
    out.push_str(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().join("-+-"));
    out.push('\n');
    for (g, r) in grid.iter().zip(rows) {
        out.push_str(&line(g));
        out.push('\n');
        if !r.note.is_empty() && r.status != Status::Pass {
            out.push_str(&format!("    ↳ {}\n", r.note));
        }
    }
    out
}

pub fn markdown(rows: &[Row], meta: &Value) -> String {
    let mut out = String::from("# Gate report\n\n");
    out.push_str(&format!(
        "commit `{}` · {} · rustc `{}` · valgrind `{}` · CPU `{}`\n\n",
        meta["commit"].as_str().unwrap_or("?"),
        meta["created"].as_str().unwrap_or("?"),
        meta["rustc"].as_str().unwrap_or("?"),
        meta["valgrind"].as_str().unwrap_or("?"),
        meta["cpu"].as_str().unwrap_or("?"),
    ));
    out.push_str(&format!("| {} | note |\n", HEADERS.join(" | ")));
    out.push_str(&format!("|{}---|\n", "---|".repeat(HEADERS.len())));
    for r in rows {
        out.push_str(&format!("| {} | {} |\n", cells(r).join(" | "), r.note.replace('|', "\\|")));
    }
    out
}

pub fn json_report(rows: &[Row], meta: &Value) -> Value {
    json!({
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "passed": crate::runner::exit_code(rows) == 0,
        "verdict": match crate::runner::exit_code(rows) {
            0 => "PASS",
            3 => "INCONCLUSIVE",
            _ => "FAIL",
        },
        "rows": rows,
    })
}

fn cmd_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// How the run was made: commit, tools, machine.
pub fn meta(root: &Path, argv: &[String]) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let commit = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    json!({
        "commit": commit,
        "dirty_tree": dirty,
        "created": now_utc(),
        "command": argv.join(" "),
        "rustc": cmd_line("rustc", &["--version"]),
        "valgrind": cmd_line("valgrind", &["--version"]),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": cmd_line("uname", &["-r"]),
    })
}

/// The current UTC time, RFC 3339 to the second (`2026-11-30T12:38:44Z`).
pub fn now_utc() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::error_row;

    #[test]
    fn table_shows_failures_with_notes() {
        let mut ok = error_row("phase1:alloc".into(), "allocs", "n", Some(0.0), "fine".into());
        ok.status = Status::Pass;
        ok.measured = Some(0.0);
        let bad = error_row("phase1:static".into(), "violations", "n", Some(0.0), "data/conn.rs:3: format!".into());
        let t = table(&[ok, bad]);
        assert!(t.contains("PASS") && t.contains("ERROR"));
        assert!(t.contains("↳ data/conn.rs:3: format!"));
        assert!(!t.contains("↳ fine"));
    }

    #[test]
    fn dates() {
        let s = now_utc();
        assert_eq!(s.len(), 20);
        assert!(s.starts_with("20"));
    }
}
