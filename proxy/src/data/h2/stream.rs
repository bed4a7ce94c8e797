//! One HTTP/2 stream: one request, routed on the snapshot like an HTTP/1.1 one (`:authority`
//! as Host), sent to an HTTP/1.1 upstream through the worker's pool (`h1::client`), its response
//! relayed under HTTP/2 flow control. Hot path.
//!
//! Bodies stream both ways without being collected. The request body's window is given back to
//! the client only once its bytes were written upstream, so a slow upstream slows the client
//! down (flow control is the back-pressure); a response body is read from the upstream only as
//! fast as the client's window takes it, through one bounded buffer per stream.
//!
//! Errors map as on HTTP/1.1: before the response started, the same status (an empty body);
//! after, the stream is reset (RST_STREAM), the HTTP/2 form of closing a connection mid-body.
//!
//! What does not depend on HTTP/2's framing (routing, the upstream exchange, the response head
//! and body relayed, error mapping) is `data::exchange`'s, shared with HTTP/3; here are the
//! `h2` sides of the stream it drives ([`RequestBody`] for `h2::RecvStream`, [`ResponseSink`]
//! for the response) and HTTP/2 to an HTTP/2 upstream.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HOST, VIA};
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::time::Instant;

use crate::data::error::ProxyError;
use crate::data::exchange::{
    self, ConnInfo, Exchange, InFlight, RequestBody, ResponseSink, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use crate::data::metrics::H2Event;
use crate::data::upstream::session;
use crate::data::worker::Worker;
use crate::snapshot::{Route, Snapshot, UpstreamGroup};

/// Serves one stream to its end, then counts it.
pub async fn serve(worker: Rc<Worker>, info: Rc<ConnInfo>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let snap = worker.snapshot();
    let started = Instant::now();
    worker.timers.observe(started);
    worker.metrics().start();
    let (parts, mut body) = req.into_parts();
    let mut access = None;
    if worker.shared.access_log.is_some() {
        access = Some(exchange::access_start(&parts, &info, worker.index));
    }
    let mut ex = Exchange::new(&worker, &info);
    // Until the response head is ready, a client that resets the stream ends the exchange at
    // once: the upstream connection in use is closed, not left to finish work nobody will read
    // (rapid reset, CVE-2023-44487, then costs the upstream nothing more than the reset streams
    // the `h2` bound lets through). After it, a reset shows as a failed send.
    let prepared = {
        let request = async {
            let (route, length) = ex.route(&snap, &parts)?;
            if snap.groups[route.group].h2 {
                // HTTP/2 to the upstream: the stream is forwarded as it is, after the client's
                // reset watch (its body streams while the response comes: see `forward_h2`).
                return Ok(Prepared::H2(route));
            }
            ex.request(&snap, route, &parts, &mut body, length, started).await.map(Prepared::H1)
        };
        let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
        tokio::select! {
            biased;
            r = request => r,
            _ = reset => {
                worker.metrics().h2(H2Event::ResetByClient);
                Err(ProxyError::ClientGone)
            }
        }
    };
    let idle = snap.limits.client_idle_timeout;
    let result = match prepared {
        Ok(Prepared::H1(up)) => {
            let group = &snap.groups[up.group];
            let is_head = up.is_head;
            ex.respond(up.up, group, &mut Sink { respond: &mut respond, send: None }, is_head, idle).await
        }
        Ok(Prepared::H2(route)) => ex.forward_h2(&snap, route, parts, body, &mut respond).await,
        Err(e) => Err(e),
    };
    ex.end(result, started, access, &mut Sink { respond: &mut respond, send: None }).await;
}

/// Where a routed stream goes next.
enum Prepared<'s> {
    /// Sent to an HTTP/1.1 upstream, whose response head is parsed in the working set.
    H1(exchange::H1Upstream),
    /// For an HTTP/2 upstream: forwarded as a stream (`forward_h2`).
    H2(&'s Route),
}

impl RequestBody for RecvStream {
    fn is_end_stream(&self) -> bool {
        RecvStream::is_end_stream(self)
    }

    async fn data(&mut self, worker: &Worker) -> Option<Result<Bytes, ProxyError>> {
        Some(RecvStream::data(self).await?.map_err(|e| body_error(worker, &e)))
    }

    fn release(&mut self, n: usize) {
        let _ = self.flow_control().release_capacity(n);
    }

    async fn trailers(&mut self) -> Result<Option<HeaderMap>, ProxyError> {
        RecvStream::trailers(self).await.map_err(|_| ProxyError::ClientGone)
    }
}

/// The response side of an HTTP/2 stream: the head through `SendResponse`, then its body's
/// `SendStream`.
struct Sink<'r> {
    respond: &'r mut SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
}

impl ResponseSink for Sink<'_> {
    async fn send_head(&mut self, _: &Worker, _: usize, head: Response<()>, end: bool, _: Duration) -> Result<(), ProxyError> {
        self.send = Some(self.respond.send_response(head, end).map_err(|_| ProxyError::ClientGone)?);
        Ok(())
    }

    async fn send_data(&mut self, worker: &Worker, slot: usize, data: Bytes, end: bool, idle: Duration) -> Result<(), ProxyError> {
        match self.send.as_mut() {
            Some(send) => send_data(worker, slot, send, data, end, idle).await,
            None => Err(ProxyError::ClientGone),
        }
    }

    async fn send_trailers(&mut self, _: &Worker, _: usize, trailers: HeaderMap, _: Duration) -> Result<(), ProxyError> {
        match self.send.as_mut() {
            Some(send) => send.send_trailers(trailers).map_err(|_| ProxyError::ClientGone),
            None => Err(ProxyError::ClientGone),
        }
    }

    fn reset(&mut self, worker: &Worker, e: ProxyError) {
        let reason = if e == ProxyError::ClientGone {
            Reason::CANCEL
        } else {
            worker.metrics().h2(H2Event::ResetByProxy);
            Reason::INTERNAL_ERROR
        };
        match self.send.as_mut() {
            Some(send) => send.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
    }
}

/// Sends `data` as the client's flow-control window allows, waiting for it to open for at most
/// `idle` at a time (a client that never opens it is gone: the stream is reset).
async fn send_data(
    worker: &Worker,
    slot: usize,
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    idle: Duration,
) -> Result<(), ProxyError> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| ProxyError::ClientGone);
    }
    let timers = &worker.timers;
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let mut cap = send.capacity();
        if cap == 0 {
            cap = match timers.within(slot, timers.deadline(idle), std::future::poll_fn(|cx| send.poll_capacity(cx))).await {
                Ok(Some(Ok(n))) => n,
                Ok(_) => return Err(ProxyError::ClientGone),
                Err(_) => {
                    // The client kept its window shut for the idle timeout: the proxy resets
                    // the stream (CANCEL).
                    worker.metrics().h2(H2Event::ResetByProxy);
                    return Err(ProxyError::ClientGone);
                }
            };
            if cap == 0 {
                continue;
            }
        }
        let chunk = data.split_to(cap.min(data.len()));
        send.send_data(chunk, end && data.is_empty()).map_err(|_| ProxyError::ClientGone)?;
    }
    Ok(())
}

/// HTTP/2 to the upstream (a group with `protocol = "h2c"` or `"h2"`).
impl Exchange<'_> {
    /// Forwards the stream to a stream on an upstream session: the client's head with
    /// `X-Forwarded-*` and `Via` (the prefix stripped when the route says so), the body pumped
    /// while the response is awaited and relayed (a server may answer before the body ends:
    /// gRPC streams both ways), the response's body and trailers relayed back under both sides'
    /// flow control. A client reset or a reset from the server ends both streams.
    async fn forward_h2(
        &mut self,
        snap: &Snapshot,
        route: &Route,
        mut parts: http::request::Parts,
        body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), ProxyError> {
        let limits = &snap.limits;
        let group = &snap.groups[route.group];
        let idle = limits.client_idle_timeout;
        self.upstream_head(route, group, &mut parts)?;

        let server = self.worker.pick(route.group, group);
        self.worker.begin(server.id);
        let _in_flight = InFlight { worker: self.worker, server: server.id };
        let (send_req, _stream_slot) = session::stream(self.worker, server, group).await?;
        let timers = &self.worker.timers;
        let mut send_req = match timers.within(self.slot, timers.deadline(group.connect_timeout), send_req.ready()).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(ProxyError::UpstreamClosed),
            Err(_) => return Err(ProxyError::ConnectTimeout),
        };
        let end = body.is_end_stream();
        let (response, up_send) = send_req.send_request(Request::from_parts(parts, ()), end).map_err(|_| ProxyError::UpstreamClosed)?;
        self.worker.metrics().h2(H2Event::UpstreamStream);

        // The request body flows on its own timer slot while the response is awaited.
        let pump_slot = timers.register();
        let _release = SlotGuard { worker: self.worker, slot: pump_slot };
        let pump = pump_body(self.worker, pump_slot, body, up_send, limits.max_body_bytes, idle);
        let mut pump = std::pin::pin!(pump);
        let mut pump_done = end;
        let response = timers.within(self.slot, timers.deadline(group.response_header_timeout), response);
        let mut response = std::pin::pin!(response);
        let response = loop {
            tokio::select! {
                biased;
                r = &mut pump, if !pump_done => {
                    r?;
                    pump_done = true;
                }
                r = &mut response => break r,
                _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
                    self.worker.metrics().h2(H2Event::ResetByClient);
                    return Err(ProxyError::ClientGone);
                }
            }
        };
        let response = match response {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_reset() => {
                self.worker.metrics().h2(H2Event::UpstreamReset);
                return Err(if e.reason() == Some(Reason::REFUSED_STREAM) { ProxyError::UpstreamClosed } else { ProxyError::BadResponse });
            }
            Ok(Err(_)) => return Err(ProxyError::BadResponse),
            Err(_) => return Err(ProxyError::ResponseTimeout),
        };
        let (mut head, mut up_body) = response.into_parts();
        head.headers.append(VIA, self.info.via.clone());
        self.status = head.status.as_u16();
        let done = up_body.is_end_stream();
        let mut send = respond.send_response(Response::from_parts(head, ()), done).map_err(|_| ProxyError::ClientGone)?;
        self.responded = true;
        if done {
            return Ok(());
        }
        let relayed = async {
            loop {
                let next = tokio::select! {
                    biased;
                    r = &mut pump, if !pump_done => {
                        r?;
                        pump_done = true;
                        continue;
                    }
                    d = timers.within(self.slot, timers.deadline(group.response_header_timeout), up_body.data()) => d,
                };
                match next {
                    Ok(None) => break,
                    Ok(Some(Ok(data))) => {
                        let n = data.len();
                        send_data(self.worker, self.slot, &mut send, data, false, idle).await?;
                        let _ = up_body.flow_control().release_capacity(n);
                    }
                    // A reset from the server, or a body that stalled past the timeout.
                    Ok(Some(Err(e))) => {
                        if e.is_reset() {
                            self.worker.metrics().h2(H2Event::UpstreamReset);
                        }
                        return Err(ProxyError::UpstreamBroken);
                    }
                    Err(_) => return Err(ProxyError::UpstreamBroken),
                }
            }
            match timers.within(self.slot, timers.deadline(group.response_header_timeout), up_body.trailers()).await {
                Ok(Ok(Some(trailers))) => send.send_trailers(trailers).map_err(|_| ProxyError::ClientGone),
                Ok(Ok(None)) => send.send_data(Bytes::new(), true).map_err(|_| ProxyError::ClientGone),
                _ => Err(ProxyError::UpstreamBroken),
            }
        };
        match relayed.await {
            Ok(()) => Ok(()),
            Err(e) => {
                if e == ProxyError::ClientGone {
                    send.send_reset(Reason::CANCEL);
                } else {
                    self.worker.metrics().h2(H2Event::ResetByProxy);
                    send.send_reset(Reason::INTERNAL_ERROR);
                }
                Err(e)
            }
        }
    }

    /// The request head as the upstream sees it: scheme of the group's transport, the route's
    /// prefix stripped, `X-Forwarded-For` (the client's list plus its address),
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` (the authority) and `Via`.
    fn upstream_head(&mut self, route: &Route, group: &UpstreamGroup, parts: &mut http::request::Parts) -> Result<(), ProxyError> {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(if group.tls.is_some() { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
        if uri.authority.is_none() {
            // RFC 9113 §8.3.1: a host field stands for the authority; the upstream gets it so.
            if let Some(h) = parts.headers.get(HOST).and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok()) {
                uri.authority = Some(h);
            }
        }
        if route.strip_prefix
            && let Some(pq) = &uri.path_and_query
        {
            let rest = pq.as_str().get(route.prefix.len()..).unwrap_or("");
            let out = &mut self.set.out;
            out.clear();
            if !rest.starts_with('/') {
                out.push(b'/');
            }
            out.extend_from_slice(rest.as_bytes());
            uri.path_and_query = Some(http::uri::PathAndQuery::try_from(out.as_slice()).map_err(|_| ProxyError::BadRequest)?);
        }
        let authority = uri.authority.clone();
        parts.uri = http::Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest)?;
        let headers = &mut parts.headers;
        headers.remove(HOST);
        let out = &mut self.set.out;
        out.clear();
        for v in headers.get_all(X_FORWARDED_FOR) {
            if !v.is_empty() {
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.info.ip());
        let xff = HeaderValue::from_bytes(out).map_err(|_| ProxyError::BadRequest)?;
        headers.insert(X_FORWARDED_FOR, xff);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if self.info.tls { "https" } else { "http" }));
        headers.remove(X_FORWARDED_HOST);
        if let Some(a) = authority
            && let Ok(v) = HeaderValue::from_str(a.as_str())
        {
            headers.insert(X_FORWARDED_HOST, v);
        }
        headers.append(VIA, self.info.via.clone());
        Ok(())
    }
}

/// Releases a timer slot registered for one stream.
struct SlotGuard<'a> {
    worker: &'a Worker,
    slot: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.worker.timers.release(self.slot);
    }
}

/// Pumps a client's request body to the upstream stream as the upstream's window allows; the
/// client's window is given back as the bytes go (its trailers follow, or the end of the stream).
async fn pump_body(
    worker: &Worker,
    slot: usize,
    mut body: RecvStream,
    mut up: SendStream<Bytes>,
    max_body: u64,
    idle: Duration,
) -> Result<(), ProxyError> {
    let timers = &worker.timers;
    let mut total: u64 = 0;
    loop {
        let mut data = match timers.within(slot, timers.deadline(idle), body.data()).await {
            Err(_) => return Err(ProxyError::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(body_error(worker, &e)),
            Ok(Some(Ok(d))) => d,
        };
        let n = data.len();
        total += n as u64;
        if total > max_body {
            return Err(ProxyError::BodyTooLarge);
        }
        while !data.is_empty() {
            up.reserve_capacity(data.len());
            let mut cap = up.capacity();
            if cap == 0 {
                cap = match timers.within(slot, timers.deadline(idle), std::future::poll_fn(|cx| up.poll_capacity(cx))).await {
                    Ok(Some(Ok(c))) => c,
                    _ => return Err(ProxyError::UpstreamBroken),
                };
                if cap == 0 {
                    continue;
                }
            }
            let chunk = data.split_to(cap.min(data.len()));
            up.send_data(chunk, false).map_err(|_| ProxyError::UpstreamBroken)?;
        }
        let _ = body.flow_control().release_capacity(n);
    }
    match timers.within(slot, timers.deadline(idle), body.trailers()).await {
        Ok(Ok(Some(t))) => up.send_trailers(t).map_err(|_| ProxyError::UpstreamBroken),
        Ok(Ok(None)) => up.send_data(Bytes::new(), true).map_err(|_| ProxyError::UpstreamBroken),
        Ok(Err(_)) => Err(ProxyError::ClientGone),
        Err(_) => Err(ProxyError::RequestTimeout),
    }
}

/// A request body that ended in an error: the client reset the stream (`client_gone`, counted
/// as its reset), or `h2` found it malformed (a `content-length` that DATA does not match, a
/// flow-control violation) and reset it itself (`bad_request`, counted as the proxy's reset).
fn body_error(worker: &Worker, e: &h2::Error) -> ProxyError {
    if e.is_remote() {
        worker.metrics().h2(H2Event::ResetByClient);
        ProxyError::ClientGone
    } else {
        worker.metrics().h2(H2Event::ResetByProxy);
        ProxyError::BadRequest
    }
}
