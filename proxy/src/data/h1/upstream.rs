//! HTTP/1.1 to the upstream: the client side of an exchange (as Pingora's
//! `protocols/http/v1/client.rs` is to its `server.rs`). Hot path.
//!
//! [`Active::send`] writes the rewritten request head (and the body bytes that came with it) to an
//! upstream connection, streams the rest of the request body, and reads until a final response
//! head is parsed, relaying interim responses; [`Active::respond`] relays the response body to the
//! client, zero-copy from the upstream read buffer, and gives the connection back to the pool when
//! it can be reused; a 101 turns the connection into a tunnel. The request loop that routes the
//! request, takes the connection from the pool (or opens one: [`crate::data::upstream::connect`])
//! and retries a stale one is in [`super::conn`].
//!
//! The upstream connection speaks HTTP/1.1 whatever the client speaks. Today this side runs on the
//! HTTP/1.1 client connection's working set (`Active`); an HTTP/2 client connection will reach
//! HTTP/1.1 upstreams through it once it is separated from that working set (see
//! docs/architecture.md, "The upstream side").

use std::io::ErrorKind;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::data::error::ProxyError;
use crate::data::h1::body::{ReqBody, ResBody};
use crate::data::h1::conn::{Active, Progress, write_now, write_within};
use crate::data::h1::head::{Framing, Parsed};
use crate::data::h1::rewrite::{self, ClientConn, HeadFor};
use crate::data::io::ClientIo;
use crate::data::upstream::pool::UpstreamConn;
use crate::data::upstream::stream::UpstreamStream;
use crate::snapshot::{Limits, Snapshot, UpstreamGroup};

/// Why sending a request over one upstream connection failed.
pub(super) enum SendError {
    /// The connection died before any response byte: safe to replay if the request allows.
    Stale,
    Proxy(ProxyError),
}

impl From<ProxyError> for SendError {
    fn from(e: ProxyError) -> Self {
        SendError::Proxy(e)
    }
}

/// Writes all of `bytes` to the upstream and flushes (over TLS the last record may wait in the
/// stream until flushed; on a plain socket the flush is nothing).
async fn send_all(stream: &mut UpstreamStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

impl<S: ClientIo> Active<'_, S> {
    /// Sends the request (head and body) and reads until a final response head is parsed in
    /// the upstream buffer; interim responses are relayed on the way.
    pub(super) async fn send(
        &mut self,
        up: &mut UpstreamConn,
        limits: &Limits,
        mut body: Option<&mut ReqBody>,
        progress: &mut Progress,
        deadline: u64,
    ) -> Result<(), SendError> {
        match write_now(&mut up.stream, &self.s.out) {
            // Over TLS the last record may still wait for the socket: `try_flush` says.
            Ok(n) if n == self.s.out.len() && matches!(up.stream.try_flush(), Ok(true)) => {}
            Ok(n) => match self.worker.timers.within(self.timer_slot, deadline, send_all(&mut up.stream, &self.s.out[n..])).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SendError::Stale),
                Err(_) => return Err(ProxyError::ResponseTimeout.into()),
            },
            Err(()) => return Err(SendError::Stale),
        }
        loop {
            if !progress.request_done
                && let Some(b) = body.as_deref_mut()
            {
                self.stream_request_body(up, b, limits, progress).await?;
            }
            self.read_response_head(up, deadline, progress).await?;
            if self.s.res.status >= 200 || self.s.res.status == 101 {
                return Ok(());
            }
            // Interim response (100 Continue, 103 Early Hints): relayed to HTTP/1.1 clients.
            if self.s.req.minor == 1 {
                rewrite::interim_head(&mut self.s.out, self.s.up.filled(), &self.s.res);
                self.write_client_out(limits.client_idle_timeout).await?;
            }
            self.s.up.consume(self.s.res.len);
        }
    }

    /// Streams the rest of the request body to the upstream, returning early (with bytes in
    /// the upstream buffer) if the upstream starts answering before the body is complete.
    async fn stream_request_body(
        &mut self,
        up: &mut UpstreamConn,
        body: &mut ReqBody,
        limits: &Limits,
        progress: &mut Progress,
    ) -> Result<(), SendError> {
        while !progress.request_done {
            if self.s.buf.is_empty() {
                let timers = &self.worker.timers;
                let until = timers.deadline(limits.client_idle_timeout);
                tokio::select! {
                    biased;
                    r = timers.within(self.timer_slot, until, self.client.read(self.s.buf.spare())) => match r {
                        Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::ClientGone.into()),
                        Ok(Ok(n)) => self.s.buf.advance(n),
                        Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    },
                    r = up.stream.readable() => {
                        if r.is_err() {
                            return Err(ProxyError::UpstreamClosed.into());
                        }
                        match up.stream.try_read(self.s.up.spare()) {
                            Ok(0) => return Err(ProxyError::UpstreamClosed.into()),
                            Ok(n) => {
                                self.s.up.advance(n);
                                return Ok(()); // an early response: stop sending
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                            Err(_) => return Err(ProxyError::UpstreamClosed.into()),
                        }
                    }
                }
            }
            let avail = self.s.buf.filled();
            let mut done = false;
            let n = body.take(avail, &mut done)?;
            if send_all(&mut up.stream, &avail[..n]).await.is_err() {
                return Err(ProxyError::UpstreamClosed.into());
            }
            self.s.buf.consume(n);
            progress.request_done = done;
        }
        Ok(())
    }

    async fn read_response_head(&mut self, up: &mut UpstreamConn, deadline: u64, progress: &mut Progress) -> Result<(), SendError> {
        loop {
            if !self.s.up.is_empty() {
                progress.upstream_answered = true;
                if let Parsed::Complete = self.s.res.parse(self.s.up.filled(), self.s.req.is_head)? {
                    return Ok(());
                }
                if self.s.up.len() >= self.s.up.capacity() {
                    return Err(ProxyError::BadResponse.into());
                }
            }
            let read = match up.stream.try_read(self.s.up.spare()) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.worker.timers.within(self.timer_slot, deadline, up.stream.read(self.s.up.spare())).await
                }
                r => Ok(r),
            };
            match read {
                Ok(Ok(n)) if n > 0 => self.s.up.advance(n),
                Ok(_) if !progress.upstream_answered => return Err(SendError::Stale),
                Ok(_) => return Err(ProxyError::UpstreamClosed.into()),
                Err(_) => return Err(ProxyError::ResponseTimeout.into()),
            }
        }
    }

    /// Relays the final response whose head is parsed at the front of the upstream buffer.
    pub(super) async fn respond(
        &mut self,
        mut up: UpstreamConn,
        snap: &Snapshot,
        group: &UpstreamGroup,
        progress: &mut Progress,
    ) -> Result<bool, ProxyError> {
        let idle = snap.limits.client_idle_timeout;
        if self.s.res.status == 101 {
            return self.tunnel(up, snap, progress).await;
        }
        let dechunk = self.s.req.minor == 0 && self.s.res.framing == Framing::Chunked;
        // While draining, the response in flight is the connection's last: `Connection: close`.
        let keep = self.s.req.keep_alive
            && progress.request_done
            && self.s.res.framing != Framing::UntilClose
            && !dechunk
            && !self.worker.drain.is_draining();
        let conn = match (keep, self.s.req.minor) {
            (false, _) => ClientConn::Close,
            (true, 0) => ClientConn::KeepAlive10,
            (true, _) => ClientConn::KeepAlive11,
        };
        let head_for = if dechunk { HeadFor::DechunkedBody } else { HeadFor::Body };
        let alt_svc = self.client.alt_svc_port();
        rewrite::response_head(&mut self.s.out, self.s.up.filled(), &self.s.res, &snap.via, alt_svc, conn, head_for);
        self.s.up.consume(self.s.res.len);

        let mut body = ResBody::new(self.s.res.framing, dechunk);
        #[cfg(feature = "planted")]
        if self.s.res.framing == Framing::Chunked {
            crate::data::planted::at(crate::data::planted::Site::Chunked, self.s.res.len);
        }
        let mut done = body.is_none();
        if let Some(b) = body.as_mut() {
            // The body bytes that came with the head leave in the same write (a bounded copy
            // that saves a syscall). A malformed prefix is still a clean 502: nothing was sent.
            let (n, end) = b.take(self.s.up.filled(), &mut self.s.out)?;
            if !b.dechunks() {
                self.s.out.extend_from_slice(&self.s.up.filled()[..n]);
            }
            self.s.up.consume(n);
            done = end;
        }
        progress.responded = true;
        self.write_client_out(idle).await?;

        if let Some(b) = body.as_mut() {
            while !done {
                let read = match up.stream.try_read(self.s.up.spare()) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let timers = &self.worker.timers;
                        timers
                            .within(self.timer_slot, timers.deadline(group.response_header_timeout), up.stream.read(self.s.up.spare()))
                            .await
                    }
                    r => Ok(r),
                };
                match read {
                    Ok(Ok(0)) if matches!(b, ResBody::UntilClose) => break,
                    Ok(Ok(n)) if n > 0 => self.s.up.advance(n),
                    // EOF, reset or stall mid-body: close the client rather than end cleanly.
                    _ => return Err(ProxyError::UpstreamBroken),
                }
                self.s.out.clear();
                let (n, end) = b.take(self.s.up.filled(), &mut self.s.out).map_err(|_| ProxyError::UpstreamBroken)?;
                done = end;
                if b.dechunks() {
                    self.write_client_out(idle).await?;
                } else {
                    // Zero-copy relay: straight from the upstream buffer to the client socket.
                    write_within(&self.worker.timers, self.timer_slot, self.client, &self.s.up.filled()[..n], idle)
                        .await
                        .map_err(|()| ProxyError::ClientGone)?;
                }
                self.s.up.consume(n);
            }
        }

        if self.s.res.keep_alive && progress.request_done && self.s.up.is_empty() {
            self.worker.pool.borrow_mut().checkin(up, group.idle_pool_size, Instant::now());
        }
        Ok(keep)
    }

    /// After a 101: relay the head, then copy bytes both ways until either side closes.
    async fn tunnel(&mut self, mut up: UpstreamConn, snap: &Snapshot, progress: &mut Progress) -> Result<bool, ProxyError> {
        if self.s.req.upgrade.is_none() {
            return Err(ProxyError::BadResponse);
        }
        rewrite::response_head(&mut self.s.out, self.s.up.filled(), &self.s.res, &snap.via, 0, ClientConn::Close, HeadFor::Upgrade);
        self.s.up.consume(self.s.res.len);
        self.s.out.extend_from_slice(self.s.up.filled());
        self.s.up.clear();
        progress.responded = true;
        self.write_client_out(snap.limits.client_idle_timeout).await?;
        if !self.s.buf.is_empty() {
            if send_all(&mut up.stream, self.s.buf.filled()).await.is_err() {
                return Ok(false);
            }
            self.s.buf.clear();
        }
        let _ = tokio::io::copy_bidirectional(self.client, &mut up.stream).await;
        Ok(false)
    }
}
