//! The gate runner's library: the in-process harness shared by the measuring binaries.

pub mod harness;
