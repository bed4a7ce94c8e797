//! Layer 1: the codec, in memory. Request heads through `RequestHead::parse` and
//! `rewrite::request_head`, chunked bodies through `Chunked::feed` in arbitrary splits, response
//! heads through `ResponseHead::parse` and `rewrite::response_head`, each checked against the
//! referee in `oracle.rs`.

use proxy::data::error::ProxyError;
use proxy::data::h1::chunked::{ChunkError, Chunked};
use proxy::data::h1::head::{self, Parsed, RequestHead, ResponseHead};
use proxy::data::h1::rewrite::{self, ClientConn};
use proxy::snapshot::{Limits, Route};

use crate::inputs::{self, Rng};
use crate::oracle::{self, Framing, Msg, Next};
use crate::support::escape_quoted;

const CLIENT_IP: &[u8] = b"192.0.2.7";
const VIA: &[u8] = b"1.1 fastproxy";

fn small_limits() -> Limits {
    Limits { max_request_line_bytes: 1024, max_request_head_bytes: 4096, max_headers: 20, max_body_bytes: 1000, ..Limits::default() }
}

fn framing_of(f: head::Framing) -> Framing {
    match f {
        head::Framing::None => Framing::None,
        head::Framing::Length(n) => Framing::Length(n),
        head::Framing::Chunked => Framing::Chunked,
        head::Framing::UntilClose => Framing::UntilClose,
    }
}

fn lower(v: &[u8]) -> Vec<u8> {
    v.to_ascii_lowercase()
}

/// The tokens of every Connection field, lower-cased.
fn connection_tokens(m: &Msg) -> Vec<Vec<u8>> {
    m.all("connection").iter().flat_map(|v| v.split(|&b| b == b',')).map(oracle::trim).filter(|t| !t.is_empty()).map(lower).collect()
}

fn parse_head_only(out: &[u8], what: &str, problems: &mut Vec<String>) -> Option<()> {
    let mut headers = [httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut headers);
    let mut resh = [httparse::EMPTY_HEADER; 512];
    let mut res = httparse::Response::new(&mut resh);
    let parsed = if what == "request" { req.parse(out) } else { res.parse(out) };
    match parsed {
        Ok(httparse::Status::Complete(n)) if n == out.len() => Some(()),
        Ok(httparse::Status::Complete(n)) => {
            problems.push(format!("smuggled: {} bytes after the rewritten {what} head", out.len() - n));
            None
        }
        Ok(httparse::Status::Partial) => {
            problems.push(format!("rewritten {what} head is incomplete"));
            None
        }
        Err(e) => {
            problems.push(format!("rewritten {what} head does not parse: {e}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HeadParams {
    small_limits: bool,
    strip_a: bool,
    prefix_cuts: [u64; 24],
}

pub fn head_params(rng: &mut Rng) -> HeadParams {
    let mut prefix_cuts = [0; 24];
    for c in &mut prefix_cuts {
        *c = rng.next();
    }
    HeadParams { small_limits: rng.chance(1, 2), strip_a: rng.chance(1, 3), prefix_cuts }
}

/// The request-target the upstream must get, derived from the client's target independently of
/// the proxy: absolute-form reduced to its path, the route prefix stripped, `/` when empty.
fn expected_target(raw: &[u8], strip: Option<&[u8]>) -> Vec<u8> {
    let path: &[u8] = if raw.first() == Some(&b'/') || raw == b"*" {
        raw
    } else {
        let rest = raw.iter().position(|&b| b == b':').map_or(raw, |i| raw.get(i + 3..).unwrap_or(b""));
        let p = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
        &rest[p..]
    };
    let path = match strip {
        Some(p) => path.get(p.len()..).unwrap_or(b""),
        None => path,
    };
    if path.first() == Some(&b'/') || path == b"*" { path.to_vec() } else { [b"/".as_slice(), path].concat() }
}

/// One request-head case: `Ok(true)` when the proxy accepted the head.
pub fn check_head(input: &[u8], p: &HeadParams) -> Result<bool, String> {
    let limits = if p.small_limits { small_limits() } else { Limits::default() };
    let mut h = RequestHead::new(proxy::config::MAX_HEADERS_CEILING);
    let verdict = h.parse(input, &limits);
    match verdict {
        Ok(Parsed::Partial) | Err(_) => return Ok(false),
        Ok(Parsed::Complete) => {}
    }
    let mut problems = Vec::new();
    let len = h.len;
    if len > input.len() || !input[..len].ends_with(b"\r\n\r\n") {
        return Err(format!("head length: {len} of {} bytes, not ending in CRLFCRLF", input.len()));
    }

    // Split invariance: the proxy parses whatever a read returned, so every strict prefix of an
    // accepted head must be `Partial` (a prefix rejected = a request refused or not depending on
    // TCP segmentation), and the bytes after the head must not change the verdict.
    let cuts: Vec<usize> =
        if len <= 300 { (1..len).collect() } else { p.prefix_cuts.iter().map(|c| 1 + (*c as usize) % (len - 1)).collect() };
    let mut h2 = RequestHead::new(proxy::config::MAX_HEADERS_CEILING);
    for k in cuts {
        match h2.parse(&input[..k], &limits) {
            Ok(Parsed::Partial) => {}
            Ok(Parsed::Complete) => problems.push(format!("split: the first {k} bytes already parse as a complete head")),
            Err(e) => {
                problems.push(format!("split: the first {k} of {len} head bytes are rejected ({e:?}) but the whole head is accepted"))
            }
        }
        if problems.len() > 2 {
            break;
        }
    }
    match h2.parse(&input[..len], &limits) {
        Ok(Parsed::Complete) if h2.len == len => {}
        other => problems.push(format!("split: the head alone parses differently ({:?})", other.map(|_| ()))),
    }

    // The referee's reading of the same head.
    let client = match oracle::request_head(input) {
        Next::Msg(m) => m,
        Next::Partial => return Err("accepted a head the referee sees as incomplete".into()),
        Next::Bad(why) => return Err(format!("accepted a head the referee refuses: {why}")),
    };
    if client.len != len {
        problems.push(format!("head length {len}, referee {}", client.len));
    }
    let proxy_framing = framing_of(h.framing);
    if proxy_framing != client.framing {
        problems.push(format!("framing: proxy {proxy_framing:?}, referee {:?}", client.framing));
    }
    if client.minor == 0 && client.framing == Framing::Chunked {
        problems.push("accepted Transfer-Encoding on HTTP/1.0".into());
    }

    // The rewrite, as `conn.rs` calls it, with the route the router would pick.
    let route_path = h.route_path(input);
    let strip = p.strip_a && route_path.starts_with(b"/a");
    let route =
        Route { id: 0, prefix: if strip { b"/a".as_slice().into() } else { b"/".as_slice().into() }, strip_prefix: strip, group: 0 };
    let mut out = Vec::new();
    rewrite::request_head(&mut out, input, &h, &route, CLIENT_IP, false, VIA);
    if parse_head_only(&out, "request", &mut problems).is_none() {
        return Err(problems.join("\n"));
    }
    let Next::Msg(fwd) = oracle::request_head(&out) else {
        return Err("rewritten head refused by the referee (bare CR/LF or framing)".into());
    };
    problems.extend(oracle::forwarded_request_problems(&fwd));
    if fwd.method != client.method {
        problems.push("method changed".into());
    }
    let want_target = expected_target(&client.target, strip.then_some(b"/a".as_slice()));
    if fwd.target != want_target {
        problems.push(format!("target {:?}, expected {:?}", String::from_utf8_lossy(&fwd.target), String::from_utf8_lossy(&want_target)));
    }
    match oracle::declared_framing(&fwd) {
        Ok(f) if f.unwrap_or(Framing::None) == client.framing => {}
        Ok(f) => problems.push(format!("forwarded framing {f:?}, client's {:?}", client.framing)),
        Err(_) => {} // reported by forwarded_request_problems
    }

    // Fields: what the client sent, minus hop-by-hop and proxy-owned fields, in order, then the
    // proxy's own. Derived from the client's head alone.
    let tokens = connection_tokens(&client);
    let absolute = !(client.target.first() == Some(&b'/') || client.target == b"*");
    let authority = absolute.then(|| {
        let rest = client.target.iter().position(|&b| b == b':').map_or(&client.target[..], |i| &client.target[i + 3..]);
        let e = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
        rest[..e].to_vec()
    });
    let no_h2c = |v: &&[u8]| {
        !v.split(|&b| b == b',').any(|t| oracle::trim(t).split(|&b| b == b'/').next().is_some_and(|n| n.eq_ignore_ascii_case(b"h2c")))
    };
    let upgrade_value = client.all("upgrade").into_iter().find(no_h2c);
    // RFC 9110 §7.8: an upgrade needs `Connection: upgrade`; HTTP/1.0 has none; the proxy also
    // refuses h2c and upgrades that carry a body.
    let upgrade = client.minor == 1 && tokens.iter().any(|t| t == b"upgrade") && client.framing == Framing::None && upgrade_value.is_some();
    if upgrade != h.upgrade.is_some() {
        problems.push(format!("upgrade: proxy {}, expected {upgrade}", h.upgrade.is_some()));
    }
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut host_done = false;
    for (name, value) in &client.fields {
        let n = lower(name);
        let protected = matches!(n.as_slice(), b"host" | b"content-length" | b"transfer-encoding");
        let hop = match n.as_slice() {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"upgrade" => true,
            b"te" => !value.eq_ignore_ascii_case(b"trailers"),
            b"x-forwarded-for" | b"x-forwarded-proto" | b"x-forwarded-host" => true,
            b"expect" => client.minor == 0,
            _ => false,
        };
        if hop || (!protected && tokens.contains(&n)) {
            continue;
        }
        if n == b"host"
            && let Some(a) = &authority
        {
            if !host_done {
                want.push((name.clone(), a.clone()));
                host_done = true;
            }
            continue;
        }
        want.push((name.clone(), value.clone()));
    }
    match &authority {
        Some(a) if !host_done => want.push((b"Host".to_vec(), a.clone())),
        // HTTP/1.0 without Host: an empty one (RFC 9112 §3.2), the request goes out as HTTP/1.1.
        None if client.all("host").is_empty() => want.push((b"Host".to_vec(), Vec::new())),
        _ => {}
    }
    let xff_chain: Vec<&[u8]> = if tokens.iter().any(|t| t == b"x-forwarded-for") {
        Vec::new()
    } else {
        client.all("x-forwarded-for").into_iter().filter(|v| !v.is_empty()).collect()
    };
    let mut xff = xff_chain.join(b", ".as_slice());
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(CLIENT_IP);
    want.push((b"X-Forwarded-For".to_vec(), xff));
    want.push((b"X-Forwarded-Proto".to_vec(), b"http".to_vec()));
    let host = authority.clone().or_else(|| client.one("host").map(<[u8]>::to_vec));
    if let Some(host) = host {
        want.push((b"X-Forwarded-Host".to_vec(), host));
    }
    want.push((b"Via".to_vec(), VIA.to_vec()));
    if upgrade {
        want.push((b"Connection".to_vec(), b"upgrade".to_vec()));
        want.push((b"Upgrade".to_vec(), upgrade_value.map(<[u8]>::to_vec).unwrap_or_default()));
    }
    if fwd.fields != want {
        let show = |f: &[(Vec<u8>, Vec<u8>)]| {
            f.iter().map(|(n, v)| format!("{}: {}", escape_quoted(n), escape_quoted(v))).collect::<Vec<_>>().join(" | ")
        };
        problems.push(format!("forwarded fields\n    got:  {}\n    want: {}", show(&fwd.fields), show(&want)));
    }
    // A field the client's Connection header names never goes upstream (RFC 9110 §7.6.1),
    // except framing and Host, and what the proxy itself emits.
    for (name, _) in &fwd.fields {
        let n = lower(name);
        let own = matches!(
            n.as_slice(),
            b"host" | b"content-length" | b"transfer-encoding" | b"x-forwarded-for" | b"x-forwarded-proto" | b"x-forwarded-host" | b"via"
        ) || (upgrade && matches!(n.as_slice(), b"connection" | b"upgrade"));
        if !own && tokens.contains(&n) {
            problems.push(format!("field {} is named by Connection but was forwarded", escape_quoted(name)));
        }
    }
    if problems.is_empty() { Ok(true) } else { Err(problems.join("\n")) }
}

// ---------------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct ChunkParams {
    max: u64,
    splits: [u64; 6],
    pieces: usize,
    byte_at_a_time: bool,
}

pub fn chunk_params(rng: &mut Rng) -> ChunkParams {
    let mut splits = [0; 6];
    for s in &mut splits {
        *s = rng.next();
    }
    let max = if rng.chance(1, 2) { u64::MAX } else { rng.pick(&[0, 1, 5, 10, 64, 1000]) };
    ChunkParams { max, splits, pieces: 1 + rng.below(6), byte_at_a_time: rng.chance(1, 8) }
}

/// A chunked-body input: generated, an adversarial broken body, or any input's tail; mutated.
pub fn chunk_input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = match rng.below(4) {
        0 | 1 => inputs::chunked_body(rng),
        2 => {
            let c = rng.pick_ref(corpus);
            let at = c.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4);
            c[at..].to_vec()
        }
        _ => [inputs::chunked_body(rng), inputs::chunked_body(rng)].concat(),
    };
    if rng.chance(1, 3) {
        b.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n");
    }
    for _ in 0..rng.below(4) {
        inputs::mutate(rng, &mut b, corpus);
    }
    b
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Error(ChunkError),
    /// Valid so far; body not finished; every byte taken.
    More,
    /// Body ended after this many input bytes.
    Done(usize),
}

/// Feeds `input` in `pieces`; returns the verdict and the chunk data reported.
fn feed_pieces(input: &[u8], cuts: &[usize], max: u64, problems: &mut Vec<String>) -> (Verdict, Vec<u8>) {
    let mut c = Chunked::new(max);
    let mut data = Vec::new();
    let mut taken = 0;
    let mut bounds = cuts.to_vec();
    bounds.push(input.len());
    let mut start = 0;
    for end in bounds {
        let piece = &input[start..end];
        let mut ranges = Vec::new();
        match c.feed(piece, |s, e| ranges.push((s, e))) {
            // Data reported before the error is not compared: a split feed has already
            // reported earlier pieces (and the proxy has already forwarded them).
            Err(e) => return (Verdict::Error(e), Vec::new()),
            Ok(step) => {
                let mut last = 0;
                for &(s, e) in &ranges {
                    if s < last || e < s || e > step.consumed {
                        problems.push(format!("data range {s}..{e} outside the consumed {} bytes of a piece", step.consumed));
                        return (Verdict::More, data);
                    }
                    last = e;
                    data.extend_from_slice(&piece[s..e]);
                }
                if step.consumed > piece.len() {
                    problems.push(format!("consumed {} of a {}-byte piece", step.consumed, piece.len()));
                }
                taken += step.consumed;
                if step.done {
                    if !c.is_done() {
                        problems.push("step.done without is_done()".into());
                    }
                    // After the end, nothing more is taken.
                    if let Ok(again) = c.feed(b"GET / HTTP/1.1\r\n", |_, _| problems.push("data after the end".into()))
                        && (again.consumed != 0 || !again.done)
                    {
                        problems.push(format!("fed after the end: {again:?}"));
                    }
                    return (Verdict::Done(taken), data);
                }
                if step.consumed != piece.len() {
                    problems.push(format!("not done but took {} of {} bytes", step.consumed, piece.len()));
                }
            }
        }
        start = end;
    }
    (Verdict::More, data)
}

/// The proxy's own bounds on a chunk-size line and the trailer section (`chunked.rs`), which the
/// referee does not model: near them, a refusal by the proxy alone is not a finding.
fn near_line_limits(input: &[u8]) -> bool {
    input.split(|&b| b == b'\n').any(|l| l.len() > 4000) || input.len() > 16_000
}

pub fn check_chunked(input: &[u8], p: &ChunkParams) -> Result<bool, String> {
    let mut problems = Vec::new();
    let (whole, data) = feed_pieces(input, &[], p.max, &mut problems);
    // Split invariance.
    let mut cuts: Vec<usize> = if p.byte_at_a_time {
        (1..input.len()).collect()
    } else {
        p.splits[..p.pieces.min(6) - 1].iter().map(|s| (*s as usize) % (input.len() + 1)).collect()
    };
    cuts.sort_unstable();
    cuts.dedup();
    let (split, split_data) = feed_pieces(input, &cuts, p.max, &mut problems);
    if split != whole || split_data != data {
        problems.push(format!(
            "split at {cuts:?}: {split:?} (data {}), whole: {whole:?} (data {})",
            escape_quoted(&split_data),
            escape_quoted(&data)
        ));
    }
    // The referee.
    let accepted = matches!(whole, Verdict::Done(_) | Verdict::More);
    match (oracle::chunked_end(input), &whole) {
        (Ok(Some(end)), _) => {
            let want = oracle::dechunk(&input[..end]);
            match whole {
                Verdict::Done(n) if n == end && data == want => {}
                Verdict::Error(ChunkError::TooLarge) if want.len() as u64 > p.max => {}
                Verdict::Error(ChunkError::Malformed) if near_line_limits(input) => {}
                ref v => problems.push(format!(
                    "referee: valid body of {end} bytes, data {}; proxy: {v:?}, data {}",
                    escape_quoted(&want),
                    escape_quoted(&data)
                )),
            }
            if want.len() as u64 > p.max && whole != Verdict::Error(ChunkError::TooLarge) {
                problems.push(format!("{} data bytes accepted with max_total {}", want.len(), p.max));
            }
        }
        (Ok(None), Verdict::More | Verdict::Error(ChunkError::TooLarge)) => {}
        (Ok(None), Verdict::Error(ChunkError::Malformed)) if near_line_limits(input) => {}
        (Ok(None), v) => problems.push(format!("referee: valid but incomplete; proxy: {v:?}")),
        (Err(_), Verdict::Error(_)) => {}
        (Err(why), v) => problems.push(format!("proxy {v:?} a body the referee refuses: {why}")),
    }
    if problems.is_empty() { Ok(accepted) } else { Err(problems.join("\n")) }
}

// ---------------------------------------------------------------------------------------------
// Response heads
// ---------------------------------------------------------------------------------------------

const STATUSES: &[&str] = &[
    "200 OK",
    "204 No Content",
    "304 Not Modified",
    "101 Switching Protocols",
    "100 Continue",
    "103 Early Hints",
    "404 Not Found",
    "502 Bad Gateway",
    "199 X",
    "999 Z",
    "200",
    "200 ",
];
const RES_FIELDS: &[&str] = &[
    "Content-Length: 5",
    "Content-Length: 0",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: X-Hop, Content-Length",
    "Connection: Via",
    "X-Hop: 1",
    "Keep-Alive: timeout=5",
    "Upgrade: websocket",
    "Proxy-Connection: close",
    "Via: 1.1 origin",
    "Set-Cookie: a=b",
    "Server: origin",
    "TE: trailers",
];

pub fn response_input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut s = format!("HTTP/1.{} {}\r\n", rng.below(2), rng.pick(STATUSES));
    for _ in 0..rng.below(5) {
        s.push_str(rng.pick(RES_FIELDS));
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    let mut b = s.into_bytes();
    if rng.chance(1, 3) {
        b.extend_from_slice(b"hello");
    }
    for _ in 0..rng.below(4) {
        inputs::mutate(rng, &mut b, corpus);
    }
    b
}

#[derive(Debug)]
pub struct ResParams {
    head_request: bool,
    conn: ClientConn,
    dechunk: bool,
}

pub fn res_params(rng: &mut Rng) -> ResParams {
    ResParams {
        head_request: rng.chance(1, 5),
        conn: rng.pick(&[ClientConn::KeepAlive11, ClientConn::KeepAlive10, ClientConn::Close]),
        dechunk: rng.chance(1, 4),
    }
}

pub fn check_response(input: &[u8], p: &ResParams) -> Result<bool, String> {
    let mut res = ResponseHead::new();
    match res.parse(input, p.head_request) {
        Ok(Parsed::Complete) => {}
        Ok(Parsed::Partial) | Err(ProxyError::BadResponse) => return Ok(false),
        Err(e) => return Err(format!("response parse returned {e:?}")),
    }
    let mut problems = Vec::new();
    let upstream = match oracle::response_head(input, p.head_request) {
        Next::Msg(m) => m,
        Next::Partial => return Err("accepted a response head the referee sees as incomplete".into()),
        Next::Bad(why) => return Err(format!("accepted a response head the referee refuses: {why}")),
    };
    if res.len != upstream.len || res.status != upstream.status {
        problems.push(format!("len/status {}/{}, referee {}/{}", res.len, res.status, upstream.len, upstream.status));
    }
    if framing_of(res.framing) != upstream.framing {
        problems.push(format!("framing: proxy {:?}, referee {:?}", res.framing, upstream.framing));
    }
    if res.framing == head::Framing::UntilClose && res.keep_alive {
        problems.push("close-delimited body on a connection kept alive".into());
    }
    let tokens = connection_tokens(&upstream);
    let mut out = Vec::new();
    if res.status < 200 {
        rewrite::interim_head(&mut out, input, &res);
    } else {
        let dechunk = p.dechunk && res.framing == head::Framing::Chunked;
        let head_for = if dechunk { rewrite::HeadFor::DechunkedBody } else { rewrite::HeadFor::Body };
        rewrite::response_head(&mut out, input, &res, VIA, 0, p.conn, head_for);
    }
    if parse_head_only(&out, "response", &mut problems).is_none() {
        return Err(problems.join("\n"));
    }
    let Next::Msg(fwd) = oracle::response_head(&out, p.head_request) else {
        return Err("rewritten response head refused by the referee".into());
    };
    if fwd.status != res.status {
        problems.push("status changed".into());
    }
    oracle::hop_by_hop_problems(
        &Msg { fields: fwd.fields.iter().filter(|(n, _)| !n.eq_ignore_ascii_case(b"connection")).cloned().collect(), ..fwd.clone() },
        false,
        &mut problems,
    );
    let conns = fwd.all("connection");
    let want_conn: &[&[u8]] = match (res.status < 200, p.conn) {
        (true, _) | (false, ClientConn::KeepAlive11) => &[],
        (false, ClientConn::KeepAlive10) => &[b"keep-alive"],
        (false, ClientConn::Close) => &[b"close"],
    };
    if conns != want_conn {
        problems
            .push(format!("Connection fields {:?}, expected {want_conn:?}", conns.iter().map(|c| escape_quoted(c)).collect::<Vec<_>>()));
    }
    let dechunk = p.dechunk && res.framing == head::Framing::Chunked && res.status >= 200;
    match (oracle::declared_framing(&fwd), oracle::declared_framing(&upstream)) {
        (Ok(None), _) if dechunk => {}
        (Ok(f), _) if dechunk => problems.push(format!("de-chunked response still declares {f:?}")),
        (Ok(a), Ok(b)) if a == b => {}
        (a, b) => problems.push(format!("framing fields changed: {a:?} from {b:?}")),
    }
    for (name, _) in &fwd.fields {
        let n = lower(name);
        if !matches!(n.as_slice(), b"content-length" | b"transfer-encoding" | b"host" | b"via" | b"connection") && tokens.contains(&n) {
            problems.push(format!("field {} named by Connection was forwarded", escape_quoted(name)));
        }
    }
    if problems.is_empty() { Ok(true) } else { Err(problems.join("\n")) }
}
