//! Test support, one owner per helper, for every test binary (`tests/tests.rs`,
//! `tests/control/main.rs`, `tests/fuzz/main.rs`) and for `examples/adversarial_peers.rs`, which
//! includes it with `#[path]`.
//!
//! - `process`: the `proxy` binary as a child: config file, start, its addresses, stderr capture,
//!   signals, the admin API, stop; `proxy ARGS...` run to completion.
//! - `upstream`: test origins: the recording upstream (scripted replies, every byte kept, strict
//!   parsing), refused and black-hole addresses.
//! - `client`: a raw HTTP/1.1 client: exact bytes out, responses parsed, keep-alive GETs, admin
//!   calls.
//! - `config`: temp files and directories, generated configs, the forwarded-header tail.
//! - `bytes`: bytes escaped for messages and records, exact comparison.
//! - `adversarial_cases`: the adversarial table's rows (`tests/adversarial_cases.rs`, where the
//!   docs link it): run by `tests/adversarial.rs`, fuzz seeds in `tests/fuzz`, run against peers
//!   by the example.
//!
//! Everything is blocking `std::net` with timeouts and plain threads: deterministic, bounded, and
//! independent of the proxy's own runtime.
#![allow(dead_code)] // reason: every binary that includes this module uses a different part of it
#![allow(clippy::unwrap_used)] // reason: test support; an unexpected state fails the test loudly

#[path = "../adversarial_cases.rs"]
pub mod adversarial_cases;
pub mod bytes;
pub mod client;
pub mod config;
pub mod process;
pub mod tls;
pub mod upstream;

// Flat paths for the callers (`support::Proxy`); the definitions stay in their modules.
#[allow(unused_imports)] // reason: every binary that includes this module uses a different part of it
pub use self::{bytes::*, client::*, config::*, process::*, upstream::*};

use std::thread;
use std::time::{Duration, Instant};

/// After a client-side verdict, how long to let stray bytes reach the upstream before asserting on
/// what it received ("nothing" must mean nothing, not "nothing yet").
pub const SETTLE: Duration = Duration::from_millis(80);

/// Polls `cond` every 5 ms until it holds (true) or `within` has passed (false).
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}
