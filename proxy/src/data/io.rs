//! The byte stream a protocol serves a client connection over: a plain TCP socket, or TLS over
//! one ([`crate::data::tls`]). Hot path.
//!
//! The protocols are written against this trait and monomorphised per stream, so the cleartext
//! path compiles to the same socket calls as before TLS existed (the instruction gate holds it).
//! Beside tokio's `AsyncRead`/`AsyncWrite` (used where a whole read or write is awaited), the
//! trait names the readiness-first calls the request loop is built on: try the read or write
//! before arming a timer, and wait on readiness without a buffer while idle.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A client connection's byte stream.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// The client speaks TLS (`X-Forwarded-Proto: https`).
    const TLS: bool;

    /// Ready when a read would not block: bytes (or the end) wait in the socket or, over TLS, a
    /// record already received.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads what is there without waiting; `WouldBlock` when nothing is.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes what the socket takes without waiting; `WouldBlock` when it takes nothing. Over TLS
    /// the bytes counted as written may still wait, encrypted, for [`ClientIo::try_flush`].
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Pushes out what a write accepted but the socket has not taken yet: `Ok(true)` when nothing
    /// is left (always, on a plain socket).
    #[inline]
    fn try_flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    /// The UDP port number this connection's listener also serves HTTP/3 on (`http3 = true`),
    /// advertised in each relayed response's `Alt-Svc`; 0: none (cleartext, or no HTTP/3).
    #[inline]
    fn alt_svc_port(&self) -> u16 {
        0
    }

    /// Waits until a read would not block.
    #[inline]
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        std::future::poll_fn(move |cx| self.poll_read_ready(cx))
    }
}

impl ClientIo for TcpStream {
    const TLS: bool = false;

    #[inline]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    #[inline]
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }

    #[inline]
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    #[inline]
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        TcpStream::readable(self)
    }
}
