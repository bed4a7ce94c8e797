//! `cargo run --release -p gates [-- --phase 1 --only alloc,static --save-baseline]`
//!
//! Runs every gate of every contract, prints one table, writes `results/gates/latest.json` and
//! `latest.md`, and exits 1 on any FAIL or ERROR (2 on bad usage or a broken contract).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gates::baseline::Baseline;
use gates::runner::{self, Options};
use gates::{contract, report};

const USAGE: &str = "usage: gates [--phase N[,N]] [--only static,alloc,instructions,latency,syscalls,floor] [--features planted-x,...] \
[--save-baseline] [--baseline FILE] [--out DIR] [--root DIR] [--verbose]";

struct Args {
    opts: Options,
    save_baseline: bool,
    baseline: Option<PathBuf>,
    out: PathBuf,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let default_root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut opts = Options { root: default_root, phases: None, only: None, features: Vec::new(), verbose: false };
    let mut save_baseline = false;
    let mut out = None;
    let mut baseline = None;
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--phase" => {
                let v = val()?;
                let p: Result<Vec<u32>, _> = v.split(',').map(|x| x.trim().trim_start_matches("phase").parse()).collect();
                opts.phases = Some(p.map_err(|_| format!("--phase takes numbers, got {v:?}"))?);
            }
            "--only" => {
                let v = val()?;
                let gates: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
                if let Some(bad) =
                    gates.iter().find(|g| !["static", "alloc", "instructions", "latency", "syscalls", "floor"].contains(&g.as_str()))
                {
                    return Err(format!("unknown gate {bad:?} (static, alloc, instructions, latency, syscalls, floor)"));
                }
                opts.only = Some(gates);
            }
            "--features" => opts.features = val()?.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
            "--save-baseline" => save_baseline = true,
            "--out" => out = Some(PathBuf::from(val()?)),
            "--baseline" => baseline = Some(PathBuf::from(val()?)),
            "--root" => opts.root = PathBuf::from(val()?),
            "--verbose" | "-v" => opts.verbose = true,
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let out = out.unwrap_or_else(|| opts.root.join("results").join("gates"));
    Ok(Args { opts, save_baseline, baseline, out })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gates: {e}");
            return ExitCode::from(2);
        }
    };
    let contracts = match contract::load_all(&args.opts.root) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            eprintln!("gates: no contracts/phase*.toml under {}", args.opts.root.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("gates: invalid contract: {e}");
            return ExitCode::from(2);
        }
    };
    let baseline_path = args.baseline.clone().unwrap_or_else(|| args.opts.root.join("results/gates/baseline.json"));
    let baseline = match Baseline::load(&baseline_path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gates: {e}");
            return ExitCode::from(2);
        }
    };

    let rows = runner::run(&args.opts, &contracts, &baseline);
    let meta = report::meta(&args.opts.root, &argv);
    println!("{}", report::table(&rows));

    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("gates: cannot create {}: {e}", args.out.display());
        return ExitCode::from(1);
    }
    let json = report::json_report(&rows, &meta);
    let writes = [
        (args.out.join("latest.json"), serde_json::to_string_pretty(&json).unwrap_or_default()),
        (args.out.join("latest.md"), report::markdown(&rows, &meta)),
    ];
    for (path, text) in writes {
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("gates: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if args.save_baseline {
        let b = Baseline::from_rows(&rows, meta["commit"].as_str().unwrap_or("unknown"), meta["created"].as_str().unwrap_or(""));
        let text = serde_json::to_string_pretty(&b).unwrap_or_default();
        if let Err(e) = std::fs::write(&baseline_path, text + "\n") {
            eprintln!("gates: cannot write {}: {e}", baseline_path.display());
            return ExitCode::from(1);
        }
        println!("baseline saved: {}", baseline_path.display());
    }
    println!("report: {}", args.out.join("latest.md").display());
    if rows.iter().any(|r| r.status.is_failure()) { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
