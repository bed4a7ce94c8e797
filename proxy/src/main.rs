//! `proxy`: parses arguments and calls the library (see `cli`).

// The allocator decides whether memory freed after a crowd of connections leaves goes back to the
// kernel (issue 14); see the features in proxy/Cargo.toml and the settings in .cargo/config.toml.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// jemalloc's thread cache is released by switching it off and on for the thread: switching off
/// flushes every cached object back to its arena (whose background thread then purges the empty
/// pages); switching on starts an empty cache. A failure leaves the cache as it was.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
fn release_jemalloc_thread_cache() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let enabled = b"thread.tcache.enabled\0".name();
    if Access::<bool>::write(enabled, false).is_ok() {
        let _ = Access::<bool>::write(enabled, true);
    }
}

fn main() -> std::process::ExitCode {
    #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
    proxy::allocator::set_release_thread_cache(release_jemalloc_thread_cache);
    proxy::cli::main()
}
