//! Writing the forwarded heads into the connection's reused output buffer. Hot path.
//!
//! Heads are assembled by copying spans of the parsed input (which lives in the read buffer)
//! into one `Vec<u8>` whose capacity survives across requests, so the rewrite allocates nothing
//! in steady state and the head (plus the first body bytes) leaves in a single `write`.

use crate::data::h1::head::{Kind, RequestHead, ResponseHead};
use crate::snapshot::Route;

/// How the client connection continues after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientConn {
    /// HTTP/1.1 keep-alive: nothing to say.
    KeepAlive11,
    /// HTTP/1.0 keep-alive: must be said explicitly.
    KeepAlive10,
    Close,
}

/// Request line + forwarded fields + X-Forwarded-* + Via (+ upgrade), then the blank line.
/// `tls`: the client spoke TLS (`X-Forwarded-Proto: https`).
pub fn request_head(out: &mut Vec<u8>, buf: &[u8], req: &RequestHead, route: &Route, client_ip: &[u8], tls: bool, via: &[u8]) {
    out.clear();
    out.extend_from_slice(req.method.of(buf));
    out.push(b' ');
    let mut path = req.target.path.of(buf);
    if route.strip_prefix {
        path = path.get(route.prefix.len()..).unwrap_or(b"");
    }
    if path.first() != Some(&b'/') && path != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let absolute = req.target.authority.is_some();
    let mut host_written = false;
    for f in &req.fields.list {
        if f.drop {
            continue;
        }
        if absolute && f.kind == Kind::Host {
            // Absolute-form: the authority replaces the received Host (RFC 9112 §3.2.2).
            if !host_written {
                field(out, f.name.of(buf), req.host.map_or(b"".as_slice(), |h| h.of(buf)));
                host_written = true;
            }
            continue;
        }
        field(out, f.name.of(buf), f.value.of(buf));
    }
    match req.host {
        Some(h) if absolute && !host_written => field(out, b"Host", h.of(buf)),
        Some(_) => {}
        // HTTP/1.0 without Host, forwarded as HTTP/1.1: RFC 9112 §3.2 requires a Host field,
        // empty when the target has no authority (an HTTP/1.1 origin MUST 400 a request without).
        None => out.extend_from_slice(b"Host: \r\n"),
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for f in &req.fields.list {
        if f.kind == Kind::XForwardedFor && !f.value.is_empty() {
            out.extend_from_slice(f.value.of(buf));
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(if tls { b"\r\nX-Forwarded-Proto: https\r\n" } else { b"\r\nX-Forwarded-Proto: http\r\n" });
    if let Some(host) = req.host {
        field(out, b"X-Forwarded-Host", host.of(buf));
    }
    field(out, b"Via", via);
    if let Some(up) = req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        field(out, b"Upgrade", up.of(buf));
    }
    out.extend_from_slice(b"\r\n");
}

/// How the body of a request forwarded from another protocol ([`forwarded_request_head`]) is
/// framed on the HTTP/1.1 upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardBody {
    /// No body, and none announced: nothing is written (a `content-length` field among the
    /// fields frames it as the client sent it).
    AsFields,
    /// No body on a method that usually has one: `Content-Length: 0`.
    EmptyLength,
    /// A body of unknown length: `Transfer-Encoding: chunked` (the caller frames the chunks).
    Chunked,
}

/// A request of another protocol (HTTP/2, HTTP/3) as an HTTP/1.1 head: the request line,
/// `Host` from the authority, the fields as received (`cookie` fields joined into one, RFC 9113
/// §8.2.3; `host`, `x-forwarded-proto` and `x-forwarded-host` re-emitted), `X-Forwarded-*`,
/// `Via` and the body framing, then the blank line. The fields are those the protocol accepted:
/// connection-specific ones (RFC 9113 §8.2.2) never reach here.
#[allow(clippy::too_many_arguments)]
pub fn forwarded_request_head<'f, F, I>(
    out: &mut Vec<u8>,
    method: &[u8],
    path: &[u8],
    authority: &[u8],
    fields: F,
    route: &Route,
    client_ip: &[u8],
    tls: bool,
    via: &[u8],
    body: ForwardBody,
) where
    F: Fn() -> I,
    I: Iterator<Item = (&'f [u8], &'f [u8])>,
{
    out.clear();
    out.extend_from_slice(method);
    out.push(b' ');
    let mut path = path;
    if route.strip_prefix {
        path = path.get(route.prefix.len()..).unwrap_or(b"");
    }
    if path.first() != Some(&b'/') && path != b"*" {
        out.push(b'/');
    }
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The authority, else a `host` field (RFC 9113 §8.3.1 lets a client send either).
    let host = if authority.is_empty() { fields().find(|(n, _)| *n == b"host").map_or(b"".as_slice(), |(_, v)| v) } else { authority };
    field(out, b"Host", host);
    let mut cookies = 0;
    for (name, value) in fields() {
        match name {
            b"host" | b"x-forwarded-for" | b"x-forwarded-proto" | b"x-forwarded-host" => {}
            b"cookie" => cookies += 1,
            _ => field(out, name, value),
        }
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        let mut first = true;
        for (_, value) in fields().filter(|(n, _)| *n == b"cookie") {
            if !first {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(value);
            first = false;
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for (_, value) in fields().filter(|(n, _)| *n == b"x-forwarded-for") {
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(if tls { b"\r\nX-Forwarded-Proto: https\r\n" } else { b"\r\nX-Forwarded-Proto: http\r\n" });
    if !host.is_empty() {
        field(out, b"X-Forwarded-Host", host);
    }
    field(out, b"Via", via);
    match body {
        ForwardBody::AsFields => {}
        ForwardBody::EmptyLength => out.extend_from_slice(b"Content-Length: 0\r\n"),
        ForwardBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// What the response head written by [`response_head`] introduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadFor {
    /// The body as the upstream framed it.
    Body,
    /// A chunked body re-framed as close-delimited for an HTTP/1.0 client: Transfer-Encoding is
    /// not forwarded.
    DechunkedBody,
    /// A 101 Switching Protocols: the Upgrade field is passed on with `Connection: upgrade` (the
    /// connection decision is ignored).
    Upgrade,
}

/// Status line + forwarded fields + Via (+ `Alt-Svc` when the listener serves HTTP/3 on UDP
/// `alt_svc`, not 0) + the connection decision, then the blank line.
pub fn response_head(out: &mut Vec<u8>, buf: &[u8], res: &ResponseHead, via: &[u8], alt_svc: u16, conn: ClientConn, head_for: HeadFor) {
    let dechunk = head_for == HeadFor::DechunkedBody;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    status(out, res.status);
    out.push(b' ');
    out.extend_from_slice(res.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    let mut upgrade_value: &[u8] = b"";
    for f in &res.fields.list {
        if f.kind == Kind::Upgrade {
            upgrade_value = f.value.of(buf);
        }
        if f.drop || (dechunk && f.kind == Kind::TransferEncoding) {
            continue;
        }
        field(out, f.name.of(buf), f.value.of(buf));
    }
    field(out, b"Via", via);
    if alt_svc != 0 && head_for != HeadFor::Upgrade {
        alt_svc_field(out, alt_svc);
    }
    if head_for == HeadFor::Upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        field(out, b"Upgrade", upgrade_value);
    } else {
        match conn {
            ClientConn::KeepAlive11 => {}
            ClientConn::KeepAlive10 => out.extend_from_slice(b"Connection: keep-alive\r\n"),
            ClientConn::Close => out.extend_from_slice(b"Connection: close\r\n"),
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// How long a client may remember the HTTP/3 alternative (`ma`, seconds): a day, as the
/// common default (RFC 7838 §3.1 says 24 hours when absent; said explicitly here).
pub const ALT_SVC_MAX_AGE: &[u8] = b"86400";

/// `Alt-Svc: h3=":PORT"; ma=86400` (RFC 7838, RFC 9114 §3.1.1): the same host serves HTTP/3 on
/// UDP `port`. Written into the reused output buffer; no allocation.
pub fn alt_svc_field(out: &mut Vec<u8>, port: u16) {
    out.extend_from_slice(b"Alt-Svc: ");
    alt_svc_value(out, port);
    out.extend_from_slice(b"\r\n");
}

/// The `Alt-Svc` value alone (`h3=":PORT"; ma=86400`), appended to `out`.
pub fn alt_svc_value(out: &mut Vec<u8>, port: u16) {
    out.extend_from_slice(b"h3=\":");
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\"; ma=");
    out.extend_from_slice(ALT_SVC_MAX_AGE);
}

/// An interim (1xx) response relayed to the client: status line and fields as received.
pub fn interim_head(out: &mut Vec<u8>, buf: &[u8], res: &ResponseHead) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    status(out, res.status);
    out.push(b' ');
    out.extend_from_slice(res.reason.of(buf));
    out.extend_from_slice(b"\r\n");
    for f in &res.fields.list {
        if !f.drop {
            field(out, f.name.of(buf), f.value.of(buf));
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `name: value` and CRLF.
#[inline]
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[inline]
fn status(out: &mut Vec<u8>, code: u16) {
    let c = code.min(999);
    out.extend_from_slice(&[b'0' + (c / 100) as u8, b'0' + (c / 10 % 10) as u8, b'0' + (c % 10) as u8]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::h1::head::Parsed;
    use crate::snapshot::Limits;

    fn parse(b: &[u8]) -> RequestHead {
        let mut h = RequestHead::new(100);
        assert!(matches!(h.parse(b, &Limits::default()).unwrap(), Parsed::Complete));
        h
    }

    fn route(prefix: &str, strip: bool) -> Route {
        Route { id: 0, prefix: prefix.as_bytes().into(), strip_prefix: strip, group: 0 }
    }

    #[test]
    fn request_rewrite_is_exact() {
        let b = b"GET /api/x?y HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nTE: trailers\r\nKeep-Alive: 5\r\nA:  b \r\n\r\n";
        let req = parse(b);
        let mut out = Vec::new();
        request_head(&mut out, b, &req, &route("/api", true), b"127.0.0.1", false, b"1.1 fastproxy");
        let want = "GET /x?y HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nA: b\r\nX-Forwarded-For: 1.2.3.4, 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\nVia: 1.1 fastproxy\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&out), want);
    }

    #[test]
    fn strip_to_root_and_absolute_form() {
        let b = b"GET /api?q HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut out = Vec::new();
        request_head(&mut out, b, &parse(b), &route("/api", true), b"::1", false, b"1.1 p");
        assert!(out.starts_with(b"GET /?q HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&out));
        let b = b"GET http://h HTTP/1.1\r\nHost: h\r\n\r\n";
        request_head(&mut out, b, &parse(b), &route("/", false), b"::1", false, b"1.1 p");
        assert!(out.starts_with(b"GET / HTTP/1.1\r\n"));
    }

    /// Found by the fuzzer (tests/fuzz): an HTTP/1.0 request without Host went upstream as an
    /// HTTP/1.1 request without Host, which an HTTP/1.1 origin must refuse.
    #[test]
    fn http10_without_host_gets_an_empty_host() {
        let b = b"GET /old HTTP/1.0\r\nX-A: 1\r\n\r\n";
        let mut out = Vec::new();
        request_head(&mut out, b, &parse(b), &route("/", false), b"::1", false, b"1.1 p");
        let want = "GET /old HTTP/1.1\r\nX-A: 1\r\nHost: \r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\nVia: 1.1 p\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&out), want);
    }

    #[test]
    fn a_request_from_another_protocol() {
        let fields: &[(&[u8], &[u8])] = &[
            (b"accept", b"*/*"),
            (b"cookie", b"a=1"),
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-proto", b"https"),
            (b"cookie", b"b=2"),
            (b"te", b"trailers"),
        ];
        let mut out = Vec::new();
        forwarded_request_head(
            &mut out,
            b"POST",
            b"/api/x?y",
            b"h:8443",
            || fields.iter().copied(),
            &route("/api", true),
            b"::1",
            true,
            b"1.1 p",
            ForwardBody::Chunked,
        );
        let want = "POST /x?y HTTP/1.1\r\nHost: h:8443\r\naccept: */*\r\nte: trailers\r\ncookie: a=1; b=2\r\nX-Forwarded-For: 1.2.3.4, ::1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h:8443\r\nVia: 1.1 p\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&out), want);
        // No authority: the host field; a body-less POST says so.
        let fields: &[(&[u8], &[u8])] = &[(b"host", b"example")];
        forwarded_request_head(
            &mut out,
            b"POST",
            b"/",
            b"",
            || fields.iter().copied(),
            &route("/", false),
            b"::1",
            false,
            b"1.1 p",
            ForwardBody::EmptyLength,
        );
        let want = "POST / HTTP/1.1\r\nHost: example\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: example\r\nVia: 1.1 p\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(String::from_utf8_lossy(&out), want);
    }

    #[test]
    fn alt_svc_names_the_port_in_decimal() {
        for (port, want) in [(1u16, &b"h3=\":1\"; ma=86400"[..]), (443, b"h3=\":443\"; ma=86400"), (65535, b"h3=\":65535\"; ma=86400")] {
            let mut v = Vec::new();
            alt_svc_value(&mut v, port);
            assert_eq!(v, want);
        }
        let mut out = Vec::new();
        alt_svc_field(&mut out, 8443);
        assert_eq!(out, b"Alt-Svc: h3=\":8443\"; ma=86400\r\n");
    }

    #[test]
    fn response_rewrite() {
        let b = b"HTTP/1.1 200 Fine\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n";
        let mut res = ResponseHead::new();
        res.parse(b, false).unwrap();
        let mut out = Vec::new();
        response_head(&mut out, b, &res, b"1.1 p", 0, ClientConn::KeepAlive11, HeadFor::Body);
        assert_eq!(String::from_utf8_lossy(&out), "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nX: y\r\nVia: 1.1 p\r\n\r\n");
        response_head(&mut out, b, &res, b"1.1 p", 0, ClientConn::Close, HeadFor::DechunkedBody);
        assert_eq!(String::from_utf8_lossy(&out), "HTTP/1.1 200 Fine\r\nX: y\r\nVia: 1.1 p\r\nConnection: close\r\n\r\n");
    }
}
