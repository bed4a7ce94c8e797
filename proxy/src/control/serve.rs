//! `proxy --config F`: starts the workers, then runs the control loop on the main thread (a
//! `current_thread` runtime of its own): signals, the config-file watcher, the admin API, and
//! the drain at the end. Control plane.
//!
//! Signals: SIGHUP reloads; SIGTERM or SIGINT drains (a second one stops at once). Exit codes:
//! 0 after a clean drain, 1 when the drain deadline force-closed connections (or a start-up
//! failure), 2 for an invalid config or usage.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use crate::config::{self, ServerIds};
use crate::control::active::{Initial, State};
use crate::control::logging::Logging;
use crate::control::workers::{self, Engine};
use crate::control::{access_log, admin};

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

/// How often the watcher compares the config file with the active one.
const WATCH_EVERY: Duration = Duration::from_secs(1);

pub fn run(args: Args) -> ExitCode {
    let text = match std::fs::read_to_string(&args.config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("proxy: invalid config: {}: cannot read the config file: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let mut ids = ServerIds::default();
    let config = match config::parse(&args.config, &text, &mut ids) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxy: invalid config: {e}");
            return ExitCode::from(2);
        }
    };
    let logging = match Logging::init(&config.log.level, config.log.format) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("proxy: {e:#}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy: cannot start the control runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let init = Initial::new(&args.config, text, ids, &config);
    let code = rt.block_on(async move {
        match control_loop(args, config, init, logging).await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("proxy: {e:#}");
                ExitCode::from(1)
            }
        }
    });
    drop(rt); // drops the admin tasks and with them the last handle on the log writer (flush)
    code
}

async fn control_loop(args: Args, config: config::Config, init: Initial, logging: Arc<Logging>) -> anyhow::Result<ExitCode> {
    // Signal handlers first: a SIGHUP that arrives right after start must not kill the process.
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    let admin_listener = match args.admin.or(config.admin) {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the admin API listens on a non-loopback address; anyone who reaches it can reload and read the config");
            }
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (admin)"))?)
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
            let addr = l.local_addr().context("admin listener address")?;
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
