//! What the binary's allocator lets a worker do about memory it has freed (issue 14).
//!
//! The library does not choose an allocator; the `proxy` binary does (`src/main.rs`, the features
//! in `proxy/Cargo.toml`). An allocator with per-thread caches keeps objects a thread freed for
//! that thread's next allocations: after a crowd of 10,000 connections leaves, jemalloc's thread
//! cache held a few hundred of each small size class, scattered over slabs it could then not hand
//! back (RSS stayed 13 % above what it was before the crowd; `results/memory/`). A worker whose
//! once-a-second sweep gave memory back asks for its thread's cache to be released too; the binary
//! registers how, once, before the workers start.

use std::sync::OnceLock;

static RELEASE_THREAD_CACHE: OnceLock<fn()> = OnceLock::new();

/// Registers how the calling thread's allocator cache is handed back. The first registration
/// wins (the binary makes it once, before starting the workers).
pub fn set_release_thread_cache(release: fn()) {
    let _ = RELEASE_THREAD_CACHE.set(release);
}

/// Hands the calling thread's allocator cache back, when the binary registered how. Off the
/// request path: a worker calls it from its sweep, at most once a second, and only after the
/// sweep freed something.
pub fn release_thread_cache() {
    if let Some(release) = RELEASE_THREAD_CACHE.get() {
        release();
    }
}
