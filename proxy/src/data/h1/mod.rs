//! HTTP/1.1: the codec over `httparse` and the connection loop.
//!
//! - [`head`]: request and response heads parsed into spans of the read buffer.
//! - [`chunked`]: the chunked transfer coding (decoder and de-chunker).
//! - [`rewrite`]: the heads as they are forwarded (hop-by-hop fields dropped, `X-Forwarded-*`,
//!   `Via`), written into the connection's reused output buffer.
//! - [`conn`]: the per-connection request loop: read a head, route it, exchange it with an
//!   upstream connection from the worker's pool, relay the response.
//! - [`scratch`]: the buffers and heads a connection borrows from its worker while active and
//!   gives back when idle (memory per idle connection).

pub mod body;
pub mod chunked;
pub mod conn;
pub mod head;
pub mod rewrite;
pub mod scratch;
pub mod upstream;
