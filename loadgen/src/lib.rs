//! `loadgen`: an open-loop HTTP/1.1 and HTTP/2 load generator (plain or over TLS) honest enough to gate a
//! release, plus the benchmark origin and the byte-relay floor used beside it.
//!
//! Latency is measured from each request's *intended* send time (no coordinated omission), the
//! schedule is absolute (no drift), and a run that did not apply the load it was asked for is
//! reported INVALID rather than as a lower rate. See `loadgen/README.md`.
//!
//! Modules:
//! - [`schedule`]: intended send times (constant or Poisson), per thread.
//! - [`client`]: the per-connection HTTP/1.1 client hot path (pre-serialized requests, reused
//!   buffers, `httparse`), error classification.
//! - [`h2client`]: the HTTP/2 client (`h2` crate): connections shared by `--streams` slots.
//! - [`transport`]: the byte stream under it (TCP, or TLS with rustls), connection set-up and
//!   handshake accounting; [`tls`]: client and upstream TLS configs, certificates.
//! - [`body`]: Content-Length / chunked / until-close body framing, shared with the upstream.
//! - [`run`]: threads, open-loop dispatcher and busy policy, closed loop, validity rules.
//! - [`stats`]: per-thread HdrHistograms and counters, merged after the run.
//! - [`report`]: human summary, `--json`, `--hlog`.
//! - [`ladder`]: highest rate under a P99 SLO.
//! - [`upstream`]: the bundled benchmark origin; [`relay`]: the byte-relay floor (cleartext, or
//!   terminating TLS, or HTTP/2 streams; [`relay_h1`]: HTTP/2 streams to an HTTP/1.1 origin);
//!   [`server`]: their listener threads.
//! - [`hold`]: resident memory per idle keep-alive connection (cleartext or TLS) of a target
//!   process.
//! - [`sys`]: timerfd and CPU pinning; [`cli`]: arguments and exit codes.

pub mod body;
pub mod cli;
pub mod client;
pub mod h2client;
pub mod h3client;
pub mod hold;
pub mod ladder;
pub mod relay;
pub mod relay_h1;
pub mod relay_h3;
pub mod report;
pub mod run;
pub mod schedule;
pub mod server;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod transport;
pub mod upstream;
