//! One load run: threads, the open-loop dispatcher, connection tasks, closed loop, validity.
//!
//! Each generator thread runs its own `current_thread` tokio runtime (optionally pinned with
//! `--cpus`) and owns a [`Recorder`]; nothing is shared between threads on the request path.
//!
//! Open loop, per thread: a dispatcher task sleeps on a precise timer until the next intended
//! send time of its [`Schedule`], then releases every request that is due. A due request goes to
//! an idle connection if there is one; otherwise a new connection is opened if fewer than
//! `--max-connections` exist; otherwise the busy policy applies:
//! - `queue` (default): it waits in a FIFO for the next connection that frees up, and its wait
//!   counts in its latency (latency is always measured from the intended time);
//! - `drop`: it is not sent and counted as dropped.
//!
//! After the window closes no new request is released; queued ones are still sent (their latency
//! is real) until `--timeout` after the window, then whatever is left is counted as unsent.
//!
//! Connections are the scheduler's unit: a connection task takes one due request at a time and
//! runs it on its [`Conn`] (the protocol) over whatever [`crate::transport`] stream it opened
//! (TCP or TLS); the scheduler neither knows nor cares which. A connection set-up paid by a
//! request (`--new-connection-every`, a reconnect after an error, a pool that grew) is recorded in
//! the handshake histogram and stays inside that request's corrected latency.
//!
//! `--connect-rate R` is the same open loop with `rate` = R and a new connection for every
//! request: nothing is pre-opened, each due request takes a free slot (or grows the slots up to
//! `--max-connections`, or waits under the busy policy) whose connection was closed after its
//! previous response, so it connects (and handshakes) from scratch, sends its one request, reads
//! the response and closes. The slot tasks and their buffers are reused; the connections are not.
//!
//! Validity ([`assess`]): an open-loop run is INVALID when the generator did not apply the load
//! it was asked for: more than 1 % of the scheduled requests were never sent (dropped by policy
//! or queue overflow, or still unsent after the drain), or the generator's own send lag (P99
//! over requests that had a free connection, so the target's slowness is excluded) exceeded
//! `--max-lag`, or the dispatcher fell more than 1 s behind and stopped. Requests that merely
//! waited for a connection are not a reason: they were sent, and their wait is in the latency.

use crate::client::{Conn, ReqError, Request, Target};
use crate::h2client::{H2Conn, H2Slot};
use crate::h3client::{H3Conn, H3Slot, QuicClient};
use crate::schedule::{Arrival, Schedule};
use crate::stats::{Dispatch, OVERRUN, Recorder};
use crate::sys;
use crate::tls::ClientSettings;
use crate::transport::Connector;
use crate::transport::Handshake;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Longest queue of waiting requests per thread; beyond it requests are dropped (and the run is
/// invalid anyway, since it is far behind).
const QUEUE_CAP: usize = 1 << 20;

/// Set by SIGINT (Ctrl-C): runs end their window now and report what they measured.
static STOP: AtomicBool = AtomicBool::new(false);

/// True once a stop was requested (SIGINT).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// What to do with a due request when every connection is busy at `--max-connections`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusyPolicy {
    Queue,
    Drop,
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    /// Requests used in turn (one, or the lines of `--targets`).
    pub requests: Vec<Request>,
    pub closed: bool,
    /// Target rate in requests per second (open loop).
    pub rate: f64,
    pub arrival: Arrival,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub max_connections: usize,
    pub threads: usize,
    pub cpus: Vec<usize>,
    pub timeout: Duration,
    pub policy: BusyPolicy,
    pub max_lag: Duration,
    /// Wake this long before each send time and spin the rest (0: sleep only).
    pub spin: Duration,
    pub seed: u64,
    /// Live progress line on stderr.
    pub progress: bool,
    /// TLS settings (`https://`); `None` for plain TCP.
    pub tls: Option<ClientSettings>,
    /// Close each connection after this many responses, so the next request opens (and
    /// handshakes) a new one; 0: keep connections.
    pub new_connection_every: u64,
    /// HTTP/2 (h2c on http://, ALPN h2 on https://) instead of HTTP/1.1.
    pub http2: bool,
    /// HTTP/3 (QUIC, ALPN h3; https:// only) instead of HTTP/1.1.
    pub http3: bool,
    /// HTTP/2 and HTTP/3: concurrent streams (request slots) per connection.
    pub streams: usize,
    /// `--connect-rate`: `rate` is new connections per second, each carrying one request
    /// (`new_connection_every` is 1); nothing is pre-opened and `max_connections` bounds the
    /// connections open at once.
    pub connect_rate: bool,
}

impl RunConfig {
    /// The connector of one generator thread (a TLS config per thread: its own session cache).
    pub fn connector(&self) -> Result<Connector, String> {
        match &self.tls {
            None => Ok(Connector::Plain),
            Some(t) => Ok(Connector::tls(crate::tls::client_config(t)?, t.server_name.clone())),
        }
    }
}

/// A request slot the scheduler hands due requests to: an HTTP/1.1 connection, or one stream of
/// an HTTP/2 connection.
enum Slot {
    H1(Conn),
    H2(H2Slot),
    H3(H3Slot),
}

impl Slot {
    async fn send(&mut self, req: &Request) -> (Instant, Instant, Result<u16, ReqError>) {
        match self {
            Slot::H1(c) => c.send(req).await,
            Slot::H2(c) => c.send(req).await,
            Slot::H3(c) => c.send(req).await,
        }
    }

    fn take_handshake(&mut self) -> Option<Handshake> {
        match self {
            Slot::H1(c) => c.take_handshake(),
            Slot::H2(c) => c.take_handshake(),
            Slot::H3(c) => c.take_handshake(),
        }
    }

    /// Connects now if not connected (before the measured run).
    async fn connect(&mut self) -> Result<(), ReqError> {
        match self {
            Slot::H1(c) => c.connect().await,
            Slot::H2(c) => c.connect().await,
            Slot::H3(c) => c.connect().await,
        }
    }
}

/// One new connection's slots (not yet connected): one for HTTP/1.1, `--streams` for HTTP/2 and
/// HTTP/3 (`quic` is the thread's QUIC client, present with `--http3`).
fn new_slots(cfg: &RunConfig, connector: &Connector, quic: Option<&Rc<QuicClient>>) -> Vec<Slot> {
    if let Some(q) = quic {
        let c = H3Conn::new(cfg.target.addr, q.clone(), cfg.timeout, cfg.new_connection_every);
        (0..cfg.streams.max(1)).map(|_| Slot::H3(H3Slot::new(c.clone()))).collect()
    } else if cfg.http2 {
        let c = H2Conn::new(cfg.target.addr, connector.clone(), cfg.timeout, cfg.new_connection_every);
        (0..cfg.streams.max(1)).map(|_| Slot::H2(H2Slot::new(c.clone()))).collect()
    } else {
        vec![Slot::H1(Conn::new(cfg.target.addr, connector.clone(), cfg.timeout, cfg.new_connection_every))]
    }
}

/// Verdict on a run.
#[derive(Clone, Debug, Default)]
pub struct Validity {
    pub valid: bool,
    pub reasons: Vec<String>,
}

/// The merged result of a run.
#[derive(Debug)]
pub struct RunOutcome {
    pub rec: Recorder,
    pub started: SystemTime,
    pub window: Duration,
    pub validity: Validity,
}

impl RunOutcome {
    /// Requests per second written inside the window.
    pub fn sent_rate(&self) -> f64 {
        per_sec(self.rec.sent_in_window, self.window)
    }

    /// Responses per second to requests written inside the window.
    pub fn achieved_rate(&self) -> f64 {
        per_sec(self.rec.achieved, self.window)
    }
}

/// `n` per second over `window` (0 for an empty window).
fn per_sec(n: u64, window: Duration) -> f64 {
    if window.is_zero() { 0.0 } else { n as f64 / window.as_secs_f64() }
}

/// Live counters read by the progress line.
#[derive(Debug, Default)]
struct Live {
    responses: AtomicU64,
    errors: AtomicU64,
    p99_ns: AtomicU64,
}

/// Runs the load described by `cfg` and returns the merged measurement.
pub fn run(cfg: &RunConfig) -> io::Result<RunOutcome> {
    let cfg = Arc::new(cfg.clone());
    let threads = cfg.threads.max(1);
    let barrier = Arc::new(Gate { barrier: Barrier::new(threads), failed: AtomicBool::new(false) });
    let start = Arc::new(OnceLock::<(Instant, SystemTime)>::new());
    let live: Arc<Vec<Live>> = Arc::new((0..threads).map(|_| Live::default()).collect());
    let mut handles = Vec::with_capacity(threads);
    for k in 0..threads {
        let (cfg, barrier, start, live) = (cfg.clone(), barrier.clone(), start.clone(), live.clone());
        let h = std::thread::Builder::new().name(format!("loadgen-{k}")).spawn(move || thread_main(&cfg, k, &barrier, &start, live))?;
        handles.push(h);
    }
    if cfg.progress && io::stderr().is_terminal() {
        progress_loop(&cfg, &handles, &start, &live);
    }
    let mut merged: Option<Recorder> = None;
    for h in handles {
        let rec = h.join().map_err(|_| io::Error::other("a generator thread panicked"))??;
        match merged.as_mut() {
            None => merged = Some(rec),
            Some(m) => m.merge(&rec),
        }
    }
    let rec = merged.ok_or_else(|| io::Error::other("no generator thread"))?;
    let started = start.get().map_or(SystemTime::now(), |s| s.1);
    let window = rec.window();
    let mut out = RunOutcome { rec, started, window, validity: Validity::default() };
    out.validity = assess(&cfg, &out);
    Ok(out)
}

/// Applies the invalid-run rules (see the module docs).
/// The reasons' first words are read by the gates' latency gate (gates/src/runner.rs `lagged`,
/// `absorbed`) to tell the generator's own lateness from a target that could not take the load:
/// keep "requested load not applied" and "generator fell" as they are.
pub fn assess(cfg: &RunConfig, out: &RunOutcome) -> Validity {
    let mut reasons = Vec::new();
    if !cfg.closed {
        // Requests that were never attempted: dropped (policy or queue overflow), left unsent
        // after the drain, or never dispatched because the dispatcher gave up.
        let expected = cfg.rate * out.window.as_secs_f64();
        let r = &out.rec;
        let missing = (expected - r.scheduled as f64).max(0.0) + (r.dropped + r.unsent) as f64;
        if missing > 0.01 * expected {
            reasons.push(format!(
                "requested load not applied: {:.0} of {:.0} scheduled requests were never sent ({} dropped, {} unsent after the drain); sent {:.1} req/s in the window of {:.1} asked",
                missing,
                expected,
                r.dropped,
                r.unsent,
                out.sent_rate(),
                cfg.rate,
            ));
        }
        if !out.rec.send_lag.is_empty() {
            let p99 = Duration::from_nanos(out.rec.send_lag.value_at_quantile(0.99));
            if p99 > cfg.max_lag {
                reasons.push(format!(
                    "generator fell behind its schedule: send lag p99 {} > --max-lag {}",
                    crate::report::fmt_dur(p99),
                    crate::report::fmt_dur(cfg.max_lag)
                ));
            }
        }
        if out.rec.overrun {
            reasons.push(format!("generator fell more than {}s behind its schedule and stopped dispatching", OVERRUN.as_secs()));
        }
    }
    Validity { valid: reasons.is_empty(), reasons }
}

/// Share `total` over `threads`: thread `k`'s part.
fn share(total: usize, threads: usize, k: usize) -> usize {
    total / threads + usize::from(k < total % threads)
}

/// The threads' start line: all connect, then start together; if one fails to set up, the
/// others see `failed` after the barrier and stop (instead of waiting for it forever).
struct Gate {
    barrier: Barrier,
    failed: AtomicBool,
}

fn thread_main(
    cfg: &RunConfig,
    k: usize,
    barrier: &Gate,
    start: &OnceLock<(Instant, SystemTime)>,
    live: Arc<Vec<Live>>,
) -> io::Result<Recorder> {
    let setup = (|| -> io::Result<_> {
        if !cfg.cpus.is_empty() {
            let cpu = cfg.cpus[k % cfg.cpus.len()];
            sys::pin_to_cpu(cpu).map_err(|e| io::Error::new(e.kind(), format!("pin to cpu {cpu}: {e}")))?;
        }
        let connector = cfg.connector().map_err(io::Error::other)?;
        let quic = match (&cfg.tls, cfg.http3) {
            (Some(t), true) => Some(QuicClient::new(t).map_err(io::Error::other)?),
            _ => None,
        };
        Ok((tokio::runtime::Builder::new_current_thread().enable_all().build()?, connector, quic))
    })();
    let (rt, connector, quic) = match setup {
        Ok(x) => x,
        Err(e) => {
            barrier.failed.store(true, Ordering::Relaxed);
            barrier.barrier.wait();
            return Err(e);
        }
    };
    let local = tokio::task::LocalSet::new();
    let rec = local.block_on(&rt, thread_async(cfg, k, connector, quic.clone(), barrier, start, live));
    rec.map(|mut r| {
        if let Some(q) = &quic {
            r.cert_verifications = q.verifications();
            r.early_data_rejected = q.early_data_rejected();
        }
        r
    })
}

/// One load thread's dispatch queue, recorder, request mix and measurement window, shared by
/// its dispatcher and connection tasks (single thread: `Rc`).
struct LoadThread {
    queue: RefCell<VecDeque<(Instant, Dispatch)>>,
    idle: Cell<usize>,
    done: Cell<bool>,
    notify: Notify,
    rec: RefCell<Recorder>,
    requests: Vec<Request>,
    next_req: Cell<usize>,
    connector: Connector,
    quic: Option<Rc<QuicClient>>,
    measure_end: Cell<Instant>,
    drain_deadline: Cell<Instant>,
}

impl LoadThread {
    /// Ends this thread's window now (early stop).
    fn stop_now(&self) {
        let now = Instant::now();
        if now < self.measure_end.get() {
            self.rec.borrow_mut().stop_at(now);
            let end = self.rec.borrow().measure_end;
            self.measure_end.set(end);
            // Queued requests get a short drain, not the whole timeout.
            self.drain_deadline.set(end + Duration::from_millis(200));
        }
    }

    #[inline]
    fn pick(&self) -> &Request {
        let i = self.next_req.get();
        self.next_req.set(if i + 1 == self.requests.len() { 0 } else { i + 1 });
        &self.requests[i]
    }
}

async fn thread_async(
    cfg: &RunConfig,
    k: usize,
    connector: Connector,
    quic: Option<Rc<QuicClient>>,
    barrier: &Gate,
    start: &OnceLock<(Instant, SystemTime)>,
    live: Arc<Vec<Live>>,
) -> io::Result<Recorder> {
    let threads = cfg.threads.max(1);
    // `--connect-rate`: every request opens its own connection, so none is opened before.
    let n_conns = if cfg.connect_rate { 0 } else { share(cfg.connections, threads, k) };
    let max_conns = share(cfg.max_connections, threads, k).max(n_conns);
    let mut conns: Vec<Slot> = Vec::with_capacity(n_conns * if cfg.http2 || cfg.http3 { cfg.streams.max(1) } else { 1 });
    // Open connections before the clock starts, one after another (so that over TLS the later
    // ones can resume with the earlier ones' tickets); failures are retried (and counted) per
    // request. Their set-up is paid by no request: only what they negotiated is kept. After the
    // first failure the rest are left to connect on demand: a target that does not answer (a
    // QUIC handshake to a UDP port nobody listens on waits for --timeout) would otherwise hold
    // the start for --connections times the timeout.
    let mut preopened = Vec::with_capacity(n_conns);
    let (mut failed, mut opened): (Option<ReqError>, usize) = (None, 0);
    for _ in 0..n_conns {
        let mut slots = new_slots(cfg, &connector, quic.as_ref());
        if failed.is_none() {
            let r = match slots.first_mut() {
                Some(s) => s.connect().await.map(|()| s.take_handshake()),
                None => Ok(None),
            };
            match r {
                Ok(h) => {
                    opened += 1;
                    preopened.extend(h);
                }
                Err(e) => failed = Some(e),
            }
        }
        conns.extend(slots);
    }
    if let Some(e) = failed {
        // Said once per thread, before the run: the report counts only the window's errors.
        eprintln!(
            "loadgen: thread {k}: could not open a connection to {} before the run ({} error, cause {}); {} of {n_conns} pre-opened, the others connect on their first request",
            cfg.target.addr,
            e.kind.name(),
            e.cause.name(),
            opened,
        );
    }
    // Blocking here is fine: nothing else runs on this thread yet.
    barrier.barrier.wait();
    if barrier.failed.load(Ordering::Relaxed) {
        let now = Instant::now();
        return Ok(Recorder::new(now, now));
    }
    // The schedule starts 20 ms from now, so every thread is past this line in time.
    let lead = Duration::from_millis(20);
    let (t0, _) = *start.get_or_init(|| (Instant::now() + lead, SystemTime::now() + lead));
    let measure_start = t0 + cfg.warmup;
    let measure_end = measure_start + cfg.duration;
    let mut rec = Recorder::new(measure_start, measure_end);
    for h in &preopened {
        rec.note_negotiated(h);
    }
    let sh = Rc::new(LoadThread {
        queue: RefCell::new(VecDeque::with_capacity(1024)),
        idle: Cell::new(0),
        done: Cell::new(false),
        notify: Notify::new(),
        rec: RefCell::new(rec),
        requests: cfg.requests.clone(),
        // Threads start at different targets so a mix is spread evenly.
        next_req: Cell::new(k % cfg.requests.len().max(1)),
        connector,
        quic,
        measure_end: Cell::new(measure_end),
        drain_deadline: Cell::new(measure_end + cfg.timeout),
    });
    let ticker = cfg.progress.then(|| tokio::task::spawn_local(ticker(sh.clone(), live.clone(), k)));
    // One listener per process is enough; it replaces the default SIGINT action, so a Ctrl-C
    // ends the window early and the run still reports what it measured.
    let sigint = (k == 0).then(|| {
        tokio::task::spawn_local(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                STOP.store(true, Ordering::Relaxed);
            }
        })
    });
    if cfg.closed {
        // Wait for the start like the open loop does, so warmup means the same.
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0)).await;
        let tasks: Vec<_> = conns.into_iter().map(|c| tokio::task::spawn_local(closed_conn(sh.clone(), c))).collect();
        for t in tasks {
            let _ = t.await;
        }
    } else {
        let sched = Schedule::new(t0, cfg.arrival, cfg.rate, threads, k, cfg.seed);
        dispatcher(sh.clone(), sched, conns, n_conns, max_conns, cfg).await?;
    }
    for t in [ticker, sigint].into_iter().flatten() {
        t.abort();
    }
    let rec = sh.rec.borrow().clone();
    Ok(rec)
}

/// Once a second, publishes this thread's totals and the last full second's P99 for the
/// progress line (no per-request cost).
async fn ticker(sh: Rc<LoadThread>, live: Arc<Vec<Live>>, k: usize) {
    let mut iv = tokio::time::interval(Duration::from_millis(500));
    loop {
        iv.tick().await;
        let rec = sh.rec.borrow();
        let l = &live[k];
        l.responses.store(rec.responses, Ordering::Relaxed);
        l.errors.store(rec.total_errors(), Ordering::Relaxed);
        let now = Instant::now();
        if now > rec.measure_start + Duration::from_secs(1) {
            let i = ((now - rec.measure_start).as_secs() as usize).saturating_sub(1);
            if let Some(s) = rec.seconds.get(i)
                && !s.hist.is_empty()
            {
                l.p99_ns.store(s.hist.value_at_quantile(0.99), Ordering::Relaxed);
            }
        }
    }
}

async fn dispatcher(
    sh: Rc<LoadThread>,
    mut sched: Schedule,
    conns: Vec<Slot>,
    mut n_conns: usize,
    max_conns: usize,
    cfg: &RunConfig,
) -> io::Result<()> {
    let mut timer = sys::PreciseTimer::new()?;
    let mut tasks = Vec::with_capacity(conns.len().max(max_conns));
    for c in conns {
        tasks.push(tokio::task::spawn_local(open_conn(sh.clone(), c, None)));
    }
    // Let the connection tasks register as idle before the first request is due.
    tokio::task::yield_now().await;
    'outer: loop {
        let t = sched.peek();
        if STOP.load(Ordering::Relaxed) {
            sh.stop_now();
            break;
        }
        if t >= sh.measure_end.get() {
            break;
        }
        if cfg.spin.is_zero() {
            timer.sleep_until(t).await?;
        } else {
            // Waking an idle vCPU costs tens of µs here; waking early and polling the last
            // stretch trades CPU for punctuality. Each poll yields to the runtime (which polls
            // I/O), so connection tasks keep running even when the interval is shorter than the
            // spin.
            timer.sleep_until(t.checked_sub(cfg.spin).unwrap_or(t)).await?;
            while Instant::now() < t {
                tokio::task::yield_now().await;
            }
        }
        let mut batch = 0u32;
        loop {
            let t = sched.peek();
            if t >= sh.measure_end.get() {
                break 'outer;
            }
            let now = Instant::now();
            if t > now {
                break;
            }
            if now - t > OVERRUN {
                sh.rec.borrow_mut().overrun = true;
                break 'outer;
            }
            sched.advance();
            let how = if sh.idle.get() > 0 {
                sh.idle.set(sh.idle.get() - 1);
                sh.queue.borrow_mut().push_back((t, Dispatch::Free));
                sh.notify.notify_one();
                Some(Dispatch::Free)
            } else if n_conns < max_conns {
                n_conns += 1;
                // The first slot of the new connection takes this request; an HTTP/2
                // connection's other streams join the idle slots.
                let mut first = Some((t, Dispatch::NewConn));
                for c in new_slots(cfg, &sh.connector, sh.quic.as_ref()) {
                    tasks.push(tokio::task::spawn_local(open_conn(sh.clone(), c, first.take())));
                }
                Some(Dispatch::NewConn)
            } else if cfg.policy == BusyPolicy::Queue && sh.queue.borrow().len() < QUEUE_CAP {
                sh.queue.borrow_mut().push_back((t, Dispatch::Queued));
                Some(Dispatch::Queued)
            } else {
                None
            };
            sh.rec.borrow_mut().on_scheduled(t, how);
            batch += 1;
            if batch == 256 {
                // Far behind: let connection tasks run between batches.
                batch = 0;
                tokio::task::yield_now().await;
            }
        }
    }
    sh.done.set(true);
    sh.notify.notify_waiters();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Takes the next due request for a connection, or `None` when the run is over.
async fn next_item(sh: &LoadThread) -> Option<(Instant, Dispatch)> {
    loop {
        let item = sh.queue.borrow_mut().pop_front();
        if let Some(item) = item {
            if sh.done.get() && Instant::now() > sh.drain_deadline.get() {
                let mut q = sh.queue.borrow_mut();
                let mut rec = sh.rec.borrow_mut();
                for (t, _) in std::iter::once(item).chain(q.drain(..)) {
                    if rec.in_window(t) {
                        rec.unsent += 1;
                    }
                }
                return None;
            }
            return Some(item);
        }
        if sh.done.get() {
            return None;
        }
        sh.idle.set(sh.idle.get() + 1);
        sh.notify.notified().await;
    }
}

async fn open_conn(sh: Rc<LoadThread>, mut conn: Slot, mut first: Option<(Instant, Dispatch)>) {
    loop {
        let (intended, how) = match first.take() {
            Some(x) => x,
            None => match next_item(&sh).await {
                Some(x) => x,
                None => return,
            },
        };
        let (ready, sent, res) = conn.send(sh.pick()).await;
        let done = Instant::now();
        let mut rec = sh.rec.borrow_mut();
        if let Some(h) = conn.take_handshake() {
            rec.on_handshake(intended, &h);
        }
        rec.on_done_from(intended, ready, sent, done, how, res);
    }
}

async fn closed_conn(sh: Rc<LoadThread>, mut conn: Slot) {
    loop {
        if STOP.load(Ordering::Relaxed) {
            sh.stop_now();
        }
        if Instant::now() >= sh.measure_end.get() {
            return;
        }
        let (_, sent, res) = conn.send(sh.pick()).await;
        let done = Instant::now();
        let failed_connect =
            matches!(res, Err(e) if matches!(e.kind, crate::client::ErrorKind::Connect | crate::client::ErrorKind::Handshake));
        {
            let mut rec = sh.rec.borrow_mut();
            if let Some(h) = conn.take_handshake() {
                rec.on_handshake(sent, &h);
            }
            rec.on_done(sent, sent, done, Dispatch::Closed, res);
        }
        if failed_connect {
            // Do not spin on a refused port: back off a little before reconnecting.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Prints `[elapsed] rate, p99 of the last second, errors` on stderr until the threads end.
fn progress_loop(
    cfg: &RunConfig,
    handles: &[std::thread::JoinHandle<io::Result<Recorder>>],
    start: &OnceLock<(Instant, SystemTime)>,
    live: &[Live],
) {
    let mut last = (Instant::now(), 0u64);
    let mut err = io::stderr();
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let Some(&(t0, _)) = start.get() else { continue };
        let now = Instant::now();
        if now - last.0 < Duration::from_secs(1) {
            continue;
        }
        let responses: u64 = live.iter().map(|l| l.responses.load(Ordering::Relaxed)).sum();
        let errors: u64 = live.iter().map(|l| l.errors.load(Ordering::Relaxed)).sum();
        let p99 = live.iter().map(|l| l.p99_ns.load(Ordering::Relaxed)).max().unwrap_or(0);
        let rate = (responses - last.1.min(responses)) as f64 / (now - last.0).as_secs_f64();
        last = (now, responses);
        let el = now.saturating_duration_since(t0).as_secs_f64();
        let phase = if el < cfg.warmup.as_secs_f64() { "warmup" } else { "run" };
        let _ = write!(
            err,
            "\r\x1b[K[{phase} {el:5.1}s/{:.0}s] {rate:9.0} resp/s  p99 {}  errors {errors}",
            (cfg.warmup + cfg.duration).as_secs_f64(),
            if p99 == 0 { "-".to_string() } else { crate::report::fmt_dur(Duration::from_nanos(p99)) },
        );
        let _ = err.flush();
    }
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}
