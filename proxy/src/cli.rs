//! Command line: `proxy --config F [--workers N] [--engine native|hyper] [--admin ADDR]` serves
//! (see `control::serve`), `proxy check --config F` validates. Exit codes: 0 ok (or a clean
//! drain), 1 runtime failure (or a drain that hit its deadline), 2 bad config/usage.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, ServerIds};
use crate::control::serve;
use crate::control::workers::Engine;

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
    /// Serve the admin API (metrics, health, reload) on this address; overrides `[admin]`.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
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
    if let Some(Command::Check) = cli.command {
        return match config::load(&path, &mut ServerIds::default()) {
            Ok(config) => {
                println!(
                    "{}: ok ({} listener(s), {} route group(s))",
                    path.display(),
                    config.listeners.len(),
                    config.snapshot.groups.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("proxy: invalid config: {e}");
                ExitCode::from(2)
            }
        };
    }
    let engine = match cli.engine {
        EngineArg::Native => Engine::Native,
        EngineArg::Hyper => Engine::Hyper,
    };
    serve::run(serve::Args { config: path, workers: cli.workers, engine, admin: cli.admin })
}
