//! The HTTP/2 client (the `h2` crate): one connection shared by `--streams` request slots.
//!
//! An [`H2Conn`] is one HTTP/2 connection over a [`crate::transport`] stream: TLS with ALPN `h2`
//! for `https://`, prior knowledge (h2c) for `http://`. The scheduler sees each of its streams as
//! a slot ([`H2Slot`]) that takes one due request at a time, exactly as it sees an HTTP/1.1
//! connection, so the busy policy applies when every stream of every connection is busy.
//!
//! The connection is opened on demand by whichever slot needs it first (the others wait for that
//! set-up, and the wait is in their corrected latency); it is dropped after a connection-level
//! error (GOAWAY, I/O, protocol) or after `--new-connection-every` responses, and the next request
//! opens a new one. A stream reset (RST_STREAM) or a timeout fails that request only.
//!
//! Each response is verified: its status is recorded (>= 400 is a `status` error), its body is
//! read to the end (flow-control capacity released as it arrives) and checked against its
//! `content-length`. Cost: the `h2` crate allocates per stream (the request's headers, its
//! stream state, HPACK), unlike the HTTP/1.1 path.

use crate::client::{Cause, ErrorKind, ReqError, Request};
use crate::transport::{Connector, Handshake};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::time::Sleep;

/// One HTTP/2 connection (reopened on demand), shared by its stream slots on one thread.
pub struct H2Conn {
    addr: SocketAddr,
    connector: Connector,
    timeout: Duration,
    /// A new connection after this many responses (0: keep it).
    every: u64,
    sender: RefCell<Option<h2::client::SendRequest<Bytes>>>,
    /// Bumped each time the connection is replaced, so a late error on an old one does not drop
    /// its successor.
    generation: Cell<u64>,
    connecting: Cell<bool>,
    connected: Notify,
    served: Cell<u64>,
    /// The generation of the last connection that ended with the server's GOAWAY (set by its
    /// driver task): the `h2` crate reports the streams it cut as broken pipes.
    goaway: Rc<Cell<u64>>,
    /// Each slot's own handle on the current connection (index: the slot's), kept between its
    /// requests: cloning a `SendRequest` per request locks the connection's stream store twice
    /// (clone and drop). Emptied when the connection is dropped, so no idle slot keeps an old
    /// connection open.
    slot_senders: RefCell<Vec<Option<h2::client::SendRequest<Bytes>>>>,
}

impl H2Conn {
    pub fn new(addr: SocketAddr, connector: Connector, timeout: Duration, every: u64) -> Rc<Self> {
        Rc::new(Self {
            addr,
            connector,
            timeout,
            every,
            sender: RefCell::new(None),
            generation: Cell::new(0),
            connecting: Cell::new(false),
            connected: Notify::new(),
            served: Cell::new(0),
            goaway: Rc::new(Cell::new(0)),
            slot_senders: RefCell::new(Vec::new()),
        })
    }

    /// Opens the connection (TCP, TLS, HTTP/2 preface and settings); bounded by the timeout.
    async fn open(&self) -> Result<Handshake, ReqError> {
        let tcp_done = Cell::new(false);
        let fut = async {
            let (stream, hs) = self.connector.connect(self.addr, &tcp_done).await?;
            let (send, conn) =
                h2::client::Builder::new().enable_push(false).handshake::<_, Bytes>(stream).await.map_err(|e| classify(&e))?;
            let (goaway, generation) = (self.goaway.clone(), self.generation.get() + 1);
            tokio::task::spawn_local(async move {
                if let Err(e) = conn.await
                    && e.is_go_away()
                    && e.is_remote()
                {
                    goaway.set(generation);
                }
            });
            Ok::<_, ReqError>((send, hs))
        };
        let (send, hs) = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r?,
            Err(_) => {
                let kind = if tcp_done.get() { ErrorKind::Handshake } else { ErrorKind::Connect };
                return Err(ReqError::new(kind, Cause::Timeout));
            }
        };
        *self.sender.borrow_mut() = Some(send);
        self.generation.set(self.generation.get() + 1);
        self.served.set(0);
        Ok(hs)
    }

    /// Connects now if not connected (also used before the measured run).
    pub async fn connect(&self) -> Result<Option<Handshake>, ReqError> {
        loop {
            if self.sender.borrow().is_some() {
                return Ok(None);
            }
            if self.connecting.get() {
                self.connected.notified().await;
                continue;
            }
            self.connecting.set(true);
            let r = self.open().await;
            self.connecting.set(false);
            self.connected.notify_waiters();
            return r.map(Some);
        }
    }

    /// Drops the connection of `generation` (if still current): the next request reconnects.
    fn drop_conn(&self, generation: u64) {
        if self.generation.get() == generation {
            *self.sender.borrow_mut() = None;
            self.slot_senders.borrow_mut().iter_mut().for_each(|s| *s = None);
        }
    }

    /// Slot `i`'s handle on the current connection (a clone of the connection's the first time).
    fn take_sender(&self, i: usize) -> Option<h2::client::SendRequest<Bytes>> {
        let own = self.slot_senders.borrow_mut().get_mut(i).and_then(Option::take);
        own.or_else(|| self.sender.borrow().clone())
    }

    /// Gives slot `i`'s handle back after a request on the connection of `generation`; a handle
    /// on a connection that has been replaced since is dropped.
    fn put_sender(&self, i: usize, generation: u64, sender: h2::client::SendRequest<Bytes>) {
        if self.generation.get() == generation
            && self.sender.borrow().is_some()
            && let Some(s) = self.slot_senders.borrow_mut().get_mut(i)
        {
            *s = Some(sender);
        }
    }
}

/// One request slot (stream) of an [`H2Conn`].
pub struct H2Slot {
    conn: Rc<H2Conn>,
    /// This slot's index in its connection's `slot_senders`.
    index: usize,
    handshake: Option<Handshake>,
    /// The request timeout. Armed lazily: it is reset only when it fires before the current
    /// request's deadline, not per request (a reset re-inserts the timer entry, and on an idle
    /// runtime that also wakes the driver through its eventfd: two syscalls per request).
    sleep: Pin<Box<Sleep>>,
}

impl H2Slot {
    /// A slot of `conn`; call from inside the runtime (it creates the slot's timer).
    pub fn new(conn: Rc<H2Conn>) -> Self {
        let index = {
            let mut v = conn.slot_senders.borrow_mut();
            v.push(None);
            v.len() - 1
        };
        let sleep = Box::pin(tokio::time::sleep(conn.timeout));
        Self { conn, index, handshake: None, sleep }
    }

    /// Connects its connection now if it is not (before the measured run).
    pub async fn connect(&mut self) -> Result<(), ReqError> {
        self.handshake = self.conn.connect().await?;
        Ok(())
    }

    /// The set-up of a connection this slot opened since the last call, if any.
    pub fn take_handshake(&mut self) -> Option<Handshake> {
        self.handshake.take()
    }

    /// Sends `req` on a new stream and reads the whole response. Returns (when the slot began on
    /// it: the start of the connection set-up it waited for, else the send; when the request
    /// was sent; the status or error), like [`crate::client::Conn::send`].
    pub async fn send(&mut self, req: &Request) -> (Instant, Instant, Result<u16, ReqError>) {
        let c = self.conn.clone();
        let t0 = Instant::now();
        let waited = c.sender.borrow().is_none();
        let sent = if waited {
            match c.connect().await {
                Ok(hs) => self.handshake = hs,
                Err(e) => return (t0, Instant::now(), Err(e)),
            }
            Instant::now()
        } else {
            t0
        };
        let ready = if waited { t0 } else { sent };
        let Some(h2req) = req.h2.as_ref() else {
            return (ready, sent, Err(ReqError::new(ErrorKind::Write, Cause::Other)));
        };
        let Some(mut sender) = c.take_sender(self.index) else {
            // The connection failed for another slot while this one waited.
            return (ready, sent, Err(ReqError::new(ErrorKind::Connect, Cause::Other)));
        };
        let generation = c.generation.get();
        let deadline = sent + c.timeout;
        let in_body = Cell::new(false);
        let r = {
            let mut rt = std::pin::pin!(roundtrip(&mut sender, h2req.build(), &h2req.body, req.head, &in_body));
            let sleep = &mut self.sleep;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = rt.as_mut().poll(cx) {
                    // Complete, but seen only after the deadline (this thread was not running
                    // when it arrived): by the generator's clock it took longer than --timeout,
                    // so it is a timeout, and no service time above the timeout is recorded.
                    if r.is_ok() && Instant::now() >= deadline {
                        return Poll::Ready(Err(ReqError::new(ErrorKind::Timeout, Cause::Timeout)));
                    }
                    return Poll::Ready(r);
                }
                // The timer may be armed for an earlier request's deadline: when it fires before
                // this one's, it is re-armed for this one's.
                while sleep.as_mut().poll(cx).is_ready() {
                    if Instant::now() >= deadline {
                        // Dropping the stream resets it (CANCEL); the connection stays. A body
                        // still waiting for send capacity waited for the server's window.
                        let kind = if in_body.get() { ErrorKind::FlowStall } else { ErrorKind::Timeout };
                        return Poll::Ready(Err(ReqError::new(kind, Cause::Timeout)));
                    }
                    sleep.as_mut().reset(tokio::time::Instant::from_std(deadline));
                }
                Poll::Pending
            })
            .await
        };
        c.put_sender(self.index, generation, sender);
        match r {
            Ok(status) => {
                let n = c.served.get() + 1;
                c.served.set(n);
                if c.every != 0 && n >= c.every {
                    c.drop_conn(generation);
                }
                (ready, sent, Ok(status))
            }
            Err(mut e) => {
                if e.kind == ErrorKind::Read {
                    // Let the connection's driver task finish first: it says whether a GOAWAY
                    // ended the connection under this stream.
                    tokio::task::yield_now().await;
                    if c.goaway.get() == generation {
                        e = ReqError::new(ErrorKind::GoAway, e.cause);
                    }
                }
                if !matches!(e.kind, ErrorKind::Reset | ErrorKind::Timeout | ErrorKind::Status) {
                    c.drop_conn(generation);
                }
                (ready, sent, Err(e))
            }
        }
    }
}

/// One request on a new stream. A body is sent as the server's flow-control windows grant
/// capacity (not buffered in `h2` whole), with `in_body` true while it waits for them, so a
/// timeout there is told apart as a flow-control stall.
async fn roundtrip(
    sender: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: &Bytes,
    head: bool,
    in_body: &Cell<bool>,
) -> Result<u16, ReqError> {
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await.map_err(|e| classify(&e))?;
    let (resp, mut tx) = sender.send_request(request, body.is_empty()).map_err(|e| classify(&e))?;
    if !body.is_empty() {
        in_body.set(true);
        let mut rest = body.clone();
        while !rest.is_empty() {
            tx.reserve_capacity(rest.len());
            match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(0)) => {}
                Some(Ok(n)) => {
                    let chunk = rest.split_to(n.min(rest.len()));
                    tx.send_data(chunk, rest.is_empty()).map_err(|e| classify(&e))?;
                }
                Some(Err(e)) => return Err(classify(&e)),
                // The stream can send no more (the server reset it or answered already): what
                // happened is in the response.
                None => break,
            }
        }
        in_body.set(false);
    }
    let resp = resp.await.map_err(|e| classify(&e))?;
    let status = resp.status().as_u16();
    let expected = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .map(|v| crate::client::parse_u64(v.as_bytes()).ok_or(ReqError::new(ErrorKind::Read, Cause::Parse)))
        .transpose()?;
    let mut rx = resp.into_body();
    let mut n = 0u64;
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.map_err(|e| classify(&e))?;
        n += chunk.len() as u64;
        let _ = rx.flow_control().release_capacity(chunk.len());
    }
    if !head && expected.is_some_and(|l| l != n) {
        return Err(ReqError::new(ErrorKind::Read, Cause::Parse));
    }
    Ok(status)
}

/// The kind of an `h2` error: GOAWAY, a stream reset, I/O (read), or protocol/flow control.
#[cold]
fn classify(e: &h2::Error) -> ReqError {
    if e.is_go_away() && e.is_remote() {
        return ReqError::new(ErrorKind::GoAway, Cause::Other);
    }
    if let Some(io) = e.get_io() {
        return ReqError::new(ErrorKind::Read, Cause::of(io));
    }
    if e.is_reset() && e.is_remote() {
        return ReqError::new(ErrorKind::Reset, Cause::Other);
    }
    ReqError::new(ErrorKind::Protocol, Cause::Parse)
}
