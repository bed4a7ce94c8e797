//! Control-plane integration tests (reload, drain, admin API, metrics, logs).
//!
//! Every test starts the real `proxy` binary as a child with a generated config (admin API on
//! 127.0.0.1:0), a small threaded upstream on 127.0.0.1:0 and blocking `std::net` clients. All
//! sockets have timeouts and every wait is bounded, so a hung proxy fails a test instead of
//! hanging the suite; the child is killed on drop.
//!
//! - `support` (`tests/support`, shared with the other test binaries): the proxy child, the
//!   upstream, a keep-alive client, admin calls, signals.
//! - `reload`: reload under load (20 reloads, some invalid), file watch, pools of removed servers.
//! - `drain`: drain under load, a 2 s request across SIGTERM, idle connections closed at once.
//! - `admin`: `/metrics` against a known number of requests, `/config`, run-time log level,
//!   sampled tracing and the access log.
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected states; that is the point

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod drain;
mod reload;
