//! Opening a new upstream connection, on a pool miss (or to retry a request whose pooled
//! connection had gone stale). Hot path, shared by every protocol: it knows nothing of the
//! exchange that will run over the connection.

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::data::error::ProxyError;
use crate::data::upstream::pool::UpstreamConn;
use crate::data::worker::Worker;
use crate::snapshot::{Server, UpstreamGroup};

/// Connects to `server` within its group's `connect_timeout`, counted in the worker's pool and
/// metrics as an opened connection.
pub async fn connect(worker: &Worker, server: Server, group: &UpstreamGroup) -> Result<UpstreamConn, ProxyError> {
    match timeout(group.connect_timeout, TcpStream::connect(server.addr)).await {
        Err(_) => Err(ProxyError::ConnectTimeout),
        Ok(Err(_)) => Err(ProxyError::UpstreamConnect),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            worker.pool.borrow_mut().opened += 1;
            worker.metrics().upstream_opened();
            Ok(UpstreamConn::new(s, server.id, server.addr))
        }
    }
}
