//! Configuration: TOML → raw serde structs → validated, compiled [`Config`]. Control plane.
//!
//! Parse, don't validate: the raw structs (`raw`) mirror the file with `deny_unknown_fields`, and
//! every value that needs a check keeps its byte span (`toml::Spanned`) so each broken rule yields
//! one message naming the file, the line and the key (`proxy.toml:7: routes[0].upstream: ...`).
//! Compilation turns the raw structs into the immutable [`Snapshot`] the data plane reads.
//! Allocation and string building are fine here: nothing in this module runs per request.

mod raw;
mod tls;
mod upstream_tls;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::snapshot::{Balance, HostMatch, Http2, Limits, ListenerSnap, Route, Router, Server, Snapshot, UpstreamGroup};

/// Hard ceiling for `limits.max_headers`: the parser's header array is sized for it.
pub const MAX_HEADERS_CEILING: usize = 256;

/// A validated configuration: process-level settings plus the first routing snapshot.
#[derive(Debug)]
pub struct Config {
    /// 0 means one worker per CPU.
    pub workers: usize,
    pub listeners: Vec<SocketAddr>,
    pub snapshot: Snapshot,
    /// How long a drain (SIGTERM/SIGINT) waits for in-flight requests before force-closing.
    pub drain_timeout: Duration,
    /// Reload when the config file's contents change (checked once a second).
    pub watch_config: bool,
    /// The admin API's listener (`[admin]`); `None` when the section is absent.
    pub admin: Option<SocketAddr>,
    pub log: LogConfig,
    /// What each route is, by route index (labels for `proxy_route_info`).
    pub routes: Vec<RouteInfo>,
}

/// `[log]`: the tracing filter, the output format and the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive string, e.g. `warn` or `info,proxy::trace=info`.
    pub level: String,
    pub format: LogFormat,
    pub access_log: AccessLogTarget,
    /// Records queued for the access-log writer before new ones are dropped (and counted).
    pub access_log_buffer: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "warn".into(), format: LogFormat::Text, access_log: AccessLogTarget::Off, access_log_buffer: 65_536 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

/// A route as written, for metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub host: String,
    pub path_prefix: String,
    pub upstream: String,
}

/// One broken rule in a config file: `file:line: key: message` (line and key when known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), Where(*line, key.as_deref()))]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key path, e.g. `routes[1].upstream`, when known.
    pub key: Option<String>,
    pub message: String,
}

/// The `:line: key` part of a [`ConfigError`], each part only when known.
struct Where<'a>(Option<usize>, Option<&'a str>);

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.0 {
            write!(f, ":{line}")?;
        }
        if let Some(key) = self.1 {
            write!(f, ": {key}")?;
        }
        Ok(())
    }
}

/// Stable numeric ids for upstream servers, kept across reloads so that per-worker pools and
/// counters indexed by id survive a reload for servers that stay.
#[derive(Debug, Default)]
pub struct ServerIds {
    /// Keyed by address and how the connection speaks: a cleartext and a TLS group (or two TLS
    /// groups verifying different names, with different CAs or client certificates) may name the
    /// same address, and the pool must never hand one's connection to the other.
    ids: HashMap<(SocketAddr, Box<str>), usize>,
}

impl ServerIds {
    /// The id of a cleartext server.
    pub fn id(&mut self, addr: SocketAddr) -> usize {
        self.id_for(addr, "")
    }

    /// The id of a server reached as `transport` says ("" for cleartext).
    pub fn id_for(&mut self, addr: SocketAddr, transport: &str) -> usize {
        let next = self.ids.len();
        *self.ids.entry((addr, transport.into())).or_insert(next)
    }
}

/// Reads, parses and compiles a config file.
pub fn load(path: &Path, ids: &mut ServerIds) -> Result<Config, ConfigError> {
    parse(path, &read(path)?, ids)
}

/// Reads a config file's text (UTF-8); a failure is a [`ConfigError`] naming the file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read the config file: {e}"),
    })
}

/// Parses and compiles config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str, ids: &mut ServerIds) -> Result<Config, ConfigError> {
    let raw: raw::Raw = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let key = e.span().and_then(|s| enclosing_table(text, s.start));
        ConfigError { file: path.to_path_buf(), line, key, message: e.message().trim().to_owned() }
    })?;
    Compiler { path, text, ids }.compile(raw)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The `[table]` header above `offset`, as a hint for where a parse error sits.
fn enclosing_table(text: &str, offset: usize) -> Option<String> {
    let end = offset.min(text.len());
    text[..end]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
}

struct Compiler<'a> {
    path: &'a Path,
    text: &'a str,
    ids: &'a mut ServerIds,
}

impl Compiler<'_> {
    fn err<T>(&self, span: Option<std::ops::Range<usize>>, key: String, message: String) -> Result<T, ConfigError> {
        Err(ConfigError { file: self.path.to_path_buf(), line: span.map(|s| line_of(self.text, s.start)), key: Some(key), message })
    }

    fn compile(mut self, raw: raw::Raw) -> Result<Config, ConfigError> {
        let server = raw.server.unwrap_or_default();
        let name = server.name.map(Spanned::into_inner).unwrap_or_else(|| "fastproxy".to_owned());
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return self.err(None, "server.name".into(), "must be a non-empty token (letters, digits, -._~)".into());
        }
        let workers = server.workers.unwrap_or(0);
        let drain_timeout = self.duration(server.drain_timeout.as_ref(), "server.drain_timeout", Duration::from_secs(30))?;
        let watch_config = server.watch_config.unwrap_or(true);
        let admin = match raw.admin {
            None => None,
            Some(a) => Some(match &a.address {
                Some(addr) => self.socket_addr(addr, "admin.address".into())?,
                None => SocketAddr::from(([127, 0, 0, 1], 9901)),
            }),
        };
        let log = self.log(raw.log.unwrap_or_default())?;
        let trace_sample_every = match raw.observability.and_then(|o| o.trace_sample_rate) {
            None => 0,
            Some(r) => {
                let rate = *r.get_ref();
                if !(0.0..=1.0).contains(&rate) {
                    return self.err(
                        Some(r.span()),
                        "observability.trace_sample_rate".into(),
                        format!("{rate} is not a fraction between 0.0 and 1.0"),
                    );
                }
                if rate == 0.0 { 0 } else { (1.0 / rate).round().max(1.0) as u64 }
            }
        };

        if raw.listeners.is_empty() {
            return self.err(None, "listeners".into(), "at least one [[listeners]] entry is required".into());
        }
        // Before the listeners: an `http3 = true` listener's QUIC transport follows them.
        let limits = self.limits(raw.limits.unwrap_or_default(), raw.memory.unwrap_or_default())?;
        let http2 = self.http2(raw.http2.unwrap_or_default(), &limits)?;
        let mut listeners = Vec::with_capacity(raw.listeners.len());
        let mut listener_snaps = Vec::with_capacity(raw.listeners.len());
        for (i, l) in raw.listeners.iter().enumerate() {
            let addr = self.socket_addr(&l.address, format!("listeners[{i}].address"))?;
            if listeners.contains(&addr) && addr.port() != 0 {
                return self.err(Some(l.address.span()), format!("listeners[{i}].address"), format!("{addr} is listed twice"));
            }
            listeners.push(addr);
            let http3 = l.http3.as_ref().is_some_and(|v| *v.get_ref());
            if let (true, None, Some(v)) = (http3, &l.tls, &l.http3) {
                return self.err(
                    Some(v.span()),
                    format!("listeners[{i}].http3"),
                    "http3 needs TLS (QUIC carries TLS 1.3): add a [listeners.tls] section with certificates to this listener".into(),
                );
            }
            let tls = match &l.tls {
                Some(t) => Some(self.listener_tls(t, &format!("listeners[{i}].tls"), http3.then_some((&http2, &limits)))?),
                None => None,
            };
            let h2c = l.h2c.as_ref().is_some_and(|v| *v.get_ref());
            if let (true, Some(_), Some(v)) = (h2c, &l.tls, &l.h2c) {
                return self.err(
                    Some(v.span()),
                    format!("listeners[{i}].h2c"),
                    "h2c is cleartext HTTP/2; a TLS listener offers HTTP/2 by ALPN (tls.http2, on by default)".into(),
                );
            }
            listener_snaps.push(ListenerSnap { address: addr, tls, h2c });
        }

        // Upstream groups, in name order so that indices are deterministic.
        let mut names: Vec<&String> = raw.upstreams.keys().collect();
        names.sort();
        let mut groups = Vec::with_capacity(names.len());
        let mut group_index = HashMap::new();
        for name in names {
            let g = &raw.upstreams[name];
            let group = self.group(name, g)?;
            group_index.insert(name.clone(), groups.len());
            groups.push(group);
        }

        if raw.routes.is_empty() {
            return self.err(None, "routes".into(), "at least one [[routes]] entry is required".into());
        }
        let mut router = Router::default();
        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let Some(&group) = group_index.get(r.upstream.get_ref()) else {
                let mut known: Vec<&str> = group_index.keys().map(String::as_str).collect();
                known.sort_unstable();
                return self.err(
                    Some(r.upstream.span()),
                    format!("{key}.upstream"),
                    format!(
                        "unknown upstream group \"{}\" (defined: {})",
                        r.upstream.get_ref(),
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                );
            };
            let prefix = match &r.path_prefix {
                Some(p) => {
                    let v = p.get_ref();
                    if !v.starts_with('/') || v.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#') {
                        return self.err(
                            Some(p.span()),
                            format!("{key}.path_prefix"),
                            format!("\"{v}\" must start with '/' and hold no spaces, controls, '?' or '#'"),
                        );
                    }
                    v.clone()
                }
                None => "/".to_owned(),
            };
            let host = match &r.host {
                None => HostMatch::Any,
                Some(h) => self.host(h, format!("{key}.host"))?,
            };
            routes.push(RouteInfo {
                host: r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase()).unwrap_or_default(),
                path_prefix: prefix.clone(),
                upstream: r.upstream.get_ref().clone(),
            });
            let route =
                Route { id: i, prefix: prefix.into_bytes().into_boxed_slice(), strip_prefix: r.strip_prefix.unwrap_or(false), group };
            if let Err(dup) = router.insert(host, route) {
                return self.err(
                    r.path_prefix.as_ref().map(|p| p.span()).or(Some(r.upstream.span())),
                    key,
                    format!("same host and path_prefix as routes[{dup}]"),
                );
            }
        }

        Ok(Config {
            workers,
            listeners,
            snapshot: Snapshot {
                generation: 1,
                router,
                groups,
                limits,
                via: format!("1.1 {name}").into_bytes().into_boxed_slice(),
                trace_sample_every,
                listeners: listener_snaps.into_boxed_slice(),
                http2,
            },
            drain_timeout,
            watch_config,
            admin,
            log,
            routes,
        })
    }

    fn log(&self, l: raw::Log) -> Result<LogConfig, ConfigError> {
        let d = LogConfig::default();
        let level = match l.level {
            None => d.level,
            Some(v) => {
                if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(v.get_ref()) {
                    return self.err(
                        Some(v.span()),
                        "log.level".into(),
                        format!("\"{}\" is not a log filter ({e}); e.g. \"warn\" or \"info,proxy::trace=info\"", v.get_ref()),
                    );
                }
                v.into_inner()
            }
        };
        let format = match l.format.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, span)) => {
                return self.err(Some(span), "log.format".into(), format!("unknown format \"{other}\" (expected \"text\" or \"json\")"));
            }
        };
        let access_log = match l.access_log.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
            None | Some(("off", _)) => AccessLogTarget::Off,
            Some(("stdout", _)) => AccessLogTarget::Stdout,
            Some(("stderr", _)) => AccessLogTarget::Stderr,
            Some(("", span)) => {
                return self.err(Some(span), "log.access_log".into(), "expected \"off\", \"stdout\", \"stderr\" or a file path".into());
            }
            Some((path, _)) => AccessLogTarget::File(PathBuf::from(path)),
        };
        let access_log_buffer =
            self.positive(l.access_log_buffer.as_ref(), "log.access_log_buffer", d.access_log_buffer as u64, 1 << 24)? as usize;
        Ok(LogConfig { level, format, access_log, access_log_buffer })
    }

    fn limits(&self, l: raw::Limits, m: raw::Memory) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let max_request_line_bytes =
            self.positive(l.max_request_line_bytes.as_ref(), "limits.max_request_line_bytes", d.max_request_line_bytes as u64, 1 << 20)?
                as usize;
        let max_request_head_bytes =
            self.positive(l.max_request_head_bytes.as_ref(), "limits.max_request_head_bytes", d.max_request_head_bytes as u64, 1 << 20)?
                as usize;
        if max_request_line_bytes > max_request_head_bytes {
            return self.err(
                l.max_request_line_bytes.as_ref().map(|s| s.span()),
                "limits.max_request_line_bytes".into(),
                format!("{max_request_line_bytes} exceeds limits.max_request_head_bytes ({max_request_head_bytes})"),
            );
        }
        Ok(Limits {
            max_request_line_bytes,
            max_request_head_bytes,
            max_headers: self.positive(l.max_headers.as_ref(), "limits.max_headers", d.max_headers as u64, MAX_HEADERS_CEILING as u64)?
                as usize,
            header_read_timeout: self.duration(l.header_read_timeout.as_ref(), "limits.header_read_timeout", d.header_read_timeout)?,
            client_idle_timeout: self.duration(l.client_idle_timeout.as_ref(), "limits.client_idle_timeout", d.client_idle_timeout)?,
            max_body_bytes: self.positive(l.max_body_bytes.as_ref(), "limits.max_body_bytes", d.max_body_bytes, u64::MAX)?,
            max_connections: self.positive(l.max_connections.as_ref(), "limits.max_connections", d.max_connections as u64, 10_000_000)?
                as usize,
            release_idle_after: self.duration(m.release_idle_after.as_ref(), "memory.release_idle_after", d.release_idle_after)?,
            pool_max: self.positive_or_zero(m.pool_max.as_ref(), "memory.pool_max", d.pool_max as u64, 1 << 16)? as usize,
        })
    }

    /// `[http2]`, each setting within what RFC 9113 allows. `max_header_list_size` defaults to
    /// `limits.max_request_head_bytes`, so a head is bounded alike over both protocols.
    fn http2(&self, h: raw::Http2, limits: &Limits) -> Result<Http2, ConfigError> {
        let d = Http2::default();
        const MAX_WINDOW: u64 = (1 << 31) - 1;
        let max_frame_size = self.positive(h.max_frame_size.as_ref(), "http2.max_frame_size", d.max_frame_size as u64, (1 << 24) - 1)?;
        if max_frame_size < 16_384 {
            return self.err(
                h.max_frame_size.as_ref().map(|s| s.span()),
                "http2.max_frame_size".into(),
                format!("{max_frame_size} is below 16384, the smallest maximum frame size HTTP/2 allows"),
            );
        }
        let keepalive_interval = match &h.keepalive_interval {
            Some(v) if v.get_ref() == "off" => None,
            Some(_) => Some(self.duration(h.keepalive_interval.as_ref(), "http2.keepalive_interval", Duration::ZERO)?),
            None => d.keepalive_interval,
        };
        Ok(Http2 {
            max_concurrent_streams: self.positive(
                h.max_concurrent_streams.as_ref(),
                "http2.max_concurrent_streams",
                d.max_concurrent_streams as u64,
                1 << 16,
            )? as u32,
            initial_stream_window: self.positive(
                h.initial_stream_window.as_ref(),
                "http2.initial_stream_window",
                d.initial_stream_window as u64,
                MAX_WINDOW,
            )? as u32,
            initial_connection_window: self.positive(
                h.initial_connection_window.as_ref(),
                "http2.initial_connection_window",
                d.initial_connection_window as u64,
                MAX_WINDOW,
            )? as u32,
            max_frame_size: max_frame_size as u32,
            max_header_list_size: self.positive(
                h.max_header_list_size.as_ref(),
                "http2.max_header_list_size",
                limits.max_request_head_bytes as u64,
                1 << 24,
            )? as u32,
            max_pending_reset_streams: self.positive(
                h.max_pending_reset_streams.as_ref(),
                "http2.max_pending_reset_streams",
                d.max_pending_reset_streams as u64,
                1 << 16,
            )? as usize,
            max_local_error_resets: self.positive(
                h.max_local_error_resets.as_ref(),
                "http2.max_local_error_resets",
                d.max_local_error_resets as u64,
                1 << 20,
            )? as usize,
            keepalive_interval,
            keepalive_timeout: self.duration(h.keepalive_timeout.as_ref(), "http2.keepalive_timeout", d.keepalive_timeout)?,
        })
    }

    fn group(&mut self, name: &str, g: &raw::Upstream) -> Result<UpstreamGroup, ConfigError> {
        let key = format!("upstreams.{name}");
        if g.servers.is_empty() {
            return self.err(None, format!("{key}.servers"), "at least one server is required".into());
        }
        let tls_on = g.tls.as_ref().is_some_and(|t| *t.get_ref());
        let h2 = match g.protocol.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("http1", _)) => false,
            Some(("h2c", span)) if tls_on => {
                return self.err(
                    Some(span),
                    format!("{key}.protocol"),
                    "\"h2c\" is HTTP/2 in cleartext: with tls = true use \"h2\"".into(),
                );
            }
            Some(("h2", span)) if !tls_on => {
                return self.err(
                    Some(span),
                    format!("{key}.protocol"),
                    "\"h2\" is HTTP/2 over TLS: set tls = true, or use \"h2c\" for cleartext HTTP/2".into(),
                );
            }
            Some(("h2c" | "h2", _)) => true,
            Some((other, span)) => {
                return self.err(
                    Some(span),
                    format!("{key}.protocol"),
                    format!("unknown protocol \"{other}\" (expected \"http1\", \"h2c\" or \"h2\")"),
                );
            }
        };
        let tls = self.upstream_tls(g, &key, h2)?;
        // How the group's connections speak, as far as the pool must tell them apart.
        let transport = match &tls {
            None => String::new(),
            Some(_) => {
                let s = |v: &Option<Spanned<String>>| v.as_ref().map(|x| x.get_ref().clone()).unwrap_or_default();
                let insecure = g.tls_insecure_skip_verify.as_ref().is_some_and(|v| *v.get_ref());
                format!("tls|{}|{}|{}|{}|{insecure}", s(&g.tls_server_name), s(&g.tls_ca), s(&g.tls_client_cert), s(&g.tls_client_key))
            }
        };
        let transport = if h2 { format!("h2|{transport}") } else { transport };
        let mut servers = Vec::with_capacity(g.servers.len());
        for (i, s) in g.servers.iter().enumerate() {
            let addr = self.socket_addr(s, format!("{key}.servers[{i}]"))?;
            if addr.port() == 0 {
                return self.err(Some(s.span()), format!("{key}.servers[{i}]"), "port 0 is not a server address".into());
            }
            servers.push(Server { addr, id: self.ids.id_for(addr, &transport) });
        }
        let balance = match g.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
            None | Some(("round_robin", _)) => Balance::RoundRobin,
            Some(("least_in_flight", _)) => Balance::LeastInFlight,
            Some((other, span)) => {
                return self.err(
                    Some(span),
                    format!("{key}.balance"),
                    format!("unknown balance \"{other}\" (expected \"round_robin\" or \"least_in_flight\")"),
                );
            }
        };
        let d = UpstreamGroup::DEFAULTS;
        Ok(UpstreamGroup {
            name: name.into(),
            servers: servers.into_boxed_slice(),
            balance,
            connect_timeout: self.duration(g.connect_timeout.as_ref(), &format!("{key}.connect_timeout"), d.connect_timeout)?,
            response_header_timeout: self.duration(
                g.response_header_timeout.as_ref(),
                &format!("{key}.response_header_timeout"),
                d.response_header_timeout,
            )?,
            idle_pool_size: self.positive_or_zero(
                g.idle_pool_size.as_ref(),
                &format!("{key}.idle_pool_size"),
                d.idle_pool_size as u64,
                1 << 16,
            )? as usize,
            idle_timeout: self.duration(g.idle_timeout.as_ref(), &format!("{key}.idle_timeout"), d.idle_timeout)?,
            tls,
            h2,
        })
    }

    fn socket_addr(&self, s: &Spanned<String>, key: String) -> Result<SocketAddr, ConfigError> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Ok(a),
            Err(_) => self.err(
                Some(s.span()),
                key,
                format!("\"{}\" is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")", s.get_ref()),
            ),
        }
    }

    fn host(&self, h: &Spanned<String>, key: String) -> Result<HostMatch, ConfigError> {
        let v = h.get_ref().to_ascii_lowercase();
        let (wild, name) = match v.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, v.as_str()),
        };
        let valid =
            !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return self.err(
                Some(h.span()),
                key,
                format!("\"{}\" is not a host name (exact \"api.example.com\" or wildcard \"*.example.com\"; no port)", h.get_ref()),
            );
        }
        Ok(if wild {
            let mut suffix = Vec::with_capacity(name.len() + 1);
            suffix.push(b'.');
            suffix.extend_from_slice(name.as_bytes());
            HostMatch::Suffix(suffix.into_boxed_slice())
        } else {
            HostMatch::Exact(name.as_bytes().into())
        })
    }

    /// A positive duration in humantime's format (`"250ms"`, `"10s"`, `"1.5s"`, `"1h 30m"`). A bare
    /// number is refused (say the unit), and so are zero, negative values and anything else.
    fn duration(&self, v: Option<&Spanned<String>>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        match humantime::parse_duration(v.get_ref().trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => self.err(
                Some(v.span()),
                key.to_owned(),
                format!("\"{}\" is not a positive duration (e.g. \"250ms\", \"10s\", \"2m\")", v.get_ref()),
            ),
        }
    }

    fn positive(&self, v: Option<&Spanned<i64>>, key: &str, default: u64, max: u64) -> Result<u64, ConfigError> {
        match self.positive_or_zero(v, key, default, max)? {
            0 => self.err(v.map(|s| s.span()), key.to_owned(), "must be greater than 0".into()),
            n => Ok(n),
        }
    }

    fn positive_or_zero(&self, v: Option<&Spanned<i64>>, key: &str, default: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        match u64::try_from(*v.get_ref()) {
            Ok(n) if n <= max => Ok(n),
            _ => self.err(Some(v.span()), key.to_owned(), format!("{} is out of range (0..={max})", v.get_ref())),
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text, &mut ServerIds::default())
    }

    const BASE: &str =
        "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:9000\"]\n";

    #[test]
    fn minimal_config_compiles_with_defaults() {
        let c = check(BASE).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.snapshot.groups.len(), 1);
        assert_eq!(c.snapshot.limits.max_headers, 100);
        assert_eq!(&*c.snapshot.via, b"1.1 fastproxy");
    }

    #[test]
    fn unknown_upstream_names_line_and_key() {
        let text = BASE.replace("upstream = \"b\"", "upstream = \"nope\"");
        let e = check(&text).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("routes[0].upstream"));
        assert!(e.message.contains("unknown upstream group \"nope\""), "{e}");
        assert!(e.to_string().starts_with("t.toml:4: routes[0].upstream: "), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected_with_line() {
        let text = format!("{BASE}[limits]\nmax_hedaers = 3\n");
        let e = check(&text).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("max_hedaers"), "{e}");
        assert_eq!(e.key.as_deref(), Some("limits"));
    }

    #[test]
    fn bad_duration_and_address_and_balance() {
        let e = check(&format!("{BASE}connect_timeout = \"10\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstreams.b.connect_timeout"), "{e}");
        let e = check(&BASE.replace("127.0.0.1:9000", "localhost:9000")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstreams.b.servers[0]"), "{e}");
        assert_eq!(e.line, Some(6));
        let e = check(&format!("{BASE}balance = \"random\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstreams.b.balance"), "{e}");
    }

    #[test]
    fn limits_are_range_checked() {
        let e = check(&format!("{BASE}[limits]\nmax_headers = 1000\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.max_headers"), "{e}");
        let e = check(&format!("{BASE}[limits]\nmax_connections = 0\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.max_connections"), "{e}");
        let e = check(&format!("{BASE}[limits]\nmax_request_line_bytes = 9000\nmax_request_head_bytes = 8000\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.max_request_line_bytes"), "{e}");
    }

    #[test]
    fn http2_section_and_h2c() {
        let d = check(BASE).unwrap();
        assert_eq!(d.snapshot.http2.max_concurrent_streams, 128);
        assert_eq!(d.snapshot.http2.max_header_list_size, 16 * 1024, "defaults to limits.max_request_head_bytes");
        assert!(!d.snapshot.listeners[0].h2c);
        let c = check(&format!(
            "{BASE}[http2]\nmax_concurrent_streams = 10\ninitial_stream_window = 65535\nmax_frame_size = 32768\nkeepalive_interval = \"30s\"\n"
        ))
        .unwrap();
        assert_eq!(c.snapshot.http2.max_concurrent_streams, 10);
        assert_eq!(c.snapshot.http2.initial_stream_window, 65_535);
        assert_eq!(c.snapshot.http2.max_frame_size, 32_768);
        assert_eq!(c.snapshot.http2.keepalive_interval, Some(Duration::from_secs(30)));
        for (bad, key) in [
            ("max_frame_size = 1000", "http2.max_frame_size"),
            ("max_frame_size = 16777216", "http2.max_frame_size"),
            ("initial_stream_window = 2147483648", "http2.initial_stream_window"),
            ("max_concurrent_streams = 0", "http2.max_concurrent_streams"),
            ("keepalive_interval = \"soon\"", "http2.keepalive_interval"),
        ] {
            let e = check(&format!("{BASE}[http2]\n{bad}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{bad}: {e}");
        }
        let e = check(&format!("{BASE}[http2]\npush = true\n")).unwrap_err();
        assert!(e.message.contains("push"), "{e}");
        let c = check(&BASE.replace("address = \"127.0.0.1:0\"\n", "address = \"127.0.0.1:0\"\nh2c = true\n")).unwrap();
        assert!(c.snapshot.listeners[0].h2c);
    }

    #[test]
    fn memory_section() {
        let c = check(&format!("{BASE}[memory]\nrelease_idle_after = \"2s\"\npool_max = 0\n")).unwrap();
        assert_eq!(c.snapshot.limits.release_idle_after, Duration::from_secs(2));
        assert_eq!(c.snapshot.limits.pool_max, 0, "0: no spare working sets kept");
        let d = check(BASE).unwrap();
        assert_eq!(d.snapshot.limits.release_idle_after, Duration::from_millis(100));
        assert_eq!(d.snapshot.limits.pool_max, 64);
        let e = check(&format!("{BASE}[memory]\nrelease_idle_after = \"5\"\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("memory.release_idle_after"), "{e}");
        let e = check(&format!("{BASE}[memory]\npool_max = -1\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("memory.pool_max"), "{e}");
        let e = check(&format!("{BASE}[memory]\nbuffers = 1\n")).unwrap_err();
        assert!(e.message.contains("buffers"), "{e}");
    }

    #[test]
    fn duplicate_route_and_bad_host_and_prefix() {
        let e = check(&format!("{BASE}[[routes]]\nupstream = \"b\"\n")).unwrap_err();
        assert!(e.message.contains("routes[0]"), "{e}");
        let e = check(&BASE.replace("upstream = \"b\"", "host = \"a b\"\nupstream = \"b\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[0].host"));
        let e = check(&BASE.replace("upstream = \"b\"", "path_prefix = \"api\"\nupstream = \"b\"")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes[0].path_prefix"));
    }

    #[test]
    fn missing_sections_are_named() {
        let e = check("[[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("listeners"), "{e}");
        let e = check("[[listeners]]\naddress = \"127.0.0.1:0\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("routes"), "{e}");
    }

    /// `limits.header_read_timeout = "<value>"`, compiled.
    fn header_read_timeout(value: &str) -> Result<Duration, ConfigError> {
        check(&format!("{BASE}[limits]\nheader_read_timeout = \"{value}\"\n")).map(|c| c.snapshot.limits.header_read_timeout)
    }

    #[test]
    fn durations_parse() {
        for (text, want) in [
            ("250ms", Duration::from_millis(250)),
            ("2m", Duration::from_secs(120)),
            ("500us", Duration::from_micros(500)),
            (" 10s ", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1h30m", Duration::from_secs(5400)),
            ("1d", Duration::from_secs(86_400)),
        ] {
            assert_eq!(header_read_timeout(text).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn bare_numbers_zero_negative_and_garbage_durations_are_refused() {
        for text in ["10", "0", "1.5", "0s", "-1s", "-10", "ms", "", "soon", "10 parsecs", "1s garbage", "99999999999999999999h"] {
            let e = header_read_timeout(text).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("limits.header_read_timeout")), "{text:?}: {e}");
            assert_eq!(
                e.to_string(),
                format!("t.toml:8: limits.header_read_timeout: \"{text}\" is not a positive duration (e.g. \"250ms\", \"10s\", \"2m\")"),
            );
        }
    }

    #[test]
    fn server_ids_are_stable_across_compiles() {
        let mut ids = ServerIds::default();
        let a = parse(Path::new("a"), BASE, &mut ids).unwrap();
        let text = BASE.replace("[\"127.0.0.1:9000\"]", "[\"127.0.0.1:9001\", \"127.0.0.1:9000\"]");
        let b = parse(Path::new("b"), &text, &mut ids).unwrap();
        assert_eq!(a.snapshot.groups[0].servers[0].id, b.snapshot.groups[0].servers[1].id);
        assert_ne!(b.snapshot.groups[0].servers[0].id, b.snapshot.groups[0].servers[1].id);
    }

    #[test]
    fn control_plane_keys_have_defaults_and_line_numbered_errors() {
        let c = check(BASE).unwrap();
        assert_eq!(c.admin, None);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert!(c.watch_config);
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.snapshot.trace_sample_every, 0);
        let c = check(&format!("{BASE}[admin]\n[observability]\ntrace_sample_rate = 0.01\n")).unwrap();
        assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(c.snapshot.trace_sample_every, 100);
        let e = check(&format!("{BASE}[log]\nlevel = \"info,[\"\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("log.level")), "{e}");
        let e = check(&format!("{BASE}[log]\nformat = \"xml\"\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("log.format")), "{e}");
        let e = check(&format!("{BASE}[observability]\ntrace_sample_rate = 2.0\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("observability.trace_sample_rate")), "{e}");
        let e = check(&format!("{BASE}[admin]\naddress = \"localhost\"\n")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(8), Some("admin.address")), "{e}");
        let e = check(&format!("{BASE}[admin]\nport = 1\n")).unwrap_err();
        assert!(e.message.contains("port"), "{e}");
        let e = check(&format!("[server]\ndrain_timeout = \"soon\"\n{BASE}")).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("server.drain_timeout")), "{e}");
    }

    #[test]
    fn example_configs_are_valid() {
        for f in ["examples/basic.toml", "examples/full.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            load(&path, &mut ServerIds::default()).unwrap();
        }
    }
}
