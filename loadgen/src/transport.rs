//! The byte stream a client connection speaks its protocol over: plain TCP or TLS over TCP.
//!
//! [`Connector`] opens a [`Stream`] (TCP connect, then the TLS handshake when the URL is
//! `https://`) and says what it cost ([`Handshake`]: time, full or resumed, what was
//! negotiated). The protocol on top (HTTP/1.1 today in [`crate::client`]; HTTP/2 later, which
//! will take ALPN `h2` from the same connector) reads and writes the [`Stream`] and never looks
//! at which one it is; the scheduler in [`crate::run`] drives protocol connections and never
//! looks at either. An enum, not a trait object: the common plain case costs one branch per poll.
//!
//! Allocation: a TLS connection allocates its rustls state once (boxed here), and rustls
//! allocates per record it encrypts (a `Vec` for each outgoing record); decryption is in place in
//! rustls' receive buffer and the plaintext is copied into the connection's own read buffer. So
//! unlike plain TCP, a request over TLS is not allocation-free on the write side.

use crate::client::{Cause, ErrorKind, ReqError};
use crate::tls::Negotiated;
use rustls::pki_types::ServerName;
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How a new connection was set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeKind {
    /// Plain TCP: the connect alone.
    Tcp = 0,
    /// A full TLS handshake (certificate, key exchange).
    Full = 1,
    /// A resumed TLS handshake (session ticket or id).
    Resumed = 2,
    /// HTTP/3 with `--early-data`: a resumed QUIC handshake whose requests left in 0-RTT, before
    /// the handshake completed.
    ZeroRtt = 3,
}

impl HandshakeKind {
    pub const ALL: [HandshakeKind; 4] = [HandshakeKind::Tcp, HandshakeKind::Full, HandshakeKind::Resumed, HandshakeKind::ZeroRtt];

    pub fn name(self) -> &'static str {
        match self {
            HandshakeKind::Tcp => "tcp",
            HandshakeKind::Full => "full",
            HandshakeKind::Resumed => "resumed",
            HandshakeKind::ZeroRtt => "zero_rtt",
        }
    }
}

/// One connection set-up: TCP connect + TLS handshake.
#[derive(Clone, Copy, Debug)]
pub struct Handshake {
    pub took: Duration,
    pub kind: HandshakeKind,
    pub negotiated: Option<Negotiated>,
}

/// A connected byte stream.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens connections to one address, with TLS when configured. Cheap to clone (the TLS config is
/// shared through an `Arc`, and with it the session cache).
#[derive(Clone)]
pub enum Connector {
    Plain,
    Tls { connector: TlsConnector, name: ServerName<'static> },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Plain => f.write_str("Connector::Plain"),
            Connector::Tls { name, .. } => write!(f, "Connector::Tls({})", name.to_str()),
        }
    }
}

impl Connector {
    /// A TLS connector for `name` with `config`.
    pub fn tls(config: Arc<rustls::ClientConfig>, name: ServerName<'static>) -> Self {
        Connector::Tls { connector: TlsConnector::from(config), name }
    }

    /// Connects to `addr` and, for TLS, completes the handshake. Errors: `Connect` for TCP,
    /// `Handshake` for TLS. `tcp_done` is set once TCP is connected (so a caller timing the
    /// whole can tell which stage a timeout interrupted).
    pub async fn connect(&self, addr: SocketAddr, tcp_done: &Cell<bool>) -> Result<(Stream, Handshake), ReqError> {
        let t0 = Instant::now();
        let tcp = TcpStream::connect(addr).await.map_err(|e| ReqError::new(ErrorKind::Connect, Cause::of(&e)))?;
        // Small requests must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        tcp_done.set(true);
        match self {
            Connector::Plain => Ok((Stream::Tcp(tcp), Handshake { took: t0.elapsed(), kind: HandshakeKind::Tcp, negotiated: None })),
            Connector::Tls { connector, name } => {
                let s = connector.connect(name.clone(), tcp).await.map_err(|e| ReqError::new(ErrorKind::Handshake, Cause::of(&e)))?;
                let took = t0.elapsed();
                let (_, c) = s.get_ref();
                let kind = match c.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => HandshakeKind::Resumed,
                    _ => HandshakeKind::Full,
                };
                let negotiated = Some(Negotiated::of(c));
                Ok((Stream::Tls(Box::new(s)), Handshake { took, kind, negotiated }))
            }
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// True for a TLS stream (its writes need a flush to leave rustls' buffer).
    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}
