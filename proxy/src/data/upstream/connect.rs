//! Opening a new upstream connection, on a pool miss (or to retry a request whose pooled
//! connection had gone stale). Hot path, shared by every protocol: it knows nothing of the
//! exchange that will run over the connection. A group with `tls = true` gets a TLS client
//! handshake here ([`crate::data::tls::connect`]), within the same `connect_timeout` again.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::data::error::ProxyError;
use crate::data::metrics::TlsFailure;
use crate::data::tls;
use crate::data::upstream::pool::UpstreamConn;
use crate::data::upstream::stream::UpstreamStream;
use crate::data::worker::Worker;
use crate::snapshot::{Server, UpstreamGroup};

/// Connects to `server` within its group's `connect_timeout`, counted in the worker's pool and
/// metrics as an opened connection.
pub async fn connect(worker: &Worker, server: Server, group: &UpstreamGroup) -> Result<UpstreamConn, ProxyError> {
    let tcp = match timeout(group.connect_timeout, TcpStream::connect(server.addr)).await {
        Err(_) => return Err(ProxyError::ConnectTimeout),
        Ok(Err(_)) => return Err(ProxyError::UpstreamConnect),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let stream = match &group.tls {
        None => UpstreamStream::Plain(tcp),
        Some(t) => {
            let name = t.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(server.addr.ip().into()));
            match tls::connect(tcp, Arc::clone(&t.config), name, group.connect_timeout).await {
                Ok((s, resumed)) => {
                    worker.metrics().upstream_tls_handshake(resumed);
                    UpstreamStream::Tls(Box::new(s))
                }
                // A server that accepts but never finishes the handshake: a connect timeout (504).
                Err(TlsFailure::Timeout) => return Err(ProxyError::ConnectTimeout),
                Err(_) => return Err(ProxyError::UpstreamTls),
            }
        }
    };
    worker.pool.borrow_mut().opened += 1;
    worker.metrics().upstream_opened();
    Ok(UpstreamConn::new(stream, server.id, server.addr))
}
