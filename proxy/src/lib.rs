//! fastproxy: a reference HTTP/1.1 reverse proxy whose hot path is right by construction.
//!
//! The module tree shows which rules apply where:
//!
//! - [`data`] and [`snapshot`] are the **data plane** (per request, hot): no locks, no string
//!   building, no logging on the success path, no heap allocation per request in steady state.
//!   `contracts/phase1.toml` lists these paths and the gates check them.
//! - [`config`] and [`control`] are the **control plane** (start-up, reload, admin): allocation,
//!   formatting and logging are fine there.
//! - [`hyper_engine`] is the baseline engine (`--engine hyper`), kept to show what the contract
//!   buys; it is measured, not held to the contract.
//!
//! The three decisions that may not be reversed: workers read an immutable [`snapshot::Snapshot`]
//! published with `arc-swap`; bodies stream through per-connection buffers that are reused;
//! each worker owns its upstream pool ([`data::upstream::pool::Pool`]).

pub mod allocator;
pub mod cli;
pub mod config;
pub mod control;
pub mod data;
pub mod hyper_engine;
pub mod snapshot;
