//! Per-worker metric counters. Hot path: written per request, never locked, never allocated.
//!
//! Each worker owns one [`WorkerMetrics`] block (aligned to 128 bytes, so two workers never
//! share a cache line) and is its only writer: an increment is a `Relaxed` load and store of the
//! worker's own atomic (no `lock`-prefixed read-modify-write, no cache-line bouncing). The admin
//! thread reads every block with `Relaxed` loads on scrape and sums them
//! (`control::metrics` renders the Prometheus text). A scrape may see one worker's counters a
//! few increments apart from each other; each counter on its own is exact and monotonic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::data::error::ProxyError;

/// Routes counted one by one; routes with a higher index share the `other` slot.
pub const MAX_ROUTE_SLOTS: usize = 64;
/// Slot of routes past [`MAX_ROUTE_SLOTS`].
pub const ROUTE_OTHER: usize = MAX_ROUTE_SLOTS;
/// Slot of requests that matched no route or failed before routing (bad head, timeout).
pub const ROUTE_NONE: usize = MAX_ROUTE_SLOTS + 1;
const ROUTE_SLOTS: usize = MAX_ROUTE_SLOTS + 2;

/// Status classes `1xx` to `5xx`.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the latency histogram buckets, in microseconds (the last bucket is `+Inf`).
pub const LATENCY_BOUNDS_US: [u64; 14] =
    [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000];
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// Every [`ProxyError`], in the order of [`error_index`], with its metric label.
pub const ERROR_KINDS: [(ProxyError, &str); 15] = [
    (ProxyError::BadRequest, "bad_request"),
    (ProxyError::UriTooLong, "uri_too_long"),
    (ProxyError::HeadersTooLarge, "headers_too_large"),
    (ProxyError::BodyTooLarge, "body_too_large"),
    (ProxyError::RequestTimeout, "request_timeout"),
    (ProxyError::NoRoute, "no_route"),
    (ProxyError::UpstreamConnect, "upstream_connect"),
    (ProxyError::ConnectTimeout, "connect_timeout"),
    (ProxyError::ResponseTimeout, "response_timeout"),
    (ProxyError::BadResponse, "bad_response"),
    (ProxyError::UpstreamClosed, "upstream_closed"),
    (ProxyError::UpstreamBroken, "upstream_broken"),
    (ProxyError::ClientGone, "client_gone"),
    (ProxyError::ExpectationFailed, "expectation_failed"),
    (ProxyError::UpstreamTls, "upstream_tls"),
];

/// Why a TLS connection failed: in its handshake, or in a record after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The handshake did not finish within `tls.handshake_timeout`.
    Timeout,
    /// The first bytes were not a TLS handshake record (plain HTTP on a TLS port).
    NotTls,
    /// rustls refused the handshake (malformed hello, no common cipher or version, an unknown
    /// name under `strict_sni`, a fatal alert from the client).
    Handshake,
    /// The client closed or reset the connection before the handshake finished.
    Closed,
    /// After the handshake: a record that does not open or is malformed, cut mid-record.
    Record,
    /// After the handshake: a fatal alert from the client.
    Alert,
    /// After the handshake: a renegotiation attempt or another handshake message a server never
    /// takes.
    Renegotiation,
}

/// Every [`TlsFailure`] with its metric label, in index order.
pub const TLS_FAILURES: [(TlsFailure, &str); 7] = [
    (TlsFailure::Timeout, "handshake_timeout"),
    (TlsFailure::NotTls, "not_tls"),
    (TlsFailure::Handshake, "handshake"),
    (TlsFailure::Closed, "closed_in_handshake"),
    (TlsFailure::Record, "record"),
    (TlsFailure::Alert, "alert"),
    (TlsFailure::Renegotiation, "renegotiation"),
];

/// What is counted of HTTP/2 client connections (`proxy_h2_events_total{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum H2Event {
    /// A client connection completed the HTTP/2 preface and settings exchange.
    Connection,
    /// A client connection failed before that (bad preface, timeout).
    HandshakeFailed,
    /// A stream opened by a client and accepted (one request).
    Stream,
    /// A stream the client reset before its exchange ended.
    ResetByClient,
    /// A stream this proxy reset (the upstream broke mid-response, a slow reader, a body past
    /// its limit, a body the client stopped sending).
    ResetByProxy,
    /// A connection ended by a protocol error: GOAWAY with an error code (rapid reset, a
    /// CONTINUATION flood or HPACK bomb, a flow-control violation, too many bad streams).
    ConnectionError,
    /// A connection closed because its keep-alive ping went unanswered.
    PingTimeout,
    /// An HTTP/2 session opened to an upstream server (`protocol = "h2c"` or `"h2"`).
    UpstreamSession,
    /// A stream opened on an upstream session (one request).
    UpstreamStream,
    /// An upstream stream that ended in a reset from the server (or refused: REFUSED_STREAM).
    UpstreamReset,
}

/// Every [`H2Event`] with its metric label, in index order.
pub const H2_EVENTS: [(H2Event, &str); 10] = [
    (H2Event::Connection, "connection"),
    (H2Event::HandshakeFailed, "handshake_failed"),
    (H2Event::Stream, "stream"),
    (H2Event::ResetByClient, "reset_by_client"),
    (H2Event::ResetByProxy, "reset_by_proxy"),
    (H2Event::ConnectionError, "connection_error"),
    (H2Event::PingTimeout, "ping_timeout"),
    (H2Event::UpstreamSession, "upstream_session"),
    (H2Event::UpstreamStream, "upstream_stream"),
    (H2Event::UpstreamReset, "upstream_reset"),
];

fn error_index(e: ProxyError) -> usize {
    match e {
        ProxyError::BadRequest => 0,
        ProxyError::UriTooLong => 1,
        ProxyError::HeadersTooLarge => 2,
        ProxyError::BodyTooLarge => 3,
        ProxyError::RequestTimeout => 4,
        ProxyError::NoRoute => 5,
        ProxyError::UpstreamConnect => 6,
        ProxyError::ConnectTimeout => 7,
        ProxyError::ResponseTimeout => 8,
        ProxyError::BadResponse => 9,
        ProxyError::UpstreamClosed => 10,
        ProxyError::UpstreamBroken => 11,
        ProxyError::ClientGone => 12,
        ProxyError::ExpectationFailed => 13,
        ProxyError::UpstreamTls => 14,
    }
}

/// One worker's counters. Written only by that worker; read by the exporter.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    requests: [[AtomicU64; 5]; ROUTE_SLOTS],
    latency: [AtomicU64; BUCKETS],
    latency_sum_us: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    upstream_opened: AtomicU64,
    upstream_reused: AtomicU64,
    retries: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    access_log_dropped: AtomicU64,
    /// The worker's pool of connection working sets, as of its last once-a-second sweep.
    working_sets_spare: AtomicU64,
    working_sets_created: AtomicU64,
    /// TLS handshakes completed, full and resumed; failures by kind.
    tls_full: AtomicU64,
    tls_resumed: AtomicU64,
    tls_failures: [AtomicU64; TLS_FAILURES.len()],
    /// TLS handshakes with upstream servers, full and resumed.
    upstream_tls_full: AtomicU64,
    upstream_tls_resumed: AtomicU64,
    /// HTTP/2 client connections and streams, by [`H2Event`].
    h2: [AtomicU64; H2_EVENTS.len()],
}

/// Adds `n` to a counter this thread alone writes: a plain load and store, no locked RMW.
#[inline(always)]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            upstream_opened: AtomicU64::new(0),
            upstream_reused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            access_log_dropped: AtomicU64::new(0),
            working_sets_spare: AtomicU64::new(0),
            working_sets_created: AtomicU64::new(0),
            tls_full: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            tls_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_tls_full: AtomicU64::new(0),
            upstream_tls_resumed: AtomicU64::new(0),
            h2: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WorkerMetrics {
    /// A TLS handshake completed (per connection).
    #[inline]
    pub fn tls_handshake(&self, resumed: bool) {
        add(if resumed { &self.tls_resumed } else { &self.tls_full }, 1);
    }

    /// A TLS handshake with an upstream server completed (per upstream connection).
    #[inline]
    pub fn upstream_tls_handshake(&self, resumed: bool) {
        add(if resumed { &self.upstream_tls_resumed } else { &self.upstream_tls_full }, 1);
    }

    /// An HTTP/2 connection or stream event.
    #[inline]
    pub fn h2(&self, event: H2Event) {
        add(&self.h2[event as usize], 1);
    }

    /// A TLS connection failed (per connection).
    #[inline]
    pub fn tls_failure(&self, kind: TlsFailure) {
        let i = TLS_FAILURES.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        add(&self.tls_failures[i], 1);
    }

    /// A request head was read: it is in flight until [`WorkerMetrics::finish`].
    #[inline]
    pub fn start(&self) {
        add(&self.in_flight, 1);
    }

    /// A request ended with `status` after `elapsed`; `route` is the route index or a slot.
    #[inline]
    pub fn finish(&self, route: usize, status: u16, elapsed: Duration) {
        self.in_flight.store(self.in_flight.load(Relaxed).wrapping_sub(1), Relaxed);
        self.count(route, status, elapsed);
    }

    /// Counts a finished request without touching the in-flight gauge.
    #[inline]
    pub fn count(&self, route: usize, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let slot = if route < MAX_ROUTE_SLOTS { route } else { route.min(ROUTE_NONE) };
        add(&self.requests[slot][class], 1);
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        let bucket = LATENCY_BOUNDS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BOUNDS_US.len());
        add(&self.latency[bucket], 1);
        add(&self.latency_sum_us, us);
    }

    /// An error of this kind happened (also counted in `requests` with its status).
    #[cold]
    pub fn error(&self, e: ProxyError) {
        add(&self.errors[error_index(e)], 1);
    }

    #[inline]
    pub fn connection(&self) {
        add(&self.connections, 1);
    }

    #[inline]
    pub fn upstream_reused(&self) {
        add(&self.upstream_reused, 1);
    }

    #[inline]
    pub fn upstream_opened(&self) {
        add(&self.upstream_opened, 1);
    }

    #[cold]
    pub fn retry(&self) {
        add(&self.retries, 1);
    }

    #[cold]
    pub fn access_log_dropped(&self) {
        add(&self.access_log_dropped, 1);
    }

    /// The worker's pool of working sets after its sweep: spare sets kept, sets created so far
    /// (once a second, off the request path).
    pub fn working_sets(&self, spare: u64, created: u64) {
        self.working_sets_spare.store(spare, Relaxed);
        self.working_sets_created.store(created, Relaxed);
    }

    /// Adds this worker's counters into `into` (scrape side).
    pub fn sum_into(&self, into: &mut Totals) {
        for (slot, classes) in self.requests.iter().enumerate() {
            for (c, v) in classes.iter().enumerate() {
                into.requests[slot][c] += v.load(Relaxed);
            }
        }
        for (b, v) in self.latency.iter().enumerate() {
            into.latency[b] += v.load(Relaxed);
        }
        into.latency_sum_us += self.latency_sum_us.load(Relaxed);
        into.in_flight += self.in_flight.load(Relaxed) as i64;
        into.connections += self.connections.load(Relaxed);
        into.upstream_opened += self.upstream_opened.load(Relaxed);
        into.upstream_reused += self.upstream_reused.load(Relaxed);
        into.retries += self.retries.load(Relaxed);
        for (k, v) in self.errors.iter().enumerate() {
            into.errors[k] += v.load(Relaxed);
        }
        into.access_log_dropped += self.access_log_dropped.load(Relaxed);
        into.working_sets_spare += self.working_sets_spare.load(Relaxed);
        into.working_sets_created += self.working_sets_created.load(Relaxed);
        into.tls_full += self.tls_full.load(Relaxed);
        into.tls_resumed += self.tls_resumed.load(Relaxed);
        for (k, v) in self.tls_failures.iter().enumerate() {
            into.tls_failures[k] += v.load(Relaxed);
        }
        into.upstream_tls_full += self.upstream_tls_full.load(Relaxed);
        into.upstream_tls_resumed += self.upstream_tls_resumed.load(Relaxed);
        for (k, v) in self.h2.iter().enumerate() {
            into.h2[k] += v.load(Relaxed);
        }
    }
}

/// The sum over all workers at one scrape.
#[derive(Debug, Clone)]
pub struct Totals {
    pub requests: [[u64; 5]; ROUTE_SLOTS],
    pub latency: [u64; BUCKETS],
    pub latency_sum_us: u64,
    pub in_flight: i64,
    pub connections: u64,
    pub upstream_opened: u64,
    pub upstream_reused: u64,
    pub retries: u64,
    pub errors: [u64; ERROR_KINDS.len()],
    pub access_log_dropped: u64,
    pub working_sets_spare: u64,
    pub working_sets_created: u64,
    pub tls_full: u64,
    pub tls_resumed: u64,
    pub tls_failures: [u64; TLS_FAILURES.len()],
    pub upstream_tls_full: u64,
    pub upstream_tls_resumed: u64,
    pub h2: [u64; H2_EVENTS.len()],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            requests: [[0; 5]; ROUTE_SLOTS],
            latency: [0; BUCKETS],
            latency_sum_us: 0,
            in_flight: 0,
            connections: 0,
            upstream_opened: 0,
            upstream_reused: 0,
            retries: 0,
            errors: [0; ERROR_KINDS.len()],
            access_log_dropped: 0,
            working_sets_spare: 0,
            working_sets_created: 0,
            tls_full: 0,
            tls_resumed: 0,
            tls_failures: [0; TLS_FAILURES.len()],
            upstream_tls_full: 0,
            upstream_tls_resumed: 0,
            h2: [0; H2_EVENTS.len()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_across_workers() {
        let a = WorkerMetrics::default();
        let b = WorkerMetrics::default();
        a.start();
        a.finish(0, 200, Duration::from_micros(700));
        b.count(ROUTE_NONE, 404, Duration::from_secs(20));
        b.error(ProxyError::NoRoute);
        b.start();
        let mut t = Totals::default();
        a.sum_into(&mut t);
        b.sum_into(&mut t);
        assert_eq!(t.requests[0][1], 1);
        assert_eq!(t.requests[ROUTE_NONE][3], 1);
        assert_eq!(t.latency[1], 1); // 700us <= 1ms
        assert_eq!(t.latency[BUCKETS - 1], 1); // +Inf
        assert_eq!(t.in_flight, 1);
        assert_eq!(t.errors[5], 1);
        assert_eq!(t.latency_sum_us, 700 + 20_000_000);
    }

    #[test]
    fn error_kinds_are_in_index_order() {
        for (i, (e, _)) in ERROR_KINDS.iter().enumerate() {
            assert_eq!(error_index(*e), i);
        }
    }

    #[test]
    fn blocks_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<WorkerMetrics>(), 128);
        assert_eq!(std::mem::size_of::<WorkerMetrics>() % 128, 0);
    }
}
