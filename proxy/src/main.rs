//! `proxy`: parses arguments and calls the library (see `cli`).

// The allocator decides whether memory freed after a crowd of connections leaves goes back to the
// kernel (issue 14); see the features in proxy/Cargo.toml and the settings in .cargo/config.toml.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    proxy::cli::main()
}
