//! The control plane: process start-up, worker threads, hot reload, drain, the admin API, the
//! metrics exporter and logging. Nothing here runs per request; allocation, locks, formatting and
//! logging are fine. Errors are `thiserror` enums, one per area (`RunError`, `StartError`,
//! `ReloadError`, `LoggingError`, `AccessLogError`), carried typed to where they are printed.
//!
//! - [`serve`]: `proxy --config F` ([`serve::run`]): the control loop (signals, config watcher,
//!   drain).
//! - [`workers`]: worker threads, listeners, the drain phases.
//! - [`active`]: the active config, hot reload and `/config`.
//! - [`admin`]: the admin API ([`admin::serve_admin`]: hyper, its own listener).
//! - [`metrics`]: sums the per-worker counters and renders Prometheus text.
//! - [`logging`]: non-blocking tracing output, filter changeable at run time.
//! - [`access_log`]: the access log's writer thread.

pub mod access_log;
pub mod active;
pub mod admin;
pub mod logging;
pub mod metrics;
pub mod serve;
pub mod workers;
