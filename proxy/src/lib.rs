//! Reference reverse proxy.
