//! The access log's hand-off: a fixed-size record, copied into a bounded channel. Hot path.
//!
//! Off by default. When on, a worker fills one [`AccessRecord`] per request (byte copies into
//! fixed arrays: no allocation, no formatting) and `try_send`s it into a bounded channel whose
//! slots were allocated at start-up; a background thread (`control::access_log`) formats and
//! writes. When the writer falls behind the record is dropped and counted
//! (`proxy_access_log_dropped_total`), so the request path never waits on log I/O.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

/// Bytes of the method, host and path kept per record (longer values are cut).
pub const METHOD_BYTES: usize = 16;
pub const HOST_BYTES: usize = 64;
pub const PATH_BYTES: usize = 160;

/// One finished request, as plain bytes and numbers.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord {
    pub time: SystemTime,
    pub latency: Duration,
    pub status: u16,
    pub worker: u16,
    /// Route index, or `u16::MAX` when no route matched.
    pub route: u16,
    pub method_len: u8,
    pub host_len: u8,
    pub path_len: u8,
    pub peer_len: u8,
    pub method: [u8; METHOD_BYTES],
    pub host: [u8; HOST_BYTES],
    pub path: [u8; PATH_BYTES],
    pub peer: [u8; 48],
}

fn put<const N: usize>(dst: &mut [u8; N], src: &[u8]) -> u8 {
    let n = src.len().min(N).min(u8::MAX as usize);
    dst[..n].copy_from_slice(&src[..n]);
    n as u8
}

impl AccessRecord {
    /// A record with the request line's method, host and path copied in (cut to fit).
    pub fn new(method: &[u8], host: &[u8], path: &[u8], peer: &[u8], worker: usize) -> Self {
        let mut r = AccessRecord {
            time: SystemTime::UNIX_EPOCH,
            latency: Duration::ZERO,
            status: 0,
            worker: worker.min(u16::MAX as usize) as u16,
            route: u16::MAX,
            method_len: 0,
            host_len: 0,
            path_len: 0,
            peer_len: 0,
            method: [0; METHOD_BYTES],
            host: [0; HOST_BYTES],
            path: [0; PATH_BYTES],
            peer: [0; 48],
        };
        r.method_len = put(&mut r.method, method);
        r.host_len = put(&mut r.host, host);
        r.path_len = put(&mut r.path, path);
        r.peer_len = put(&mut r.peer, peer);
        r
    }

    pub fn method(&self) -> &[u8] {
        &self.method[..self.method_len as usize]
    }

    pub fn host(&self) -> &[u8] {
        &self.host[..self.host_len as usize]
    }

    pub fn path(&self) -> &[u8] {
        &self.path[..self.path_len as usize]
    }

    pub fn peer(&self) -> &[u8] {
        &self.peer[..self.peer_len as usize]
    }
}

/// The sending side, shared by all workers. `send` never blocks and never allocates.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
}

impl AccessLog {
    pub fn new(tx: SyncSender<AccessRecord>) -> Self {
        AccessLog { tx }
    }

    /// Hands the record over; `false` when the channel was full (or the writer gone).
    #[inline]
    pub fn send(&self, r: AccessRecord) -> bool {
        match self.tx.try_send(r) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}
