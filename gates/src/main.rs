//! `cargo run --release -p gates [-- --phase 1 --only alloc,static --save-baseline]`
//!
//! Runs every gate of every contract, prints one table, writes `results/gates/latest.json` and
//! `latest.md`, and exits 0 when every gate passed, 1 on any FAIL or ERROR, 3 when nothing failed
//! but a gate was INCONCLUSIVE (the machine too noisy to judge), 2 on bad usage or a broken
//! contract.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use gates::Error;
use gates::baseline::Baseline;
use gates::error::Chain;
use gates::runner::{self, Options, Status};
use gates::{contract, report};

const GATES: [&str; 7] = ["static", "alloc", "instructions", "latency", "syscalls", "floor", "memory"];

/// Checks the proxy against contracts/*.toml and reports one row per measured figure.
#[derive(Debug, Parser)]
#[command(
    name = "gates",
    version,
    after_help = "Exit codes: 0 all passed; 1 a FAIL or an ERROR; 2 bad usage or contract; 3 nothing failed but something was INCONCLUSIVE."
)]
struct Cli {
    /// Only these phases (numbers, comma-separated).
    #[arg(long, value_delimiter = ',')]
    phase: Option<Vec<u32>>,
    /// Only these gates (comma-separated): static, alloc, instructions, latency, syscalls, floor,
    /// memory.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(GATES))]
    only: Option<Vec<String>>,
    /// Build the proxy with planted regressions and select them (PROXY_PLANTED syntax, see
    /// proxy/src/data/planted.rs), e.g. `alloc`, `instr:300`, `syscall/4`, `sleep:2000`.
    #[arg(long, value_name = "SPEC")]
    plant: Option<String>,
    /// Record the measured figures as the baseline soft limits compare against (refused unless
    /// every gate run passed, and with anything planted).
    #[arg(long)]
    save_baseline: bool,
    /// The baseline file [default: ROOT/results/gates/baseline.json].
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Where to write latest.json and latest.md [default: ROOT/results/gates].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The workspace root [default: the one this runner was built from].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Hold the memory gate's counts this many times instead of the contract's `rounds` (the
    /// planted tests use 1: a plant every round must catch, caught in one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    memory_rounds: Option<u32>,
    /// Only the instruction gate's rows measured by these bench groups (comma-separated; each
    /// row's `group` in contracts/*.toml: `exchanges`, `tls`, `tls_handshakes`, `h2`, `h3`).
    #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
    instruction_groups: Option<Vec<String>>,
    /// Show build output and timings.
    #[arg(long, short)]
    verbose: bool,
}

/// Prints `gates: ` and the error with its causes on stderr; returns `code`.
fn fail(e: &Error, code: u8) -> ExitCode {
    eprintln!("gates: {}", Chain(e));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let root = cli
        .root
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf));
    // `--plant none` (the planted build with nothing live) may record a baseline: the reference the
    // gates' own sensitivity tests measure a plant against, in a file of their own.
    if cli.save_baseline && cli.plant.as_deref().is_some_and(|p| p.trim() != "none") {
        return fail(&Error::BaselineWithPlant, 2);
    }
    let opts = Options {
        root,
        phases: cli.phase.clone(),
        only: cli.only.clone(),
        plant: cli.plant.clone(),
        memory_rounds: cli.memory_rounds,
        instruction_groups: cli.instruction_groups.clone(),
        verbose: cli.verbose,
    };
    let out = cli.out.clone().unwrap_or_else(|| opts.root.join("results").join("gates"));
    let contracts = match contract::load_all(&opts.root) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return fail(&Error::NoContracts(opts.root.clone()), 2),
        Err(e) => return fail(&e.into(), 2),
    };
    if let Some(names) = &opts.instruction_groups {
        let selected = contracts.iter().filter(|c| opts.phases.as_ref().is_none_or(|p| p.contains(&c.phase)));
        let mut known: Vec<String> = selected
            .filter_map(|c| c.gates.instructions.as_ref())
            .flat_map(|g| g.all_rows().into_iter().map(|(_, r)| r.group().to_owned()))
            .collect();
        known.sort();
        known.dedup();
        if let Some(name) = names.iter().find(|n| !known.contains(n)) {
            return fail(&Error::UnknownInstructionGroup { name: name.clone(), known: known.join(", ") }, 2);
        }
    }
    let baseline_path = cli.baseline.clone().unwrap_or_else(|| opts.root.join("results/gates/baseline.json"));
    // A missing file is not a usage error (a static-only run needs none), but every row with a
    // soft limit is then an ERROR: its soft limit cannot be checked. Unreadable or invalid: exit 2.
    let (baseline, missing) = match Baseline::load(&baseline_path) {
        Ok(b) => (Some(b), None),
        Err(e) if !baseline_path.exists() => (None, Some(e)),
        Err(e) => return fail(&e.into(), 2),
    };

    let mut rows = runner::run(&opts, &contracts);
    for r in &mut rows {
        match (&baseline, &missing) {
            // Recording a gate's first baseline: nothing to compare it against yet.
            (_, Some(_)) if cli.save_baseline => {}
            (Some(b), _) if cli.save_baseline && !b.values.contains_key(&r.key) => {}
            (Some(b), _) => b.apply(r),
            (None, Some(e)) if r.soft_limit_pct.is_some() && matches!(r.status, Status::Pass | Status::Fail) => {
                r.status = Status::Error;
                r.note = format!("{}; {}", Chain(e), r.note);
            }
            (None, _) => {}
        }
    }
    let meta = report::meta(&opts.root, &argv);
    println!("{}", report::table(&rows));

    if let Err(source) = std::fs::create_dir_all(&out) {
        return fail(&Error::CreateDir { path: out, source }, 1);
    }
    let json = report::json_report(&rows, &meta);
    let writes = [
        (out.join("latest.json"), serde_json::to_string_pretty(&json).unwrap_or_default()),
        (out.join("latest.md"), report::markdown(&rows, &meta)),
    ];
    for (path, text) in writes {
        if let Err(source) = std::fs::write(&path, text + "\n") {
            return fail(&Error::Write { path, source }, 1);
        }
    }
    let code = runner::exit_code(&rows);
    if cli.save_baseline {
        let saved = Baseline::from_rows(
            baseline.as_ref(),
            &rows,
            meta["commit"].as_str().unwrap_or("unknown"),
            meta["created"].as_str().unwrap_or(""),
        )
        .map_err(Error::from)
        .and_then(|b| {
            let text = serde_json::to_string_pretty(&b)?;
            std::fs::write(&baseline_path, text + "\n").map_err(|source| Error::Write { path: baseline_path.clone(), source })
        });
        match saved {
            Ok(()) => println!("baseline saved: {}", baseline_path.display()),
            Err(e) => return fail(&e, code.max(1)),
        }
    }
    println!("report: {}", out.join("latest.md").display());
    if code == 3 {
        let which: Vec<&str> = rows.iter().filter(|r| r.status == Status::Inconclusive).map(|r| r.key.as_str()).collect();
        println!(
            "INCONCLUSIVE: {} could not tell a pass from a fail: the floor measured beside the proxy was itself too noisy. \
             Nothing failed; run again on a quieter machine (nothing else on the CPUs), or with more rounds.",
            which.join(", ")
        );
    }
    ExitCode::from(code)
}
