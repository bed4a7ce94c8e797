//! Heap allocations per exchange, measured with dhat around the real data plane, one request
//! shape at a time.
//!
//! The proxy runs in this process (one worker) between an allocation-free client and origin
//! (`gates::harness`). For the chosen shape (`--shape NAME`, or `--shape all` for every one) the
//! probe runs `--warmup` exchanges, waits until the proxy has closed what the exchanges closed,
//! then counts dhat's allocations over `--requests` exchanges (and waits again):
//! `(Δ total_blocks) / requests`. Every exchange is checked (status, body bytes and their
//! content, whether the connection closed, the echo through a tunnel), and so is what the origin
//! saw over the measured exchanges (connections, requests, answers, dropped connections, body
//! bytes), so a row measures the exchange its name says. Prints one JSON object per shape.
//!
//! The direct path (client → origin, no proxy) is measured the same way where it exists: it
//! must be 0, or the harness itself is allocating and the proxy's figure is not to be trusted.
//! Shapes whose response the proxy produces itself (errors) or whose upstream behaviour only
//! means something behind a proxy have no direct path; their JSON says why
//! (`"control": "n/a: ..."`, `control_allocs_per_request: null`).
//!
//! `--heap-profile FILE` runs dhat in its normal mode and writes FILE (dhat-heap.json format,
//! with a backtrace per allocation site) to find where a shape allocates.

use std::cell::Cell;
use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gates::error::Chain;
use gates::h2raw::{H2Raw, H2Req};
use gates::harness::{self, Client, FILL, Origin, OriginCounts, OriginMode, ProxySetup, Response};
use proxy::control::workers::{Engine, Running};
use serde_json::{Value, json};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// What every exchange of a shape must get back.
#[derive(Debug, Clone, Copy)]
struct Expect {
    status: u16,
    /// Body bytes (all of them [`FILL`]).
    body: Body,
    chunked: bool,
    /// The server closes the connection after the response.
    closes: bool,
}

#[derive(Debug, Clone, Copy)]
enum Body {
    /// `--body-bytes`.
    Full,
    Empty,
}

/// The direct path of a shape: what the origin answers the same request, or why there is none.
#[derive(Debug, Clone, Copy)]
enum Direct {
    Path(Expect),
    None(&'static str),
}

/// What the origin must see per measured exchange on the proxied path.
#[derive(Debug, Clone, Copy)]
struct PerExchange {
    accepted: u64,
    requests: u64,
    answered: u64,
    dropped: u64,
    /// The request carries a `--body-bytes` body the origin must receive whole.
    body: bool,
}

const WARM: PerExchange = PerExchange { accepted: 0, requests: 1, answered: 1, dropped: 0, body: false };
const NOTHING: PerExchange = PerExchange { accepted: 0, requests: 0, answered: 0, dropped: 0, body: false };

#[derive(Debug, Clone, Copy)]
enum Req {
    Get,
    PostChunked,
    PostLength,
    /// HTTP/2 only: a gRPC-style unary call ([`H2Req::Grpc`]).
    Grpc,
    Http10,
    Http10KeepAlive,
    OtherHost,
    /// A `Content-Length` body over the 413 shape's `max_body_bytes`.
    TooLargeBody,
    /// A head over the 431 shape's `max_request_head_bytes`.
    TooLargeHead,
    Upgrade,
}

/// The 413 shape's body, over its `max_body_bytes = 1024` (fixed, whatever `--body-bytes` is).
const TOO_LARGE_BODY: usize = 2048;
/// The 431 shape's limits and the size of the field that breaks them.
const HEAD_LIMITS: &str = "max_request_line_bytes = 1024\nmax_request_head_bytes = 2048\n";
const FILLER_FIELD: usize = 3000;
/// Bytes sent (and echoed) through each upgraded connection.
const ECHO: usize = 64;

fn build(req: Req, body_bytes: usize) -> Vec<u8> {
    let head =
        |line: &str, fields: &str| format!("{line}\r\nHost: bench.local\r\nUser-Agent: gates\r\nAccept: */*\r\n{fields}\r\n").into_bytes();
    match req {
        Req::Get => harness::GET.to_vec(),
        Req::PostChunked => {
            let mut v = head("POST /upload HTTP/1.1", "Transfer-Encoding: chunked\r\n");
            harness::chunked_body(&mut v, body_bytes);
            v
        }
        Req::PostLength => {
            let mut v = head("POST /upload HTTP/1.1", &format!("Content-Length: {body_bytes}\r\n"));
            v.resize(v.len() + body_bytes, FILL);
            v
        }
        // Not sent by any HTTP/1.1 shape: what the call would be over HTTP/1.1.
        Req::Grpc => {
            let mut v =
                head("POST /pkg.Svc/Method HTTP/1.1", "Content-Type: application/grpc\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n");
            harness::chunked_body(&mut v, body_bytes);
            v
        }
        Req::Http10 => head("GET /bench HTTP/1.0", ""),
        Req::Http10KeepAlive => head("GET /bench HTTP/1.0", "Connection: keep-alive\r\n"),
        Req::OtherHost => b"GET /bench HTTP/1.1\r\nHost: nowhere.local\r\nUser-Agent: gates\r\nAccept: */*\r\n\r\n".to_vec(),
        Req::TooLargeBody => {
            let mut v = head("POST /upload HTTP/1.1", &format!("Content-Length: {TOO_LARGE_BODY}\r\n"));
            v.resize(v.len() + TOO_LARGE_BODY, FILL);
            v
        }
        Req::TooLargeHead => head("GET /bench HTTP/1.1", &format!("X-Filler: {}\r\n", "f".repeat(FILLER_FIELD))),
        Req::Upgrade => head("GET /ws HTTP/1.1", "Connection: Upgrade\r\nUpgrade: websocket\r\n"),
    }
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    name: &'static str,
    what: &'static str,
    /// `None`: nothing listens at the upstream address (connections are refused).
    origin: Option<OriginMode>,
    setup: ProxySetup,
    req: Req,
    /// Requests written together (pipelining); each is one exchange.
    depth: usize,
    /// After the response, the client closes the connection itself (a new one per exchange).
    client_closes: bool,
    /// Bytes echoed through the tunnel after a `101`.
    echo: bool,
    expect: Expect,
    direct: Direct,
    per: PerExchange,
    /// The client speaks TLS to the proxy (the proxy to the origin: cleartext).
    tls: Tls,
    /// The proxy's upstream group speaks TLS 1.3 (`tls = true`, verified) to a second proxy in
    /// this process that terminates it in front of the origin: both TLS ends are the proxy's, so
    /// every allocation counted is one of the two proxies'.
    upstream_tls: bool,
    /// The client speaks HTTP/2 (`gates::h2raw`: h2c by prior knowledge, or ALPN h2 with `tls`);
    /// `depth` is then the number of concurrent streams per exchange.
    h2: bool,
    /// The client speaks HTTP/3 (QUIC) to a TLS listener with `http3 = true`: the `h3-client`
    /// process ([`run_h3_shape`]); `depth` is the number of streams in flight per exchange.
    h3: bool,
    /// Defaults for a manual run (the gate passes the contract's figures).
    requests: u64,
    warmup: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tls {
    Off,
    V13,
    V12,
}

const OK_LEN: Expect = Expect { status: 200, body: Body::Full, chunked: false, closes: false };
const OK_CHUNKED: Expect = Expect { status: 200, body: Body::Full, chunked: true, closes: false };
const fn error(status: u16, closes: bool) -> Expect {
    Expect { status, body: Body::Empty, chunked: false, closes }
}
const NO_SETUP: ProxySetup = ProxySetup { route_host: None, upstream: "", limits: "", listener: "" };
/// The listener of the h2c shapes: prior-knowledge HTTP/2 beside HTTP/1.1.
const H2C: ProxySetup = ProxySetup { listener: "h2c = true\n", ..NO_SETUP };

/// The default shape (`phase1:alloc`), and what every other shape is unless it says otherwise.
const KEEPALIVE_GET: Shape = Shape {
    name: "get",
    what: "keep-alive GET, Content-Length response",
    origin: Some(OriginMode::Length),
    setup: NO_SETUP,
    req: Req::Get,
    depth: 1,
    client_closes: false,
    echo: false,
    expect: OK_LEN,
    direct: Direct::Path(OK_LEN),
    per: WARM,
    tls: Tls::Off,
    upstream_tls: false,
    h2: false,
    h3: false,
    requests: 10_000,
    warmup: 1_000,
};

/// What the TLS shapes have no direct path for.
const TLS_DIRECT: Direct = Direct::None(
    "the origin speaks cleartext; the client's TLS is allocation-free by construction after its handshake (gates/src/tlsclient.rs), so any allocation counted is the proxy's",
);

/// The listener of the HTTP/3 shapes (a TLS listener; QUIC on its port number over UDP).
const H3: ProxySetup = ProxySetup { listener: "http3 = true\n", ..NO_SETUP };

/// What the HTTP/3 shapes have no direct path for.
const H3_DIRECT: Direct = Direct::None(
    "the origin speaks HTTP/1.1; the HTTP/3 client is a process of its own (h3-client, quinn + h3), so dhat, counting this process, counts the proxy's allocations only",
);

/// What the HTTP/2 shapes have no direct path for.
const H2_DIRECT: Direct = Direct::None(
    "the origin speaks HTTP/1.1; the client writes pre-encoded frames and reads into its own buffer, allocating nothing per request (gates/src/h2raw.rs), so any allocation counted is the proxy's",
);

const SHAPES: &[Shape] = &[
    KEEPALIVE_GET,
    Shape {
        name: "h2c-get",
        what: "HTTP/2 by prior knowledge (h2c): GETs on one connection, one stream after another, Content-Length response from the HTTP/1.1 origin",
        setup: H2C,
        h2: true,
        direct: H2_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h2c-post",
        what: "h2c: POSTs with a content-length request body (one DATA frame), one stream after another on one connection",
        setup: H2C,
        req: Req::PostLength,
        per: PerExchange { body: true, ..WARM },
        h2: true,
        direct: H2_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h2c-grpc",
        what: "h2c: gRPC-style unary calls, one stream after another on one connection: POST /pkg.Svc/Method with content-type application/grpc and te: trailers, the body in one DATA frame ending the stream (no content-length: chunked upstream); the HTTP/1.1 origin answers 200 application/grpc with a chunked body and the trailers grpc-status 0 and grpc-message ok, which reach the client as a trailing HEADERS frame ending the stream (every response block HPACK-decoded and checked)",
        origin: Some(OriginMode::ChunkedTrailers),
        setup: H2C,
        req: Req::Grpc,
        per: PerExchange { body: true, ..WARM },
        h2: true,
        direct: H2_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h2c-get-10",
        what: "h2c: 10 concurrent GET streams written together on one connection, per request (10 pooled upstream connections)",
        setup: H2C,
        depth: 10,
        h2: true,
        direct: H2_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h2-tls-get",
        what: "HTTP/2 over TLS 1.3 (ALPN h2): GETs on one connection, one stream after another",
        tls: Tls::V13,
        h2: true,
        direct: H2_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h3-get",
        what: "HTTP/3 (QUIC, TLS 1.3): GETs on one connection, one request stream after another, Content-Length response from the HTTP/1.1 origin",
        setup: H3,
        tls: Tls::V13,
        h3: true,
        direct: H3_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h3-get-10",
        what: "HTTP/3: 10 GET request streams in flight at once on one connection (sent together, then the 10 responses read), per request (10 pooled upstream connections)",
        setup: H3,
        tls: Tls::V13,
        depth: 10,
        h3: true,
        direct: H3_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "h3-post",
        what: "HTTP/3: POSTs with a content-length request body (--body-bytes, one DATA frame), one request stream after another on one connection",
        setup: H3,
        tls: Tls::V13,
        req: Req::PostLength,
        per: PerExchange { body: true, ..WARM },
        h3: true,
        direct: H3_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "tls-get",
        what: "keep-alive GET over TLS 1.3 (AES-128-GCM or whatever the client and the proxy agree first), Content-Length response",
        tls: Tls::V13,
        direct: TLS_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "tls12-get",
        what: "keep-alive GET over TLS 1.2 (ECDHE with AES-GCM), Content-Length response",
        tls: Tls::V12,
        direct: TLS_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "tls-post",
        what: "keep-alive POST with a Content-Length request body over TLS 1.3, Content-Length response",
        req: Req::PostLength,
        per: PerExchange { body: true, ..WARM },
        tls: Tls::V13,
        direct: TLS_DIRECT,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "tls-handshake",
        what: "a new TLS 1.3 connection per exchange (full handshake, Ed25519 certificate), one GET, client closes: what a TLS connection costs, the client's rustls handshake included",
        client_closes: true,
        tls: Tls::V13,
        direct: TLS_DIRECT,
        requests: 500,
        warmup: 50,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "tls-upstream",
        what: "keep-alive GET from a cleartext client; the proxy's upstream group speaks TLS 1.3 (tls = true, verified against the certificate) to a second in-process proxy that terminates TLS in front of the origin",
        upstream_tls: true,
        direct: Direct::None(
            "the hop to the origin is a second proxy terminating TLS (its own rows gate it at 0): any allocation counted is one of the two proxies'",
        ),
        ..KEEPALIVE_GET
    },
    Shape {
        name: "chunked-request",
        what: "keep-alive POST with a chunked request body (chunks of 256 B), Content-Length response",
        req: Req::PostChunked,
        per: PerExchange { body: true, ..WARM },
        ..KEEPALIVE_GET
    },
    Shape {
        name: "chunked-response",
        what: "keep-alive GET, chunked response body (chunks of 256 B) relayed as is",
        origin: Some(OriginMode::Chunked),
        expect: OK_CHUNKED,
        direct: Direct::Path(OK_CHUNKED),
        ..KEEPALIVE_GET
    },
    Shape {
        name: "post-length",
        what: "keep-alive POST with a Content-Length request body, Content-Length response",
        req: Req::PostLength,
        per: PerExchange { body: true, ..WARM },
        ..KEEPALIVE_GET
    },
    Shape {
        name: "pipelined",
        what: "4 keep-alive GETs in one write, 4 Content-Length responses (per request)",
        depth: 4,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "http10-keepalive",
        what: "HTTP/1.0 GET with Connection: keep-alive, Content-Length response (kept alive)",
        req: Req::Http10KeepAlive,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "http10-dechunk",
        what: "HTTP/1.0 GET, chunked origin response: the proxy de-chunks it into a close-delimited body and closes the client connection (the upstream one stays pooled)",
        origin: Some(OriginMode::Chunked),
        req: Req::Http10,
        expect: Expect { status: 200, body: Body::Full, chunked: false, closes: true },
        // The origin answers HTTP/1.0 as it answers anything (chunked, keep-alive); the client
        // closes after each response, so the control pays the same new connection per exchange.
        direct: Direct::Path(OK_CHUNKED),
        requests: 1_000,
        warmup: 100,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "404",
        what: "keep-alive GET for a host no route matches: the proxy's 404, connection kept",
        setup: ProxySetup { route_host: Some("bench.local"), ..NO_SETUP },
        req: Req::OtherHost,
        expect: error(404, false),
        direct: Direct::None("the proxy produces this response"),
        per: NOTHING,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "502-refused",
        what: "keep-alive GET, nothing listens at the upstream address (connect refused): the proxy's 502, connection kept",
        origin: None,
        expect: error(502, false),
        direct: Direct::None("the proxy produces this response; there is no origin"),
        per: NOTHING,
        requests: 2_000,
        warmup: 200,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "502-closed",
        what: "keep-alive GET, the origin accepts each connection and closes it unanswered: the proxy's 502, connection kept",
        origin: Some(OriginMode::Refuse),
        expect: error(502, false),
        direct: Direct::None("the proxy produces this response"),
        per: PerExchange { accepted: 1, requests: 0, answered: 0, dropped: 1, body: false },
        requests: 2_000,
        warmup: 200,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "504",
        what: "keep-alive GET, the origin never answers (response_header_timeout 1ms, timers tick every 50 ms): the proxy's 504, connection kept",
        origin: Some(OriginMode::Silent),
        setup: ProxySetup { upstream: "response_header_timeout = \"1ms\"\n", ..NO_SETUP },
        expect: error(504, false),
        direct: Direct::None("the proxy produces this response; the origin never answers"),
        per: PerExchange { accepted: 1, requests: 1, answered: 0, dropped: 0, body: false },
        requests: 20,
        warmup: 4,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "413",
        what: "POST whose Content-Length (2048) exceeds max_body_bytes (1024): the proxy's 413 and close",
        setup: ProxySetup { limits: "max_body_bytes = 1024\n", ..NO_SETUP },
        req: Req::TooLargeBody,
        expect: error(413, true),
        direct: Direct::None("the proxy produces this response"),
        per: NOTHING,
        requests: 1_000,
        warmup: 100,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "431",
        what: "GET whose head (a 3000-byte field) exceeds max_request_head_bytes (2048): the proxy's 431 and close",
        setup: ProxySetup { limits: HEAD_LIMITS, ..NO_SETUP },
        req: Req::TooLargeHead,
        expect: error(431, true),
        direct: Direct::None("the proxy produces this response"),
        per: NOTHING,
        requests: 1_000,
        warmup: 100,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "stale-retry",
        what: "keep-alive GET; the origin closes the pooled connection when the request arrives, unanswered: the proxy retries on a new connection",
        origin: Some(OriginMode::OneThenClose),
        direct: Direct::None("a stale pooled connection exists only behind a proxy"),
        per: PerExchange { accepted: 1, requests: 2, answered: 1, dropped: 1, body: false },
        requests: 2_000,
        warmup: 200,
        ..KEEPALIVE_GET
    },
    Shape {
        name: "upgrade",
        what: "GET with Upgrade: websocket, 101 from the origin, 64 bytes echoed through the tunnel, client closes",
        origin: Some(OriginMode::Upgrade),
        req: Req::Upgrade,
        client_closes: true,
        echo: true,
        expect: Expect { status: 101, body: Body::Empty, chunked: false, closes: false },
        direct: Direct::Path(Expect { status: 101, body: Body::Empty, chunked: false, closes: false }),
        per: PerExchange { accepted: 1, requests: 1, answered: 1, dropped: 0, body: false },
        requests: 1_000,
        warmup: 100,
        ..KEEPALIVE_GET
    },
];

/// A command line the probe cannot run (exit 2).
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error("{0} needs a value")]
    NeedsValue(String),
    #[error("unknown engine {0:?} (native|hyper)")]
    UnknownEngine(String),
    /// The option (`--requests`, ...) whose value is not a number.
    #[error("{0} takes a number")]
    NotANumber(&'static str),
    #[error("--requests must be > 0")]
    ZeroRequests,
    /// `known`: the shapes' names, comma-separated.
    #[error("unknown shape {shape:?} (all, {known})")]
    UnknownShape { shape: String, known: String },
    #[error("unknown argument {0:?}")]
    UnknownArgument(String),
}

/// A shape that could not be measured, or whose exchanges were not the shape's (exit 1).
/// `shape`: the shape's name.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("{shape}: --requests must be a multiple of {depth} (requests per write)")]
    NotMultiple { shape: &'static str, depth: usize },
    #[error("origin")]
    Origin(#[source] io::Error),
    #[error("refused address")]
    RefusedAddr(#[source] io::Error),
    #[error("proxy")]
    Proxy(#[source] io::Error),
    #[error("{shape}: send")]
    Send { shape: &'static str, source: io::Error },
    #[error("{shape}: response")]
    Response { shape: &'static str, source: io::Error },
    #[error("{shape}: echo")]
    Echo { shape: &'static str, source: io::Error },
    #[error("{shape}: the tunnel did not echo the bytes sent")]
    NoEcho { shape: &'static str },
    #[error(
        "{shape}: got status {}, {} body bytes (intact: {}, chunked: {}, closed: {}); expected {}, {body_bytes} bytes (chunked: {}, closed: {})",
        got.status, got.body_bytes, got.body_intact, got.chunked, got.closed, expected.status, expected.chunked, expected.closes
    )]
    Unexpected { shape: &'static str, got: Got, expected: Expect, body_bytes: u64 },
    #[error("{shape}: {checked} responses checked over {exchanges} exchanges")]
    Unchecked { shape: &'static str, checked: u64, exchanges: u64 },
    #[error("{shape}: h3-client {}", exe.display())]
    H3Client { shape: &'static str, exe: std::path::PathBuf, source: io::Error },
    /// The client stopped before saying `word` (its stderr says why).
    #[error("{shape}: h3-client ended before {word:?} ({status}): {stderr}")]
    H3ClientFailed { shape: &'static str, word: &'static str, status: String, stderr: String },
    #[error("{shape}: h3-client said {got:?}, expected {word:?}")]
    H3ClientSaid { shape: &'static str, word: &'static str, got: String },
    #[error("{shape}: over {exchanges} exchanges the origin saw {saw:?}, expected {expected:?}")]
    OriginSaw { shape: &'static str, exchanges: u64, saw: OriginCounts, expected: OriginCounts },
}

/// What a response that was not as expected was like.
#[derive(Debug, Clone, Copy)]
struct Got {
    status: u16,
    body_bytes: u64,
    body_intact: bool,
    chunked: bool,
    closed: bool,
}

struct Args {
    shape: String,
    engine: Engine,
    requests: Option<u64>,
    warmup: Option<u64>,
    body_bytes: usize,
    heap_profile: Option<String>,
    /// The `h3-client` executable (default: beside this one).
    h3_client: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args, UsageError> {
    let mut a = Args {
        shape: "get".into(),
        engine: Engine::Native,
        requests: None,
        warmup: None,
        body_bytes: 1024,
        heap_profile: None,
        h3_client: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| UsageError::NeedsValue(k.clone()));
        match k.as_str() {
            "--shape" => a.shape = v()?,
            "--engine" => {
                a.engine = match v()?.as_str() {
                    "native" => Engine::Native,
                    "hyper" => Engine::Hyper,
                    other => return Err(UsageError::UnknownEngine(other.to_owned())),
                }
            }
            "--requests" => a.requests = Some(v()?.parse().map_err(|_| UsageError::NotANumber("--requests"))?),
            "--warmup" => a.warmup = Some(v()?.parse().map_err(|_| UsageError::NotANumber("--warmup"))?),
            "--body-bytes" => a.body_bytes = v()?.parse().map_err(|_| UsageError::NotANumber("--body-bytes"))?,
            "--heap-profile" => a.heap_profile = Some(v()?),
            "--h3-client" => a.h3_client = Some(v()?.into()),
            "--list" => {
                for s in SHAPES {
                    println!("{:<18} {}", s.name, s.what);
                }
                std::process::exit(0);
            }
            other => return Err(UsageError::UnknownArgument(other.to_owned())),
        }
    }
    if a.requests == Some(0) {
        return Err(UsageError::ZeroRequests);
    }
    if a.shape != "all" && !SHAPES.iter().any(|s| s.name == a.shape) {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        return Err(UsageError::UnknownShape { shape: a.shape, known: names.join(", ") });
    }
    Ok(a)
}

/// A measured stretch of exchanges.
struct Delta {
    /// Responses checked over the measured exchanges.
    checked: u64,
    blocks: u64,
    bytes: u64,
    live_blocks: i64,
    origin: OriginCounts,
}

/// One exchange's traffic, pre-built.
struct Traffic<'a> {
    shape: &'a Shape,
    /// The request `depth` times over (one write).
    bytes: &'a [u8],
    expect: Expect,
    body_bytes: u64,
    client_closes: bool,
    echo: &'a [u8],
    /// Responses received and found as expected (echoes included in their exchange).
    checked: Cell<u64>,
}

fn check(r: &Response, t: &Traffic<'_>) -> Result<(), ProbeError> {
    let e = t.expect;
    let body = match e.body {
        Body::Full => t.body_bytes,
        Body::Empty => 0,
    };
    if r.status == e.status && r.body_bytes == body && r.body_intact && r.chunked == e.chunked && r.closed == e.closes {
        return Ok(());
    }
    Err(ProbeError::Unexpected {
        shape: t.shape.name,
        got: Got { status: r.status, body_bytes: r.body_bytes, body_intact: r.body_intact, chunked: r.chunked, closed: r.closed },
        expected: e,
        body_bytes: body,
    })
}

/// One exchange (a batch of `depth` requests when pipelining), every response checked.
fn exchange(c: &mut Client, t: &Traffic<'_>) -> Result<(), ProbeError> {
    let shape = t.shape.name;
    c.send(t.bytes).map_err(|source| ProbeError::Send { shape, source })?;
    for _ in 0..t.shape.depth {
        let r = c.response().map_err(|source| ProbeError::Response { shape, source })?;
        check(&r, t)?;
        t.checked.set(t.checked.get() + 1);
    }
    if !t.echo.is_empty() && !c.echo(t.echo).map_err(|source| ProbeError::Echo { shape, source })? {
        return Err(ProbeError::NoEcho { shape });
    }
    if t.client_closes {
        c.close();
    }
    Ok(())
}

/// Waits (2 s at most) until the proxy has closed every client connection the exchanges closed.
///
/// At the edges of the measured stretch this puts everything a closed connection allocates (tokio
/// allocates when it deregisters a socket) on the side of the boundary it belongs to. Between
/// exchanges it keeps the count exact: tokio parks deregistered sockets in a `Vec` that it empties
/// (`mem::take`, freeing it) on its next I/O poll, so one allocation serves however many sockets
/// close between two polls; a client that opened its next connection before the proxy had
/// closed the last would sometimes share that allocation between two exchanges (6.97 instead
/// of 7 per exchange in the 413 shape). Waiting gives every exchange its own.
fn settle(running: Option<&Running>, client: &Client) {
    let Some(r) = running else { return };
    let open = usize::from(client.is_connected());
    let start = Instant::now();
    let mut spins = 0u32;
    while r.connections() > open && start.elapsed() < Duration::from_secs(2) {
        // The worker runs on its own thread: usually done within microseconds.
        if spins < 10_000 {
            spins += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn measure(
    c: &mut Client,
    t: &Traffic<'_>,
    origin: Option<&Origin>,
    running: Option<&Running>,
    warmup: u64,
    n: u64,
) -> Result<Delta, ProbeError> {
    let batches = |k: u64| k.div_ceil(t.shape.depth as u64);
    let one = |c: &mut Client| -> Result<(), ProbeError> {
        exchange(c, t)?;
        if !c.is_connected() {
            settle(running, c);
        }
        Ok(())
    };
    for _ in 0..batches(warmup) {
        one(c)?;
    }
    settle(running, c);
    let o_before = origin.map(|o| o.stats.snapshot()).unwrap_or_default();
    let checked_before = t.checked.get();
    let before = dhat::HeapStats::get();
    for _ in 0..batches(n) {
        one(c)?;
    }
    settle(running, c);
    let after = dhat::HeapStats::get();
    let o_after = origin.map(|o| o.stats.snapshot()).unwrap_or_default();
    Ok(Delta {
        checked: t.checked.get() - checked_before,
        blocks: after.total_blocks - before.total_blocks,
        bytes: after.total_bytes - before.total_bytes,
        live_blocks: after.curr_blocks as i64 - before.curr_blocks as i64,
        origin: o_after.since(o_before),
    })
}

fn engine_name(e: Engine) -> &'static str {
    match e {
        Engine::Native => "native",
        Engine::Hyper => "hyper",
    }
}

/// Lets the proxy's worker finish what the last exchange started (a stream's task ends after
/// the client has its response), so its allocations fall on their side of a boundary.
fn quiesce() {
    std::thread::sleep(Duration::from_millis(50));
}

/// An HTTP/2 shape: one connection (`gates::h2raw`), `depth` streams per exchange.
fn run_h2_shape(s: &Shape, a: &Args, n: u64, warmup: u64) -> Result<Value, ProbeError> {
    let shape = s.name;
    let origin = Origin::start_mode(s.origin.unwrap_or(OriginMode::Length), a.body_bytes).map_err(ProbeError::Origin)?;
    let pki = match s.tls {
        Tls::Off => None,
        v => {
            let dir = std::env::temp_dir().join(format!("gates-alloc-h2-{}", std::process::id()));
            let (cert, key, config) = gates::tlsclient::make_pki(&dir, v == Tls::V13).map_err(ProbeError::Proxy)?;
            let mut h2 = (*config).clone();
            h2.alpn_protocols = vec![b"h2".to_vec()];
            Some((cert, key, std::sync::Arc::new(h2)))
        }
    };
    let tls_files = pki.as_ref().map(|(c, k, _)| (c.as_path(), k.as_path()));
    let running = harness::start_proxy_tls(origin.addr, a.engine, &s.setup, tls_files).map_err(ProbeError::Proxy)?;
    let req = match s.req {
        Req::PostLength => H2Req::PostLength,
        Req::Grpc => H2Req::Grpc,
        _ => H2Req::Get,
    };
    let measured = (|| {
        let mut c = H2Raw::connect(running.addrs[0], pki.as_ref().map(|p| &p.2), req, a.body_bytes)
            .map_err(|source| ProbeError::Send { shape, source })?;
        let batches = |k: u64| k.div_ceil(s.depth as u64);
        for _ in 0..batches(warmup) {
            c.exchange(s.depth).map_err(|source| ProbeError::Response { shape, source })?;
        }
        quiesce();
        let o_before = origin.stats.snapshot();
        let checked_before = c.checked;
        let before = dhat::HeapStats::get();
        for _ in 0..batches(n) {
            c.exchange(s.depth).map_err(|source| ProbeError::Response { shape, source })?;
        }
        quiesce();
        let after = dhat::HeapStats::get();
        let o_after = origin.stats.snapshot();
        Ok::<_, ProbeError>(Delta {
            checked: c.checked - checked_before,
            blocks: after.total_blocks - before.total_blocks,
            bytes: after.total_bytes - before.total_bytes,
            live_blocks: after.curr_blocks as i64 - before.curr_blocks as i64,
            origin: o_after.since(o_before),
        })
    })();
    running.stop();
    let d = measured?;
    let body = if s.per.body { a.body_bytes as u64 } else { 0 };
    let want = OriginCounts { accepted: 0, requests: n, answered: n, dropped: 0, body_bytes: body * n, echoed: 0 };
    if d.checked != n {
        return Err(ProbeError::Unchecked { shape, checked: d.checked, exchanges: n });
    }
    if d.origin != want {
        return Err(ProbeError::OriginSaw { shape, exchanges: n, saw: d.origin, expected: want });
    }
    let nf = n as f64;
    let why = match s.direct {
        Direct::None(why) => why,
        Direct::Path(_) => "not measured for HTTP/2",
    };
    Ok(json!({
        "shape": s.name,
        "workload": s.what,
        "engine": engine_name(a.engine),
        "requests": n,
        "warmup": warmup,
        "body_bytes": a.body_bytes,
        "status": s.expect.status,
        "http": "2",
        "streams_per_exchange": s.depth,
        "tls": match s.tls { Tls::Off => "off", Tls::V13 => "1.3", Tls::V12 => "1.2" },
        "upstream_tls": false,
        "responses_checked": d.checked,
        "allocs_per_request": d.blocks as f64 / nf,
        "bytes_per_request": d.bytes as f64 / nf,
        "total_blocks": d.blocks,
        "total_bytes": d.bytes,
        "live_blocks_delta": d.live_blocks,
        "control": format!("n/a: {why}"),
        "control_allocs_per_request": Value::Null,
        "control_bytes_per_request": Value::Null,
        "upstream_connections_opened": d.origin.accepted,
        "origin": {
            "accepted": d.origin.accepted, "requests": d.origin.requests, "answered": d.origin.answered,
            "dropped": d.origin.dropped, "body_bytes": d.origin.body_bytes, "echoed": d.origin.echoed,
        },
    }))
}

/// The `h3-client` child of an HTTP/3 shape, and the bytes of its last line.
struct H3Child {
    shape: &'static str,
    exe: std::path::PathBuf,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
    /// Lines read from the child (fixed: reading them allocates nothing, as they arrive inside
    /// the measured stretch).
    buf: [u8; 64],
}

impl H3Child {
    fn spawn(s: &Shape, a: &Args, addr: std::net::SocketAddr, ca: &std::path::Path, n: u64, warmup: u64) -> Result<H3Child, ProbeError> {
        let exe = match &a.h3_client {
            Some(p) => p.clone(),
            None => std::env::current_exe().map(|p| p.with_file_name("h3-client")).unwrap_or_else(|_| "h3-client".into()),
        };
        let method = if s.per.body { "post" } else { "get" };
        let mut child = std::process::Command::new(&exe)
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--ca")
            .arg(ca)
            .args(["--method", method, "--body-bytes", &a.body_bytes.to_string(), "--streams", &s.depth.to_string()])
            .args(["--warmup", &warmup.to_string(), "--requests", &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| ProbeError::H3Client { shape: s.name, exe: exe.clone(), source })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else { unreachable!("stdin and stdout are piped") };
        Ok(H3Child { shape: s.name, exe, child, stdin, stdout, buf: [0; 64] })
    }

    fn io(&self, source: io::Error) -> ProbeError {
        ProbeError::H3Client { shape: self.shape, exe: self.exe.clone(), source }
    }

    fn say(&mut self, line: &[u8]) -> Result<(), ProbeError> {
        use std::io::Write;
        self.stdin.write_all(line).and_then(|()| self.stdin.flush()).map_err(|e| self.io(e))
    }

    /// Reads the child's next line; it must start with `word`. Returns the rest of the line.
    fn hear(&mut self, word: &'static str) -> Result<&str, ProbeError> {
        use std::io::Read;
        let mut len = 0;
        while !self.buf[..len].contains(&b'\n') && len < self.buf.len() {
            match self.stdout.read(&mut self.buf[len..]) {
                Ok(0) => return Err(self.failed(word)),
                Ok(k) => len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        let end = self.buf[..len].iter().position(|&b| b == b'\n').unwrap_or(len);
        let line = std::str::from_utf8(&self.buf[..end]).unwrap_or("");
        match line.strip_prefix(word) {
            Some(rest) => Ok(rest.trim()),
            None => Err(ProbeError::H3ClientSaid { shape: self.shape, word, got: String::from_utf8_lossy(&self.buf[..len]).into_owned() }),
        }
    }

    /// The child ended early: its exit status and what it said on stderr.
    #[cold]
    fn failed(&mut self, word: &'static str) -> ProbeError {
        let status = self.wait().map_or_else(|| "still running: killed".to_owned(), |s| s.to_string());
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        ProbeError::H3ClientFailed { shape: self.shape, word, status, stderr: stderr.trim().to_owned() }
    }

    /// Waits (10 s at most, then kills it) for the child to exit.
    fn wait(&mut self) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

/// An HTTP/3 shape: the proxy's TLS listener with `http3 = true`, the client a child process
/// (`h3-client`, quinn + h3) on one QUIC connection, `depth` streams in flight per exchange.
///
/// The child runs the warm-up and says `ready`; dhat's figures are taken, then the probe says
/// `go`, the child runs the measured requests, checks every response and says `done N`; after a
/// quiet moment (the proxy finishes the last stream's task, QUIC's last ACKs) dhat's figures are
/// taken again, then the probe says `close`. dhat counts this process only: the proxy's worker,
/// the allocation-free origin, and the probe itself, which allocates nothing between the two
/// readings (it writes and reads a fixed line). The origin must have seen exactly the measured
/// requests, and the child must have checked `n` responses.
fn run_h3_shape(s: &Shape, a: &Args, n: u64, warmup: u64) -> Result<Value, ProbeError> {
    let shape = s.name;
    let origin = Origin::start_mode(s.origin.unwrap_or(OriginMode::Length), a.body_bytes).map_err(ProbeError::Origin)?;
    let dir = std::env::temp_dir().join(format!("gates-alloc-h3-{}", std::process::id()));
    let (cert, key, _) = gates::tlsclient::make_pki(&dir, true).map_err(ProbeError::Proxy)?;
    // The listener's address has port 0: the proxy binds TCP, then UDP on the same port number,
    // which another process's UDP socket (a QUIC client's ephemeral port) may hold: the start
    // fails with EADDRINUSE, and a new start gets another port. Any other error repeats and is
    // reported after the last attempt.
    let mut started = harness::start_proxy_tls(origin.addr, a.engine, &s.setup, Some((&cert, &key)));
    for _ in 0..4 {
        if started.is_ok() {
            break;
        }
        started = harness::start_proxy_tls(origin.addr, a.engine, &s.setup, Some((&cert, &key)));
    }
    let running = started.map_err(ProbeError::Proxy)?;
    let measured = (|| {
        let mut c = H3Child::spawn(s, a, running.addrs[0], &cert, n, warmup)?;
        let result = (|| {
            c.hear("ready")?;
            quiesce();
            let o_before = origin.stats.snapshot();
            let before = dhat::HeapStats::get();
            c.say(b"go\n")?;
            let checked = c.hear("done")?.parse::<u64>().unwrap_or(0);
            quiesce();
            let after = dhat::HeapStats::get();
            let o_after = origin.stats.snapshot();
            Ok::<_, ProbeError>(Delta {
                checked,
                blocks: after.total_blocks - before.total_blocks,
                bytes: after.total_bytes - before.total_bytes,
                live_blocks: after.curr_blocks as i64 - before.curr_blocks as i64,
                origin: o_after.since(o_before),
            })
        })();
        // The child closes the connection and exits; whatever it says on a failure is in the error.
        let _ = c.say(b"close\n");
        match result {
            Ok(d) => match c.wait() {
                Some(st) if st.success() => Ok(d),
                _ => Err(c.failed("its exit")),
            },
            Err(e) => {
                c.wait();
                Err(e)
            }
        }
    })();
    running.stop();
    let _ = std::fs::remove_dir_all(&dir);
    let d = measured?;
    let body = if s.per.body { a.body_bytes as u64 } else { 0 };
    let want = OriginCounts { accepted: 0, requests: n, answered: n, dropped: 0, body_bytes: body * n, echoed: 0 };
    if d.checked != n {
        return Err(ProbeError::Unchecked { shape, checked: d.checked, exchanges: n });
    }
    if d.origin != want {
        return Err(ProbeError::OriginSaw { shape, exchanges: n, saw: d.origin, expected: want });
    }
    let nf = n as f64;
    let why = match s.direct {
        Direct::None(why) => why,
        Direct::Path(_) => "not measured for HTTP/3",
    };
    Ok(json!({
        "shape": s.name,
        "workload": s.what,
        "engine": engine_name(a.engine),
        "requests": n,
        "warmup": warmup,
        "body_bytes": a.body_bytes,
        "status": s.expect.status,
        "http": "3",
        "streams_per_exchange": s.depth,
        "tls": "1.3",
        "upstream_tls": false,
        "responses_checked": d.checked,
        "allocs_per_request": d.blocks as f64 / nf,
        "bytes_per_request": d.bytes as f64 / nf,
        "total_blocks": d.blocks,
        "total_bytes": d.bytes,
        "live_blocks_delta": d.live_blocks,
        "control": format!("n/a: {why}"),
        "control_allocs_per_request": Value::Null,
        "control_bytes_per_request": Value::Null,
        "upstream_connections_opened": d.origin.accepted,
        "origin": {
            "accepted": d.origin.accepted, "requests": d.origin.requests, "answered": d.origin.answered,
            "dropped": d.origin.dropped, "body_bytes": d.origin.body_bytes, "echoed": d.origin.echoed,
        },
    }))
}

fn run_shape(s: &Shape, a: &Args) -> Result<Value, ProbeError> {
    let n = a.requests.unwrap_or(s.requests);
    let warmup = a.warmup.unwrap_or(s.warmup);
    if !n.is_multiple_of(s.depth as u64) {
        return Err(ProbeError::NotMultiple { shape: s.name, depth: s.depth });
    }
    if s.h2 {
        return run_h2_shape(s, a, n, warmup);
    }
    if s.h3 {
        return run_h3_shape(s, a, n, warmup);
    }
    let origin = match s.origin {
        Some(mode) => Some(Origin::start_mode(mode, a.body_bytes).map_err(ProbeError::Origin)?),
        None => None,
    };
    let upstream = match &origin {
        Some(o) => o.addr,
        None => harness::refused_addr().map_err(ProbeError::RefusedAddr)?,
    };
    let one = build(s.req, a.body_bytes);
    let bytes = one.repeat(s.depth);
    let echo = if s.echo { vec![b'e'; ECHO] } else { Vec::new() };
    let traffic = |expect: Expect, client_closes: bool| Traffic {
        shape: s,
        bytes: &bytes,
        expect,
        body_bytes: a.body_bytes as u64,
        client_closes,
        echo: &echo,
        checked: Cell::new(0),
    };

    let (control, control_note) = match (s.direct, &origin) {
        (Direct::Path(expect), Some(o)) => {
            // The direct path pays a new connection per exchange wherever the proxied one does.
            let closes = s.client_closes || s.expect.closes;
            let mut direct = Client::new(o.addr);
            let d = measure(&mut direct, &traffic(expect, closes), Some(o), None, warmup, n)?;
            (Some(d), "direct".to_owned())
        }
        (Direct::Path(_), None) => (None, "n/a: no origin".to_owned()),
        (Direct::None(why), _) => (None, format!("n/a: {why}")),
    };

    let pki = match s.tls {
        Tls::Off => None,
        v => {
            let dir = std::env::temp_dir().join(format!("gates-alloc-tls-{}", std::process::id()));
            Some(gates::tlsclient::make_pki(&dir, v == Tls::V13).map_err(ProbeError::Proxy)?)
        }
    };
    let tls_files = pki.as_ref().map(|(c, k, _)| (c.as_path(), k.as_path()));
    // With `upstream_tls`: a second proxy terminating TLS in front of the origin, and the
    // measured proxy's group speaking TLS to it, verified against its certificate.
    let (terminator, upstream, setup) = if s.upstream_tls {
        let dir = std::env::temp_dir().join(format!("gates-alloc-upstream-tls-{}", std::process::id()));
        let (cert, key, _) = gates::tlsclient::make_pki(&dir, true).map_err(ProbeError::Proxy)?;
        let terminator = harness::start_proxy_tls(upstream, a.engine, &NO_SETUP, Some((&cert, &key))).map_err(ProbeError::Proxy)?;
        let to = terminator.addrs[0];
        // Leaked once: the probe is one short process, and the setup's lines are `&'static`.
        let lines: &'static str = Box::leak(
            format!("tls = true\ntls_server_name = \"{}\"\ntls_ca = \"{}\"\n", gates::tlsclient::SERVER_NAME, cert.display())
                .into_boxed_str(),
        );
        (Some(terminator), to, ProxySetup { upstream: lines, ..s.setup })
    } else {
        (None, upstream, s.setup)
    };
    let running = harness::start_proxy_tls(upstream, a.engine, &setup, tls_files).map_err(ProbeError::Proxy)?;
    let mut via = match &pki {
        None => Client::new(running.addrs[0]),
        Some((_, _, config)) => Client::new_tls(running.addrs[0], std::sync::Arc::clone(config)),
    };
    let proxied = measure(&mut via, &traffic(s.expect, s.client_closes), origin.as_ref(), Some(&running), warmup, n);
    drop(via);
    running.stop();
    if let Some(t) = terminator {
        t.stop();
    }
    let proxied = proxied?;

    // What the origin saw must be exactly the shape's exchanges.
    let per = s.per;
    let body = if per.body { a.body_bytes as u64 } else { 0 };
    let want = OriginCounts {
        accepted: per.accepted * n,
        requests: per.requests * n,
        answered: per.answered * n,
        dropped: per.dropped * n,
        body_bytes: body * n,
        echoed: if s.echo { ECHO as u64 * n } else { 0 },
    };
    if proxied.checked != n {
        return Err(ProbeError::Unchecked { shape: s.name, checked: proxied.checked, exchanges: n });
    }
    if proxied.origin != want {
        return Err(ProbeError::OriginSaw { shape: s.name, exchanges: n, saw: proxied.origin, expected: want });
    }
    let nf = n as f64;
    let o = proxied.origin;
    Ok(json!({
        "shape": s.name,
        "workload": s.what,
        "engine": engine_name(a.engine),
        "requests": n,
        "warmup": warmup,
        "body_bytes": a.body_bytes,
        "status": s.expect.status,
        "tls": match s.tls { Tls::Off => "off", Tls::V13 => "1.3", Tls::V12 => "1.2" },
        "upstream_tls": s.upstream_tls,
        "responses_checked": proxied.checked,
        "allocs_per_request": proxied.blocks as f64 / nf,
        "bytes_per_request": proxied.bytes as f64 / nf,
        "total_blocks": proxied.blocks,
        "total_bytes": proxied.bytes,
        "live_blocks_delta": proxied.live_blocks,
        "control": control_note,
        "control_allocs_per_request": control.as_ref().map(|c| c.blocks as f64 / nf),
        "control_bytes_per_request": control.as_ref().map(|c| c.bytes as f64 / nf),
        "upstream_connections_opened": o.accepted,
        "origin": {
            "accepted": o.accepted, "requests": o.requests, "answered": o.answered,
            "dropped": o.dropped, "body_bytes": o.body_bytes, "echoed": o.echoed,
        },
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("alloc-probe: {}", Chain(&e));
            return ExitCode::from(2);
        }
    };
    let _profiler = match &args.heap_profile {
        Some(file) => dhat::Profiler::builder().file_name(file).build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    for s in SHAPES.iter().filter(|s| args.shape == "all" || s.name == args.shape) {
        match run_shape(s, &args) {
            Ok(v) => println!("{v}"),
            Err(e) => {
                eprintln!("alloc-probe: {}", Chain(&e));
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}
