//! HTTP/1.1: the codec over `httparse`, the server side (the client connection) and the client
//! side (the exchange with an upstream, which speaks HTTP/1.1 whatever the client speaks).
//!
//! The codec:
//! - [`head`]: request and response heads parsed into spans of the read buffer.
//! - [`chunked`]: the chunked transfer coding (decoder and de-chunker).
//! - [`body`]: message body framing: how many of the bytes at hand belong to the body in flight.
//! - [`rewrite`]: the heads as they are forwarded (hop-by-hop fields dropped, `X-Forwarded-*`,
//!   `Via`), written into the connection's reused output buffer.
//!
//! The server side:
//! - [`conn`]: the per-connection request loop: read a head, route it, take an upstream
//!   connection from the worker's pool (or open one), retry a stale one, answer errors.
//! - [`scratch`]: the buffers and heads a connection borrows from its worker while active and
//!   gives back when idle (memory per idle connection).
//!
//! The client side:
//! - [`upstream`]: the request written to the upstream connection, its body streamed, the
//!   response head read and the response relayed (zero-copy), or a tunnel after a 101.
//! - [`client`]: the same side for a client of another protocol (HTTP/2): a working set of its
//!   own, borrowed per exchange, and the reads and writes of the exchange; the protocol frames
//!   what it reads for its client.
//! - [`to_h2`]: an HTTP/1.1 client's request to an upstream group that speaks HTTP/2, on the
//!   worker's session to the server (`data::upstream::session`).

pub mod body;
pub mod chunked;
pub mod client;
pub mod conn;
pub mod head;
pub mod rewrite;
pub mod scratch;
pub mod to_h2;
pub mod upstream;
