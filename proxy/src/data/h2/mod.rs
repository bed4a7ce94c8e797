//! HTTP/2 from clients (phase 2b): over TLS when ALPN chose `h2`, or in cleartext with prior
//! knowledge on a listener with `h2c = true`. The framing, HPACK, flow control and the
//! protocol's own defences are the `h2` crate's (the contract's choice of engine for this
//! phase); what is the proxy's is here. Hot path.
//!
//! - [`conn`]: one client connection: the `h2` server connection with the `[http2]` settings,
//!   driven on the connection's task, a task per accepted stream, the idle timeout, keep-alive
//!   pings and the drain (GOAWAY, then the open streams finish).
//! - [`batch`]: the connection's byte stream as `h2` sees it; the frames of one turn of the
//!   connection leave in one write.
//! - [`stream`]: one stream is one request through the same routing, limits, `X-Forwarded-*`,
//!   `Via` and error mapping as HTTP/1.1; it goes upstream over HTTP/1.1 (the worker's pool,
//!   through `h1::client`) and its response comes back under HTTP/2 flow control.
//!
//! `h2` may use HTTP/1.1's codec and client side (`h1::head`, `body`, `chunked`, `rewrite`,
//! `client`), never its server side (`h1::conn`, `h1::scratch`, `h1::upstream`): the static
//! gate's layering rules say so.

pub mod batch;
pub mod conn;
pub mod stream;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4): how an `h2c` listener tells a
/// prior-knowledge client from an HTTP/1.1 one.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
