//! Open-loop load generator (skeleton; filled by its own issue).
fn main() {
    eprintln!("loadgen: not implemented yet");
    std::process::exit(2);
}
