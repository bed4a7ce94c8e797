//! The HTTP/3 client (QUIC by `quinn`, HTTP/3 by `h3`): one connection shared by `--streams`
//! request slots, exactly as [`crate::h2client`] does for HTTP/2.
//!
//! Each generator thread has one [`QuicClient`]: one UDP socket (a `quinn` endpoint, opened on
//! first use inside the thread's runtime) and one TLS config, so its session cache is the
//! thread's own. An [`H3Conn`] is one QUIC connection with its HTTP/3 session, opened on demand by
//! whichever slot needs it first (the others wait for that set-up, and the wait is in their
//! corrected latency); it is dropped after a connection-level error or after
//! `--new-connection-every` responses, and the next request opens a new one. A stream reset or a
//! timeout fails that request only. 0-RTT only with `--early-data`: a resumed connection whose
//! ticket allows early data is usable at once and its first requests leave in 0-RTT (counted as
//! `zero_rtt` handshakes; a server that refuses the early data fails them, and the refusal is
//! counted as `early_data_rejected`); otherwise every request waits for the handshake.
//!
//! Handshakes: a connection whose ClientHello carried a session ticket counts as resumed, one
//! without as full ([`crate::tls::QuicTlsCounts`] says which, at the moment the connection is
//! created). A server may refuse the ticket and run a full handshake; the thread's count of
//! certificate verifications tells how often, and the report prints it (`resumption_refused`).
//!
//! Each response is verified: its status is recorded (>= 400 is a `status` error), its body is
//! read to the end and checked against its `content-length`. Cost: `quinn` and `h3` allocate
//! per stream and per packet; HTTP/3 is measured for its latency and correctness here, and its
//! cost per request is reported like every other protocol's, not assumed.

use crate::client::{Cause, ErrorKind, ReqError, Request};
use crate::tls::{ClientSettings, Negotiated, QuicTlsCounts};
use crate::transport::{Handshake, HandshakeKind};
use bytes::{Buf, Bytes};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One generator thread's QUIC endpoint and client config.
pub struct QuicClient {
    config: quinn::ClientConfig,
    counts: Arc<QuicTlsCounts>,
    server_name: String,
    endpoint: RefCell<Option<quinn::Endpoint>>,
    /// `--early-data`: try 0-RTT on resumed connections.
    early_data: bool,
    /// Connections whose 0-RTT data the server refused.
    early_rejected: Rc<Cell<u64>>,
}

impl std::fmt::Debug for QuicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuicClient({})", self.server_name)
    }
}

impl QuicClient {
    pub fn new(settings: &ClientSettings) -> Result<Rc<Self>, String> {
        let (config, counts) = crate::tls::quic_client_config(settings)?;
        Ok(Rc::new(Self {
            config,
            counts,
            server_name: settings.server_name_str(),
            endpoint: RefCell::new(None),
            early_data: settings.early_data,
            early_rejected: Rc::new(Cell::new(0)),
        }))
    }

    /// Connections whose 0-RTT data the server refused (`--early-data`).
    pub fn early_data_rejected(&self) -> u64 {
        self.early_rejected.get()
    }

    /// Certificates verified so far on this thread (full handshakes, refused resumptions included).
    pub fn verifications(&self) -> u64 {
        self.counts.verifications.load(Ordering::Relaxed)
    }

    /// The thread's endpoint, bound on first use to an ephemeral port of `peer`'s family.
    fn endpoint(&self, peer: SocketAddr) -> Result<quinn::Endpoint, ReqError> {
        if let Some(e) = self.endpoint.borrow().as_ref() {
            return Ok(e.clone());
        }
        let bind: SocketAddr =
            if peer.is_ipv6() { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() };
        let e = quinn::Endpoint::client(bind).map_err(|e| ReqError::new(ErrorKind::Connect, Cause::of(&e)))?;
        *self.endpoint.borrow_mut() = Some(e.clone());
        Ok(e)
    }

    /// Opens a QUIC connection to `addr` and its HTTP/3 session. Errors: `Connect` when the
    /// connection cannot be created, `Handshake` when QUIC/TLS fails, `Protocol` when HTTP/3's
    /// set-up does. Not bounded here: the caller times it out.
    async fn open(&self, addr: SocketAddr) -> Result<(Sender, h3::client::Connection<h3_quinn::Connection, Bytes>, Handshake), ReqError> {
        let t0 = Instant::now();
        let endpoint = self.endpoint(addr)?;
        let before = self.counts.tickets_taken.load(Ordering::Relaxed);
        let connecting = endpoint
            .connect_with(self.config.clone(), addr, &self.server_name)
            .map_err(|_| ReqError::new(ErrorKind::Connect, Cause::Other))?;
        // The ClientHello was built inside `connect_with`: a ticket taken since is this one's.
        let offered = self.counts.tickets_taken.load(Ordering::Relaxed) != before;
        let (conn, zero_rtt) = if self.early_data && offered {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    // Usable now; the server's verdict on the 0-RTT data comes with the handshake.
                    let rejected = self.early_rejected.clone();
                    tokio::task::spawn_local(async move {
                        if !accepted.await {
                            rejected.set(rejected.get() + 1);
                        }
                    });
                    (conn, true)
                }
                // The ticket does not allow early data: a plain resumed handshake.
                Err(connecting) => (connecting.await.map_err(|e| connection_error(&e, ErrorKind::Handshake))?, false),
            }
        } else {
            (connecting.await.map_err(|e| connection_error(&e, ErrorKind::Handshake))?, false)
        };
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol)
            .map(|p| if p == crate::tls::ALPN_H3 { "h3" } else { "other" });
        let (driver, sender) =
            h3::client::new(h3_quinn::Connection::new(conn)).await.map_err(|_| ReqError::new(ErrorKind::Protocol, Cause::Parse))?;
        let negotiated = Some(Negotiated { version: "TLSv1.3", cipher_suite: crate::tls::QUIC_CIPHER, alpn });
        let kind = match (zero_rtt, offered) {
            (true, _) => HandshakeKind::ZeroRtt,
            (false, true) => HandshakeKind::Resumed,
            (false, false) => HandshakeKind::Full,
        };
        Ok((sender, driver, Handshake { took: t0.elapsed(), kind, negotiated }))
    }
}

/// One HTTP/3 connection (reopened on demand), shared by its stream slots on one thread.
pub struct H3Conn {
    addr: SocketAddr,
    client: Rc<QuicClient>,
    timeout: Duration,
    /// A new connection after this many responses (0: keep it).
    every: u64,
    sender: RefCell<Option<Sender>>,
    /// Bumped each time the connection is replaced, so a late error on an old one does not drop
    /// its successor.
    generation: Cell<u64>,
    connecting: Cell<bool>,
    connected: Notify,
    served: Cell<u64>,
    /// The generation of the last connection the server closed (its driver task saw a GOAWAY or
    /// the connection end), so the requests it cut count as `goaway`.
    goaway: Rc<Cell<u64>>,
}

impl H3Conn {
    pub fn new(addr: SocketAddr, client: Rc<QuicClient>, timeout: Duration, every: u64) -> Rc<Self> {
        Rc::new(Self {
            addr,
            client,
            timeout,
            every,
            sender: RefCell::new(None),
            generation: Cell::new(0),
            connecting: Cell::new(false),
            connected: Notify::new(),
            served: Cell::new(0),
            goaway: Rc::new(Cell::new(0)),
        })
    }

    /// Opens the connection (QUIC handshake, HTTP/3 control streams); bounded by the timeout.
    async fn open(&self) -> Result<Handshake, ReqError> {
        let (sender, mut driver, hs) = match tokio::time::timeout(self.timeout, self.client.open(self.addr)).await {
            Ok(r) => r?,
            Err(_) => return Err(ReqError::new(ErrorKind::Handshake, Cause::Timeout)),
        };
        let (goaway, generation) = (self.goaway.clone(), self.generation.get() + 1);
        tokio::task::spawn_local(async move {
            // Ends when the connection does: H3_NO_ERROR when this side dropped its last
            // sender, else the server's close (GOAWAY, an error) or the idle timeout.
            let e = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
            if !matches!(e, h3::error::ConnectionError::Local { .. }) {
                goaway.set(generation);
            }
        });
        *self.sender.borrow_mut() = Some(sender);
        self.generation.set(generation);
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
    /// Requests in flight on it keep their own senders, so they finish first.
    fn drop_conn(&self, generation: u64) {
        if self.generation.get() == generation {
            *self.sender.borrow_mut() = None;
        }
    }
}

/// One request slot (stream) of an [`H3Conn`].
pub struct H3Slot {
    conn: Rc<H3Conn>,
    handshake: Option<Handshake>,
}

impl H3Slot {
    pub fn new(conn: Rc<H3Conn>) -> Self {
        Self { conn, handshake: None }
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

    /// Sends `req` on a new stream and reads the whole response; returns like
    /// [`crate::h2client::H2Slot::send`].
    pub async fn send(&mut self, req: &Request) -> (Instant, Instant, Result<u16, ReqError>) {
        let c = self.conn.clone();
        let t0 = Instant::now();
        let waited = c.sender.borrow().is_none();
        if waited {
            match c.connect().await {
                Ok(hs) => self.handshake = hs,
                Err(e) => return (t0, Instant::now(), Err(e)),
            }
        }
        let sent = Instant::now();
        let ready = if waited { t0 } else { sent };
        let Some(h3req) = req.h2.as_ref() else {
            return (ready, sent, Err(ReqError::new(ErrorKind::Write, Cause::Other)));
        };
        let sender = c.sender.borrow().clone();
        let Some(sender) = sender else {
            // The connection failed for another slot while this one waited.
            return (ready, sent, Err(ReqError::new(ErrorKind::Connect, Cause::Other)));
        };
        let generation = c.generation.get();
        let in_body = Cell::new(false);
        let r = match tokio::time::timeout(c.timeout, roundtrip(sender, h3req.build(), &h3req.body, req.head, &in_body)).await {
            // Complete, but seen only after the deadline (this thread was not running when it
            // arrived): by the generator's clock a timeout, as over HTTP/2.
            Ok(Ok(_)) if sent.elapsed() >= c.timeout => Err(ReqError::new(ErrorKind::Timeout, Cause::Timeout)),
            Ok(r) => r,
            // Dropping the stream resets it; the connection stays. A body still being written
            // waited for the server's flow-control window.
            Err(_) if in_body.get() => Err(ReqError::new(ErrorKind::FlowStall, Cause::Timeout)),
            Err(_) => Err(ReqError::new(ErrorKind::Timeout, Cause::Timeout)),
        };
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
                    // Let the driver task finish first: it says whether the server ended the
                    // connection under this stream.
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

/// One request on its own stream. `sender` is this request's clone of the connection's, held to
/// the end: `h3` closes the connection when its last sender is dropped. `in_body` is true while
/// the body is being written: `quinn` takes it as the server's flow-control windows allow.
async fn roundtrip(
    mut sender: Sender,
    request: http::Request<()>,
    body: &Bytes,
    head: bool,
    in_body: &Cell<bool>,
) -> Result<u16, ReqError> {
    let mut stream = sender.send_request(request).await.map_err(|e| classify(&e, ErrorKind::Write))?;
    if !body.is_empty() {
        in_body.set(true);
        stream.send_data(body.clone()).await.map_err(|e| classify(&e, ErrorKind::Write))?;
        in_body.set(false);
    }
    stream.finish().await.map_err(|e| classify(&e, ErrorKind::Write))?;
    let resp = stream.recv_response().await.map_err(|e| classify(&e, ErrorKind::Read))?;
    let status = resp.status().as_u16();
    let expected = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .map(|v| crate::client::parse_u64(v.as_bytes()).ok_or(ReqError::new(ErrorKind::Read, Cause::Parse)))
        .transpose()?;
    let mut n = 0u64;
    while let Some(chunk) = stream.recv_data().await.map_err(|e| classify(&e, ErrorKind::Read))? {
        n += chunk.remaining() as u64;
    }
    if !head && expected.is_some_and(|l| l != n) {
        return Err(ReqError::new(ErrorKind::Read, Cause::Parse));
    }
    Ok(status)
}

/// The kind of an `h3` stream error: the server's reset of this stream, its GOAWAY or its close
/// of the connection, the connection's loss otherwise (`at`: where the request was), or a
/// protocol error.
#[cold]
fn classify(e: &h3::error::StreamError, at: ErrorKind) -> ReqError {
    use h3::error::StreamError as S;
    match e {
        S::RemoteTerminate { .. } => ReqError::new(ErrorKind::Reset, Cause::Other),
        S::RemoteClosing { .. } => ReqError::new(ErrorKind::GoAway, Cause::Other),
        S::ConnectionError { 0: h3::error::ConnectionError::Timeout { .. }, .. } => ReqError::new(at, Cause::Timeout),
        // The server closed the connection (after a GOAWAY, or with an error code): HTTP/2's
        // GOAWAY counts the same way.
        S::ConnectionError {
            0: h3::error::ConnectionError::Remote { 0: h3::quic::ConnectionErrorIncoming::ApplicationClose { .. }, .. },
            ..
        } => ReqError::new(ErrorKind::GoAway, Cause::Other),
        // This side closed the connection: the server broke the protocol (for instance a request
        // stream finished without a response head).
        S::ConnectionError { 0: h3::error::ConnectionError::Local { .. }, .. } => ReqError::new(ErrorKind::Protocol, Cause::Parse),
        S::ConnectionError { .. } => ReqError::new(at, Cause::Reset),
        _ => ReqError::new(ErrorKind::Protocol, Cause::Parse),
    }
}

/// The kind of a failed QUIC connection set-up. A TLS failure travels as a QUIC CRYPTO_ERROR
/// (0x100 + the TLS alert, RFC 9001 §4.8): raised here, it is this client refusing the server
/// (certificate alerts: `certificate`, others: `tls`); received, it is the server's `alert`.
#[cold]
fn connection_error(e: &quinn::ConnectionError, at: ErrorKind) -> ReqError {
    use quinn::ConnectionError as C;
    let alert = |code: quinn::TransportErrorCode| u64::from(code).checked_sub(0x100).filter(|a| *a < 0x100);
    let cause = match e {
        C::TimedOut => Cause::Timeout,
        C::TransportError(t) => match alert(t.code) {
            // bad_certificate .. certificate_unknown, unknown_ca; or rustls' own words for a
            // certificate it refused with another alert (a bad signature is decrypt_error).
            Some(42..=46 | 48) => Cause::Certificate,
            Some(_) if t.reason.starts_with("invalid peer certificate") => Cause::Certificate,
            Some(_) => Cause::Tls,
            None => Cause::Other,
        },
        C::ConnectionClosed(c) if alert(c.error_code).is_some() => Cause::Alert,
        C::Reset => Cause::Reset,
        _ => Cause::Other,
    };
    ReqError::new(at, cause)
}
