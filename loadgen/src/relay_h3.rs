//! `relay --h3`: the HTTP/3 floor (issue 15's phase 3).
//!
//! Serves HTTP/3 (QUIC by `quinn`, HTTP/3 by `h3` over `h3-quinn`; TLS 1.3 with ALPN `h3`, see
//! [`crate::tls::quic_server_config`]) on UDP at the listen address, one `quinn` endpoint per
//! serving thread (`SO_REUSEPORT` sockets when there are several), and relays every request
//! stream to the upstream:
//!
//! - by default over one h2c connection per client QUIC connection (opened while the QUIC
//!   handshake runs), as `relay --h2` does: the request head as it came (pseudo-headers and
//!   fields; the `h2` crate refuses what HTTP/2 cannot carry, which is then a `502`), the body and
//!   trailers streamed with HTTP/2 flow control, and the response head, body and trailers back;
//! - with `--upstream-http1`, as one HTTP/1.1 request on a keep-alive pool of connections per
//!   client QUIC connection: [`crate::relay_h1`]'s exchange, the same code as
//!   `relay --h2 --upstream-http1`, with the HTTP/3 stream as its [`ClientSide`].
//!
//! Whether a request has a body is known only when the client's stream has said so: the relay
//! looks once, without waiting, when the head has been read. A request whose end already came
//! with its head (a GET sent as one HEADERS frame and a FIN, as clients do) goes upstream with
//! END_STREAM on its HEADERS, resp. without body framing; otherwise the body is streamed (over
//! HTTP/1.1: chunked unless the client sent a `content-length`).
//!
//! Failures: an upstream that cannot be reached, a request the upstream side cannot carry, or an
//! upstream stream that fails before the response head is answered `502` (empty body); a failure
//! after the head was sent resets the stream (`H3_INTERNAL_ERROR`), a client that failed while
//! its body was read gets `H3_REQUEST_CANCELLED`. No routing, no header rules, no timers, no
//! retry (a client connection whose h2c upstream connection failed gets `502`s until it closes).
//!
//! Allocation: per connection the `quinn` and `h3` state and the upstream connection; per
//! stream what `h3`, `quinn` and `h2` allocate (stream state, header maps, QPACK and HPACK) and
//! per packet what `quinn` does. Bodies are moved as `Bytes` where the crates allow (h3 request
//! data to h2, h2 response data to h3); over HTTP/1.1 see [`crate::relay_h1`].

use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{Reason, SendStream};
use h3::error::Code;
use http::HeaderMap;
use tokio::net::TcpStream;

use crate::relay_h1::{ClientSide, Pool, Side, bad_gateway};

type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Serves HTTP/3 on `socket` (one serving thread's UDP socket) until the endpoint closes.
pub async fn serve(socket: std::net::UdpSocket, config: quinn::ServerConfig, upstream: SocketAddr, h1up: bool) -> io::Result<()> {
    let ep = crate::server::quic_endpoint(socket, config)?;
    while let Some(incoming) = ep.accept().await {
        tokio::task::spawn_local(connection(incoming, upstream, h1up));
    }
    Ok(())
}

/// One client QUIC connection: its HTTP/3 session, the upstream side (an h2c connection opened
/// during the handshake, or a pool), and a task per request stream.
async fn connection(incoming: quinn::Incoming, upstream: SocketAddr, h1up: bool) {
    let accept = async {
        let conn = incoming.await.ok()?;
        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await.ok()
    };
    if h1up {
        let Some(mut h) = accept.await else { return };
        let pool = Pool::new(upstream);
        while let Ok(Some(resolver)) = h.accept().await {
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let Ok((req, stream)) = resolver.resolve_request().await else { return };
                let (parts, ()) = req.into_parts();
                crate::relay_h1::exchange(parts, H3Side::new(stream), pool).await;
            });
        }
        return;
    }
    let (h, send) = tokio::join!(accept, h2c(upstream));
    let Some(mut h) = h else { return };
    while let Ok(Some(resolver)) = h.accept().await {
        let send = send.clone();
        tokio::task::spawn_local(async move {
            let Ok((req, stream)) = resolver.resolve_request().await else { return };
            to_h2(req, H3Side::new(stream), send).await;
        });
    }
}

/// An h2c connection to `upstream` (its driver on its own task); `None` when it cannot be had.
async fn h2c(upstream: SocketAddr) -> Option<SendRequest<Bytes>> {
    let up = TcpStream::connect(upstream).await.ok()?;
    let _ = up.set_nodelay(true);
    let (send, conn) = h2::client::handshake(up).await.ok()?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Some(send)
}

/// One request over the h2c connection: the head (with END_STREAM when the request is known to
/// have no body), the body and trailers streamed up while the response is awaited, then the
/// response head, body and trailers back.
async fn to_h2(req: http::Request<()>, mut client: H3Side, send: Option<SendRequest<Bytes>>) {
    let (mut parts, ()) = req.into_parts();
    // The `h2` crate encodes by the version field: 2.0 is plain HTTP/2 (`:authority`, no `host`).
    parts.version = http::Version::HTTP_2;
    let end = client.body_is_empty();
    let Some(send) = send else { return bad_gateway(&mut client).await };
    let Ok(mut send) = send.ready().await else { return bad_gateway(&mut client).await };
    let Ok((response, up_body)) = send.send_request(http::Request::from_parts(parts, ()), end) else {
        return bad_gateway(&mut client).await;
    };
    let upload = async { if end { Ok(()) } else { upload(&mut client, up_body).await } };
    let (uploaded, response) = tokio::join!(upload, response);
    if uploaded.is_err() {
        return client.reset(Side::Client);
    }
    let Ok(response) = response else { return bad_gateway(&mut client).await };
    let (parts, mut body) = response.into_parts();
    let end = body.is_end_stream();
    if client.send_head(http::Response::from_parts(parts, ()), end).await.is_err() || end {
        return;
    }
    while let Some(d) = body.data().await {
        let Ok(d) = d else { return client.reset(Side::Upstream) };
        let n = d.len();
        if client.s.send_data(d).await.is_err() {
            return;
        }
        let _ = body.flow_control().release_capacity(n);
    }
    match body.trailers().await {
        Ok(t) => {
            let _ = client.end(t).await;
        }
        Err(_) => client.reset(Side::Upstream),
    }
}

/// Streams the client's request body and trailers to the upstream stream `tx` as its send
/// capacity allows. `Err`: the client failed (`tx` is reset). An upstream failure ends the upload
/// quietly: the response then fails too.
async fn upload(client: &mut H3Side, mut tx: SendStream<Bytes>) -> Result<(), ()> {
    while let Some(d) = client.data().await {
        let Ok(mut d) = d else {
            tx.send_reset(Reason::CANCEL);
            return Err(());
        };
        while !d.is_empty() {
            tx.reserve_capacity(d.len());
            let cap = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(c)) if c > 0 => c,
                Some(Ok(_)) => continue,
                _ => return Ok(()),
            };
            if tx.send_data(d.split_to(cap.min(d.len())), false).is_err() {
                return Ok(());
            }
        }
    }
    match client.trailers().await {
        Ok(Some(t)) => {
            let _ = tx.send_trailers(t);
        }
        Ok(None) => {
            let _ = tx.send_data(Bytes::new(), true);
        }
        Err(()) => {
            tx.send_reset(Reason::CANCEL);
            return Err(());
        }
    }
    Ok(())
}

/// What the request stream had said when its head was read.
enum Peeked {
    /// Nothing more yet: read on.
    Unknown,
    /// The first piece of the body.
    Data(Bytes),
    /// The body ended with no data; the trailers, if any.
    End(Option<HeaderMap>),
    /// The stream failed.
    Failed,
}

/// An HTTP/3 request stream served by the `h3` crate, as a [`ClientSide`].
pub(crate) struct H3Side {
    s: Stream,
    peeked: Peeked,
    /// The response has been finished (a head that ended it, or the end of its body).
    finished: bool,
}

impl H3Side {
    /// Wraps `s`, looking (once, without waiting) at what followed the request head.
    fn new(mut s: Stream) -> Self {
        let mut cx = Context::from_waker(Waker::noop());
        let peeked = match s.poll_recv_data(&mut cx) {
            Poll::Pending => Peeked::Unknown,
            Poll::Ready(Ok(Some(mut b))) => Peeked::Data(b.copy_to_bytes(b.remaining())),
            Poll::Ready(Ok(None)) => match s.poll_recv_trailers(&mut cx) {
                Poll::Ready(Ok(t)) => Peeked::End(t),
                Poll::Ready(Err(_)) => Peeked::Failed,
                // Not seen: the body ended, so its trailers (or the stream's end) came first.
                Poll::Pending => Peeked::Unknown,
            },
            Poll::Ready(Err(_)) => Peeked::Failed,
        };
        Self { s, peeked, finished: false }
    }
}

impl ClientSide for H3Side {
    fn body_is_empty(&self) -> bool {
        matches!(self.peeked, Peeked::End(None))
    }

    async fn data(&mut self) -> Option<Result<Bytes, ()>> {
        match std::mem::replace(&mut self.peeked, Peeked::Unknown) {
            Peeked::Data(d) => return Some(Ok(d)),
            Peeked::Unknown => {}
            p @ Peeked::End(_) => {
                self.peeked = p;
                return None;
            }
            Peeked::Failed => {
                self.peeked = Peeked::Failed;
                return Some(Err(()));
            }
        }
        match self.s.recv_data().await {
            Ok(Some(mut b)) => Some(Ok(b.copy_to_bytes(b.remaining()))),
            Ok(None) => None,
            Err(_) => Some(Err(())),
        }
    }

    fn release(&mut self, _n: usize) {}

    async fn trailers(&mut self) -> Result<Option<HeaderMap>, ()> {
        match std::mem::replace(&mut self.peeked, Peeked::Unknown) {
            Peeked::End(t) => Ok(t),
            Peeked::Failed => Err(()),
            Peeked::Unknown | Peeked::Data(_) => self.s.recv_trailers().await.map_err(|_| ()),
        }
    }

    async fn send_head(&mut self, response: http::Response<()>, end: bool) -> Result<(), ()> {
        self.s.send_response(response).await.map_err(|_| ())?;
        if end {
            self.finished = true;
            self.s.finish().await.map_err(|_| ())?;
        }
        Ok(())
    }

    async fn send_body(&mut self, d: &[u8]) -> Result<(), ()> {
        self.s.send_data(Bytes::copy_from_slice(d)).await.map_err(|_| ())
    }

    async fn end(&mut self, trailers: Option<HeaderMap>) -> Result<(), ()> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if let Some(t) = trailers {
            self.s.send_trailers(t).await.map_err(|_| ())?;
        }
        self.s.finish().await.map_err(|_| ())
    }

    fn reset(&mut self, why: Side) {
        let code = match why {
            Side::Client => Code::H3_REQUEST_CANCELLED,
            Side::Upstream => Code::H3_INTERNAL_ERROR,
        };
        self.s.stop_stream(code);
    }
}
