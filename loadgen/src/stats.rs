//! Per-thread measurement state, merged across threads after the run.
//!
//! A [`Recorder`] is owned by one generator thread (no locks, no atomics on the record path) and
//! holds whole HdrHistograms, never percentiles: `corrected` (response time from the intended
//! send time), `uncorrected` (service time from the actual write), `send_lag` (actual write minus
//! intended time, for requests that had a free connection: the generator's own lateness), plus
//! a per-second series bucketed by intended send second, and `handshake` (TCP connect + TLS
//! handshake of each new connection, attributed to the request that waited for it; that wait is
//! also in the request's corrected latency). Histograms are allocated before the run; recording
//! does not allocate (a new combination of negotiated TLS parameters adds one entry, once).

use crate::client::{Cause, ErrorKind, ReqError};
use crate::tls::Negotiated;
use crate::transport::{Handshake, HandshakeKind};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// Highest trackable latency: 100 s in nanoseconds (larger values saturate).
pub const HIGHEST_NS: u64 = 100_000_000_000;

/// A fresh latency histogram in nanoseconds with 3 significant digits.
pub fn new_hist(sigfig: u8) -> Histogram<u64> {
    // Bounds are constants known to be valid for the crate; see the unit test below.
    #[allow(clippy::unwrap_used)]
    Histogram::new_with_bounds(1, HIGHEST_NS, sigfig).unwrap()
}

/// One second of the run (by intended send time).
#[derive(Clone, Debug)]
pub struct Second {
    pub scheduled: u64,
    pub sent: u64,
    pub responses: u64,
    pub errors: u64,
    /// Corrected latency, 2 significant digits (1 %) to keep long runs small.
    pub hist: Histogram<u64>,
}

impl Second {
    /// An empty second.
    pub fn new() -> Self {
        Self { scheduled: 0, sent: 0, responses: 0, errors: 0, hist: new_hist(2) }
    }
}

impl Default for Second {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a request's turn came from, for accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// A connection was free at its intended time.
    Free,
    /// All connections were busy at `--max-connections`: it waited in the queue.
    Queued,
    /// A new connection was opened for it (connect time counts in its latency).
    NewConn,
    /// Closed loop: sent as soon as the previous response arrived.
    Closed,
}

/// Measurement state of one generator thread.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub measure_start: Instant,
    pub measure_end: Instant,
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    /// Connection set-up time (TCP connect + TLS handshake) of connections opened for requests
    /// due in the window.
    pub handshake: Histogram<u64>,
    /// Those set-ups by [`HandshakeKind`] (tcp, full, resumed, zero_rtt).
    pub handshakes: [u64; HandshakeKind::ALL.len()],
    /// Every successful TLS handshake of the run (pre-opened and warmup connections included),
    /// by what it negotiated.
    pub negotiated: Vec<(Negotiated, u64)>,
    /// Every successful full TLS handshake of the run (pre-opened and warmup ones included).
    pub full_handshakes_all: u64,
    /// HTTP/3 `--early-data`: connections whose 0-RTT data the server refused.
    pub early_data_rejected: u64,
    /// HTTP/3: server certificates verified by the thread's QUIC client (every full handshake,
    /// and every offered resumption the server refused); 0 otherwise.
    pub cert_verifications: u64,
    /// Per-second series; may be shorter than `n_secs` (seconds not reached yet), see
    /// [`Recorder::series`].
    pub seconds: Vec<Second>,
    /// Seconds in the window (rounded up).
    pub n_secs: usize,
    /// Counts by status code (index = code, 0..=999).
    pub status: Vec<u64>,
    pub errors: [u64; ErrorKind::ALL.len()],
    pub causes: [u64; Cause::ALL.len()],
    /// Requests due inside the window.
    pub scheduled: u64,
    /// Of those, written before the window ended.
    pub sent_in_window: u64,
    /// Of those, answered (any status).
    pub achieved: u64,
    /// Responses received (any status) for requests due in the window, whenever sent.
    pub responses: u64,
    pub queued: u64,
    pub dropped: u64,
    /// Queued requests never sent because the drain after the window timed out.
    pub unsent: u64,
    pub new_conns: u64,
    /// The dispatcher fell more than [`OVERRUN`] behind its schedule and stopped early.
    pub overrun: bool,
    /// The run was stopped early (SIGINT); `measure_end` is when.
    pub stopped: bool,
}

/// How far behind schedule the dispatcher may fall before the run is abandoned.
pub const OVERRUN: Duration = Duration::from_secs(1);

impl Recorder {
    pub fn new(measure_start: Instant, measure_end: Instant) -> Self {
        let secs = (measure_end - measure_start).as_secs_f64().ceil() as usize;
        Self {
            measure_start,
            measure_end,
            corrected: new_hist(3),
            uncorrected: new_hist(3),
            send_lag: new_hist(3),
            handshake: new_hist(3),
            handshakes: [0; HandshakeKind::ALL.len()],
            negotiated: Vec::new(),
            full_handshakes_all: 0,
            cert_verifications: 0,
            early_data_rejected: 0,
            // Grown as the run reaches each second (one allocation per second, not per request),
            // so memory follows elapsed time, not the requested duration.
            seconds: Vec::with_capacity(secs.max(1)),
            n_secs: secs.max(1),
            status: vec![0; 1000],
            errors: [0; ErrorKind::ALL.len()],
            causes: [0; Cause::ALL.len()],
            scheduled: 0,
            sent_in_window: 0,
            achieved: 0,
            responses: 0,
            queued: 0,
            dropped: 0,
            unsent: 0,
            new_conns: 0,
            overrun: false,
            stopped: false,
        }
    }

    /// True if a request intended at `t` is measured (not warmup, not after the window).
    #[inline]
    pub fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.measure_end
    }

    #[inline]
    fn second(&mut self, intended: Instant) -> &mut Second {
        let i = (intended - self.measure_start).as_secs() as usize;
        let i = i.min(self.n_secs - 1);
        while self.seconds.len() <= i {
            self.seconds.push(Second::new());
        }
        &mut self.seconds[i]
    }

    /// The dispatcher made request (due at `intended`) available: count it by policy outcome.
    #[inline]
    pub fn on_scheduled(&mut self, intended: Instant, how: Option<Dispatch>) {
        if !self.in_window(intended) {
            return;
        }
        self.scheduled += 1;
        self.second(intended).scheduled += 1;
        match how {
            Some(Dispatch::Queued) => self.queued += 1,
            Some(Dispatch::NewConn) => self.new_conns += 1,
            None => self.dropped += 1,
            _ => {}
        }
    }

    /// A request finished (response or error) on a connection that was ready for it.
    #[inline]
    pub fn on_done(&mut self, intended: Instant, sent: Instant, done: Instant, how: Dispatch, result: Result<u16, ReqError>) {
        self.on_done_from(intended, sent, sent, done, how, result);
    }

    /// A request finished; `ready` is when its connection began on it: its write, or the start
    /// of the connection set-up it had to wait for. Send lag ends there, so the generator's own
    /// lateness does not include the target's connect and handshake time (which is in the
    /// handshake histogram and in the corrected latency).
    #[inline]
    pub fn on_done_from(
        &mut self,
        intended: Instant,
        ready: Instant,
        sent: Instant,
        done: Instant,
        how: Dispatch,
        result: Result<u16, ReqError>,
    ) {
        if !self.in_window(intended) {
            return;
        }
        if how == Dispatch::Closed {
            self.scheduled += 1;
            self.second(intended).scheduled += 1;
        }
        // "Sent" means attempted: a refused connect is the target's answer, not the
        // generator's failure to keep its schedule.
        let sent_in_window = sent < self.measure_end;
        if sent_in_window {
            self.sent_in_window += 1;
        }
        if how == Dispatch::Free {
            let _ = self.send_lag.record(ns(ready.saturating_duration_since(intended)));
        }
        match result {
            Ok(status) => {
                let corrected = ns(done - intended);
                self.corrected.saturating_record(corrected);
                self.uncorrected.saturating_record(ns(done - sent));
                self.responses += 1;
                if sent_in_window {
                    self.achieved += 1;
                }
                self.status[(status as usize).min(999)] += 1;
                let bad = status >= 400;
                if bad {
                    self.errors[ErrorKind::Status as usize] += 1;
                }
                let s = self.second(intended);
                s.sent += 1;
                s.responses += 1;
                s.hist.saturating_record(corrected);
                if bad {
                    s.errors += 1;
                }
            }
            Err(e) => {
                self.errors[e.kind as usize] += 1;
                self.causes[e.cause as usize] += 1;
                let s = self.second(intended);
                s.sent += 1;
                s.errors += 1;
            }
        }
    }

    /// A connection was set up for a request due at `intended` (closed loop: sent at).
    #[inline]
    pub fn on_handshake(&mut self, intended: Instant, h: &Handshake) {
        self.note_negotiated(h);
        if !self.in_window(intended) {
            return;
        }
        self.handshake.saturating_record(ns(h.took));
        self.handshakes[h.kind as usize] += 1;
    }

    /// Counts what a TLS handshake negotiated (every handshake, in the window or not).
    #[inline]
    pub fn note_negotiated(&mut self, h: &Handshake) {
        if h.kind == HandshakeKind::Full {
            self.full_handshakes_all += 1;
        }
        if let Some(n) = h.negotiated {
            self.add_negotiated(n, 1);
        }
    }

    fn add_negotiated(&mut self, n: Negotiated, count: u64) {
        match self.negotiated.iter_mut().find(|(m, _)| *m == n) {
            Some((_, c)) => *c += count,
            None => self.negotiated.push((n, count)),
        }
    }

    /// Handshakes of `kind` in the window.
    pub fn handshakes_of(&self, kind: HandshakeKind) -> u64 {
        self.handshakes[kind as usize]
    }

    /// Adds another thread's recorder into this one.
    pub fn merge(&mut self, o: &Recorder) {
        let _ = self.corrected.add(&o.corrected);
        let _ = self.uncorrected.add(&o.uncorrected);
        let _ = self.send_lag.add(&o.send_lag);
        let _ = self.handshake.add(&o.handshake);
        for (a, b) in self.handshakes.iter_mut().zip(&o.handshakes) {
            *a += b;
        }
        for &(n, c) in &o.negotiated {
            self.add_negotiated(n, c);
        }
        while self.seconds.len() < o.seconds.len() {
            self.seconds.push(Second::new());
        }
        for (a, b) in self.seconds.iter_mut().zip(&o.seconds) {
            a.scheduled += b.scheduled;
            a.sent += b.sent;
            a.responses += b.responses;
            a.errors += b.errors;
            let _ = a.hist.add(&b.hist);
        }
        for (a, b) in self.status.iter_mut().zip(&o.status) {
            *a += b;
        }
        for (a, b) in self.errors.iter_mut().zip(&o.errors) {
            *a += b;
        }
        for (a, b) in self.causes.iter_mut().zip(&o.causes) {
            *a += b;
        }
        self.scheduled += o.scheduled;
        self.sent_in_window += o.sent_in_window;
        self.achieved += o.achieved;
        self.responses += o.responses;
        self.queued += o.queued;
        self.dropped += o.dropped;
        self.unsent += o.unsent;
        self.new_conns += o.new_conns;
        self.full_handshakes_all += o.full_handshakes_all;
        self.cert_verifications += o.cert_verifications;
        self.early_data_rejected += o.early_data_rejected;
        self.overrun |= o.overrun;
        self.stopped |= o.stopped;
        self.measure_end = self.measure_end.max(o.measure_end);
        self.n_secs = self.n_secs.max(o.n_secs);
    }

    /// Ends the window at `now` (early stop): later requests are not measured.
    pub fn stop_at(&mut self, now: Instant) {
        if now < self.measure_end {
            self.measure_end = now.max(self.measure_start);
            self.n_secs = ((self.measure_end - self.measure_start).as_secs_f64().ceil() as usize).max(1);
            self.stopped = true;
        }
    }

    /// The measured window (shorter than asked if the run was stopped early).
    pub fn window(&self) -> Duration {
        self.measure_end - self.measure_start
    }

    /// The whole per-second series of the window, empty seconds included.
    pub fn series(&self) -> Vec<Second> {
        (0..self.n_secs).map(|i| self.seconds.get(i).cloned().unwrap_or_default()).collect()
    }

    /// Total errors of all kinds (status errors included).
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn error(&self, k: ErrorKind) -> u64 {
        self.errors[k as usize]
    }

    pub fn cause(&self, c: Cause) -> u64 {
        self.causes[c as usize]
    }
}

/// Duration in nanoseconds, saturating.
#[inline]
pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn hist_bounds_are_valid() {
        let mut h = new_hist(3);
        h.saturating_record(HIGHEST_NS * 2);
        assert!(h.max() >= HIGHEST_NS);
        let _ = new_hist(2);
    }

    #[test]
    fn records_by_window_and_merges() {
        let t0 = Instant::now();
        let s = t0 + Duration::from_secs(1);
        let e = s + Duration::from_secs(2);
        let mut a = Recorder::new(s, e);
        // Warmup: ignored.
        a.on_done(t0, t0, t0 + Duration::from_millis(1), Dispatch::Free, Ok(200));
        assert_eq!(a.responses, 0);
        let i = s + Duration::from_millis(1500);
        a.on_scheduled(i, Some(Dispatch::Queued));
        a.on_done(i, i + Duration::from_millis(10), i + Duration::from_millis(11), Dispatch::Queued, Ok(503));
        assert_eq!((a.scheduled, a.queued, a.responses, a.achieved), (1, 1, 1, 1));
        assert_eq!(a.error(ErrorKind::Status), 1);
        assert_eq!(a.seconds[1].responses, 1);
        // Corrected counts the queue wait, uncorrected does not.
        assert!(a.corrected.max() >= 11_000_000);
        assert!(a.uncorrected.max() < 2_000_000);
        let mut b = Recorder::new(s, e);
        b.on_done(i, i, i, Dispatch::Free, Err(ReqError { kind: ErrorKind::Read, cause: Cause::Reset }));
        a.merge(&b);
        // A request that waited for a connection set-up: the lag ends where the set-up began.
        let mut c = Recorder::new(s, e);
        let ready = i + Duration::from_micros(50);
        c.on_done_from(i, ready, i + Duration::from_millis(3), i + Duration::from_millis(4), Dispatch::Free, Ok(200));
        assert!(c.send_lag.max() < 51_000, "{}", c.send_lag.max());
        assert!(c.corrected.max() >= 4_000_000 && c.uncorrected.max() < 1_100_000);
        assert_eq!(a.total_errors(), 2);
        assert_eq!(a.cause(Cause::Reset), 1);
        assert_eq!(a.seconds[1].errors, 2);
    }
}
