//! Integration tests for the proxy binary over loopback (one binary, modules by topic).
//!
//! Every test starts the real `proxy` binary (`--workers 1`) with a generated config, a recording
//! upstream on 127.0.0.1:0 and raw `std::net` clients. Sockets have timeouts of a few seconds, so
//! a hung proxy fails a test instead of hanging the suite; the proxy child is killed on drop.
//!
//! - `support` (shared with the other test binaries and the peer runner): the proxy process
//!   guard, the recording upstream, raw clients, byte diffs, and the adversarial table's rows.
//! - `semantics`: what the upstream and the client see for well-formed traffic, byte for byte.
//! - `routing`: host and path-prefix routing, strip_prefix, 404, round robin.
//! - `adversarial`: a table of hostile requests on raw sockets, checked against the upstream.
//! - `faults`: broken, slow and dying upstreams; slow clients.
//! - `keepalive`: connection reuse on both sides, pipelining, closing rules.
//! - `cli`: `proxy check` messages.
//! - `tls`, `tls_adversarial`: TLS termination; `tls_upstream`: TLS to the upstream (`tls = true`).
//! - `h2`: HTTP/2 from clients (h2c prior knowledge, ALPN h2), to HTTP/1.1 upstreams.
//! - `h2_attacks`: hostile HTTP/2 clients on raw frames (rapid reset, CONTINUATION and
//!   SETTINGS/PING floods, HPACK bomb, slow windows, malformed fields, frame-level violations).
#![allow(clippy::unwrap_used)] // reason: tests fail loudly on unexpected states; that is the point

mod support;

mod adversarial;
mod cli;
mod faults;
mod h2;
mod h2_attacks;
mod h3;
mod keepalive;
mod routing;
mod semantics;
mod tls;
mod tls_adversarial;
mod tls_upstream;
