//! Serving threads shared by `upstream` and `relay`: N `SO_REUSEPORT` listeners (TCP, or UDP
//! sockets for QUIC) on one address, each served by its own (optionally pinned) `current_thread`
//! runtime.
//!
//! Every thread finishes its setup (pinning, runtime) before the address is announced, and the
//! first thread to stop ends `serve_threads` with its result, so a failure is an error exit,
//! never a silently missing thread.

use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;

/// A non-blocking listener on `addr`, with `SO_REUSEPORT` when several threads share the port.
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// A socket [`serve_threads`] binds once per thread on one address.
pub trait Listener: Send + Sized + 'static {
    /// Binds `addr`, with `SO_REUSEPORT` when several threads share the port.
    fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Listener for std::net::TcpListener {
    fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        bind_listener(addr, reuse_port)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        std::net::TcpListener::local_addr(self)
    }
}

impl Listener for std::net::UdpSocket {
    fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        bind_udp(addr, reuse_port)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        std::net::UdpSocket::local_addr(self)
    }
}

/// A non-blocking UDP socket on `addr`, with `SO_REUSEPORT` when several threads share the port
/// (the kernel then keeps each client's datagrams, by their 4-tuple, on one socket, so one QUIC
/// connection is served by one thread).
pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A QUIC server endpoint (`quinn`) on `socket`; call it inside the serving thread's runtime.
pub fn quic_endpoint(socket: std::net::UdpSocket, config: quinn::ServerConfig) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, std::sync::Arc::new(quinn::TokioRuntime))
}

/// Binds `threads` listeners on `listen`, starts one runtime thread per listener running
/// `serve(listener)`, calls `on_bound` with the real address once all are ready, then blocks
/// until one of them stops (with its result).
pub fn serve_threads<L, F, Fut>(
    listen: SocketAddr,
    threads: usize,
    cpus: &[usize],
    name: &str,
    on_bound: impl FnOnce(SocketAddr),
    serve: F,
) -> io::Result<()>
where
    L: Listener,
    F: Fn(L) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = io::Result<()>> + 'static,
{
    let threads = threads.max(1);
    let first = L::bind(listen, threads > 1)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(L::bind(addr, true)?);
    }
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    let (done_tx, done_rx) = mpsc::channel::<io::Result<()>>();
    for (k, l) in listeners.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[k % cpus.len()]);
        let (ready_tx, done_tx, serve) = (ready_tx.clone(), done_tx.clone(), serve.clone());
        std::thread::Builder::new().name(format!("{name}-{k}")).spawn(move || {
            let setup = (|| -> io::Result<_> {
                if let Some(cpu) = cpu {
                    crate::sys::pin_to_cpu(cpu).map_err(|e| io::Error::new(e.kind(), format!("pin to cpu {cpu}: {e}")))?;
                }
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            })();
            let rt = match setup {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            let r = local.block_on(&rt, serve(l));
            let _ = done_tx.send(r);
        })?;
    }
    drop((ready_tx, done_tx));
    for _ in 0..threads {
        ready_rx.recv().map_err(|_| io::Error::other(format!("{name} thread died during setup")))??;
    }
    on_bound(addr);
    match done_rx.recv() {
        Ok(r) => r,
        Err(_) => Err(io::Error::other(format!("{name} thread died"))),
    }
}
