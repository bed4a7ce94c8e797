//! One request of a multiplexed client protocol (HTTP/2, HTTP/3) to an HTTP/1.1 upstream: what
//! every such stream does whatever its framing, written once. Hot path.
//!
//! A protocol hands over the request's head (`http::request::Parts`) and two sides of its
//! stream: a [`RequestBody`] (DATA as it arrives, its flow-control credit given back once the
//! bytes are upstream, the trailers) and a [`ResponseSink`] (the response head, DATA as the
//! client's window takes it, trailers, a reset). Here: the routing on the snapshot (the
//! authority as Host, the same bounds as an HTTP/1.1 head), the request head written for the
//! upstream with `X-Forwarded-*` and `Via` (`h1::rewrite`), the server picked and a pooled
//! connection taken or opened (a stale pooled one replayed when the request allows it), the body
//! streamed (chunked when its length is unknown), the response head parsed and relayed as an
//! `http` head whose values are slices of one copy of it, the body de-chunked frame by frame,
//! trailers relayed, and errors mapped as on HTTP/1.1: before the response started, the same
//! status with an empty body; after, the stream is reset.
//!
//! The protocols (`h2`, `h3`) use this module and never each other; this module uses HTTP/1.1's
//! codec and client side (`h1::head`, `body`, `chunked`, `rewrite`, `client`), never a protocol's
//! server side (the static gate's layering rules).

use std::cell::Cell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use http::header::{ALT_SVC, CONTENT_LENGTH, HOST, VIA};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use tokio::time::Instant;

use crate::data::access::AccessRecord;
use crate::data::error::ProxyError;
use crate::data::h1::body::ResBody;
use crate::data::h1::chunked;
use crate::data::h1::client::{self, ClientSet, SendError};
use crate::data::h1::head::{Framing, Kind, parse_content_length};
use crate::data::h1::rewrite::{self, ForwardBody};
use crate::data::metrics::ROUTE_NONE;
use crate::data::upstream::connect::connect;
use crate::data::upstream::pool::UpstreamConn;
use crate::data::worker::Worker;
use crate::snapshot::{Route, Snapshot, UpstreamGroup};

/// What every stream of a connection reads: the client's address (`X-Forwarded-For`, access
/// log), whether it spoke TLS, the `Via` value as a header value (made once per connection), and
/// the connection's open streams and idle deadline, which the streams keep up to date.
#[derive(Debug)]
pub struct ConnInfo {
    ip: [u8; 48],
    ip_len: u8,
    pub tls: bool,
    pub via: HeaderValue,
    /// `Alt-Svc` for each response, when the listener also serves HTTP/3 (made once per
    /// connection; each response shares its bytes).
    pub alt_svc: Option<HeaderValue>,
    /// Streams accepted and not yet finished.
    pub open: Cell<usize>,
    /// When the connection is idle past its timeout, if no stream is open by then.
    pub idle_until: Cell<u64>,
}

impl ConnInfo {
    /// Per connection: the peer's address formatted once into a fixed array (no allocation).
    pub fn new(peer: SocketAddr, tls: bool, via: &[u8], idle_until: u64) -> ConnInfo {
        let mut ip = [0u8; 48];
        let ip_len = {
            let mut w: &mut [u8] = &mut ip;
            let before = w.len();
            let _ = write!(w, "{}", peer.ip().to_canonical());
            (before - w.len()) as u8
        };
        ConnInfo {
            ip,
            ip_len,
            tls,
            // Validated when the config was loaded (a server name of token bytes).
            via: HeaderValue::from_bytes(via).unwrap_or(HeaderValue::from_static("1.1 proxy")),
            alt_svc: None,
            open: Cell::new(0),
            idle_until: Cell::new(idle_until),
        }
    }

    /// Responses on this connection advertise HTTP/3 on UDP `port` (0: they do not). Per
    /// connection.
    pub fn advertising_h3(mut self, port: u16) -> ConnInfo {
        if port != 0 {
            let mut v = Vec::with_capacity(32);
            crate::data::h1::rewrite::alt_svc_value(&mut v, port);
            self.alt_svc = HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok();
        }
        self
    }

    pub fn ip(&self) -> &[u8] {
        &self.ip[..self.ip_len as usize]
    }

    /// A stream ends: with none left open, the idle timeout counts from now.
    pub fn stream_done(&self, worker: &Worker) {
        self.open.set(self.open.get().saturating_sub(1));
        if self.open.get() == 0 {
            self.idle_until.set(worker.timers.deadline(worker.snapshot().limits.client_idle_timeout));
        }
    }
}

/// A client stream's request body, as its protocol delivers it. Worker-local (never `Send`).
#[allow(async_fn_in_trait)] // reason: called on the worker's own thread only; no Send bound wanted
pub trait RequestBody {
    /// The client ended the stream: no more DATA will come.
    fn is_end_stream(&self) -> bool;
    /// The next DATA, `None` at the end; an error mapped (and counted) by the protocol.
    async fn data(&mut self, worker: &Worker) -> Option<Result<Bytes, ProxyError>>;
    /// `n` bytes went upstream: the client may send that much more.
    fn release(&mut self, n: usize);
    /// The trailers after the last DATA, if any.
    async fn trailers(&mut self) -> Result<Option<HeaderMap>, ProxyError>;
}

/// A client stream's response side. Each call is bounded by `idle` on the stream's timer slot.
#[allow(async_fn_in_trait)] // reason: as RequestBody
pub trait ResponseSink {
    /// The response head; `end` when no body follows.
    async fn send_head(&mut self, worker: &Worker, slot: usize, head: Response<()>, end: bool, idle: Duration) -> Result<(), ProxyError>;
    /// Body bytes as the client's flow control allows; `end` closes the stream.
    async fn send_data(&mut self, worker: &Worker, slot: usize, data: Bytes, end: bool, idle: Duration) -> Result<(), ProxyError>;
    /// The trailers, which close the stream.
    async fn send_trailers(&mut self, worker: &Worker, slot: usize, trailers: HeaderMap, idle: Duration) -> Result<(), ProxyError>;
    /// Ends the stream abnormally (`e` says why: a client that is gone, or the proxy's failure).
    fn reset(&mut self, worker: &Worker, e: ProxyError);
}

/// Counts a request in flight to one server on this worker for as long as it lives.
pub struct InFlight<'a> {
    pub worker: &'a Worker,
    pub server: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.worker.end(self.server);
    }
}

/// A request sent to an HTTP/1.1 upstream, whose response head is parsed in the working set.
pub struct H1Upstream {
    pub up: UpstreamConn,
    pub group: usize,
    pub is_head: bool,
}

/// One stream's exchange: its timer slot, the HTTP/1.1 working set it borrowed, what it routed
/// to and what it answered.
pub struct Exchange<'a> {
    pub worker: &'a Worker,
    pub info: &'a ConnInfo,
    /// The stream's slot in the worker's timer table.
    pub slot: usize,
    pub set: ClientSet,
    pub route: usize,
    /// Response headers went to the client: an error can only reset the stream now.
    pub responded: bool,
    pub status: u16,
}

/// Methods whose request may be replayed on a fresh connection when a pooled one was stale.
fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The request line copied into a fixed-size access-log record (no allocation).
pub fn access_start(parts: &http::request::Parts, info: &ConnInfo, worker: usize) -> AccessRecord {
    let host = parts.uri.authority().map_or(b"".as_slice(), |a| a.as_str().as_bytes());
    let mut r = AccessRecord::new(parts.method.as_str().as_bytes(), host, parts.uri.path().as_bytes(), info.ip(), worker);
    r.time = std::time::SystemTime::now();
    r
}

impl<'a> Exchange<'a> {
    /// A stream begins: a timer slot and a working set from the worker.
    pub fn new(worker: &'a Worker, info: &'a ConnInfo) -> Self {
        Exchange { worker, info, slot: worker.timers.register(), set: client::take(), route: ROUTE_NONE, responded: false, status: 0 }
    }

    /// The stream is over: counts it (and its error), answers an error the client has not seen
    /// yet, writes its access-log record, and gives back what it borrowed.
    pub async fn end<S: ResponseSink>(self, result: Result<(), ProxyError>, started: Instant, access: Option<AccessRecord>, sink: &mut S) {
        let worker = self.worker;
        let status = match result {
            Ok(()) => self.status,
            Err(e) => e.status(),
        };
        let elapsed = started.elapsed();
        worker.metrics().finish(self.route, status, elapsed);
        if let Err(e) = result {
            worker.metrics().error(e);
            if !self.responded {
                answer_error(worker, self.slot, sink, e).await;
            }
        }
        if let Some(mut r) = access {
            r.status = status;
            r.latency = elapsed;
            r.route = if self.route == ROUTE_NONE { u16::MAX } else { self.route.min(u16::MAX as usize - 1) as u16 };
            if let Some(log) = &worker.shared.access_log
                && !log.send(r)
            {
                worker.metrics().access_log_dropped();
            }
        }
        let Exchange { slot, set, info, .. } = self;
        worker.timers.release(slot);
        client::give(set);
        info.stream_done(worker);
    }

    /// Routes the request on the snapshot (`:authority`, else `host`, as Host) within the same
    /// bounds as an HTTP/1.1 head (the field section's size is the protocol's to bound): the
    /// route and the request's `content-length`.
    pub fn route<'s>(&mut self, snap: &'s Snapshot, parts: &http::request::Parts) -> Result<(&'s Route, Option<u64>), ProxyError> {
        #[cfg(feature = "planted")]
        crate::data::planted::at(crate::data::planted::Site::Request, 0);
        let limits = &snap.limits;
        // CONNECT (a tunnel, or extended CONNECT for WebSockets) is not offered.
        if parts.method == Method::CONNECT {
            return Err(ProxyError::BadRequest);
        }
        let authority = parts.uri.authority().map_or(b"".as_slice(), |a| a.as_str().as_bytes());
        let host = if authority.is_empty() { parts.headers.get(HOST).map_or(b"".as_slice(), |v| v.as_bytes()) } else { authority };
        let target = parts.uri.path_and_query().map_or(b"/".as_slice(), |p| p.as_str().as_bytes());
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
        let length = content_length(&parts.headers, limits.max_body_bytes)?;
        Ok((route, length))
    }

    /// Sends the routed request to an HTTP/1.1 server of its group (head and body) and reads the
    /// response head.
    pub async fn request<B: RequestBody>(
        &mut self,
        snap: &Snapshot,
        route: &Route,
        parts: &http::request::Parts,
        body: &mut B,
        length: Option<u64>,
        started: Instant,
    ) -> Result<H1Upstream, ProxyError> {
        let limits = &snap.limits;
        let group = &snap.groups[route.group];
        let authority = parts.uri.authority().map_or(b"".as_slice(), |a| a.as_str().as_bytes());
        let target = parts.uri.path_and_query().map_or(b"/".as_slice(), |p| p.as_str().as_bytes());
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
            match self.send(&mut up, body, (framing, length), limits.max_body_bytes, limits.client_idle_timeout, is_head, deadline).await {
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
        Ok(H1Upstream { up, group: route.group, is_head })
    }

    #[allow(clippy::too_many_arguments)]
    async fn send<B: RequestBody>(
        &mut self,
        up: &mut UpstreamConn,
        body: &mut B,
        (framing, length): (ForwardBody, Option<u64>),
        max_body: u64,
        idle: Duration,
        is_head: bool,
        deadline: u64,
    ) -> Result<(), SendError> {
        let timers = &self.worker.timers;
        if body.is_end_stream() && length.is_some_and(|l| l > 0) {
            // A body announced and none sent (`h2` refuses this itself; `h3` does not).
            return Err(ProxyError::BadRequest.into());
        }
        if length == Some(0) && !body.is_end_stream() {
            // `content-length: 0` on a stream still open: the request is whole only at its
            // END_STREAM (DATA would make it malformed, RFC 9113 §8.1.1), and its head alone
            // would be a whole request upstream: wait for the end first.
            loop {
                match timers.within(self.slot, timers.deadline(idle), body.data(self.worker)).await {
                    Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    Ok(None) => break,
                    Ok(Some(Ok(d))) if d.is_empty() => {}
                    Ok(Some(Ok(_))) => return Err(ProxyError::BadRequest.into()),
                    Ok(Some(Err(e))) => return Err(e.into()),
                }
            }
        }
        client::send(timers, self.slot, &mut up.stream, &self.set.out, deadline).await?;
        if !body.is_end_stream() {
            let chunked = framing == ForwardBody::Chunked;
            let mut total: u64 = 0;
            // The body's last byte, held back until the client's END_STREAM: a body that
            // reaches its `content-length` is a whole request upstream, and more DATA after it
            // (which the protocol refuses) must not have made one.
            let mut held: Option<u8> = None;
            loop {
                let next = match timers.within(self.slot, timers.deadline(idle), body.data(self.worker)).await {
                    Err(_) => return Err(ProxyError::RequestTimeout.into()),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return Err(e.into()),
                    Ok(Some(Ok(data))) => data,
                };
                let n = next.len();
                total += n as u64;
                if total > max_body {
                    return Err(ProxyError::BodyTooLarge.into());
                }
                // More DATA than the `content-length` said would frame a second request upstream
                // (HTTP/2's `h2` refuses it itself; HTTP/3's is checked here for both).
                if length.is_some_and(|l| total > l) {
                    return Err(ProxyError::BadRequest.into());
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
                body.release(n);
                match sent {
                    Ok(()) => {}
                    Err(SendError::Stale) => return Err(ProxyError::UpstreamClosed.into()),
                    Err(e) => return Err(e),
                }
            }
            if length.is_some_and(|l| total != l) {
                // Less than announced: the upstream would wait for the rest (the connection is
                // dropped with the error, never pooled).
                return Err(ProxyError::BadRequest.into());
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
                    Ok(Err(e)) => return Err(e.into()),
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
    pub async fn respond<S: ResponseSink>(
        &mut self,
        mut up: UpstreamConn,
        group: &UpstreamGroup,
        sink: &mut S,
        is_head: bool,
        idle: Duration,
    ) -> Result<(), ProxyError> {
        let res = &self.set.res;
        // No upgrade over HTTP/2 or HTTP/3: a 101 to a request that asked for none is invalid anyway.
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
            // Hop-by-hop fields (and those `Connection` names) have no place in HTTP/2 or HTTP/3.
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
        if let Some(alt_svc) = &self.info.alt_svc {
            headers.append(ALT_SVC, alt_svc.clone());
        }
        self.status = res.status;
        let framing = res.framing;
        let keep_alive = res.keep_alive;
        self.set.up.consume(res.len);
        let no_body = is_head || matches!(framing, Framing::None | Framing::Length(0));
        sink.send_head(self.worker, self.slot, response, no_body, idle).await?;
        self.responded = true;
        let done = match ResBody::new(framing, true) {
            Some(b) if !no_body => self.relay_body(&mut up, b, sink, group, idle).await,
            _ => Ok(()),
        };
        if let Err(e) = done {
            // Mid-body: the stream is reset, so the client never takes a cut body as whole.
            sink.reset(self.worker, e);
            return Err(e);
        }
        if keep_alive && framing != Framing::UntilClose && self.set.up.is_empty() {
            self.worker.pool.borrow_mut().checkin(up, group.idle_pool_size, Instant::now());
        }
        Ok(())
    }

    /// Relays the response body from the upstream buffer, de-chunked, one frame per read.
    async fn relay_body<S: ResponseSink>(
        &mut self,
        up: &mut UpstreamConn,
        mut body: ResBody,
        sink: &mut S,
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
                sink.send_data(self.worker, self.slot, frame, done && trailers.is_none(), idle).await?;
            }
            if let Some(t) = trailers {
                sink.send_trailers(self.worker, self.slot, t, idle).await?;
            }
            if done {
                return Ok(());
            }
            match client::read_more(timers, self.slot, &mut self.set, &mut up.stream, timers.deadline(group.response_header_timeout)).await
            {
                Ok(0) if matches!(body, ResBody::UntilClose) => {
                    return sink.send_data(self.worker, self.slot, Bytes::new(), true, idle).await;
                }
                Ok(n) if n > 0 => {}
                _ => return Err(ProxyError::UpstreamBroken),
            }
        }
    }

    /// The trailer section collected in `set.out` (field lines, validated by the chunked decoder)
    /// as the trailers of the client's stream: copied once into the stream's reused frame buffer,
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
}

/// An error before any response: the status it maps to, with an empty body; a client that is
/// gone gets nothing more, an upstream that broke gets the stream reset.
async fn answer_error<S: ResponseSink>(worker: &Worker, slot: usize, sink: &mut S, e: ProxyError) {
    if e.response().is_none() {
        if e != ProxyError::ClientGone {
            sink.reset(worker, e);
        }
        return;
    }
    let mut res = Response::new(());
    *res.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    // The stream may be gone already (reset by the client, or by the protocol for a malformed
    // body).
    let _ = sink.send_head(worker, slot, res, true, worker.snapshot().limits.client_idle_timeout).await;
}

/// A trailer field's name for HTTP/2 and HTTP/3: gRPC's as static names, others lower-cased by `http`.
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
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request's `content-length`: one field of digits (the protocol checks that DATA adds up to the
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
