//! One HTTP/2 client connection. Hot path (per connection; a stream is one request, see
//! [`super::stream`]).
//!
//! The `h2` server connection is driven here, on the connection's task: every frame in and out
//! passes through `poll_accept`, which also hands over each new stream; the stream runs in a task
//! of its own on the same worker thread, so a slow upstream holds back its stream, never the
//! connection. Besides, this task watches:
//! - the drain: GOAWAY with the last stream id, then the open streams finish and it closes;
//! - the idle timeout (`limits.client_idle_timeout` without an open stream; the first request is
//!   due within `limits.header_read_timeout` of the preface);
//! - keep-alive pings (`http2.keepalive_interval`), when configured: a client that does not
//!   answer within `http2.keepalive_timeout` is gone.
//!
//! The bounds on what a client may do are the `[http2]` settings, enforced by `h2`: streams past
//! `max_concurrent_streams` are refused, a header block past `max_header_list_size` is refused
//! (an HPACK bomb or a CONTINUATION flood ends there), streams reset before they are accepted
//! are capped (rapid reset), as are streams reset for protocol errors; SETTINGS and PING are
//! answered one at a time (the reads stop until the answer is written).

use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use h2::server::{Builder, Connection};
use h2::{Ping, PingPong};

use super::batch::{Batched, Flusher};
use crate::data::exchange::ConnInfo;
use crate::data::io::ClientIo;
use crate::data::metrics::H2Event;
use crate::data::worker::{ConnPermit, Worker};

/// The connection's slots in the worker's timer table and drain signal, released on drop.
struct Slots<'w> {
    worker: &'w Worker,
    timer: usize,
    ping: usize,
    drain: usize,
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        self.worker.timers.release(self.timer);
        self.worker.timers.release(self.ping);
        self.worker.drain.release(self.drain);
    }
}

/// What woke the connection's task. (Moved out at once; boxing the large variant would allocate
/// per stream for nothing.)
#[allow(clippy::large_enum_variant)]
enum Event {
    Stream(http::Request<h2::RecvStream>, h2::server::SendResponse<Bytes>),
    /// The connection ended: cleanly (`None`) or with a protocol error.
    Closed(Option<h2::Error>),
    Drain,
    Idle,
    PingDue,
    PingTimeout,
}

/// Serves one client connection that speaks HTTP/2 (after a TLS handshake that chose `h2`, or
/// with the cleartext preface seen on an `h2c` listener) until it closes.
pub async fn serve<S: ClientIo + 'static>(worker: Rc<Worker>, io: S, peer: SocketAddr, permit: ConnPermit) {
    let _permit = permit;
    worker.metrics().connection();
    let snap = worker.snapshot();
    let settings = snap.http2.clone();
    let limits = &snap.limits;
    let slots = Slots { worker: &worker, timer: worker.timers.register(), ping: worker.timers.register(), drain: worker.drain.register() };
    let timers = &worker.timers;
    timers.observe(tokio::time::Instant::now());

    let mut builder = Builder::new();
    builder
        .initial_window_size(settings.initial_stream_window)
        .initial_connection_window_size(settings.initial_connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(settings.max_pending_reset_streams)
        .max_local_error_reset_streams(Some(settings.max_local_error_resets));
    let alt_svc = io.alt_svc_port();
    // The preface and the settings exchange, within the header timeout.
    let (io, flusher) = Batched::new(io);
    let handshake = flushed(builder.handshake::<Batched<S>, Bytes>(io), &flusher);
    let mut conn: Connection<Batched<S>, Bytes> =
        match timers.within(slots.timer, timers.deadline(limits.header_read_timeout), handshake).await {
            Ok(Ok(c)) => c,
            _ => {
                worker.metrics().h2(H2Event::HandshakeFailed);
                return;
            }
        };
    worker.metrics().h2(H2Event::Connection);
    #[cfg(feature = "planted")]
    let _planted = crate::data::planted::h2_held_bytes();

    let info = Rc::new(ConnInfo::new(peer, S::TLS, &snap.via, timers.deadline(limits.header_read_timeout)).advertising_h3(alt_svc));
    drop(snap);

    let mut pings: Option<PingPong> = settings.keepalive_interval.and_then(|_| conn.ping_pong());
    let mut ping_due = settings.keepalive_interval.map_or(u64::MAX, |i| timers.deadline(i));
    let mut pong_due: Option<u64> = None;
    let mut draining = false;
    // GOAWAY asked of h2 (by the drain or the idle timeout): the next idle expiry closes.
    let mut goaway_sent = false;
    loop {
        let event = std::future::poll_fn(|cx| {
            let accepted = conn.poll_accept(cx);
            // What h2 wrote in this turn, every stream's frames together, in one write.
            if let Poll::Ready(Err(_)) = flusher.poll_flush(cx) {
                return Poll::Ready(Event::Closed(None));
            }
            match accepted {
                Poll::Ready(Some(Ok((req, respond)))) => return Poll::Ready(Event::Stream(req, respond)),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Event::Closed(Some(e))),
                Poll::Ready(None) => return Poll::Ready(Event::Closed(None)),
                Poll::Pending => {}
            }
            if !draining && worker.drain.poll_drained(slots.drain, cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if info.open.get() == 0 {
                if timers.poll_expired(slots.timer, info.idle_until.get(), cx).is_ready() {
                    return Poll::Ready(Event::Idle);
                }
            } else {
                timers.disarm(slots.timer);
            }
            if let Some(p) = pings.as_mut() {
                match pong_due {
                    Some(due) => {
                        if let Poll::Ready(r) = p.poll_pong(cx) {
                            timers.disarm(slots.ping);
                            return Poll::Ready(if r.is_ok() { Event::PingDue } else { Event::PingTimeout });
                        }
                        if timers.poll_expired(slots.ping, due, cx).is_ready() {
                            return Poll::Ready(Event::PingTimeout);
                        }
                    }
                    None => {
                        if timers.poll_expired(slots.ping, ping_due, cx).is_ready() {
                            return Poll::Ready(Event::PingDue);
                        }
                    }
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Stream(req, respond) => {
                #[cfg(feature = "planted")]
                crate::data::planted::at(crate::data::planted::Site::H2Stream, 0);
                worker.metrics().h2(H2Event::Stream);
                info.open.set(info.open.get() + 1);
                tokio::task::spawn_local(super::stream::serve(Rc::clone(&worker), Rc::clone(&info), req, respond));
            }
            Event::Closed(None) => return,
            Event::Closed(Some(e)) => {
                if e.is_go_away() || e.is_library() {
                    worker.metrics().h2(H2Event::ConnectionError);
                }
                return;
            }
            Event::Drain => {
                draining = true;
                goaway_sent = true;
                conn.graceful_shutdown();
            }
            Event::Idle => {
                // A stream may have opened and closed since the timer was armed: the deadline
                // it left is the one that counts.
                if info.open.get() == 0 && info.idle_until.get() <= timers.deadline(std::time::Duration::ZERO) {
                    if goaway_sent {
                        // A whole idle period after the GOAWAY and still here: a client that
                        // does not read (the GOAWAY may never have left) is closed, not waited
                        // for.
                        return;
                    }
                    draining = true;
                    goaway_sent = true;
                    conn.graceful_shutdown();
                    info.idle_until.set(timers.deadline(worker.snapshot().limits.client_idle_timeout));
                }
            }
            Event::PingDue => {
                if let (Some(p), Some(interval)) = (pings.as_mut(), settings.keepalive_interval) {
                    if pong_due.take().is_some() {
                        ping_due = timers.deadline(interval);
                    } else if p.send_ping(Ping::opaque()).is_ok() {
                        pong_due = Some(timers.deadline(settings.keepalive_timeout));
                    }
                }
            }
            Event::PingTimeout => {
                worker.metrics().h2(H2Event::PingTimeout);
                return;
            }
        }
    }
}

/// `fut` (the handshake) with what it writes pushed out after each of its turns.
async fn flushed<S: ClientIo, F: Future>(fut: F, flusher: &Flusher<S>) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        // An error here shows in the handshake's next read or write.
        let _ = flusher.poll_flush(cx);
        r
    })
    .await
}
