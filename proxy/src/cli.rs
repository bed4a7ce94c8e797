//! Command line: `proxy --config F [--workers N] [--engine native|hyper]` serves,
//! `proxy check --config F` validates. Exit codes: 0 ok, 1 runtime failure, 2 bad config/usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, ServerIds};
use crate::control::runtime::{self, Engine};

#[derive(Debug, Parser)]
#[command(name = "proxy", version, about = "Reference HTTP/1.1 reverse proxy (lock-free data plane, reused buffers, per-worker pools)")]
pub struct Cli {
    /// The TOML config file to serve.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Worker threads (default: the config's server.workers, else one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// HTTP/1.1 machinery: the contract's own codec, or the hyper baseline.
    #[arg(long, value_enum, default_value_t = EngineArg::Native)]
    engine: EngineArg,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config and exit: 0 when valid, 2 with "file:line: key: message" otherwise.
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineArg {
    Native,
    Hyper,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config.clone() else {
        eprintln!("proxy: --config FILE is required (try proxy/examples/basic.toml)");
        return ExitCode::from(2);
    };
    let config = match config::load(&path, &mut ServerIds::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxy: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        println!("{}: ok ({} listener(s), {} route group(s))", path.display(), config.listeners.len(), config.snapshot.groups.len());
        return ExitCode::SUCCESS;
    }
    init_logging();
    let workers = cli.workers.unwrap_or(config.workers);
    let engine = match cli.engine {
        EngineArg::Native => Engine::Native,
        EngineArg::Hyper => Engine::Hyper,
    };
    match runtime::run(config, workers, engine) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROXY_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
