//! `proxy --config F`: starts the workers, then runs the control loop on the main thread (a
//! `current_thread` runtime of its own): signals, the config-file watcher, the admin API, and
//! the drain at the end. Control plane.
//!
//! Signals: SIGHUP reloads; SIGTERM or SIGINT drains (a second one stops at once). Exit codes:
//! 0 after a clean drain, 1 when the drain deadline force-closed connections (or a start-up
//! failure), 2 for an invalid config or usage.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::config::{self, ConfigError, ServerIds};
use crate::control::access_log::{self, AccessLogError};
use crate::control::active::{Initial, State};
use crate::control::admin;
use crate::control::logging::{Logging, LoggingError};
use crate::control::workers::{self, Engine, StartError};

/// What the command line says.
#[derive(Debug, Clone)]
pub struct Args {
    pub config: PathBuf,
    /// Overrides `server.workers`.
    pub workers: Option<usize>,
    pub engine: Engine,
    /// Overrides `[admin] address` (and turns the admin API on).
    pub admin: Option<SocketAddr>,
}

/// Why `proxy --config F` could not start; printed as `proxy: {error}`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Logging(#[from] LoggingError),
    #[error("cannot start the control runtime: {source}")]
    ControlRuntime { source: io::Error },
    #[error("cannot handle {signal}: {source}")]
    Signal { signal: &'static str, source: io::Error },
    #[error("cannot listen on {addr} (admin): {source}")]
    AdminListen { addr: SocketAddr, source: io::Error },
    #[error("admin listener address: {source}")]
    AdminAddress { source: io::Error },
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    #[error(transparent)]
    Start(#[from] StartError),
}

impl RunError {
    /// 2 for an invalid config, 1 for everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) => ExitCode::from(2),
            _ => ExitCode::from(1),
        }
    }
}

/// How often the watcher compares the config file with the active one.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Serves until a signal ends the drain; the exit code says how it ended.
pub fn run(args: Args) -> ExitCode {
    match start_and_serve(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxy: {e}");
            e.exit_code()
        }
    }
}

fn start_and_serve(args: Args) -> Result<ExitCode, RunError> {
    let text = config::read(&args.config)?;
    let mut ids = ServerIds::default();
    let config = config::parse(&args.config, &text, &mut ids)?;
    let logging = Arc::new(Logging::init(&config.log.level, config.log.format)?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|source| RunError::ControlRuntime { source })?;
    let init = Initial::new(&args.config, text, ids, &config);
    let result = rt.block_on(async move {
        // Logged while the log writer is still up; `run` prints it to stderr as well.
        control_loop(args, config, init, logging).await.inspect_err(|e| tracing::error!("{e}"))
    });
    drop(rt); // drops the admin tasks and with them the last handle on the log writer (flush)
    result
}

/// The stream of one signal; failing to install its handler is a start-up error.
fn on(kind: SignalKind, name: &'static str) -> Result<Signal, RunError> {
    signal(kind).map_err(|source| RunError::Signal { signal: name, source })
}

async fn control_loop(args: Args, config: config::Config, init: Initial, logging: Arc<Logging>) -> Result<ExitCode, RunError> {
    // Signal handlers first: a SIGHUP that arrives right after start must not kill the process.
    let mut term = on(SignalKind::terminate(), "SIGTERM")?;
    let mut int = on(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = on(SignalKind::hangup(), "SIGHUP")?;

    let admin_listener = match args.admin.or(config.admin) {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the admin API listens on a non-loopback address; anyone who reaches it can reload and read the config");
            }
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| RunError::AdminListen { addr, source })?)
        }
        None => None,
    };
    let access = access_log::start(&config.log)?;
    let worker_count = args.workers.unwrap_or(config.workers);
    let running = workers::start_with(config, worker_count, args.engine, access)?;
    let state = State::new(Arc::clone(&running.shared), Some(logging), init);

    {
        let mut out = std::io::stdout().lock();
        if let Some(l) = admin_listener {
            let addr = l.local_addr().map_err(|source| RunError::AdminAddress { source })?;
            let _ = writeln!(out, "admin listening {addr}");
            tokio::spawn(admin::serve_admin(l, Arc::clone(&state)));
        }
        for a in &running.addrs {
            let _ = writeln!(out, "listening {a}");
        }
        let _ = out.flush();
    }

    let mut watch = tokio::time::interval(WATCH_EVERY);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => {
                let _ = state.reload("SIGHUP");
            }
            _ = watch.tick() => {
                if state.watch_config() {
                    let _ = state.reload_if_changed();
                }
            }
        }
    };

    let timeout = state.drain_timeout();
    tracing::info!(signal = why, connections = running.connections(), ?timeout, "draining");
    state.set_draining();
    running.begin_drain();
    let deadline = Instant::now() + timeout;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    let mut again = false;
    while running.connections() > 0 && Instant::now() < deadline {
        tokio::select! {
            _ = poll.tick() => {}
            _ = term.recv() => again = true,
            _ = int.recv() => again = true,
        }
        if again {
            tracing::warn!("second signal: stopping without waiting for the drain");
            break;
        }
    }
    let left = running.connections();
    running.stop();
    if left == 0 {
        tracing::info!("drained; exiting");
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::warn!(connections = left, "drain deadline reached; force-closed the connections left");
        Ok(ExitCode::from(1))
    }
}
