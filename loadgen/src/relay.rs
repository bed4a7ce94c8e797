//! The byte-relay floor (issue 8): what no user-space proxy on epoll can beat on this machine.
//!
//! One upstream connection per client connection, bytes copied both ways through two reused
//! 16 KiB buffers, no HTTP parsing at all. Its CPU per request is the minimal pattern of
//! 2 reads + 2 writes + ~1.2 `epoll_wait` per request; proxies are compared as a ratio to it.
//! Half-closes are propagated (EOF on one side shuts down writing on the other).

use std::io;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// Relay settings.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub threads: usize,
    pub cpus: Vec<usize>,
}

const BUF: usize = 16 * 1024;

/// Binds (calling `on_bound` with the real address), then relays until killed.
pub fn serve(cfg: &RelayConfig, on_bound: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let threads = cfg.threads.max(1);
    let first = crate::upstream::bind_listener(cfg.listen, threads > 1)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(crate::upstream::bind_listener(addr, true)?);
    }
    on_bound(addr);
    let mut handles = Vec::new();
    for (k, l) in listeners.into_iter().enumerate() {
        let cfg = cfg.clone();
        handles.push(std::thread::Builder::new().name(format!("relay-{k}")).spawn(move || -> io::Result<()> {
            if !cfg.cpus.is_empty() {
                crate::sys::pin_to_cpu(cfg.cpus[k % cfg.cpus.len()])?;
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let l = TcpListener::from_std(l)?;
                loop {
                    let Ok((c, _)) = l.accept().await else {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    tokio::task::spawn_local(relay(c, cfg.upstream));
                }
            })
        })?);
    }
    for h in handles {
        h.join().map_err(|_| io::Error::other("relay thread panicked"))??;
    }
    Ok(())
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, BUF, BUF).await;
}
