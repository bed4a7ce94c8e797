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

use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, HOST, VIA};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::data::access::AccessRecord;
use crate::data::error::ProxyError;
use crate::data::h1::body::ResBody;
use crate::data::h1::chunked;
use crate::data::h1::client::{self, ClientSet, SendError};
use crate::data::h1::head::{Framing, Kind, parse_content_length};
use crate::data::h1::rewrite::{self, ForwardBody};
use crate::data::h2::conn::ConnInfo;
use crate::data::metrics::{H2Event, ROUTE_NONE};
use crate::data::upstream::connect::connect;
use crate::data::upstream::pool::UpstreamConn;
use crate::data::upstream::session;
use crate::data::worker::Worker;
use crate::snapshot::{Route, Snapshot, UpstreamGroup};

/// Serves one stream to its end, then counts it.
pub async fn serve(worker: Rc<Worker>, info: Rc<ConnInfo>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let snap = worker.snapshot();
    let started = Instant::now();
    worker.timers.observe(started);
    worker.metrics().start();
    let mut access = None;
    if worker.shared.access_log.is_some() {
        access = Some(access_start(&req, &info, worker.index));
    }
    let mut ex = Exchange {
        worker: &worker,
        info: &info,
        slot: worker.timers.register(),
        set: client::take(),
        route: ROUTE_NONE,
        responded: false,
        status: 0,
    };
    // Until the response head is ready, a client that resets the stream ends the exchange at
    // once: the upstream connection in use is closed, not left to finish work nobody will read
    // (rapid reset, CVE-2023-44487, then costs the upstream nothing more than the reset streams
    // the `h2` bound lets through). After it, a reset shows as a failed send.
    let prepared = {
        let request = ex.request(&snap, req, started);
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
    let result = match prepared {
        Ok(Prepared::H1 { up, group, is_head }) => {
            ex.respond(up, &snap.groups[group], &mut respond, is_head, snap.limits.client_idle_timeout).await
        }
        Ok(Prepared::H2 { route, parts, body }) => ex.forward_h2(&snap, route, parts, body, &mut respond).await,
        Err(e) => Err(e),
    };
    let status = match result {
        Ok(()) => ex.status,
        Err(e) => e.status(),
    };
    let elapsed = started.elapsed();
    worker.metrics().finish(ex.route, status, elapsed);
    if let Err(e) = result {
        worker.metrics().error(e);
        if !ex.responded {
            answer_error(&worker, &mut respond, e);
        }
    }
    if let Some(mut r) = access {
        r.status = status;
        r.latency = elapsed;
        r.route = if ex.route == ROUTE_NONE { u16::MAX } else { ex.route.min(u16::MAX as usize - 1) as u16 };
        if let Some(log) = &worker.shared.access_log
            && !log.send(r)
        {
            worker.metrics().access_log_dropped();
        }
    }
    let Exchange { slot, set, .. } = ex;
    worker.timers.release(slot);
    client::give(set);
    info.stream_done(&worker);
}

/// The request line copied into a fixed-size access-log record (no allocation).
fn access_start(req: &Request<RecvStream>, info: &ConnInfo, worker: usize) -> AccessRecord {
    let host = req.uri().authority().map_or(b"".as_slice(), |a| a.as_str().as_bytes());
    let mut r = AccessRecord::new(req.method().as_str().as_bytes(), host, req.uri().path().as_bytes(), info.ip(), worker);
    r.time = std::time::SystemTime::now();
    r
}

/// An error before any response: the status it maps to, with an empty body; a client that is
/// gone or an upstream that broke gets the stream reset.
#[cold]
fn answer_error(worker: &Worker, respond: &mut SendResponse<Bytes>, e: ProxyError) {
    if e.response().is_none() {
        if e != ProxyError::ClientGone {
            worker.metrics().h2(H2Event::ResetByProxy);
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
        return;
    }
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    // The stream may be gone already (reset by the client, or by `h2` for a malformed body).
    let _ = respond.send_response(res, true);
}

/// Counts a request in flight to one server on this worker for as long as it lives.
struct InFlight<'a> {
    worker: &'a Worker,
    server: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.worker.end(self.server);
    }
}

/// Where a routed stream goes next.
enum Prepared<'s> {
    /// Sent to an HTTP/1.1 upstream, whose response head is parsed in the working set.
    H1 { up: UpstreamConn, group: usize, is_head: bool },
    /// For an HTTP/2 upstream: forwarded as a stream (`forward_h2`).
    H2 { route: &'s Route, parts: http::request::Parts, body: RecvStream },
}

struct Exchange<'a> {
    worker: &'a Worker,
    info: &'a ConnInfo,
    /// The stream's slot in the worker's timer table.
    slot: usize,
    set: ClientSet,
    route: usize,
    /// Response headers went to the client: an error can only reset the stream now.
    responded: bool,
    status: u16,
}

/// Methods whose request may be replayed on a fresh connection when a pooled one was stale.
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

impl Exchange<'_> {
    /// Routes the request, sends it upstream (head and body) and reads the response head:
    /// `(the upstream connection, its group's index, whether the request was a HEAD)`.
    async fn request<'s>(&mut self, snap: &'s Snapshot, req: Request<RecvStream>, started: Instant) -> Result<Prepared<'s>, ProxyError> {
        #[cfg(feature = "planted")]
        crate::data::planted::at(crate::data::planted::Site::Request, 0);
        let limits = &snap.limits;
        let (parts, mut body) = req.into_parts();
        // CONNECT (a tunnel, or extended CONNECT for WebSockets) is not offered over HTTP/2.
        if parts.method == Method::CONNECT {
            return Err(ProxyError::BadRequest);
        }
        let authority = parts.uri.authority().map_or(b"".as_slice(), |a| a.as_str().as_bytes());
        let host = if authority.is_empty() { parts.headers.get(HOST).map_or(b"".as_slice(), |v| v.as_bytes()) } else { authority };
        let target = parts.uri.path_and_query().map_or(b"/".as_slice(), |p| p.as_str().as_bytes());
        // The same bounds as an HTTP/1.1 head (the header list's size is `h2`'s to bound).
        if target.len() + parts.method.as_str().len() + 11 > limits.max_request_line_bytes {
            return Err(ProxyError::UriTooLong);
        }
        if parts.headers.len() > limits.max_headers {
            return Err(ProxyError::HeadersTooLarge);
        }
        let Some(route) = snap.router.lookup(host, parts.uri.path().as_bytes()) else {
            return Err(ProxyError::NoRoute);
        };
        self.route = route.id;
        let group = &snap.groups[route.group];

        let length = content_length(&parts.headers, limits.max_body_bytes)?;
        if group.h2 {
            // HTTP/2 to the upstream: the stream is forwarded as it is, after the client's reset
            // watch (its body streams while the response comes: see `forward_h2`).
            return Ok(Prepared::H2 { route, parts, body });
        }
        let framing = match (body.is_end_stream(), length) {
            (_, Some(_)) => ForwardBody::AsFields,
            (true, None) if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => ForwardBody::EmptyLength,
            (true, None) => ForwardBody::AsFields,
            (false, None) => ForwardBody::Chunked,
        };
        let fields = || parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        rewrite::forwarded_request_head(
            &mut self.set.out,
            parts.method.as_str().as_bytes(),
            target,
            authority,
            fields,
            route,
            self.info.ip(),
            self.info.tls,
            &snap.via,
            framing,
        );
        let is_head = parts.method == Method::HEAD;
        let replayable = body.is_end_stream() && idempotent(&parts.method);

        let server = self.worker.pick(route.group, group);
        self.worker.begin(server.id);
        let _in_flight = InFlight { worker: self.worker, server: server.id };
        let pooled = self.worker.pool.borrow_mut().checkout(server.id, group.idle_timeout, started);
        let (mut up, mut reused) = match pooled {
            Some(c) => {
                self.worker.metrics().upstream_reused();
                (c, true)
            }
            None => (connect(self.worker, server, group).await?, false),
        };
        let timers = &self.worker.timers;
        let mut deadline = timers.deadline(group.response_header_timeout);
        loop {
            match self
                .send(&mut up, &mut body, (framing, length), limits.max_body_bytes, limits.client_idle_timeout, is_head, deadline)
                .await
            {
                Ok(()) => break,
                Err(SendError::Stale) if reused && replayable => {
                    self.worker.metrics().retry();
                    up = connect(self.worker, server, group).await?;
                    reused = false;
                    timers.observe(Instant::now());
                    deadline = timers.deadline(group.response_header_timeout);
                }
                Err(SendError::Stale) => return Err(ProxyError::UpstreamClosed),
                Err(SendError::Proxy(e)) => return Err(e),
            }
        }
        Ok(Prepared::H1 { up, group: route.group, is_head })
    }

    /// Writes the request head and streams the body, then reads the response head.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        up: &mut UpstreamConn,
        body: &mut RecvStream,
        (framing, length): (ForwardBody, Option<u64>),
        max_body: u64,
        idle: Duration,
        is_head: bool,
        deadline: u64,
    ) -> Result<(), SendError> {
        let timers = &self.worker.timers;
        if length == Some(0) && !body.is_end_stream() {
            // `content-length: 0` on a stream still open: the request is whole only at its
            // END_STREAM (DATA would make it malformed, RFC 9113 §8.1.1), and its head alone
            // would be a whole request upstream: wait for the end first.
            loop {
                match timers.within(self.slot, timers.deadline(idle), body.data()).await {
                    Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    Ok(None) => break,
                    Ok(Some(Ok(d))) if d.is_empty() => {}
                    Ok(Some(Ok(_))) => return Err(ProxyError::BadRequest.into()),
                    Ok(Some(Err(e))) => return Err(body_error(self.worker, &e).into()),
                }
            }
        }
        client::send(timers, self.slot, &mut up.stream, &self.set.out, deadline).await?;
        if !body.is_end_stream() {
            let chunked = framing == ForwardBody::Chunked;
            let mut total: u64 = 0;
            // The body's last byte, held back until the client's END_STREAM: a body that
            // reaches its `content-length` is a whole request upstream, and more DATA after it
            // (which `h2` refuses) must not have made one.
            let mut held: Option<u8> = None;
            loop {
                let next = match timers.within(self.slot, timers.deadline(idle), body.data()).await {
                    Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(body_error(self.worker, &e).into()),
                    Ok(Some(Ok(data))) => data,
                };
                let n = next.len();
                total += n as u64;
                if total > max_body {
                    return Err(ProxyError::BodyTooLarge.into());
                }
                if n == 0 {
                    continue;
                }
                let sent = if chunked {
                    let out = &mut self.set.out;
                    out.clear();
                    chunked::size_line(out, n);
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&next);
                    out.extend_from_slice(b"\r\n");
                    client::send(timers, self.slot, &mut up.stream, out, timers.deadline(idle)).await
                } else if length == Some(total) && !body.is_end_stream() {
                    held = next.last().copied();
                    client::send(timers, self.slot, &mut up.stream, &next[..n - 1], timers.deadline(idle)).await
                } else {
                    client::send(timers, self.slot, &mut up.stream, &next, timers.deadline(idle)).await
                };
                // The upstream took the bytes: the client may send that much more.
                let _ = body.flow_control().release_capacity(n);
                match sent {
                    Ok(()) => {}
                    Err(SendError::Stale) => return Err(ProxyError::UpstreamClosed.into()),
                    Err(e) => return Err(e),
                }
            }
            if let Some(b) = held {
                match client::send(timers, self.slot, &mut up.stream, &[b], timers.deadline(idle)).await {
                    Ok(()) => {}
                    Err(SendError::Stale) => return Err(ProxyError::UpstreamClosed.into()),
                    Err(e) => return Err(e),
                }
            }
            if chunked {
                // The last chunk, with the request's trailers if it had any (gRPC's are on the
                // response; a request's are rare but legal).
                let trailers = match timers.within(self.slot, timers.deadline(idle), body.trailers()).await {
                    Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    Ok(Err(_)) => return Err(ProxyError::ClientGone.into()),
                    Ok(Ok(t)) => t,
                };
                let out = &mut self.set.out;
                out.clear();
                out.extend_from_slice(b"0\r\n");
                if let Some(t) = &trailers {
                    for (name, value) in t {
                        if chunked::forbidden_trailer(name.as_str().as_bytes()) {
                            continue;
                        }
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"\r\n");
                match client::send(timers, self.slot, &mut up.stream, out, timers.deadline(idle)).await {
                    Ok(()) => {}
                    Err(SendError::Stale) => return Err(ProxyError::UpstreamClosed.into()),
                    Err(e) => return Err(e),
                }
            }
        }
        let mut answered = false;
        client::read_response_head(timers, self.slot, &mut self.set, &mut up.stream, is_head, deadline, &mut answered).await
    }

    /// Sends the response head parsed at the front of the upstream buffer, then its body.
    async fn respond(
        &mut self,
        mut up: UpstreamConn,
        group: &UpstreamGroup,
        respond: &mut SendResponse<Bytes>,
        is_head: bool,
        idle: Duration,
    ) -> Result<(), ProxyError> {
        let res = &self.set.res;
        // No upgrade over HTTP/2: a 101 to a request that asked for none is invalid anyway.
        if res.status == 101 {
            return Err(ProxyError::BadResponse);
        }
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(res.status).map_err(|_| ProxyError::BadResponse)?;
        let buf = self.set.up.filled();
        // The head's bytes once, as shared bytes in the stream's reused frame buffer: every
        // relayed value is a slice of them (a value of its own would be an allocation per field).
        self.set.body.clear();
        self.set.body.put_slice(buf.get(..res.len).unwrap_or(buf));
        let head = self.set.body.split().freeze();
        let headers = response.headers_mut();
        for f in &res.fields.list {
            // Hop-by-hop fields (and those `Connection` names) have no place in HTTP/2.
            if f.drop || matches!(f.kind, Kind::TransferEncoding | Kind::Connection | Kind::KeepAlive | Kind::Upgrade | Kind::Te) {
                continue;
            }
            let name = HeaderName::from_bytes(f.name.of(buf)).map_err(|_| ProxyError::BadResponse)?;
            let value =
                head.get(f.value.start as usize..f.value.end as usize).map(|_| head.slice(f.value.start as usize..f.value.end as usize));
            let value = value.and_then(|v| HeaderValue::from_maybe_shared(v).ok()).ok_or(ProxyError::BadResponse)?;
            headers.append(name, value);
        }
        headers.append(VIA, self.info.via.clone());
        self.status = res.status;
        let framing = res.framing;
        let keep_alive = res.keep_alive;
        self.set.up.consume(res.len);
        let no_body = is_head || matches!(framing, Framing::None | Framing::Length(0));
        let mut send = respond.send_response(response, no_body).map_err(|_| ProxyError::ClientGone)?;
        self.responded = true;
        let done = match ResBody::new(framing, true) {
            Some(b) if !no_body => self.relay_body(&mut up, b, &mut send, group, idle).await,
            _ => Ok(()),
        };
        if let Err(e) = done {
            // Mid-body: the stream is reset, so the client never takes a cut body as whole.
            if e != ProxyError::ClientGone {
                self.worker.metrics().h2(H2Event::ResetByProxy);
                send.send_reset(Reason::INTERNAL_ERROR);
            } else {
                send.send_reset(Reason::CANCEL);
            }
            return Err(e);
        }
        if keep_alive && framing != Framing::UntilClose && self.set.up.is_empty() {
            self.worker.pool.borrow_mut().checkin(up, group.idle_pool_size, Instant::now());
        }
        Ok(())
    }

    /// Relays the response body from the upstream buffer, de-chunked, one frame per read.
    async fn relay_body(
        &mut self,
        up: &mut UpstreamConn,
        mut body: ResBody,
        send: &mut SendStream<Bytes>,
        group: &UpstreamGroup,
        idle: Duration,
    ) -> Result<(), ProxyError> {
        let timers = &self.worker.timers;
        // A chunked body's trailer section collects in the request head's buffer (sent by now).
        self.set.out.clear();
        loop {
            let mut done = false;
            if !self.set.up.is_empty() {
                let set = &mut self.set;
                let (n, end) =
                    body.take_keeping_trailers(set.up.filled(), &mut set.body, &mut set.out).map_err(|_| ProxyError::UpstreamBroken)?;
                if !body.dechunks() {
                    set.body.put_slice(&set.up.filled()[..n]);
                }
                set.up.consume(n);
                done = end;
            }
            let frame = if !self.set.body.is_empty() || done { self.set.body.split().freeze() } else { Bytes::new() };
            // The trailers, if any, end the stream in a HEADERS frame of their own.
            let trailers = if done && !self.set.out.is_empty() { self.trailers()? } else { None };
            if !frame.is_empty() || (done && trailers.is_none()) {
                self.send_data(send, frame, done && trailers.is_none(), idle).await?;
            }
            if let Some(t) = trailers {
                send.send_trailers(t).map_err(|_| ProxyError::ClientGone)?;
            }
            if done {
                return Ok(());
            }
            match client::read_more(timers, self.slot, &mut self.set, &mut up.stream, timers.deadline(group.response_header_timeout)).await
            {
                Ok(0) if matches!(body, ResBody::UntilClose) => {
                    return self.send_data(send, Bytes::new(), true, idle).await;
                }
                Ok(n) if n > 0 => {}
                _ => return Err(ProxyError::UpstreamBroken),
            }
        }
    }

    /// The trailer section collected in `set.out` (field lines, validated by the chunked decoder)
    /// as the trailers of an HTTP/2 stream: copied once into the stream's reused frame buffer,
    /// each value a slice of that copy; gRPC's names are static (no allocation), other names
    /// are made by `http` (lower-cased; an allocation each); framing, routing and connection
    /// fields are dropped as on HTTP/1.1 ([`chunked::forbidden_trailer`]). `None` when nothing
    /// is left to send.
    fn trailers(&mut self) -> Result<Option<http::HeaderMap>, ProxyError> {
        self.set.body.clear();
        self.set.body.put_slice(&self.set.out);
        let section = self.set.body.split().freeze();
        let mut map = http::HeaderMap::new();
        let mut at = 0;
        while at < section.len() {
            let line_end = section[at..].windows(2).position(|w| w == b"\r\n").map(|p| at + p).ok_or(ProxyError::BadResponse)?;
            let line = &section[at..line_end];
            let colon = line.iter().position(|&b| b == b':').ok_or(ProxyError::BadResponse)?;
            let name = trailer_name(&line[..colon])?;
            let mut start = at + colon + 1;
            let mut end = line_end;
            while start < end && matches!(section[start], b' ' | b'\t') {
                start += 1;
            }
            while end > start && matches!(section[end - 1], b' ' | b'\t') {
                end -= 1;
            }
            at = line_end + 2;
            if chunked::forbidden_trailer(name.as_str().as_bytes()) {
                continue;
            }
            let value = HeaderValue::from_maybe_shared(section.slice(start..end)).map_err(|_| ProxyError::BadResponse)?;
            map.append(name, value);
        }
        Ok(if map.is_empty() { None } else { Some(map) })
    }

    /// Sends `data` as the client's flow-control window allows, waiting for it to open for at
    /// most `idle` at a time (a client that never opens it is gone: the stream is reset).
    async fn send_data(&self, send: &mut SendStream<Bytes>, mut data: Bytes, end: bool, idle: Duration) -> Result<(), ProxyError> {
        if data.is_empty() {
            return send.send_data(data, end).map_err(|_| ProxyError::ClientGone);
        }
        let timers = &self.worker.timers;
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let mut cap = send.capacity();
            if cap == 0 {
                cap = match timers.within(self.slot, timers.deadline(idle), std::future::poll_fn(|cx| send.poll_capacity(cx))).await {
                    Ok(Some(Ok(n))) => n,
                    Ok(_) => return Err(ProxyError::ClientGone),
                    Err(_) => {
                        // The client kept its window shut for the idle timeout: the proxy
                        // resets the stream (CANCEL).
                        self.worker.metrics().h2(H2Event::ResetByProxy);
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
                        self.send_data(&mut send, data, false, idle).await?;
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

/// A trailer field's name for HTTP/2: gRPC's as static names, others lower-cased by `http`.
fn trailer_name(name: &[u8]) -> Result<HeaderName, ProxyError> {
    for known in [&GRPC_STATUS, &GRPC_MESSAGE, &GRPC_STATUS_DETAILS] {
        if name.eq_ignore_ascii_case(known.as_str().as_bytes()) {
            return Ok(known.clone());
        }
    }
    HeaderName::from_bytes(name).map_err(|_| ProxyError::BadResponse)
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// The request's `content-length`: one field of digits (`h2` checks that DATA adds up to the
/// first one, so a second, different one would frame the body otherwise upstream: refused, as
/// HTTP/1.1 refuses it), at most `max`.
fn content_length(headers: &http::HeaderMap, max: u64) -> Result<Option<u64>, ProxyError> {
    let mut all = headers.get_all(CONTENT_LENGTH).iter();
    let Some(v) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(ProxyError::BadRequest);
    }
    match parse_content_length(v.as_bytes()) {
        None => Err(ProxyError::BadRequest),
        Some(n) if n > max => Err(ProxyError::BodyTooLarge),
        Some(n) => Ok(Some(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1234"), Some(1234));
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"+1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }
}
