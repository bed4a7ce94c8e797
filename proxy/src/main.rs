//! `proxy`: parses arguments and calls the library (see `cli`).
fn main() -> std::process::ExitCode {
    proxy::cli::main()
}
