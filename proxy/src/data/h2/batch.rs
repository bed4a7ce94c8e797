//! The client connection's byte stream as `h2` sees it: its writes go through, its flushes wait
//! for the end of the connection task's turn. Hot path (per connection).
//!
//! `h2` flushes its transport every time a DATA frame's payload is written on its own (a payload
//! of 256 bytes or more is not copied into its buffer but written after it), so a connection
//! answering many streams in one turn would flush once per response. Over TLS the stream
//! ([`crate::data::tls`]) seals what it is given into its write buffer and, under HTTP/2, sends
//! it only when flushed: here `poll_flush` says done at once and the connection's task
//! ([`super::conn`]) flushes for real after each poll of the `h2` connection, so the records of
//! every frame written in one turn leave in one write. In cleartext the socket takes each write
//! itself and the flush costs nothing.
//!
//! The stream is shared between the `h2` connection (which owns this handle) and the task that
//! drives it: both on the connection's task, one after the other, never at once (`RefCell`, no
//! lock).

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `h2`'s handle on the connection's stream.
pub struct Batched<S> {
    io: Rc<RefCell<S>>,
}

impl<S: AsyncWrite + Unpin> Batched<S> {
    /// The handle for `h2` and the one the connection's task flushes through.
    pub fn new(io: S) -> (Batched<S>, Flusher<S>) {
        let io = Rc::new(RefCell::new(io));
        (Batched { io: Rc::clone(&io) }, Flusher { io })
    }
}

/// The connection task's handle: pushes out what `h2` wrote in the turn just ended.
pub struct Flusher<S> {
    io: Rc<RefCell<S>>,
}

impl<S: AsyncWrite + Unpin> Flusher<S> {
    /// The real flush. Pending when the socket is full: the task is woken when it drains (and
    /// `h2`'s next write waits for the same).
    #[inline]
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.try_borrow_mut() {
            Ok(mut io) => Pin::new(&mut *io).poll_flush(cx),
            // Never: the connection is not being polled while its task flushes.
            Err(_) => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Batched<S> {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io.borrow_mut()).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io.borrow_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.borrow().is_write_vectored()
    }

    /// Done at once: the connection's task flushes at the end of its turn ([`Flusher`]).
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The real flush, then the shutdown (close_notify over TLS): the connection is ending.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io.borrow_mut()).poll_shutdown(cx)
    }
}
