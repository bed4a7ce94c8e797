//! Starts the workers: N threads, each with its own `current_thread` tokio runtime and its own
//! `SO_REUSEPORT` listener per configured address, so the kernel spreads connections and no
//! request ever crosses a thread.
//!
//! Drain: [`Running::drain`] sets [`Phase::Draining`]; each worker's control task (one per
//! worker, not per connection) aborts its accept tasks (closing its listeners) and raises the
//! worker's drain flag, which wakes the connections idle between requests so they close; in-flight
//! requests finish and answer with `Connection: close`. When every client connection is gone, or
//! at the deadline, [`Phase::Stopped`] ends the worker runtimes (dropping what is left).

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::data::accept;
use crate::data::access::AccessLog;
use crate::data::worker::{Phase, Shared, Worker};

/// Which HTTP/1.1 machinery serves the connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The project's own codec over httparse with reused buffers (the contract's engine).
    #[default]
    Native,
    /// hyper server + hyper-util client, written the straightforward way (the baseline).
    Hyper,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the hyper baseline engine speaks cleartext HTTP/1.1 only: remove [listeners.tls], h2c = true, and tls = true and protocol in upstream groups, or use the native engine"
    )]
    HyperTls,
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start worker {index}: {source}")]
    Worker { index: usize, source: std::io::Error },
}

/// Per worker, its TCP listeners (one per configured listener) and its UDP sockets (one per
/// `http3 = true` listener, with the listener's index); and the bound addresses (port 0 resolved).
type Bound = (Vec<Vec<std::net::TcpListener>>, Vec<Vec<(usize, std::net::UdpSocket)>>, Vec<SocketAddr>);

/// How many times a listener configured with port 0 and `http3 = true` is bound again when the
/// port number the kernel gave its TCP side is taken on UDP (by any local UDP socket: a QUIC
/// client's, say). A configured port is never changed: taken on UDP, it is an error.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// Binds every listener once per worker (`SO_REUSEPORT`) and, for an `http3 = true` one, a UDP
/// socket per worker on the TCP side's bound address (its port number when the config said 0:
/// the kernel keeps a client's datagrams on one worker's socket).
fn bind_all(config: &Config, workers: usize) -> Result<Bound, StartError> {
    let mut tcp: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut udp: Vec<Vec<(usize, std::net::UdpSocket)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (i, &addr) in config.listeners.iter().enumerate() {
        let http3 = config.snapshot.listeners.get(i).and_then(|l| l.tls.as_ref()).is_some_and(|t| t.quic.is_some());
        let mut attempt = 0;
        let (listeners, sockets, at) = loop {
            attempt += 1;
            let (listeners, at) = bind_tcp(addr, workers)?;
            if !http3 {
                break (listeners, Vec::new(), at);
            }
            match (0..workers).map(|_| bind_udp(at)).collect::<Result<Vec<_>, _>>() {
                Ok(sockets) => break (listeners, sockets, at),
                Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse && attempt < PORT_ZERO_ATTEMPTS => continue,
                Err(source) => return Err(StartError::Bind { addr: at, source }),
            }
        };
        for (slot, l) in tcp.iter_mut().zip(listeners) {
            slot.push(l);
        }
        for (slot, s) in udp.iter_mut().zip(sockets) {
            slot.push((i, s));
        }
        bound.push(at);
    }
    Ok((tcp, udp, bound))
}

/// One listener's TCP side, once per worker, and its bound address.
fn bind_tcp(addr: SocketAddr, workers: usize) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let mut at = addr;
    let mut listeners = Vec::with_capacity(workers);
    for w in 0..workers {
        let l = bind(at).map_err(|source| StartError::Bind { addr: at, source })?;
        if w == 0 {
            at = l.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        }
        listeners.push(l);
    }
    Ok((listeners, at))
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A worker's QUIC endpoint for one `http3 = true` listener, made with the listener's QUIC
/// server config at start (each connection is then accepted with the current snapshot's:
/// `data::accept::h3_accept_loop`).
fn quic_endpoint(snapshot: &crate::snapshot::Snapshot, index: usize, socket: std::net::UdpSocket) -> std::io::Result<quinn::Endpoint> {
    let quic = snapshot.listeners.get(index).and_then(|l| l.tls.as_ref()).and_then(|t| t.quic.as_deref().cloned());
    let Some(server) = quic else { return Err(std::io::Error::other("listener without http3")) };
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, Arc::new(quinn::TokioRuntime))
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// A started proxy: the bound addresses and the worker threads.
#[derive(Debug)]
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub shared: Arc<Shared>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every client connection closed before the deadline.
    Clean,
    /// The deadline passed; this many connections were force-closed.
    Forced(usize),
}

impl Running {
    /// Blocks until every worker has stopped.
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }

    /// Starts a drain: listeners close, idle connections close, in-flight requests finish.
    pub fn begin_drain(&self) {
        self.shared.phase.send_replace(Phase::Draining);
    }

    /// Open client connections across all workers.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops the workers now (what is still open is dropped) and waits for them.
    pub fn stop(self) {
        self.shared.phase.send_replace(Phase::Stopped);
        self.join();
    }

    /// Drains (blocking): waits until no client connection is left or `deadline` passed, then
    /// stops the workers.
    pub fn drain(self, deadline: Duration) -> DrainOutcome {
        self.begin_drain();
        let until = Instant::now() + deadline;
        while self.connections() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.connections();
        self.stop();
        if left == 0 { DrainOutcome::Clean } else { DrainOutcome::Forced(left) }
    }
}

/// Binds the listeners and starts the workers; returns once every listener is bound.
pub fn start(config: Config, workers: usize, engine: Engine) -> Result<Running, StartError> {
    start_with(config, workers, engine, None)
}

/// [`start`], with the access log's channel when it is on.
pub fn start_with(config: Config, workers: usize, engine: Engine, access_log: Option<AccessLog>) -> Result<Running, StartError> {
    let workers = if workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { workers };
    if engine == Engine::Hyper
        && (config.snapshot.listeners.iter().any(|l| l.tls.is_some() || l.h2c)
            || config.snapshot.groups.iter().any(|g| g.tls.is_some() || g.h2))
    {
        return Err(StartError::HyperTls);
    }
    let (per_worker, udp, addrs) = bind_all(&config, workers)?;
    let mut udp = udp.into_iter();
    let shared = Shared::with_workers(config.snapshot, workers, access_log);
    let mut handles = Vec::with_capacity(workers);
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let udp = udp.next().unwrap_or_default();
        let h = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || worker_main(shared, index, listeners, udp, engine))
            .map_err(|source| StartError::Worker { index, source })?;
        handles.push(h);
    }
    tracing::info!(workers, ?engine, listeners = ?addrs, "proxy started");
    Ok(Running { addrs, shared, handles })
}

/// Runs the proxy until the process is stopped; prints `listening ADDR` per listener.
pub fn run(config: Config, workers: usize, engine: Engine) -> Result<(), StartError> {
    let running = start(config, workers, engine)?;
    {
        let mut out = std::io::stdout().lock();
        for a in &running.addrs {
            let _ = writeln!(out, "listening {a}");
        }
        let _ = out.flush();
    }
    running.join();
    Ok(())
}

fn worker_main(
    shared: Arc<Shared>,
    index: usize,
    listeners: Vec<std::net::TcpListener>,
    udp: Vec<(usize, std::net::UdpSocket)>,
    engine: Engine,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(index, error = %e, "cannot build the worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let mut phase = shared.phase.subscribe();
    local.block_on(&rt, async move {
        let worker = Worker::new(shared, index);
        let mut accepts = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(index, error = %e, "cannot register a listener");
                    continue;
                }
            };
            accepts.push(match engine {
                Engine::Native => tokio::task::spawn_local(accept::accept_loop(Rc::clone(&worker), l, i)),
                Engine::Hyper => tokio::task::spawn_local(crate::hyper_engine::accept_loop(Rc::clone(&worker), l)),
            });
        }
        let mut endpoints = Vec::with_capacity(udp.len());
        for (i, socket) in udp {
            match quic_endpoint(&worker.snapshot(), i, socket) {
                Ok(ep) => {
                    accepts.push(tokio::task::spawn_local(accept::h3_accept_loop(Rc::clone(&worker), ep.clone(), i)));
                    endpoints.push(ep);
                }
                Err(e) => tracing::error!(index, error = %e, "cannot start a QUIC endpoint"),
            }
        }
        let sweeper = tokio::task::spawn_local(accept::pool_sweeper(Rc::clone(&worker)));
        // The worker's control task: the only place that watches the process phase.
        let _ = phase.wait_for(|p| *p != Phase::Serving).await;
        for a in &accepts {
            a.abort(); // drops the listener: new connections are refused
        }
        for ep in &endpoints {
            ep.set_server_config(None); // new QUIC connections are refused; open ones go on
        }
        worker.drain.start();
        tracing::debug!(index, "worker draining");
        let _ = phase.wait_for(|p| *p == Phase::Stopped).await;
        sweeper.abort();
    });
    // Dropping the LocalSet and the runtime drops every connection still open (forced close).
}
