//! The upstream side, shared by every protocol: the per-worker connection pool (no lock, no
//! atomic on checkout and checkin) and the opening of new connections. Nothing here knows a
//! protocol: the exchange over an upstream connection belongs to the protocol that drives it
//! (`h1::upstream` for HTTP/1.1, `h2::stream` for HTTP/2 streams).
//!
//! - [`pool`]: idle upstream connections per server (they hold no buffer: an exchange reads into
//!   its client connection's working set).
//! - [`connect`]: a new connection, within the group's connect timeout, on a pool miss; TLS to
//!   the server for a group with `tls = true`.
//! - [`stream`]: an upstream connection's byte stream, cleartext or TLS.
//! - [`session`]: HTTP/2 sessions to servers of groups with `protocol = "h2c"` or `"h2"`, a few
//!   multiplexed connections per worker per server.

pub mod connect;
pub mod pool;
pub mod session;
pub mod stream;
