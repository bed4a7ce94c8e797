//! An HTTP/1.1 client's request to an upstream group that speaks HTTP/2 (`protocol = "h2c"` or
//! `"h2"`): the request head translated into an HTTP/2 stream on the worker's session to the
//! server (`data::upstream::session`), the body de-chunked into DATA frames, the response head
//! translated back, its DATA relayed (chunked for an HTTP/1.1 client when no length is known,
//! with the trailers; until close for HTTP/1.0). Hot path, on the HTTP/1.1 connection's working
//! set.
//!
//! The translation builds an `http` header map per request (HTTP/2's own representation):
//! unlike the HTTP/1.1-to-HTTP/1.1 path, this one allocates per request.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::header::VIA;
use http::{HeaderName, HeaderValue, Method, Request};
use tokio::io::AsyncReadExt;

use crate::data::error::ProxyError;
use crate::data::h1::body::ReqBody;
use crate::data::h1::chunked;
use crate::data::h1::conn::{Active, Progress, write_within};
use crate::data::h1::head::Kind;
use crate::data::h1::rewrite::field;
use crate::data::io::ClientIo;
use crate::data::metrics::H2Event;
use crate::data::upstream::session;
use crate::snapshot::{Route, Snapshot, UpstreamGroup};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl<S: ClientIo> Active<'_, S> {
    /// Proxies the request whose head is at the front of `buf` over HTTP/2. `Ok(keep_alive)`.
    pub(super) async fn exchange_h2(
        &mut self,
        snap: &Snapshot,
        route: &Route,
        group: &UpstreamGroup,
        progress: &mut Progress,
    ) -> Result<bool, ProxyError> {
        let limits = &snap.limits;
        // An upgrade (WebSocket) has no HTTP/2 form here (extended CONNECT is not offered).
        if self.s.req.upgrade.is_some() {
            return Err(ProxyError::BadResponse);
        }
        let request = self.h2_request(snap, route, group)?;
        let mut body = ReqBody::new(self.s.req.framing, limits.max_body_bytes);
        let head_len = self.s.req.len;
        self.s.buf.consume(head_len);
        let is_head = self.s.req.is_head;

        let server = self.worker.pick(route.group, group);
        self.worker.begin(server.id);
        let worker = std::rc::Rc::clone(&self.worker);
        let _in_flight = EndInFlight { worker: &worker, server: server.id };
        let (send_req, _slot) = session::stream(&self.worker, server, group).await?;
        let timers = &self.worker.timers;
        let mut send_req = match timers.within(self.timer_slot, timers.deadline(group.connect_timeout), send_req.ready()).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err(ProxyError::UpstreamClosed),
            Err(_) => return Err(ProxyError::ConnectTimeout),
        };
        let (response, up_send) = send_req.send_request(request, body.is_none()).map_err(|_| ProxyError::UpstreamClosed)?;
        self.worker.metrics().h2(H2Event::UpstreamStream);
        match body.as_mut() {
            Some(b) => self.pump_h1_body(b, up_send, limits.client_idle_timeout, progress).await?,
            None => progress.request_done = true,
        }
        let timers = &self.worker.timers;
        let response = match timers.within(self.timer_slot, timers.deadline(group.response_header_timeout), response).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if e.is_reset() {
                    self.worker.metrics().h2(H2Event::UpstreamReset);
                }
                return Err(ProxyError::BadResponse);
            }
            Err(_) => return Err(ProxyError::ResponseTimeout),
        };
        let (head, up_body) = response.into_parts();
        self.s.res.status = head.status.as_u16();

        // The response head for an HTTP/1.1 client.
        let end = up_body.is_end_stream() || is_head || matches!(head.status.as_u16(), 204 | 304);
        let length = head.headers.contains_key(http::header::CONTENT_LENGTH);
        let chunked = !end && !length && self.s.req.minor == 1;
        let until_close = !end && !length && self.s.req.minor == 0;
        let keep = self.s.req.keep_alive && progress.request_done && !until_close && !self.worker.drain.is_draining();
        let out = &mut self.s.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(head.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(head.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &head.headers {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        field(out, b"Via", &snap.via);
        if chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if up_body.is_end_stream() && !length && !is_head && !matches!(head.status.as_u16(), 204 | 304) {
            out.extend_from_slice(b"Content-Length: 0\r\n");
        }
        match (keep, self.s.req.minor) {
            (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
            (true, 0) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            (true, _) => {}
        }
        out.extend_from_slice(b"\r\n");
        progress.responded = true;
        let idle = limits.client_idle_timeout;
        self.write_client_out(idle).await?;
        if !end {
            self.relay_h2_body(up_body, chunked, group.response_header_timeout, idle).await?;
        }
        Ok(keep)
    }

    /// The HTTP/2 request for the head at the front of `buf`: method, the upstream's scheme, the
    /// Host as authority, the path (prefix stripped when the route says so), the fields but the
    /// hop-by-hop ones (and `host`, re-emitted as the authority), `X-Forwarded-*` and `Via`.
    fn h2_request(&mut self, snap: &Snapshot, route: &Route, group: &UpstreamGroup) -> Result<Request<()>, ProxyError> {
        let buf = self.s.buf.filled();
        let req = &self.s.req;
        let method = Method::from_bytes(req.method.of(buf)).map_err(|_| ProxyError::BadRequest)?;
        let host = req.route_host(buf);
        let out = &mut self.s.out;
        out.clear();
        out.extend_from_slice(if group.tls.is_some() { b"https://" } else { b"http://" });
        out.extend_from_slice(host);
        let mut path = req.target.path.of(buf);
        if route.strip_prefix {
            path = path.get(route.prefix.len()..).unwrap_or(b"");
        }
        if path.first() != Some(&b'/') {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        let uri = http::Uri::try_from(out.as_slice()).map_err(|_| ProxyError::BadRequest)?;
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        out.clear();
        for f in &req.fields.list {
            match f.kind {
                Kind::XForwardedFor => {
                    if !f.value.is_empty() {
                        out.extend_from_slice(f.value.of(buf));
                        out.extend_from_slice(b", ");
                    }
                    continue;
                }
                // Hop-by-hop in HTTP/1.1, forbidden in HTTP/2 (RFC 9113 §8.2.2), or re-emitted.
                Kind::Host | Kind::TransferEncoding | Kind::Connection | Kind::KeepAlive | Kind::ProxyConnection | Kind::Upgrade => {
                    continue;
                }
                Kind::Expect | Kind::XForwardedProto | Kind::XForwardedHost => continue,
                Kind::Te if !f.value.of(buf).eq_ignore_ascii_case(b"trailers") => continue,
                _ if f.drop => continue,
                _ => {}
            }
            let name = HeaderName::from_bytes(f.name.of(buf)).map_err(|_| ProxyError::BadRequest)?;
            let value = HeaderValue::from_bytes(f.value.of(buf)).map_err(|_| ProxyError::BadRequest)?;
            headers.append(name, value);
        }
        out.extend_from_slice(self.ip);
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(out).map_err(|_| ProxyError::BadRequest)?);
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if S::TLS { "https" } else { "http" }));
        if !host.is_empty() {
            headers.insert(X_FORWARDED_HOST, HeaderValue::from_bytes(host).map_err(|_| ProxyError::BadRequest)?);
        }
        headers.append(VIA, HeaderValue::from_bytes(&snap.via).map_err(|_| ProxyError::BadRequest)?);
        Ok(request)
    }

    /// Streams the request body (already-read bytes first, then the socket) to the upstream
    /// stream, de-chunked, as its window allows.
    async fn pump_h1_body(
        &mut self,
        body: &mut ReqBody,
        mut up: SendStream<Bytes>,
        idle: Duration,
        progress: &mut Progress,
    ) -> Result<(), ProxyError> {
        if self.s.req.expect_continue && self.s.buf.is_empty() {
            self.write_client_interim(idle).await?;
        }
        let mut data = BytesMut::new();
        while !progress.request_done {
            if self.s.buf.is_empty() {
                let timers = &self.worker.timers;
                match timers.within(self.timer_slot, timers.deadline(idle), self.client.read(self.s.buf.spare())).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::ClientGone),
                    Ok(Ok(n)) => self.s.buf.advance(n),
                    Err(_) => return Err(ProxyError::RequestTimeout),
                }
            }
            let mut done = false;
            let n = body.take_data(self.s.buf.filled(), &mut data, &mut done)?;
            self.s.buf.consume(n);
            progress.request_done = done;
            let mut frame = data.split().freeze();
            while !frame.is_empty() {
                up.reserve_capacity(frame.len());
                let mut cap = up.capacity();
                if cap == 0 {
                    let timers = &self.worker.timers;
                    cap = match timers.within(self.timer_slot, timers.deadline(idle), std::future::poll_fn(|cx| up.poll_capacity(cx))).await
                    {
                        Ok(Some(Ok(c))) => c,
                        _ => return Err(ProxyError::UpstreamClosed),
                    };
                    if cap == 0 {
                        continue;
                    }
                }
                let chunk = frame.split_to(cap.min(frame.len()));
                up.send_data(chunk, false).map_err(|_| ProxyError::UpstreamClosed)?;
            }
        }
        up.send_data(Bytes::new(), true).map_err(|_| ProxyError::UpstreamClosed)
    }

    /// `100 Continue` to a client that waits for it before sending its body.
    async fn write_client_interim(&mut self, idle: Duration) -> Result<(), ProxyError> {
        write_within(&self.worker.timers, self.timer_slot, self.client, b"HTTP/1.1 100 Continue\r\n\r\n", idle)
            .await
            .map_err(|()| ProxyError::ClientGone)
    }

    /// Relays the response's DATA (chunk-framed when `chunked`) and, chunked, its trailers.
    async fn relay_h2_body(&mut self, mut body: RecvStream, chunked: bool, stall: Duration, idle: Duration) -> Result<(), ProxyError> {
        loop {
            let timers = &self.worker.timers;
            let data = match timers.within(self.timer_slot, timers.deadline(stall), body.data()).await {
                Ok(None) => break,
                Ok(Some(Ok(d))) => d,
                Ok(Some(Err(e))) => {
                    if e.is_reset() {
                        self.worker.metrics().h2(H2Event::UpstreamReset);
                    }
                    return Err(ProxyError::UpstreamBroken);
                }
                Err(_) => return Err(ProxyError::UpstreamBroken),
            };
            let n = data.len();
            if n == 0 {
                continue;
            }
            if chunked {
                let out = &mut self.s.out;
                out.clear();
                chunked::size_line(out, n);
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
                self.write_client_out(idle).await?;
            } else {
                write_within(&self.worker.timers, self.timer_slot, self.client, &data, idle).await.map_err(|()| ProxyError::ClientGone)?;
            }
            let _ = body.flow_control().release_capacity(n);
        }
        if chunked {
            let timers = &self.worker.timers;
            let trailers = match timers.within(self.timer_slot, timers.deadline(stall), body.trailers()).await {
                Ok(Ok(t)) => t,
                _ => return Err(ProxyError::UpstreamBroken),
            };
            let out = &mut self.s.out;
            out.clear();
            out.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailers {
                for (name, value) in t {
                    if chunked::forbidden_trailer(name.as_str().as_bytes()) {
                        continue;
                    }
                    field(out, name.as_str().as_bytes(), value.as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
            self.write_client_out(idle).await?;
        }
        Ok(())
    }
}

/// Counts a request in flight to one server on this worker for as long as it lives.
struct EndInFlight<'a> {
    worker: &'a crate::data::worker::Worker,
    server: usize,
}

impl Drop for EndInFlight<'_> {
    fn drop(&mut self) {
        self.worker.end(self.server);
    }
}
