//! Gate runner (skeleton; filled by its own issue).
fn main() {
    eprintln!("gates: not implemented yet");
    std::process::exit(2);
}
