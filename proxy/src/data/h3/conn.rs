//! One HTTP/3 client connection. Hot path (per connection; a request stream is one request, see
//! [`super::stream`]).
//!
//! The QUIC handshake is quinn's (bounded by the listener's `handshake_timeout`); then the `h3`
//! server connection is driven here, on the connection's task: its control streams, QPACK
//! streams and the request streams it accepts, each served in a task of its own on the same
//! worker thread. Besides, this task watches:
//! - the drain: GOAWAY (`h3`'s `shutdown`, naming the last accepted stream), then the open
//!   streams finish and the connection closes;
//! - the idle timeout (`limits.client_idle_timeout` without an open stream; the first request is
//!   due within `limits.header_read_timeout` of the handshake): GOAWAY, then the connection
//!   closes (after a linger of at most [`LINGER`] for the client to close it first). QUIC's own
//!   idle timeout (no packet at all) is set on the endpoint's transport config.
//!
//! The bounds on what a client may do: the concurrent request streams and flow-control windows
//! of the endpoint's transport config, and the field section's size (`max_field_section_size`,
//! `limits.max_request_head_bytes`), enforced by quinn and `h3`.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::data::exchange::ConnInfo;
use crate::data::worker::{ConnPermit, Worker};

/// How long a drained connection whose streams are all done waits for the client to close it
/// before the proxy does (its last responses reach the client meanwhile).
const LINGER: Duration = Duration::from_secs(2);

/// The connection's slots in the worker's timer table and drain signal, released on drop.
struct Slots<'w> {
    worker: &'w Worker,
    timer: usize,
    drain: usize,
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        self.worker.timers.release(self.timer);
        self.worker.drain.release(self.drain);
    }
}

/// What woke the connection's task. (Moved out at once; boxing the large variant would allocate
/// per stream for nothing.)
#[allow(clippy::large_enum_variant)]
enum Event {
    Stream(h3::server::RequestResolver<h3_quinn::Connection, Bytes>),
    /// The connection ended (the client closed it, or it failed).
    Closed,
    /// After a GOAWAY, the last open stream is done.
    Done,
    Drain,
    Idle,
}

/// Serves one QUIC connection that the endpoint accepted until it closes.
pub async fn serve(worker: Rc<Worker>, connecting: quinn::Connecting, permit: ConnPermit, handshake_timeout: Duration) {
    let _permit = permit;
    let peer = connecting.remote_address();
    let slots = Slots { worker: &worker, timer: worker.timers.register(), drain: worker.drain.register() };
    let timers = &worker.timers;
    timers.observe(tokio::time::Instant::now());
    let conn = match timers.within(slots.timer, timers.deadline(handshake_timeout), connecting).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    worker.metrics().connection();
    #[cfg(feature = "planted")]
    let _planted = crate::data::planted::h3_held_bytes();
    let snap = worker.snapshot();
    let limits = &snap.limits;
    let mut builder = h3::server::builder();
    builder.max_field_section_size(limits.max_request_head_bytes as u64);
    let setup = builder.build::<h3_quinn::Connection, Bytes>(h3_quinn::Connection::new(conn.clone()));
    let mut h3conn = match timers.within(slots.timer, timers.deadline(limits.header_read_timeout), setup).await {
        Ok(Ok(c)) => c,
        _ => {
            conn.close(quinn::VarInt::from_u32(0x0101), b"");
            return;
        }
    };
    let info = Rc::new(ConnInfo::new(peer, true, &snap.via, timers.deadline(limits.header_read_timeout)));
    drop(snap);

    // GOAWAY sent (by the drain or the idle timeout): the end of the last open stream closes.
    let mut draining = false;
    loop {
        let event = {
            let accept = h3conn.accept();
            let mut accept = std::pin::pin!(accept);
            std::future::poll_fn(|cx| {
                match accept.as_mut().poll(cx) {
                    std::task::Poll::Ready(Ok(Some(r))) => return std::task::Poll::Ready(Event::Stream(r)),
                    std::task::Poll::Ready(_) => return std::task::Poll::Ready(Event::Closed),
                    std::task::Poll::Pending => {}
                }
                // After the GOAWAY, the last open stream's end closes the connection (`h3`
                // wakes this task as each request stream completes).
                if draining && info.open.get() == 0 {
                    return std::task::Poll::Ready(Event::Done);
                }
                if !draining && worker.drain.poll_drained(slots.drain, cx).is_ready() {
                    return std::task::Poll::Ready(Event::Drain);
                }
                if info.open.get() == 0 {
                    if timers.poll_expired(slots.timer, info.idle_until.get(), cx).is_ready() {
                        return std::task::Poll::Ready(Event::Idle);
                    }
                } else {
                    timers.disarm(slots.timer);
                }
                std::task::Poll::Pending
            })
            .await
        };
        match event {
            Event::Stream(resolver) => {
                info.open.set(info.open.get() + 1);
                tokio::task::spawn_local(super::stream::serve(Rc::clone(&worker), Rc::clone(&info), resolver));
            }
            Event::Closed => break,
            Event::Done => {
                // The last responses may still be in flight (QUIC's close discards what is not
                // sent): the client, told by the GOAWAY, closes first, or after a short linger
                // the proxy does.
                let _ = timers.within(slots.timer, timers.deadline(LINGER), conn.closed()).await;
                break;
            }
            Event::Drain => {
                draining = true;
                // GOAWAY with the last accepted stream: later ones are refused, the open ones
                // finish, then `accept` ends.
                let _ = h3conn.shutdown(0).await;
            }
            Event::Idle => {
                // A stream may have opened and closed since the timer was armed: the deadline
                // it left is the one that counts.
                if info.open.get() == 0 && info.idle_until.get() <= timers.deadline(Duration::ZERO) {
                    // GOAWAY; with no stream open the next turn closes (after the linger).
                    draining = true;
                    let _ = h3conn.shutdown(0).await;
                }
            }
        }
    }
    // H3_NO_ERROR: every stream is done (or the peer went away).
    conn.close(quinn::VarInt::from_u32(0x0100), b"");
    // `leak`: the connection's state is never freed (h3's connection holds quinn's).
    #[cfg(feature = "planted")]
    if crate::data::planted::leaks_working_set() {
        crate::data::planted::leak(h3conn);
    }
}
