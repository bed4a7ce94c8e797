//! The upstream side, shared by every protocol: the per-worker connection pool (no lock, no
//! atomic on checkout and checkin).
//!
//! - [`pool`]: idle upstream connections per server, with their reused read buffers.

pub mod pool;
