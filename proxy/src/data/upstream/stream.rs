//! The byte stream of an upstream connection: a plain TCP socket, or TLS over one for a group
//! with `tls = true` ([`crate::data::tls::connect`]). Hot path.
//!
//! One type for both, so the per-worker pool and the protocols' client sides stay as they are:
//! the cleartext case costs a branch per call. It is a [`ClientIo`] like a client connection's
//! stream, so the same readiness-first reads and writes serve both ends of an exchange. TLS is
//! boxed: an idle pooled connection stays one pointer plus a socket in the pool's stacks.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::client::ClientConnectionData;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::data::io::ClientIo;
use crate::data::tls::TlsStream;

#[derive(Debug)]
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<ClientConnectionData>>),
}

impl ClientIo for UpstreamStream {
    /// Not a client connection: `X-Forwarded-Proto` is the client's, never asked of this stream.
    const TLS: bool = false;

    #[inline(always)]
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            UpstreamStream::Plain(s) => s.poll_read_ready(cx),
            UpstreamStream::Tls(s) => s.poll_read_ready(cx),
        }
    }

    #[inline(always)]
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            UpstreamStream::Plain(s) => s.try_read(buf),
            UpstreamStream::Tls(s) => s.try_read(buf),
        }
    }

    #[inline(always)]
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            UpstreamStream::Plain(s) => s.try_write(buf),
            UpstreamStream::Tls(s) => {
                #[cfg(feature = "planted")]
                crate::data::planted::at(crate::data::planted::Site::UpstreamTls, buf.len());
                s.try_write(buf)
            }
        }
    }

    #[inline(always)]
    fn try_flush(&mut self) -> io::Result<bool> {
        match self {
            UpstreamStream::Plain(_) => Ok(true),
            UpstreamStream::Tls(s) => s.try_flush(),
        }
    }
}

impl AsyncRead for UpstreamStream {
    #[inline(always)]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    #[inline(always)]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline(always)]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
