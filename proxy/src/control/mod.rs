//! The control plane: process start-up, worker threads, and (later) reload, drain, admin and
//! metrics export. Nothing here runs per request; allocation and logging are fine.

pub mod runtime;
