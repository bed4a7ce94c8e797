//! The gate runner: checks the proxy against `contracts/*.toml`.
//!
//! - [`contract`]: the contract format (prohibitions, irreversible decisions, gates).
//! - [`scan`]: the static gate (syn) over the hot-path modules.
//! - [`runner`]: builds and runs the measuring processes (alloc probe, latency rounds).
//! - [`alloc`]: the dhat allocation gate.
//! - [`instructions`]: the callgrind instruction gate.
//! - [`floor`]: syscalls per request and CPU per request relative to the byte-relay floor.
//! - [`memory`]: resident memory per idle keep-alive connection, and after they leave.
//! - [`baseline`], [`report`]: soft limits against a stored baseline; table, markdown, JSON.
//! - [`exchange`]: the instruction gate's verified workload; [`h3exchange`]: its HTTP/3 runs.
//! - [`harness`]: the allocation-free in-process client and origin the probes use;
//!   [`h2raw`]: its HTTP/2 client (raw frames, pre-encoded requests);
//!   [`tlsclient`]: its TLS (rustls handshake, the proxy's record layer after it).
//! - [`error`]: the runner's errors ([`Error`]) and [`error::Chain`], an error with its causes.

pub mod alloc;
pub mod baseline;
pub mod contract;
pub mod error;
pub mod exchange;
pub mod floor;
pub mod h2raw;
pub mod h3exchange;
pub mod harness;
pub mod hpack;
pub mod instructions;
pub mod memory;
pub mod report;
pub mod resolve;
pub mod runner;
pub mod scan;
pub mod tlsclient;

pub use error::Error;
