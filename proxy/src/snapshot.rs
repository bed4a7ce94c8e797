//! The immutable routing snapshot: what the control plane publishes and the data plane reads.
//!
//! Built once per config load (allocation is fine then), published with one `ArcSwap::store`,
//! and only read afterwards: lookups ([`Router::lookup`]) allocate nothing and take no lock.
//! This file is on the hot path (the contract lists it): no locks, no string building.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a request needs to be routed and bounded, frozen.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published config.
    pub generation: u64,
    pub router: Router,
    pub groups: Vec<UpstreamGroup>,
    pub limits: Limits,
    /// The `Via` value this proxy adds, e.g. `1.1 fastproxy`.
    pub via: Box<[u8]>,
    /// Tracing sampling: one request in this many gets a span; 0 (the default) = none.
    pub trace_sample_every: u64,
    /// Per configured listener, in config order: its address and TLS settings (`None`:
    /// cleartext). Certificates reload with the snapshot; whether a listener speaks TLS at all is
    /// fixed when it is bound, like its address.
    pub listeners: Box<[ListenerSnap]>,
    /// `[http2]`: the settings of HTTP/2 client connections (applied to new connections).
    pub http2: Http2,
}

/// `[http2]`: what an HTTP/2 client connection is allowed (RFC 9113 §6.5.2 settings, and the
/// bounds that keep the known attacks cheap). Read when a connection starts.
#[derive(Debug, Clone)]
pub struct Http2 {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams past it are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: what a client may send on one stream before we read it.
    pub initial_stream_window: u32,
    /// The connection's receive window (a WINDOW_UPDATE after the preface).
    pub initial_connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a decoded header block past it is refused (HPACK bombs,
    /// CONTINUATION floods).
    pub max_header_list_size: u32,
    /// Streams a client may open and reset before they are accepted (CVE-2023-44487, rapid
    /// reset): past it the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    pub max_pending_reset_streams: usize,
    /// Streams this proxy may reset for a client's protocol errors before the connection ends
    /// with GOAWAY (the same attack through malformed streams).
    pub max_local_error_resets: usize,
    /// Ping an idle-looking client this often (`None`: never); no answer within
    /// `keepalive_timeout` closes the connection.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            max_concurrent_streams: 128,
            initial_stream_window: 256 * 1024,
            initial_connection_window: 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_header_list_size: 16 * 1024,
            max_pending_reset_streams: 20,
            max_local_error_resets: 1024,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// One configured listener as the accept loop sees it.
#[derive(Debug)]
pub struct ListenerSnap {
    pub address: SocketAddr,
    pub tls: Option<TlsListener>,
    /// Cleartext HTTP/2 with prior knowledge accepted beside HTTP/1.1 (`h2c = true`).
    pub h2c: bool,
}

/// A TLS listener's settings: the rustls config (certificates through [`Sni`]) and the
/// handshake timeout.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub config: std::sync::Arc<rustls::ServerConfig>,
    pub handshake_timeout: Duration,
    /// With `http3 = true`: the QUIC server config, the same certificates for QUIC (TLS 1.3,
    /// ALPN `h3`, no 0-RTT) and a transport bounded by `[http2]` and the limits; each worker
    /// accepts a QUIC connection with its current snapshot's, so reloads reach new connections.
    pub quic: Option<std::sync::Arc<quinn::ServerConfig>>,
}

/// A listener's certificates by server name: exact names and `*.suffix` wildcards in hash maps
/// built per config load, a default, and `strict_sni`. Each name has one or more certificates
/// (an ECDSA and an RSA one, say); the first whose key can sign with a scheme the client offers
/// is chosen, so modern clients get the cheaper ECDSA handshake and old ones still get RSA.
/// Called by rustls once per handshake: two hash lookups at most, no allocation, no lock.
#[derive(Debug, Default)]
pub struct Sni {
    pub exact: HashMap<Box<str>, Box<[std::sync::Arc<rustls::sign::CertifiedKey>]>>,
    /// Keyed by the suffix after `*.` (`example.com` for `*.example.com`).
    pub wildcard: HashMap<Box<str>, Box<[std::sync::Arc<rustls::sign::CertifiedKey>]>>,
    /// For clients that send no name or an unknown one (unless `strict`).
    pub default: Box<[std::sync::Arc<rustls::sign::CertifiedKey>]>,
    /// Refuse handshakes whose name no certificate has (and those without a name).
    pub strict: bool,
}

impl Sni {
    /// The certificates for `name` (lower-case ASCII, as rustls hands it over), before the key
    /// type is chosen.
    pub fn candidates(&self, name: Option<&str>) -> Option<&[std::sync::Arc<rustls::sign::CertifiedKey>]> {
        if let Some(name) = name {
            if let Some(c) = self.exact.get(name) {
                return Some(c);
            }
            // A wildcard covers exactly one label: `a.example.com`, not `b.a.example.com`.
            if let Some((_, suffix)) = name.split_once('.')
                && let Some(c) = self.wildcard.get(suffix)
            {
                return Some(c);
            }
        }
        if self.strict { None } else { Some(&self.default) }
    }
}

impl rustls::server::ResolvesServerCert for Sni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        let candidates = self.candidates(hello.server_name())?;
        let schemes = hello.signature_schemes();
        candidates.iter().find(|c| c.key.choose_scheme(schemes).is_some()).cloned()
    }
}

impl Snapshot {
    /// The TLS settings of the listener at `index` as configured now, if it is still the listener
    /// at `address` and still TLS (a changed listener list applies at the next restart).
    #[inline]
    pub fn tls_listener(&self, index: usize, address: SocketAddr) -> Option<&TlsListener> {
        match self.listeners.get(index) {
            Some(l) if l.address == address => l.tls.as_ref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_line_bytes: usize,
    pub max_request_head_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    /// `memory.release_idle_after`: a keep-alive connection idle this long gives its buffers
    /// back to the worker's pool (and its request loop's state is freed).
    pub release_idle_after: Duration,
    /// `memory.pool_max`: spare working sets (buffers and heads) each worker keeps for reuse.
    pub pool_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line_bytes: 8 * 1024,
            max_request_head_bytes: 16 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            max_body_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            release_idle_after: Duration::from_millis(100),
            pool_max: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// Power of two choices on the (per-worker) number of in-flight requests.
    LeastInFlight,
}

#[derive(Debug)]
pub struct UpstreamGroup {
    pub name: Box<str>,
    pub servers: Box<[Server]>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    /// Idle connections kept per worker per server.
    pub idle_pool_size: usize,
    pub idle_timeout: Duration,
    /// `tls = true`: connections to the servers speak TLS (`None`: cleartext).
    pub tls: Option<UpstreamTls>,
    /// `protocol = "h2c"` or `"h2"`: requests go to the servers over HTTP/2, multiplexed on a few
    /// connections per worker per server (`data::upstream::session`); else HTTP/1.1 (the pool).
    pub h2: bool,
}

/// How a group's connections speak TLS: the client config (roots or CA file, client certificate,
/// the session cache reconnects resume from) and the name the servers are verified as (sent as
/// SNI when a DNS name; `None`: each server's IP address).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// Defaults for the upstream-group keys a config may leave out.
#[derive(Debug, Clone, Copy)]
pub struct GroupDefaults {
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub idle_pool_size: usize,
    pub idle_timeout: Duration,
}

impl UpstreamGroup {
    pub const DEFAULTS: GroupDefaults = GroupDefaults {
        connect_timeout: Duration::from_secs(1),
        response_header_timeout: Duration::from_secs(30),
        idle_pool_size: 64,
        idle_timeout: Duration::from_secs(60),
    };
}

#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub addr: SocketAddr,
    /// Stable across reloads (see `config::ServerIds`): indexes per-worker pools and counters.
    pub id: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Any,
    /// Lowercase host name without port.
    Exact(Box<[u8]>),
    /// Lowercase suffix with its leading dot: `*.example.com` is stored as `.example.com`.
    Suffix(Box<[u8]>),
}

#[derive(Debug)]
pub struct Route {
    /// Index of the route in the config (for messages and metrics).
    pub id: usize,
    pub prefix: Box<[u8]>,
    pub strip_prefix: bool,
    /// Index into [`Snapshot::groups`].
    pub group: usize,
}

/// Routes of one host match, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteSet {
    routes: Vec<Route>,
}

impl RouteSet {
    fn lookup(&self, path: &[u8]) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&r.prefix))
    }
}

/// Host + longest path prefix → route. Exact hosts are tried first, then wildcard suffixes
/// (longest first), then the routes without a host; the first set with a matching prefix wins.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<[u8]>, RouteSet>,
    suffix: Vec<(Box<[u8]>, RouteSet)>,
    any: RouteSet,
}

/// Longest host name the router compares (RFC 1035 limit); longer hosts match only `Any`.
const MAX_HOST: usize = 253;

impl Router {
    /// Adds a route; on a duplicate (same host, same prefix) returns the id of the earlier route.
    pub fn insert(&mut self, host: HostMatch, route: Route) -> Result<(), usize> {
        let set = match host {
            HostMatch::Any => &mut self.any,
            HostMatch::Exact(h) => self.exact.entry(h).or_default(),
            HostMatch::Suffix(s) => match self.suffix.iter().position(|(k, _)| *k == s) {
                Some(i) => &mut self.suffix[i].1,
                None => {
                    // Keep longest suffixes first: insert before the first shorter one.
                    let i = self.suffix.iter().position(|(k, _)| k.len() < s.len()).unwrap_or(self.suffix.len());
                    self.suffix.insert(i, (s, RouteSet::default()));
                    &mut self.suffix[i].1
                }
            },
        };
        if let Some(dup) = set.routes.iter().find(|r| r.prefix == route.prefix) {
            return Err(dup.id);
        }
        set.routes.push(route);
        set.routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(())
    }

    /// `host` is the Host header value (any case, may carry a port); `path` the request path.
    pub fn lookup(&self, host: &[u8], path: &[u8]) -> Option<&Route> {
        let name = strip_port(host);
        if !name.is_empty() && name.len() <= MAX_HOST && (!self.exact.is_empty() || !self.suffix.is_empty()) {
            let mut lower = [0u8; MAX_HOST];
            let lower = &mut lower[..name.len()];
            for (d, s) in lower.iter_mut().zip(name) {
                *d = s.to_ascii_lowercase();
            }
            let lower: &[u8] = lower;
            if let Some(r) = self.exact.get(lower).and_then(|set| set.lookup(path)) {
                return Some(r);
            }
            for (suffix, set) in &self.suffix {
                if lower.len() > suffix.len()
                    && lower.ends_with(suffix)
                    && let Some(r) = set.lookup(path)
                {
                    return Some(r);
                }
            }
        }
        self.any.lookup(path)
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`; a trailing dot is dropped.
fn strip_port(host: &[u8]) -> &[u8] {
    let mut h = host;
    if let Some(i) = h.iter().rposition(|&b| b == b':') {
        let is_v6_inner = h.first() == Some(&b'[') && !h[..i].ends_with(b"]");
        if !is_v6_inner && h[i + 1..].iter().all(u8::is_ascii_digit) {
            h = &h[..i];
        }
    }
    h.strip_suffix(b".").unwrap_or(h)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn route(id: usize, prefix: &str, group: usize) -> Route {
        Route { id, prefix: prefix.as_bytes().into(), strip_prefix: false, group }
    }

    fn router() -> Router {
        let mut r = Router::default();
        r.insert(HostMatch::Any, route(0, "/", 0)).unwrap();
        r.insert(HostMatch::Any, route(1, "/api/", 1)).unwrap();
        r.insert(HostMatch::Exact(b"api.example.com".as_slice().into()), route(2, "/", 2)).unwrap();
        r.insert(HostMatch::Suffix(b".example.com".as_slice().into()), route(3, "/", 3)).unwrap();
        r.insert(HostMatch::Suffix(b".deep.example.com".as_slice().into()), route(4, "/x", 4)).unwrap();
        r
    }

    #[test]
    fn exact_beats_wildcard_beats_any() {
        let r = router();
        assert_eq!(r.lookup(b"API.Example.com:8080", b"/api/x").unwrap().id, 2);
        assert_eq!(r.lookup(b"www.example.com", b"/api/x").unwrap().id, 3);
        assert_eq!(r.lookup(b"example.com", b"/api/x").unwrap().id, 1);
        assert_eq!(r.lookup(b"other", b"/zzz").unwrap().id, 0);
    }

    #[test]
    fn longest_suffix_first_and_fallback_when_prefix_misses() {
        let r = router();
        assert_eq!(r.lookup(b"a.deep.example.com", b"/x/1").unwrap().id, 4);
        assert_eq!(r.lookup(b"a.deep.example.com", b"/y").unwrap().id, 3);
    }

    #[test]
    fn duplicate_is_reported() {
        let mut r = router();
        assert_eq!(r.insert(HostMatch::Any, route(9, "/api/", 0)), Err(1));
    }

    #[test]
    fn no_route_without_catch_all() {
        let mut r = Router::default();
        r.insert(HostMatch::Exact(b"a".as_slice().into()), route(0, "/", 0)).unwrap();
        assert!(r.lookup(b"b", b"/").is_none());
        assert!(r.lookup(b"a", b"/").is_some());
        assert!(r.lookup(b"a.", b"/").is_some());
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port(b"a:80"), b"a");
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(strip_port(b"[::1]"), b"[::1]");
        assert_eq!(strip_port(b"a"), b"a");
    }
}
