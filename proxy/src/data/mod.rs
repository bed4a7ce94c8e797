//! The data plane: everything that runs per request. The contract (`contracts/phase1.toml`)
//! names these files as the hot path: no locks, no string building, no logging on the success
//! path, no heap allocation per request in steady state. `docs/architecture.md` draws the layout
//! and the rules of which module may use which (the static gate enforces them).
//!
//! Shared by every protocol:
//! - [`accept`]: per-worker accept loop (one `SO_REUSEPORT` listener per worker); the one place
//!   that hands a connection to a protocol.
//! - [`worker`]: the worker's state: snapshot cache, balancer, upstream pool, timers, metrics.
//! - [`upstream`]: the per-worker upstream connection pool.
//! - [`exchange`]: one request of a multiplexed protocol (HTTP/2, HTTP/3) to an HTTP/1.1
//!   upstream, over the protocol's stream (its `RequestBody` and `ResponseSink`).
//! - [`buf`], [`timer`], [`slots`], [`metrics`], [`error`], [`access`]: reused buffers, coarse
//!   timers, per-connection slot tables, per-worker counters, the one error enum and its canned
//!   responses, the access-log record.
//!
//! One module per protocol, siblings that share the above and never use each other:
//! - [`h1`]: HTTP/1.1 (the codec over `httparse`, the connection loop, the client side).
//! - [`h2`]: HTTP/2 from clients (the `h2` crate), to HTTP/1.1 upstreams through `h1`'s client
//!   side.
//! - [`h3`]: HTTP/3 from clients (`quinn` + `h3`), to HTTP/1.1 upstreams the same way.
//!
//! What HTTP/2 and HTTP/3 streams share whatever their framing ([`exchange`]: routing, the
//! HTTP/1.1 upstream exchange, the response relayed, error mapping) is written once, below both.
//!
//! Below the protocols: [`tls`] (TLS on both sides) and [`io`] (the stream a protocol serves).

pub mod accept;
pub mod access;
pub mod buf;
pub mod error;
pub mod exchange;
pub mod h1;
pub mod h2;
pub mod h3;
pub mod io;
pub mod metrics;
#[cfg(feature = "planted")]
pub mod planted;
pub mod slots;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod worker;
