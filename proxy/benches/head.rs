//! Micro benchmark of the per-request head work: parse → route → rewrite, for a typical
//! browser-like GET head. Run: `cargo bench -p proxy --bench head`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proxy::config::{ServerIds, parse};
use proxy::data::h1::head::{Parsed, RequestHead, ResponseHead};
use proxy::data::h1::rewrite;

const REQUEST: &[u8] = b"GET /api/v1/users/12345?fields=name,email&limit=10 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Connection: keep-alive\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n\
X-Request-Id: 7f8e9d0c-1b2a-3c4d-5e6f-708192a3b4c5\r\n\
\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 1024\r\n\
Cache-Control: no-store\r\n\
Date: Wed, 25 Nov 2026 18:00:00 GMT\r\n\
\r\n";

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
[[routes]]
host = "api.example.com"
path_prefix = "/api/v1/"
strip_prefix = true
upstream = "api"
[[routes]]
host = "*.example.com"
upstream = "web"
[[routes]]
upstream = "web"
[upstreams.api]
servers = ["127.0.0.1:9001"]
[upstreams.web]
servers = ["127.0.0.1:9000"]
"#;

fn head(c: &mut Criterion) {
    let config = parse(Path::new("bench"), CONFIG, &mut ServerIds::default()).expect("bench config is valid");
    let snap = config.snapshot;
    let mut req = RequestHead::new(100);
    let mut res = ResponseHead::new();
    let mut out = Vec::with_capacity(8192);

    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    g.bench_function("parse_request", |b| b.iter(|| matches!(req.parse(black_box(REQUEST), &snap.limits), Ok(Parsed::Complete))));
    g.bench_function("parse_route_rewrite", |b| {
        b.iter(|| {
            let buf = black_box(REQUEST);
            let _ = req.parse(buf, &snap.limits);
            let route = snap.router.lookup(req.route_host(buf), req.route_path(buf)).expect("route");
            rewrite::request_head(&mut out, buf, &req, route, b"127.0.0.1", false, &snap.via);
            out.len()
        })
    });
    g.bench_function("parse_rewrite_response", |b| {
        b.iter(|| {
            let buf = black_box(RESPONSE);
            let _ = res.parse(buf, false);
            rewrite::response_head(&mut out, buf, &res, &snap.via, 0, rewrite::ClientConn::KeepAlive11, rewrite::HeadFor::Body);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, head);
criterion_main!(benches);
