//! Planted regressions, compiled only with the `planted-*` features. The gates' own tests build
//! the proxy with one of these to prove that the gate guarding it turns red. Never enabled in a
//! release build. Excluded from the static scan (contracts/phase1.toml says so, with the reason).

/// Runs once per request at the start of an exchange.
#[inline(never)]
pub async fn per_request(len: usize) {
    #[cfg(feature = "planted-alloc")]
    std::hint::black_box(Box::new(len));
    #[cfg(feature = "planted-lock")]
    {
        static LOCK: std::sync::Mutex<usize> = std::sync::Mutex::new(0);
        if let Ok(mut g) = LOCK.lock() {
            *g += std::hint::black_box(len);
        }
    }
    #[cfg(feature = "planted-format")]
    std::hint::black_box(format!("request head of {len} bytes"));
    #[cfg(feature = "planted-sleep")]
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    // One extra system call per request (getpid: glibc does not cache it).
    #[cfg(feature = "planted-syscall")]
    std::hint::black_box(std::process::id());
    let _ = len;
}
