//! HTTP/1.1 to an upstream for a client that does not speak HTTP/1.1 (HTTP/2 today, HTTP/3
//! later): the client side of an exchange, apart from the HTTP/1.1 server connection's working
//! set ([`super::upstream`] is the same side for HTTP/1.1 clients, relaying zero-copy to the
//! client socket). Hot path.
//!
//! A stream of another protocol borrows a [`ClientSet`] from its worker's pool for the exchange:
//! the request head is written into its `out` buffer ([`super::rewrite::forwarded_request_head`]),
//! the response head is read and parsed in its `up` buffer ([`read_response_head`]), and the
//! response body is taken from there ([`super::body::ResBody`], de-chunked) into `body`, whose
//! allocation is reused from frame to frame once the protocol has written the previous one.

use std::cell::RefCell;
use std::io::ErrorKind;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::data::buf::Buf;
use crate::data::error::ProxyError;
use crate::data::h1::head::{Parsed, ResponseHead};
use crate::data::io::ClientIo;
use crate::data::timer::Timers;
use crate::data::upstream::stream::UpstreamStream;

/// The upstream read buffer: a response head must fit in it (as on the HTTP/1.1 path).
const UP_BUF: usize = 16 * 1024;
/// What `body` starts with; it grows to the largest frame a stream hands on.
const BODY_BUF: usize = 16 * 1024;

/// What one exchange with an HTTP/1.1 upstream needs, lent by the worker for its duration.
#[derive(Debug)]
pub struct ClientSet {
    /// The request head (and the chunk framing of a request body sent chunked).
    pub out: Vec<u8>,
    /// Bytes read from the upstream: the response head, then body bytes.
    pub up: Buf,
    pub res: ResponseHead,
    /// Response body bytes handed to the client's protocol (split off and frozen per frame).
    pub body: BytesMut,
}

thread_local! {
    /// This worker's spare sets (one worker is one thread: no lock, no atomic).
    static SPARE: RefCell<Vec<ClientSet>> = const { RefCell::new(Vec::new()) };
}

/// A set from the worker's pool, or a new one when none is spare.
pub fn take() -> ClientSet {
    if let Some(mut s) = SPARE.with(|p| p.borrow_mut().pop()) {
        s.out.clear();
        s.up.clear();
        s.body.clear();
        return s;
    }
    ClientSet { out: Vec::with_capacity(1024), up: Buf::new(UP_BUF), res: ResponseHead::new(), body: BytesMut::with_capacity(BODY_BUF) }
}

/// Gives a set back to the worker's pool.
pub fn give(set: ClientSet) {
    SPARE.with(|p| p.borrow_mut().push(set));
}

/// Frees spare sets beyond `keep` (the once-a-second sweep): how many were freed.
pub fn sweep(keep: usize) -> usize {
    SPARE.with(|p| {
        let mut p = p.borrow_mut();
        let n = p.len().saturating_sub(keep);
        p.truncate(keep);
        if n > 0 {
            p.shrink_to_fit();
        }
        n
    })
}

/// Why an exchange with one upstream connection failed.
#[derive(Debug)]
pub enum SendError {
    /// The connection died before any response byte: safe to replay if the request allows.
    Stale,
    Proxy(ProxyError),
}

impl From<ProxyError> for SendError {
    fn from(e: ProxyError) -> Self {
        SendError::Proxy(e)
    }
}

/// Writes all of `bytes` to the upstream and flushes, by `deadline` (a timeout is a 504).
pub async fn send(timers: &Timers, slot: usize, up: &mut UpstreamStream, bytes: &[u8], deadline: u64) -> Result<(), SendError> {
    let write = async {
        up.write_all(bytes).await?;
        up.flush().await
    };
    match timers.within(slot, deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(SendError::Stale),
        Err(_) => Err(ProxyError::ResponseTimeout.into()),
    }
}

/// Reads until a final response head (status ≥ 200, or 101) is parsed at the front of `set.up`,
/// by `deadline`; interim responses (1xx) are consumed. `answered` is set once the upstream sent
/// a byte (a connection closed before that is [`SendError::Stale`]).
pub async fn read_response_head(
    timers: &Timers,
    slot: usize,
    set: &mut ClientSet,
    up: &mut UpstreamStream,
    is_head: bool,
    deadline: u64,
    answered: &mut bool,
) -> Result<(), SendError> {
    loop {
        if !set.up.is_empty() {
            *answered = true;
            if let Parsed::Complete = set.res.parse(set.up.filled(), is_head)? {
                if set.res.status >= 200 || set.res.status == 101 {
                    return Ok(());
                }
                set.up.consume(set.res.len);
                continue;
            }
            if set.up.len() >= set.up.capacity() {
                return Err(ProxyError::BadResponse.into());
            }
        }
        match read_more(timers, slot, set, up, deadline).await {
            Ok(0) if !*answered => return Err(SendError::Stale),
            Ok(0) => return Err(ProxyError::UpstreamClosed.into()),
            Ok(_) => {}
            Err(ProxyError::UpstreamBroken) if !*answered => return Err(SendError::Stale),
            Err(ProxyError::UpstreamBroken) => return Err(ProxyError::UpstreamClosed.into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads what the upstream sends next into `set.up`, by `deadline`: `Ok(0)` at its end,
/// `UpstreamBroken` when it failed, `ResponseTimeout` when nothing came in time.
pub async fn read_more(
    timers: &Timers,
    slot: usize,
    set: &mut ClientSet,
    up: &mut UpstreamStream,
    deadline: u64,
) -> Result<usize, ProxyError> {
    if set.up.spare().is_empty() {
        return Err(ProxyError::BadResponse);
    }
    let read = match up.try_read(set.up.spare()) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => timers.within(slot, deadline, up.read(set.up.spare())).await,
        r => Ok(r),
    };
    match read {
        Ok(Ok(n)) => {
            set.up.advance(n);
            Ok(n)
        }
        Ok(Err(_)) => Err(ProxyError::UpstreamBroken),
        Err(_) => Err(ProxyError::ResponseTimeout),
    }
}
