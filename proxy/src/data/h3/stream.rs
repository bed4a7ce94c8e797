//! One HTTP/3 request stream: one request, routed and sent upstream exactly like an HTTP/2
//! stream (`data::exchange`: the same routing, limits, `X-Forwarded-*`, `Via` and error
//! mapping), to an HTTP/1.1 upstream through the worker's pool (`h1::client`), its response
//! relayed under QUIC flow control. Hot path.
//!
//! Back-pressure both ways is QUIC's: the request body is read from the stream only as fast as
//! it is written upstream (quinn gives the client credit as the bytes are read), and each
//! response frame is handed to `h3` only once quinn took the previous one (`send_data` waits for
//! the client's window).
//!
//! Errors map as on HTTP/2: before the response started, the same status (an empty body);
//! after, the stream is reset (`H3_INTERNAL_ERROR`; `H3_REQUEST_CANCELLED` when the client is
//! gone). A group that speaks HTTP/2 to its servers is not reached over HTTP/3 yet: 502.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::{RequestResolver, RequestStream};
use http::{HeaderMap, Response};
use tokio::time::Instant;

use crate::data::error::ProxyError;
use crate::data::exchange::{self, ConnInfo, Exchange, RequestBody, ResponseSink};
use crate::data::worker::Worker;

/// Serves one request stream to its end, then counts it.
pub async fn serve(worker: Rc<Worker>, info: Rc<ConnInfo>, resolver: RequestResolver<h3_quinn::Connection, Bytes>) {
    let snap = worker.snapshot();
    let limits = &snap.limits;
    let ex = Exchange::new(&worker, &info);
    let timers = &worker.timers;
    // The request's field section, within the header timeout.
    let (req, stream) = match timers.within(ex.slot, timers.deadline(limits.header_read_timeout), resolver.resolve_request()).await {
        Ok(Ok(r)) => r,
        // A malformed or missing head: `h3` answered it (or the client is gone); not a request.
        _ => {
            let Exchange { slot, set, .. } = ex;
            worker.timers.release(slot);
            crate::data::h1::client::give(set);
            info.stream_done(&worker);
            return;
        }
    };
    #[cfg(feature = "planted")]
    crate::data::planted::at(crate::data::planted::Site::H3Stream, 0);
    let mut ex = ex;
    let started = Instant::now();
    timers.observe(started);
    worker.metrics().start();
    let (parts, ()) = req.into_parts();
    let mut access = None;
    if worker.shared.access_log.is_some() {
        access = Some(exchange::access_start(&parts, &info, worker.index));
    }
    let (send, recv) = stream.split();
    let mut body = Body { recv, peeked: None, ended: false };
    let mut sink = Sink { send };
    let idle = limits.client_idle_timeout;
    let result = async {
        let (route, length) = ex.route(&snap, &parts)?;
        if snap.groups[route.group].h2 {
            return Err(ProxyError::BadResponse);
        }
        body.settle(&worker, ex.slot, idle).await?;
        let up = ex.request(&snap, route, &parts, &mut body, length, started).await?;
        let is_head = up.is_head;
        ex.respond(up.up, &snap.groups[up.group], &mut sink, is_head, idle).await
    }
    .await;
    ex.end(result, started, access, &mut sink).await;
}

/// A request stream's receiving side. HTTP/3 says that a request has no body only when its
/// stream ends, so the first DATA (or the end) is read before the request goes upstream
/// ([`Body::settle`]): a GET is then forwarded as whole (and replayable), a body of unknown
/// length chunked.
struct Body {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    peeked: Option<Bytes>,
    ended: bool,
}

impl Body {
    /// Reads the first DATA or the end of the stream, within `idle`.
    async fn settle(&mut self, worker: &Worker, slot: usize, idle: Duration) -> Result<(), ProxyError> {
        let timers = &worker.timers;
        match timers.within(slot, timers.deadline(idle), self.recv.recv_data()).await {
            Err(_) => Err(ProxyError::RequestTimeout),
            Ok(Err(_)) => Err(ProxyError::ClientGone),
            Ok(Ok(None)) => {
                self.ended = true;
                Ok(())
            }
            Ok(Ok(Some(mut d))) => {
                self.peeked = Some(d.copy_to_bytes(d.remaining()));
                Ok(())
            }
        }
    }
}

impl RequestBody for Body {
    fn is_end_stream(&self) -> bool {
        self.ended && self.peeked.is_none()
    }

    async fn data(&mut self, _: &Worker) -> Option<Result<Bytes, ProxyError>> {
        if let Some(d) = self.peeked.take() {
            return Some(Ok(d));
        }
        if self.ended {
            return None;
        }
        match self.recv.recv_data().await {
            Ok(Some(mut d)) => Some(Ok(d.copy_to_bytes(d.remaining()))),
            Ok(None) => {
                self.ended = true;
                None
            }
            // A reset by the client, or a stream `h3` found malformed.
            Err(_) => Some(Err(ProxyError::ClientGone)),
        }
    }

    /// quinn gives the client credit as the bytes are read: reading no faster than the upstream
    /// takes them is the back-pressure.
    fn release(&mut self, _: usize) {}

    async fn trailers(&mut self) -> Result<Option<HeaderMap>, ProxyError> {
        self.recv.recv_trailers().await.map_err(|_| ProxyError::ClientGone)
    }
}

/// A request stream's sending side.
struct Sink {
    send: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
}

impl ResponseSink for Sink {
    async fn send_head(&mut self, worker: &Worker, slot: usize, head: Response<()>, end: bool, idle: Duration) -> Result<(), ProxyError> {
        let timers = &worker.timers;
        let sent = async {
            self.send.send_response(head).await?;
            if end {
                self.send.finish().await?;
            }
            Ok::<(), h3::error::StreamError>(())
        };
        match timers.within(slot, timers.deadline(idle), sent).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProxyError::ClientGone),
        }
    }

    async fn send_data(&mut self, worker: &Worker, slot: usize, data: Bytes, end: bool, idle: Duration) -> Result<(), ProxyError> {
        let timers = &worker.timers;
        let sent = async {
            if !data.is_empty() {
                // Waits while the client's window is shut (QUIC flow control).
                self.send.send_data(data).await?;
            }
            if end {
                self.send.finish().await?;
            }
            Ok::<(), h3::error::StreamError>(())
        };
        match timers.within(slot, timers.deadline(idle), sent).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProxyError::ClientGone),
        }
    }

    async fn send_trailers(&mut self, worker: &Worker, slot: usize, trailers: HeaderMap, idle: Duration) -> Result<(), ProxyError> {
        let timers = &worker.timers;
        let sent = async {
            self.send.send_trailers(trailers).await?;
            self.send.finish().await
        };
        match timers.within(slot, timers.deadline(idle), sent).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ProxyError::ClientGone),
        }
    }

    fn reset(&mut self, _: &Worker, e: ProxyError) {
        let code = if e == ProxyError::ClientGone { Code::H3_REQUEST_CANCELLED } else { Code::H3_INTERNAL_ERROR };
        self.send.stop_stream(code);
    }
}
