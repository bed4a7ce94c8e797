//! The data plane: everything that runs per request. The contract (`contracts/phase1.toml`)
//! names these files as the hot path: no locks, no string building, no logging on the success
//! path, no heap allocation per request in steady state.
//!
//! - [`accept`]: per-worker accept loop (one `SO_REUSEPORT` listener per worker).
//! - [`conn`]: the per-connection request loop.
//! - [`head`], [`chunked`], [`rewrite`]: the HTTP/1.1 codec over `httparse`.
//! - [`pool`], [`worker`]: per-worker upstream pool, balancer and snapshot cache.
//! - [`error`]: the one error enum and its canned responses.
//! - [`metrics`]: per-worker counters (single writer, summed by the admin exporter).
//! - [`access`]: the access-log record handed to a background writer (off by default).
//! - [`timer`]: per-worker coarse timers for the connections' timeouts.

pub mod accept;
pub mod access;
pub mod buf;
pub mod chunked;
pub mod conn;
pub mod error;
pub mod head;
pub mod metrics;
#[cfg(feature = "planted")]
pub mod planted;
pub mod pool;
pub mod rewrite;
pub mod timer;
pub mod worker;
