//! Integration tests for the proxy binary over loopback (one binary, modules by topic).
