//! TLS on both sides: the handshake (rustls, unbuffered API, in the worker's pooled buffers) and
//! the stream then spoken over ([`TlsStream`], a [`ClientIo`]). Hot path.
//!
//! Sits below a protocol: the accept loop completes a server handshake here ([`accept`]) and
//! hands the stream to the protocol ALPN chose; the upstream side opens client connections here
//! ([`connect`]) for groups with `tls = true`. The two sides differ only in the handshake and in
//! what may follow it ([`Side`]): a client keeps the session tickets a server sends. After the handshake the records are sealed and opened by
//! [`record`] in the connection's own buffers, so a request over a warm TLS connection allocates
//! nothing (rustls alone allocates per record). The buffers are the worker's ([`pool`]): a
//! connection holds a record buffer only while bytes wait in it, so an idle TLS connection keeps
//! its keys and no buffer.

pub mod pool;
pub mod record;

use std::io::{self, ErrorKind, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus};
use rustls::{ClientConfig, ExtractedSecrets, HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::data::buf::Buf;
use crate::data::io::ClientIo;
use crate::data::metrics::TlsFailure;
use crate::data::worker::Worker;
use record::{ALERT, APPLICATION_DATA, HANDSHAKE, Keys, MAX_OVERHEAD, MAX_PLAINTEXT};

/// How many records without application data (empty, key updates) a peer may send in a row.
const MAX_RECORDS_WITHOUT_DATA: u8 = 32;

/// Completes the server side of a handshake on `tcp` within `timeout`. Off the request path:
/// once per connection (what it allocates is rustls's and is counted per handshake by the alloc
/// gate, not per request).
pub async fn accept(worker: &Rc<Worker>, tcp: TcpStream, config: Arc<ServerConfig>, timeout: Duration) -> Result<TlsStream, TlsFailure> {
    let conn = UnbufferedServerConnection::new(config).map_err(|_| TlsFailure::Handshake)?;
    let (stream, resumed) = establish::<ServerConnectionData>(Some(Rc::clone(worker)), tcp, conn, timeout).await?;
    worker.metrics().tls_handshake(resumed);
    #[cfg(feature = "planted")]
    crate::data::planted::at(crate::data::planted::Site::Handshake, 0);
    Ok(stream)
}

/// Completes the client side of a handshake with an upstream server on `tcp` within `timeout`,
/// verifying it as `config` says under `name` (also the SNI sent, when a DNS name). Off the
/// request path: once per upstream connection, which the worker's pool then reuses; a reconnect
/// resumes with a ticket from `config`'s session store. Record errors on an upstream connection
/// are not counted in the listener metrics: the exchange fails with a 502, counted there.
pub async fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
) -> Result<(TlsStream<ClientConnectionData>, bool), TlsFailure> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(|_| TlsFailure::Handshake)?;
    establish::<ClientConnectionData>(None, tcp, conn, timeout).await
}

/// The handshake within `timeout` in pooled buffers, then the stream and whether the handshake
/// resumed a session.
async fn establish<S: Side>(
    worker: Option<Rc<Worker>>,
    tcp: TcpStream,
    conn: S::Conn,
    timeout: Duration,
) -> Result<(TlsStream<S>, bool), TlsFailure> {
    let mut rbuf = pool::take_read();
    let mut wbuf = pool::take_write();
    let result = match tokio::time::timeout(timeout, handshake::<S>(&tcp, conn, &mut rbuf, &mut wbuf)).await {
        Ok(r) => r,
        Err(_) => Err(TlsFailure::Timeout),
    };
    match result {
        Ok((conn, early)) => {
            let stream = TlsStream::new(worker, tcp, conn, rbuf, early);
            pool::give_write(wbuf);
            stream
        }
        Err(e) => {
            pool::give_read(rbuf);
            pool::give_write(wbuf);
            Err(e)
        }
    }
}

/// What differs between the server and the client side of a TLS connection.
pub trait Side: Sized {
    /// rustls's unbuffered connection of this side.
    type Conn: std::ops::DerefMut<Target = UnbufferedConnectionCommon<Self>>;
    /// The peer speaks first (a server waits for a ClientHello; a client sends one).
    const WAITS_FOR_PEER: bool;

    fn process<'c, 'i>(conn: &'c mut Self::Conn, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self>;

    fn into_kernel(conn: Self::Conn) -> Result<(ExtractedSecrets, KernelConnection<Self>), rustls::Error>;

    /// A NewSessionTicket after the handshake (`payload` without the message header): a client
    /// keeps it for resumption (true); a server never expects one (false: the connection ends).
    fn session_ticket(kernel: &mut KernelConnection<Self>, payload: &[u8]) -> bool;
}

impl Side for ServerConnectionData {
    type Conn = UnbufferedServerConnection;
    const WAITS_FOR_PEER: bool = true;

    fn process<'c, 'i>(conn: &'c mut Self::Conn, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(input)
    }

    fn into_kernel(conn: Self::Conn) -> Result<(ExtractedSecrets, KernelConnection<Self>), rustls::Error> {
        conn.dangerous_into_kernel_connection()
    }

    fn session_ticket(_: &mut KernelConnection<Self>, _: &[u8]) -> bool {
        false
    }
}

impl Side for ClientConnectionData {
    type Conn = UnbufferedClientConnection;
    const WAITS_FOR_PEER: bool = false;

    fn process<'c, 'i>(conn: &'c mut Self::Conn, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self> {
        conn.process_tls_records(input)
    }

    fn into_kernel(conn: Self::Conn) -> Result<(ExtractedSecrets, KernelConnection<Self>), rustls::Error> {
        conn.dangerous_into_kernel_connection()
    }

    fn session_ticket(kernel: &mut KernelConnection<Self>, payload: &[u8]) -> bool {
        kernel.handle_new_session_ticket(payload).is_ok()
    }
}

/// Drives rustls until it can send application data. Returns the connection and the
/// application data that came with the peer's last flight (usually none).
async fn handshake<S: Side>(tcp: &TcpStream, mut conn: S::Conn, rbuf: &mut Buf, wbuf: &mut Buf) -> Result<(S::Conn, Vec<u8>), TlsFailure> {
    let mut early = Vec::new();
    let mut first = true;
    // rustls is handed whole records, one more each time it is blocked: it then never reads past
    // its handshake, so a request that came with the client's last flight stays in `rbuf` for the
    // record layer (rustls would decrypt it into a buffer of its own: an allocation, and one
    // that depends on how the bytes happened to arrive).
    let mut given = 0;
    loop {
        if S::WAITS_FOR_PEER && first && !rbuf.is_empty() {
            // Bytes that are not a TLS handshake record (plain HTTP on a TLS port): say so apart.
            if rbuf.filled()[0] != HANDSHAKE {
                return Err(TlsFailure::NotTls);
            }
            first = false;
        }
        let Some(input) = rbuf.filled_mut().get_mut(..given) else {
            return Err(TlsFailure::Handshake);
        };
        let UnbufferedStatus { discard, state } = S::process(&mut conn, input);
        let mut need_more = false;
        let mut transmit = false;
        match state {
            Err(_) => {
                // rustls queued an alert for the peer: send it, best effort, then fail.
                rbuf.consume(discard);
                given -= discard.min(given);
                let _ = send_alert::<S>(&mut conn, tcp, rbuf, given, wbuf).await;
                return Err(TlsFailure::Handshake);
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => match e.encode(wbuf.spare()) {
                Ok(n) => wbuf.advance(n),
                Err(EncodeError::InsufficientSize(_)) if !wbuf.is_empty() => {
                    // Send what is encoded so far, then encode this message again.
                    write_all(tcp, wbuf).await?;
                    match e.encode(wbuf.spare()) {
                        Ok(n) => wbuf.advance(n),
                        Err(_) => return Err(TlsFailure::Handshake),
                    }
                }
                Err(_) => return Err(TlsFailure::Handshake),
            },
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                transmit = true;
            }
            Ok(ConnectionState::BlockedHandshake) => need_more = true,
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                // Application data inside the records given (a client that sent it in the same
                // record as its Finished, which TLS does not allow in separate records anyway).
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(|_| TlsFailure::Handshake)?;
                    early.extend_from_slice(rec.payload);
                }
            }
            Ok(ConnectionState::WriteTraffic(_)) => {
                rbuf.consume(discard);
                if !wbuf.is_empty() {
                    write_all(tcp, wbuf).await?;
                }
                return Ok((conn, early));
            }
            Ok(_) => return Err(TlsFailure::Handshake),
        }
        rbuf.consume(discard);
        given -= discard.min(given);
        if transmit {
            write_all(tcp, wbuf).await?;
        }
        if need_more {
            if !wbuf.is_empty() {
                write_all(tcp, wbuf).await?;
            }
            given = next_record(tcp, rbuf, given).await?;
        }
    }
}

/// Where the record after the first `given` bytes of `rbuf` ends, reading from the socket until
/// it is whole. Bytes that are not a record header are handed over whole: rustls says why.
async fn next_record(tcp: &TcpStream, rbuf: &mut Buf, given: usize) -> Result<usize, TlsFailure> {
    loop {
        let rest = rbuf.filled().get(given..).unwrap_or_default();
        match record::handshake_record_len(rest) {
            Ok(Some(n)) if n <= rest.len() => return Ok(given + n),
            Ok(_) => {}
            Err(_) => return Ok(rbuf.len()),
        }
        if rbuf.spare().is_empty() {
            return Err(TlsFailure::Handshake); // a record larger than a record buffer
        }
        loop {
            tcp.readable().await.map_err(|_| TlsFailure::Closed)?;
            match tcp.try_read(rbuf.spare()) {
                Ok(0) => return Err(TlsFailure::Closed),
                Ok(n) => {
                    rbuf.advance(n);
                    break;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(TlsFailure::Closed),
            }
        }
    }
}

/// After a failed handshake: encodes and sends the alert rustls queued, if any.
///
/// rustls must be handed the same bytes it was given before, less what it said to discard: it
/// may hold its place in a handshake message still in them (a TLS 1.3 client's Certificate and
/// Finished in one record, the Certificate refused), and indexes out of range on an empty slice.
/// It is asked once only: the handshake loop encodes and sends everything rustls queues before it
/// hands rustls more records, so the alert is all that is queued; a second call would deframe the
/// same bad bytes again and queue a second fatal alert (a debug assertion in rustls: found by
/// tls_adversarial's mutated hellos, whose connections a debug build dropped uncounted).
async fn send_alert<S: Side>(conn: &mut S::Conn, tcp: &TcpStream, rbuf: &mut Buf, given: usize, wbuf: &mut Buf) -> Result<(), TlsFailure> {
    wbuf.clear();
    let Some(input) = rbuf.filled_mut().get_mut(..given) else { return Ok(()) };
    let UnbufferedStatus { discard, state } = S::process(conn, input);
    if let Ok(ConnectionState::EncodeTlsData(mut e)) = state
        && let Ok(n) = e.encode(wbuf.spare())
    {
        wbuf.advance(n);
    }
    rbuf.consume(discard);
    write_all(tcp, wbuf).await
}

/// Writes all of `wbuf` and empties it.
async fn write_all(tcp: &TcpStream, wbuf: &mut Buf) -> Result<(), TlsFailure> {
    while !wbuf.is_empty() {
        tcp.writable().await.map_err(|_| TlsFailure::Closed)?;
        match tcp.try_write(wbuf.filled()) {
            Ok(0) => return Err(TlsFailure::Closed),
            Ok(n) => wbuf.consume(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(TlsFailure::Closed),
        }
    }
    Ok(())
}

/// A TLS connection after its handshake: a [`ClientIo`] whose reads decrypt and whose writes
/// encrypt, record by record, in pooled buffers. A client connection's (`S` =
/// [`ClientConnectionData`]) is an upstream connection.
pub struct TlsStream<S: Side = ServerConnectionData> {
    /// Where a record error is counted on drop: the listener's worker (none upstream).
    worker: Option<Rc<Worker>>,
    tcp: TcpStream,
    rx: Keys,
    tx: Keys,
    /// rustls's part after the handshake: new traffic secrets on a TLS 1.3 key update, and (on
    /// the client side) the session tickets the server sends.
    kernel: Box<KernelConnection<S>>,
    /// Received ciphertext: a partial record, or the record whose plaintext is being read. Empty
    /// (no memory) while none waits.
    rbuf: Buf,
    /// The plaintext of the record at the front of `rbuf` not yet read: offsets into
    /// `rbuf.filled()`, and that record's length (consumed once the plaintext is read).
    plain: (u32, u32, u32),
    /// Encrypted bytes the socket has not taken yet. Empty (no memory) while none waits.
    wbuf: Buf,
    /// Application data that came with the handshake's last flight, and how much was read.
    early: Vec<u8>,
    early_read: usize,
    /// The peer sent close_notify: reads return the end.
    eof: bool,
    /// We sent close_notify.
    closed: bool,
    /// We answered a KeyUpdate that requested one and have sent no application data since: more
    /// requests are covered by that answer (RFC 8446 §4.6.3), so a burst of them cannot fill
    /// `wbuf` with answers.
    update_answered: bool,
    /// Records opened since the last one that carried application data (empty records, key
    /// updates): at most [`MAX_RECORDS_WITHOUT_DATA`] in a row.
    records_without_data: u8,
    /// A record error ended the connection (counted once, on drop).
    failed: Option<TlsFailure>,
    /// The handshake chose HTTP/2 by ALPN.
    h2: bool,
    /// [`ClientIo::alt_svc_port`]: set by the accept loop of an `http3 = true` listener.
    alt_svc: u16,
}

impl<S: Side> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").field("rx", &self.rx).field("tx", &self.tx).finish_non_exhaustive()
    }
}

impl<S: Side> TlsStream<S> {
    fn new(worker: Option<Rc<Worker>>, tcp: TcpStream, conn: S::Conn, rbuf: Buf, early: Vec<u8>) -> Result<(Self, bool), TlsFailure> {
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        let tls13 = conn.protocol_version() == Some(ProtocolVersion::TLSv1_3);
        let h2 = conn.alpn_protocol() == Some(b"h2".as_slice());
        let (secrets, kernel) = S::into_kernel(conn).map_err(|_| TlsFailure::Handshake)?;
        let rx = Keys::new(secrets.rx.0, &secrets.rx.1, tls13).map_err(|_| TlsFailure::Handshake)?;
        let tx = Keys::new(secrets.tx.0, &secrets.tx.1, tls13).map_err(|_| TlsFailure::Handshake)?;
        let mut s = TlsStream {
            worker,
            tcp,
            rx,
            tx,
            kernel: Box::new(kernel),
            rbuf,
            plain: (0, 0, 0),
            wbuf: Buf::empty(),
            early,
            early_read: 0,
            eof: false,
            closed: false,
            update_answered: false,
            records_without_data: 0,
            failed: None,
            h2,
            alt_svc: 0,
        };
        #[cfg(feature = "planted")]
        if let Some(n) = crate::data::planted::tls_held_bytes().filter(|_| s.early.is_empty()) {
            // `tls-hold:BYTES`: written (resident), then emptied; the capacity stays for the
            // connection's life (`early` is only ever read up to its length).
            s.early.resize(n, 0xA5);
            s.early.clear();
        }
        s.release_read();
        Ok((s, resumed))
    }

    /// The listener also serves HTTP/3 on UDP `port`: responses on this connection say so
    /// (`Alt-Svc`). Per connection, at accept.
    #[inline]
    pub fn advertise_h3(&mut self, port: u16) {
        self.alt_svc = port;
    }

    /// The handshake chose HTTP/2 (ALPN `h2`): the accept loop hands the stream to `data::h2`.
    #[inline]
    pub fn alpn_h2(&self) -> bool {
        self.h2
    }

    /// Gives the read buffer back when nothing waits in it.
    #[inline]
    fn release_read(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            pool::give_read(std::mem::replace(&mut self.rbuf, Buf::empty()));
        }
    }

    #[inline]
    fn release_write(&mut self) {
        if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
            pool::give_write(std::mem::replace(&mut self.wbuf, Buf::empty()));
        }
    }

    #[cold]
    fn fail(&mut self, kind: TlsFailure) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some(kind);
        }
        io::Error::from(ErrorKind::InvalidData)
    }

    /// A whole record waits in `rbuf` (or the bytes there are not a record: an error to report).
    #[inline]
    fn record_ready(&self) -> bool {
        match record::record_len(self.rbuf.filled(), self.rx.max_ciphertext()) {
            Ok(Some(n)) => n <= self.rbuf.len(),
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Opens the record at the front of `rbuf`: application data becomes `plain`; an alert, a key
    /// update or an empty record is handled and consumed.
    fn open_record(&mut self) -> io::Result<()> {
        let len = match record::record_len(self.rbuf.filled(), self.rx.max_ciphertext()) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(_) => return Err(self.fail(TlsFailure::Record)),
        };
        let Some(rec) = self.rbuf.filled_mut().get_mut(..len) else {
            return Ok(());
        };
        let (typ, a, b) = match self.rx.open(rec) {
            Ok(r) => r,
            Err(_) => return Err(self.fail(TlsFailure::Record)),
        };
        if typ == APPLICATION_DATA && b > a {
            self.records_without_data = 0;
            self.plain = (a as u32, b as u32, len as u32);
            return Ok(());
        }
        // Records that carry no data cost a decryption (a key update, a key derivation too) and
        // end no read: a stream of them would hold the worker in `try_read` for as long as it
        // lasts, starving every other connection. A limit, as BoringSSL's (32 empty records, 32
        // key updates).
        if matches!(typ, APPLICATION_DATA | HANDSHAKE) {
            self.records_without_data = self.records_without_data.saturating_add(1);
        }
        if self.records_without_data > MAX_RECORDS_WITHOUT_DATA {
            return Err(self.fail(TlsFailure::Record));
        }
        match typ {
            APPLICATION_DATA => {}
            ALERT => {
                // close_notify ends the stream; any other alert ends the connection.
                if self.rbuf.filled().get(a..b) == Some(&[1, 0][..]) || self.rbuf.filled().get(a..b) == Some(&[2, 0][..]) {
                    self.eof = true;
                } else {
                    return Err(self.fail(TlsFailure::Alert));
                }
            }
            HANDSHAKE => self.handshake_message(a, b)?,
            _ => return Err(self.fail(TlsFailure::Record)),
        }
        self.rbuf.consume(len);
        Ok(())
    }

    /// The handshake messages of a record after the handshake: a TLS 1.3 KeyUpdate is applied, a
    /// NewSessionTicket goes to the client side's session store; anything else (a TLS 1.2
    /// renegotiation, a message this side never expects, one split across records) ends the
    /// connection.
    #[cold]
    fn handshake_message(&mut self, a: usize, b: usize) -> io::Result<()> {
        let tls13 = self.rx.framing == record::Framing::Tls13;
        if a == b {
            // An empty handshake record: not allowed (RFC 8446 §5.1), never a keep-alive.
            return Err(self.fail(TlsFailure::Renegotiation));
        }
        let mut at = a;
        while at < b {
            let msg = self.rbuf.filled().get(at..b).unwrap_or_default();
            let [typ, l0, l1, l2, ..] = *msg else {
                return Err(self.fail(TlsFailure::Renegotiation));
            };
            let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
            let Some(body) = msg.get(4..4 + len) else {
                return Err(self.fail(TlsFailure::Renegotiation));
            };
            match (typ, body) {
                // KeyUpdate: request_update 0 or 1 (RFC 8446 §4.6.3), the record's last message.
                (24, [r @ (0 | 1)]) if tls13 && at + 5 == b => {
                    let request = *r == 1;
                    self.key_update(request)?;
                }
                // NewSessionTicket (RFC 8446 §4.6.1).
                (4, _) if tls13 => {
                    if !S::session_ticket(&mut self.kernel, body) {
                        return Err(self.fail(TlsFailure::Renegotiation));
                    }
                }
                _ => return Err(self.fail(TlsFailure::Renegotiation)),
            }
            at += 4 + len;
        }
        Ok(())
    }

    /// The peer's KeyUpdate: its next key, and an answer if it asked for one.
    #[cold]
    fn key_update(&mut self, request: bool) -> io::Result<()> {
        match self.kernel.update_rx_secret() {
            Ok((seq, secrets)) => match Keys::new(seq, &secrets, true) {
                Ok(k) => self.rx = k,
                Err(_) => return Err(self.fail(TlsFailure::Record)),
            },
            Err(_) => return Err(self.fail(TlsFailure::Record)),
        }
        if request && !self.update_answered {
            self.update_tx()?;
            self.update_answered = true;
        }
        Ok(())
    }

    /// Sends a KeyUpdate (not requesting one back) and switches to the next sending key.
    #[cold]
    fn update_tx(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() && self.wbuf.tail_room() < 5 + MAX_OVERHEAD {
            // Under HTTP/2 the write buffer may hold a turn's records not flushed yet: out with
            // them first (if the socket cannot take them either, the seal below fails the
            // connection, as it always did with a full buffer).
            self.flush_pending()?;
        }
        self.seal(HANDSHAKE, &[24, 0, 0, 1, 0])?;
        match self.kernel.update_tx_secret() {
            Ok((seq, secrets)) => match Keys::new(seq, &secrets, true) {
                Ok(k) => {
                    self.tx = k;
                    Ok(())
                }
                Err(_) => Err(self.fail(TlsFailure::Record)),
            },
            Err(_) => Err(self.fail(TlsFailure::Record)),
        }
    }

    /// Seals one record into `wbuf` (which must have room: callers check).
    #[inline]
    fn seal(&mut self, typ: u8, plain: &[u8]) -> io::Result<()> {
        self.seal_gathered(typ, &[IoSlice::new(plain)], &mut 0, &mut 0, plain.len())
    }

    /// Seals the bytes of `bufs`, in order, into as many records as the write buffer holds (each
    /// record gathers from as many of the buffers as fit in it), so a response leaves in one
    /// write; returns how many bytes were taken. Over HTTP/1.1 the records go to the socket at
    /// once. Over HTTP/2 ([`TlsStream::h2`]) they wait in the write buffer for `poll_flush`,
    /// which the `h2` crate calls after every batch of frames it writes: the frames of all the
    /// streams answered in one turn of the connection leave in one write, not one per frame.
    fn write_records(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // Room for at least one whole record of this write (or all of it) after what waits.
        let wanted = total.min(MAX_PLAINTEXT) + MAX_OVERHEAD;
        if !self.wbuf.is_empty() && (!self.h2 || self.wbuf.tail_room() < wanted) {
            self.flush_pending()?;
            if !self.wbuf.is_empty() {
                return Err(ErrorKind::WouldBlock.into());
            }
        }
        if total == 0 || self.closed {
            return Ok(0);
        }
        if self.tx.seq >= record::KEY_USE_LIMIT {
            self.rekey()?;
        }
        let mut done = 0;
        // Where the next record's bytes start: the buffer `at`, `skip` bytes into it.
        let (mut at, mut skip) = (0, 0);
        while done < total {
            let room = if self.wbuf.capacity() == 0 { pool::WRITE_BUF } else { self.wbuf.tail_room() };
            if room <= MAX_OVERHEAD {
                break;
            }
            let n = (total - done).min(MAX_PLAINTEXT).min(room - MAX_OVERHEAD);
            self.seal_gathered(APPLICATION_DATA, bufs, &mut at, &mut skip, n)?;
            done += n;
        }
        self.update_answered = false;
        if !self.h2 {
            self.flush_pending()?;
        }
        Ok(done)
    }

    /// Seals the next `n` bytes of `bufs` (from buffer `at`, `skip` bytes in; both moved past
    /// them) as one record of content type `typ` into `wbuf`, which must have room: callers
    /// check.
    #[inline]
    fn seal_gathered(&mut self, typ: u8, bufs: &[IoSlice<'_>], at: &mut usize, skip: &mut usize, n: usize) -> io::Result<()> {
        #[cfg(feature = "planted")]
        crate::data::planted::at(crate::data::planted::Site::TlsRecord, n);
        if self.wbuf.capacity() == 0 {
            self.wbuf = pool::take_write();
        }
        let fill = |dst: &mut [u8]| {
            let mut filled = 0;
            while filled < dst.len() {
                let Some(b) = bufs.get(*at) else { break };
                let take = (b.len() - *skip).min(dst.len() - filled);
                dst[filled..filled + take].copy_from_slice(&b[*skip..*skip + take]);
                filled += take;
                *skip += take;
                if *skip == b.len() {
                    *at += 1;
                    *skip = 0;
                }
            }
        };
        match self.tx.seal_with(typ, n, self.wbuf.spare(), fill) {
            Ok(len) => {
                self.wbuf.advance(len);
                Ok(())
            }
            Err(_) => Err(self.fail(TlsFailure::Record)),
        }
    }

    /// Writes what waits in `wbuf` until the socket would block.
    #[inline]
    fn flush_pending(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.tcp.try_write(self.wbuf.filled()) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.consume(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.release_write();
        Ok(())
    }
}

impl<S: Side> Drop for TlsStream<S> {
    fn drop(&mut self) {
        if let (Some(kind), Some(worker)) = (self.failed, &self.worker) {
            worker.metrics().tls_failure(kind);
        }
        pool::give_read(std::mem::replace(&mut self.rbuf, Buf::empty()));
        pool::give_write(std::mem::replace(&mut self.wbuf, Buf::empty()));
    }
}

impl<S: Side> ClientIo for TlsStream<S> {
    const TLS: bool = true;

    #[inline]
    fn alt_svc_port(&self) -> u16 {
        self.alt_svc
    }

    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plain.0 < self.plain.1 || self.early_read < self.early.len() || self.eof || self.record_ready() {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (a, b, len) = self.plain;
            if a < b {
                let (a, b) = (a as usize, b as usize);
                let n = buf.len().min(b - a);
                let Some(src) = self.rbuf.filled().get(a..a + n) else {
                    return Err(self.fail(TlsFailure::Record));
                };
                buf[..n].copy_from_slice(src);
                self.plain.0 += n as u32;
                if self.plain.0 == self.plain.1 {
                    self.rbuf.consume(len as usize);
                    self.plain = (0, 0, 0);
                    self.release_read();
                }
                return Ok(n);
            }
            if self.early_read < self.early.len() {
                return Ok(self.read_early(buf));
            }
            if self.eof {
                return Ok(0);
            }
            if self.record_ready() {
                self.open_record()?;
                continue;
            }
            if self.rbuf.capacity() == 0 {
                self.rbuf = pool::take_read();
            }
            let room = self.rbuf.spare().len();
            match self.tcp.try_read(self.rbuf.spare()) {
                Ok(0) if self.rbuf.is_empty() => {
                    // The end without close_notify: the framing of HTTP says whether a message
                    // was cut (a truncation attack cannot end a length-delimited body early).
                    self.release_read();
                    return Ok(0);
                }
                Ok(0) => return Err(self.fail(TlsFailure::Record)), // cut mid-record
                Ok(n) => {
                    self.rbuf.advance(n);
                    if n < room {
                        // A short read drained the socket (epoll is edge-triggered): forget its
                        // readiness now, as tokio's own reads do, so the next read waits for an
                        // event instead of paying a recvfrom that returns EAGAIN.
                        let _ = self.tcp.try_io(Interest::READABLE, || Err::<(), _>(io::Error::from(ErrorKind::WouldBlock)));
                    }
                }
                Err(e) => {
                    self.release_read();
                    return Err(e);
                }
            }
        }
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_records(&[IoSlice::new(buf)])
    }

    #[inline]
    fn try_flush(&mut self) -> io::Result<bool> {
        if self.wbuf.is_empty() {
            return Ok(true);
        }
        self.flush_pending()?;
        Ok(self.wbuf.is_empty())
    }
}

impl<S: Side> TlsStream<S> {
    #[cold]
    fn read_early(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.early[self.early_read..];
        let n = buf.len().min(rest.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.early_read += n;
        if self.early_read == self.early.len() {
            self.early = Vec::new();
            self.early_read = 0;
        }
        n
    }

    /// The sending key is near its limit: TLS 1.3 moves to the next key, TLS 1.2 cannot.
    #[cold]
    fn rekey(&mut self) -> io::Result<()> {
        if self.tx.framing == record::Framing::Tls13 { self.update_tx() } else { Err(self.fail(TlsFailure::Record)) }
    }
}

impl<S: Side> AsyncRead for TlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => match this.tcp.poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: Side> AsyncWrite for TlsStream<S> {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Over HTTP/2 the `h2` crate writes a frame's head and its payload as two buffers: sealed
    /// into one record. A plain write is one buffer.
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.write_records(bufs) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => match this.tcp.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.try_flush() {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => match this.tcp.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Sends close_notify (once), flushes, then shuts the socket's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            if let Poll::Ready(Err(e)) = Pin::new(&mut *this).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if this.wbuf.is_empty() {
                this.closed = true;
                this.seal(ALERT, &[1, 0])?;
            } else {
                return Poll::Pending;
            }
        }
        match Pin::new(&mut *this).poll_flush(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.tcp).poll_shutdown(cx),
            other => other,
        }
    }
}
