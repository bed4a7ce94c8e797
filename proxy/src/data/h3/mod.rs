//! HTTP/3 from clients (phase 3a): QUIC by `quinn`, HTTP/3 framing and QPACK by `h3` over
//! `h3-quinn`, on a TLS listener with `http3 = true`. Each worker has its own UDP socket on the
//! listener's address (`SO_REUSEPORT`, as its TCP listener) and its own QUIC endpoint; the
//! accept loop (`data::accept`) hands each QUIC connection to [`conn`]. Hot path.
//!
//! - [`conn`]: one QUIC connection's HTTP/3 server connection, a task per request stream, the
//!   idle timeout and the drain (GOAWAY, then the open streams finish).
//! - [`stream`]: one request stream through `data::exchange`, exactly as an HTTP/2 stream: the
//!   same routing, limits, `X-Forwarded-*`, `Via` and error mapping, to an HTTP/1.1 upstream
//!   through the worker's pool; its response relayed under QUIC flow control.
//!
//! `h3` uses `data::exchange` and HTTP/1.1's codec and client side, never HTTP/1.1's server
//! side nor `h2` (the static gate's layering rules).

pub mod conn;
pub mod stream;
