//! The config file as written: serde structs with `deny_unknown_fields`; spans kept for messages.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    pub server: Option<Server>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    pub limits: Option<Limits>,
    pub memory: Option<Memory>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub upstreams: HashMap<String, Upstream>,
    pub admin: Option<Admin>,
    pub log: Option<Log>,
    pub observability: Option<Observability>,
    pub http2: Option<Http2>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: Option<Spanned<String>>,
    pub workers: Option<usize>,
    pub drain_timeout: Option<Spanned<String>>,
    pub watch_config: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub release_idle_after: Option<Spanned<String>>,
    pub pool_max: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: Spanned<String>,
    pub tls: Option<ListenerTls>,
    /// Cleartext HTTP/2 with prior knowledge beside HTTP/1.1 (the preface decides).
    pub h2c: Option<Spanned<bool>>,
    /// HTTP/3 (QUIC) on the same port number over UDP; a TLS listener only.
    pub http3: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    pub strict_sni: Option<bool>,
    pub min_version: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub ticket_keys: Option<Spanned<String>>,
    pub client_ca: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<String>>,
    pub cipher_suites: Option<Spanned<Vec<Spanned<String>>>>,
    pub kx_groups: Option<Spanned<Vec<Spanned<String>>>>,
    /// Offer HTTP/2 by ALPN (default true).
    pub http2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_request_line_bytes: Option<Spanned<i64>>,
    pub max_request_head_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub client_idle_timeout: Option<Spanned<String>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub strip_prefix: Option<bool>,
    pub upstream: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default)]
    pub servers: Vec<Spanned<String>>,
    pub balance: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_header_timeout: Option<Spanned<String>>,
    pub idle_pool_size: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    /// `"http1"` (default), `"h2c"` or `"h2"` (HTTP/2 over TLS: needs `tls = true`).
    pub protocol: Option<Spanned<String>>,
    /// TLS to the servers (see config/upstream_tls.rs).
    pub tls: Option<Spanned<bool>>,
    pub tls_server_name: Option<Spanned<String>>,
    pub tls_ca: Option<Spanned<String>>,
    pub tls_client_cert: Option<Spanned<String>>,
    pub tls_client_key: Option<Spanned<String>>,
    pub tls_insecure_skip_verify: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub address: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_buffer: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    pub trace_sample_rate: Option<Spanned<f64>>,
}

/// `[http2]`: the settings of every HTTP/2 client connection.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2 {
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub initial_stream_window: Option<Spanned<i64>>,
    pub initial_connection_window: Option<Spanned<i64>>,
    pub max_frame_size: Option<Spanned<i64>>,
    pub max_header_list_size: Option<Spanned<i64>>,
    pub max_pending_reset_streams: Option<Spanned<i64>>,
    pub max_local_error_resets: Option<Spanned<i64>>,
    pub keepalive_interval: Option<Spanned<String>>,
    pub keepalive_timeout: Option<Spanned<String>>,
}
