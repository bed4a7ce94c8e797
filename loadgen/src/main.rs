//! `loadgen` binary: parses arguments and hands over to the library (see `lib.rs`).

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let code = match loadgen::cli::parse_args() {
        Ok(cli) => loadgen::cli::main_with(cli, &argv),
        Err(code) => code,
    };
    std::process::exit(code);
}
