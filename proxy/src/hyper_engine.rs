//! The baseline engine (`--engine hyper`): hyper's HTTP/1.1 server and hyper-util's legacy
//! client, written the straightforward way. It shares config, routing, balancing and error
//! mapping with the native engine; only the HTTP/1.1 machinery differs. It exists so that the
//! gates and the comparison can show what the contract buys (allocations, CPU, P99), and so
//! the allocation gate has a known-worse control. Not held to the hot-path contract.
//!
//! Known limits of the baseline: no WebSocket tunnelling (Upgrade is stripped), one connect
//! timeout per worker client (the first group's), hyper's own parser leniencies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::data::error::ProxyError;
use crate::data::worker::{ConnPermit, Worker};

type Body = BoxBody<Bytes, hyper::Error>;
type HttpClient = Client<HttpConnector, Incoming>;

pub async fn accept_loop(worker: Rc<Worker>, listener: TcpListener) {
    let snap = worker.snapshot();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(snap.groups.first().map(|g| g.connect_timeout));
    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(snap.groups.first().map_or(64, |g| g.idle_pool_size)).build(connector);
    drop(snap);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let max = worker.snapshot().limits.max_connections;
        let Some(permit) = ConnPermit::try_acquire(&worker.shared, max) else { continue };
        let _ = stream.set_nodelay(true);
        let worker = Rc::clone(&worker);
        let client = client.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            let svc = service_fn(move |req| handle(Rc::clone(&worker), client.clone(), peer, req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn handle(
    worker: Rc<Worker>,
    client: HttpClient,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let snap = worker.snapshot();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let Some(route) = snap.router.lookup(host.as_bytes(), path.as_bytes()) else {
        return Ok(error(ProxyError::NoRoute));
    };
    let group = &snap.groups[route.group];
    let server = worker.pick(route.group, group);

    let mut pq = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
    if route.strip_prefix {
        pq = pq.get(route.prefix.len()..).unwrap_or("").to_owned();
        if !pq.starts_with('/') {
            pq.insert(0, '/');
        }
    }
    let Ok(uri) = Uri::builder().scheme("http").authority(server.addr.to_string()).path_and_query(pq).build() else {
        return Ok(error(ProxyError::BadRequest));
    };
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let mut xff = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ");
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    xff.push_str(&peer.ip().to_canonical().to_string());
    headers.remove("x-forwarded-for");
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Ok(v) = HeaderValue::from_str(&host) {
        headers.insert("x-forwarded-host", v);
    }
    let via = HeaderValue::from_bytes(&snap.via).unwrap_or(HeaderValue::from_static("1.1 fastproxy"));
    headers.append(header::VIA, via.clone());

    if group.tls.is_some() {
        // The baseline engine speaks cleartext only; a reload may have added a TLS group (start
        // refuses one): never send its requests in cleartext.
        return Ok(error(ProxyError::UpstreamTls));
    }
    worker.begin(server.id);
    let result = tokio::time::timeout(group.response_header_timeout, client.request(req)).await;
    worker.end(server.id);
    match result {
        Err(_) => Ok(error(ProxyError::ResponseTimeout)),
        Ok(Err(e)) if e.is_connect() => Ok(error(ProxyError::UpstreamConnect)),
        Ok(Err(_)) => Ok(error(ProxyError::BadResponse)),
        Ok(Ok(mut res)) => {
            strip_hop_by_hop(res.headers_mut());
            res.headers_mut().append(header::VIA, via);
            Ok(res.map(|b| b.boxed()))
        }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != header::HOST && *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
        .collect();
    for n in named {
        headers.remove(n);
    }
    headers.remove(header::CONNECTION);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::UPGRADE);
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
}

fn error(e: ProxyError) -> Response<Body> {
    let mut r = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    r
}
