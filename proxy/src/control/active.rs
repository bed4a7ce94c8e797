//! The control plane's state: the active config's text and generation, and hot reload.
//!
//! A reload reads the file, parses, validates and compiles it here, off the data plane, then
//! publishes the new [`Snapshot`](crate::snapshot::Snapshot) with one `ArcSwap::store`. Requests
//! in flight keep the snapshot they started with (workers hold an `Arc` to it for the whole
//! exchange); the next request of every worker sees the new one. An invalid file changes
//! nothing: the error (file:line: key: message) is logged and returned to the caller. Idle
//! pooled connections to servers that left the config are closed by each worker's pool sweeper
//! within a second; connections in use finish their exchange first.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{self, Config, ConfigError, LogConfig, RouteInfo, ServerIds};
use crate::control::logging::Logging;
use crate::control::metrics::ProcessValues;
use crate::data::worker::Shared;

/// Why a reload changed nothing. Its text is what `POST /reload` answers (`{"error": ...}`) and
/// what the log line says; the previous config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: the config file is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl ReloadError {
    /// The config file the reload read.
    pub fn file(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::NotUtf8 { path } => path,
            Self::Invalid(e) => &e.file,
        }
    }

    /// The broken line, when the file was read and a rule in it is broken.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Invalid(e) => e.line,
            Self::Read { .. } | Self::NotUtf8 { .. } => None,
        }
    }

    /// The broken key, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => e.key.as_deref(),
            Self::Read { .. } | Self::NotUtf8 { .. } => None,
        }
    }
}

/// Shared by the admin API, the signal loop and the file watcher.
#[derive(Debug)]
pub struct State {
    pub shared: Arc<Shared>,
    pub logging: Option<Arc<Logging>>,
    draining: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    ids: ServerIds,
    /// The text of the active config.
    text: String,
    /// The file contents last loaded or tried (the watcher reloads when the file differs).
    last_seen: Vec<u8>,
    generation: u64,
    loaded_at: SystemTime,
    listeners: Vec<SocketAddr>,
    workers: usize,
    admin: Option<SocketAddr>,
    log: LogConfig,
    drain_timeout: Duration,
    watch_config: bool,
    routes: Vec<RouteInfo>,
    reloads_ok: u64,
    reloads_failed: u64,
}

/// What [`State::new`] needs from the start-up config (its snapshot went to the workers).
#[derive(Debug)]
pub struct Initial {
    pub path: PathBuf,
    pub text: String,
    pub ids: ServerIds,
    pub listeners: Vec<SocketAddr>,
    pub workers: usize,
    pub admin: Option<SocketAddr>,
    pub log: LogConfig,
    pub drain_timeout: Duration,
    pub watch_config: bool,
    pub routes: Vec<RouteInfo>,
}

impl Initial {
    /// Copies what the control plane keeps out of `config` (whose snapshot goes to the workers).
    pub fn new(path: &Path, text: String, ids: ServerIds, config: &Config) -> Initial {
        Initial {
            path: path.to_path_buf(),
            text,
            ids,
            listeners: config.listeners.clone(),
            workers: config.workers,
            admin: config.admin,
            log: config.log.clone(),
            drain_timeout: config.drain_timeout,
            watch_config: config.watch_config,
            routes: config.routes.clone(),
        }
    }
}

impl State {
    pub fn new(shared: Arc<Shared>, logging: Option<Arc<Logging>>, init: Initial) -> Arc<State> {
        let generation = shared.snapshot.load().generation;
        Arc::new(State {
            shared,
            logging,
            draining: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                path: init.path,
                ids: init.ids,
                last_seen: init.text.clone().into_bytes(),
                text: init.text,
                generation,
                loaded_at: SystemTime::now(),
                listeners: init.listeners,
                workers: init.workers,
                admin: init.admin,
                log: init.log,
                drain_timeout: init.drain_timeout,
                watch_config: init.watch_config,
                routes: init.routes,
                reloads_ok: 0,
                reloads_failed: 0,
            }),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn drain_timeout(&self) -> Duration {
        self.inner().drain_timeout
    }

    pub fn watch_config(&self) -> bool {
        self.inner().watch_config
    }

    /// Loads the config file again and publishes it. `Ok(generation)` of the new snapshot.
    /// `trigger` (`SIGHUP`, `POST /reload`) is named in the log line.
    pub fn reload(&self, trigger: &str) -> Result<u64, ReloadError> {
        let mut inner = self.inner();
        let path = inner.path.clone();
        let result = match std::fs::read(&path) {
            Ok(bytes) => {
                inner.last_seen = bytes.clone();
                self.apply(&mut inner, &path, bytes)
            }
            Err(source) => Err(ReloadError::Read { path, source }),
        };
        Self::settle(&mut inner, trigger, result)
    }

    /// The watcher's tick: reloads when the file's contents differ from the last ones seen.
    pub fn reload_if_changed(&self) -> Option<Result<u64, ReloadError>> {
        let mut inner = self.inner();
        let path = inner.path.clone();
        // Unreadable for a moment (being replaced): look again at the next tick.
        let bytes = std::fs::read(&path).ok()?;
        if bytes == inner.last_seen {
            return None;
        }
        inner.last_seen = bytes.clone();
        let result = self.apply(&mut inner, &path, bytes);
        Some(Self::settle(&mut inner, "file change", result))
    }

    /// Counts and logs a reload's outcome: the one place for every trigger (SIGHUP,
    /// `POST /reload`, the file watcher) and every way a reload can fail.
    fn settle(inner: &mut Inner, trigger: &str, result: Result<u64, ReloadError>) -> Result<u64, ReloadError> {
        match &result {
            Ok(generation) => {
                inner.reloads_ok += 1;
                tracing::info!(trigger, generation, "config reloaded");
            }
            Err(e) => {
                inner.reloads_failed += 1;
                tracing::error!(
                    trigger,
                    file = %e.file().display(),
                    line = e.line(),
                    key = e.key(),
                    "config reload rejected: {e}; the previous config keeps serving"
                );
            }
        }
        result
    }

    /// Parses, validates and publishes `bytes`; changes nothing when they are not a valid config.
    fn apply(&self, inner: &mut Inner, path: &Path, bytes: Vec<u8>) -> Result<u64, ReloadError> {
        let text = String::from_utf8(bytes).map_err(|_| ReloadError::NotUtf8 { path: path.to_path_buf() })?;
        let config = config::parse(path, &text, &mut inner.ids)?;
        if config.listeners != inner.listeners {
            tracing::warn!("listeners changed in the config; they take effect at the next restart");
        }
        if config.workers != inner.workers {
            tracing::warn!("server.workers changed in the config; it takes effect at the next restart");
        }
        if config.admin != inner.admin {
            tracing::warn!("[admin] changed in the config; it takes effect at the next restart");
        }
        if config.log.format != inner.log.format || config.log.access_log != inner.log.access_log {
            tracing::warn!("log.format / log.access_log changed in the config; they take effect at the next restart");
        }
        if config.log.level != inner.log.level
            && let Some(l) = &self.logging
            && let Err(e) = l.set_level(&config.log.level)
        {
            tracing::warn!("log.level not applied: {e}");
        }
        let generation = inner.generation + 1;
        let mut snapshot = config.snapshot;
        snapshot.generation = generation;
        self.shared.snapshot.store(Arc::new(snapshot));
        inner.generation = generation;
        inner.loaded_at = SystemTime::now();
        inner.text = text;
        inner.log = config.log;
        inner.drain_timeout = config.drain_timeout;
        inner.watch_config = config.watch_config;
        inner.routes = config.routes;
        Ok(generation)
    }

    /// `/config`: the active config as JSON, with its generation and load time.
    pub fn config_json(&self) -> String {
        let inner = self.inner();
        let config = match toml::from_str::<toml::Table>(&inner.text) {
            Ok(t) => serde_json::to_value(t).unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        };
        let v = serde_json::json!({
            "generation": inner.generation,
            "loaded_at": rfc3339(inner.loaded_at).to_string(),
            "file": inner.path.display().to_string(),
            "draining": self.is_draining(),
            "config": config,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// The values `/metrics` adds beside the worker counters.
    pub fn process_values(&self) -> ProcessValues {
        let inner = self.inner();
        ProcessValues {
            generation: inner.generation,
            loaded_at_unix: inner.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            reloads_ok: inner.reloads_ok,
            reloads_failed: inner.reloads_failed,
            draining: self.is_draining(),
            log_dropped: self.logging.as_ref().map(|l| l.dropped()).unwrap_or(0),
            routes: inner.routes.clone(),
        }
    }
}

/// `2026-11-25T18:20:00.123Z` (UTC, milliseconds). A clock outside what RFC 3339 can write
/// (before 1970, after 9999) is clamped to the nearest end rather than panicking in the formatter.
pub fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    /// 9999-12-31T23:59:59.999Z, the last instant humantime formats.
    const LAST: Duration = Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, UNIX_EPOCH + LAST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        let at = |ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_764_094_800_250), "2025-11-25T18:20:00.250Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // Sub-millisecond digits are cut, not rounded; clocks out of range are clamped.
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_nanos(1_999_999)).to_string(), "1970-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(400_000_000_000)).to_string(), "9999-12-31T23:59:59.999Z");
    }
}
