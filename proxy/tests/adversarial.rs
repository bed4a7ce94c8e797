//! Hostile requests as raw bytes, checked against what reached the upstream, byte for byte.
//!
//! Each case is a row: the request bytes, what the client must get, what the upstream must have
//! received, and the reason (RFC 9110/9112 section or the project's stricter rule from issue 2).
//! Every case runs against a fresh proxy and a fresh recording upstream, so what the upstream saw
//! belongs to that case alone.
//!
//! For every rejected case a valid second request (`GET /smuggled`) is pipelined in the same write:
//! it must never reach the upstream, because after a framing error the connection has no trustworthy
//! message boundary left.
//!
//! Set `ADVERSARIAL_CASE=name` to run one case.

use crate::fwd_tail;
use crate::harness::{Proxy, Reply, SETTLE, Upstream, assert_bytes, check_bytes, config, ok, show, wait_until};
use std::time::Duration;

/// Limits small enough to hit with small requests.
const LIMITS: &str = "max_request_line_bytes = 1024
max_request_head_bytes = 4096
max_headers = 20
max_body_bytes = 1000
header_read_timeout = \"2s\"";

/// The pipelined request that must never reach the upstream after a rejection.
const SMUGGLE: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";

/// The head every chunked-body case uses, and what the proxy forwards for it.
const CHUNKED_HEAD: &str = "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
const CHUNKED_FWD: &str = concat!("POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n", fwd_tail!());

/// What the client must get.
enum Answer {
    /// A proxy-generated response with one of these statuses, `Content-Length: 0` and
    /// `Connection: close`, then the connection closes.
    Reject(&'static [u16]),
    /// The upstream's `200 OK` / `ok`, relayed.
    Relayed,
    /// This status (then close), or the connection closed without any response. Used where the
    /// request head may already be upstream when the body turns out to be broken (streaming).
    StatusOrClose(u16),
}

/// What the upstream must have received.
enum Seen {
    /// Not one byte.
    Nothing,
    /// Exactly these bytes on exactly one connection.
    Exactly(Vec<u8>),
    /// No complete message: the bytes received (if any) are a prefix of these (the forwarded head
    /// and the body bytes as the client sent them), the upstream parsed no complete request, and
    /// the proxy closed that upstream connection (a connection with broken framing is never
    /// pooled).
    NoCompleteMessage(Vec<u8>),
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    answer: Answer,
    seen: Seen,
    why: &'static str,
}

fn reject(name: &'static str, request: &[u8], statuses: &'static [u16], why: &'static str) -> Case {
    Case { name, request: request.to_vec(), answer: Answer::Reject(statuses), seen: Seen::Nothing, why }
}

fn relayed(name: &'static str, request: &[u8], upstream: &[u8], why: &'static str) -> Case {
    Case { name, request: request.to_vec(), answer: Answer::Relayed, seen: Seen::Exactly(upstream.to_vec()), why }
}

/// A chunked POST whose body (`body`, after the head) is broken.
fn bad_body(name: &'static str, body: &[u8], status: u16, why: &'static str) -> Case {
    let mut request = CHUNKED_HEAD.as_bytes().to_vec();
    request.extend_from_slice(body);
    let mut prefix = CHUNKED_FWD.as_bytes().to_vec();
    prefix.extend_from_slice(body);
    Case { name, request, answer: Answer::StatusOrClose(status), seen: Seen::NoCompleteMessage(prefix), why }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[rustfmt::skip]
fn rejected_cases() -> Vec<Case> {
    const B400: &[u16] = &[400];
    let post = |framing: &str, body: &str| -> Vec<u8> {
        format!("POST / HTTP/1.1\r\nHost: a.test\r\n{framing}\r\n{body}").into_bytes()
    };
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "a".repeat(1100));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: {0}\r\nX-B: {0}\r\nX-C: {0}\r\n\r\n",
        "b".repeat(1700)
    );
    let many_headers = {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: a.test\r\n");
        for i in 0..25 {
            s.push_str(&format!("X-H{i}: {i}\r\n"));
        }
        s.push_str("\r\n");
        s
    };
    vec![
        // --- message framing (request smuggling) ---
        reject("cl_and_te_together", &post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §6.1/§6.3(3): CL with TE is the CL.TE smuggling vector; the proxy rejects instead of choosing"),
        reject("te_and_cl_together_te_first", &post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §6.1: same as above, header order must not matter (TE.CL)"),
        reject("content_length_two_different_values", &post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), B400,
            "RFC 9112 §6.3(5): differing Content-Length values are unrecoverable; MUST 400"),
        reject("content_length_list_same_value", &post("Content-Length: 5, 5\r\n", "hello"), B400,
            "RFC 9112 §6.3(5) lets a server accept identical values; issue 2 is stricter: any list is 400"),
        reject("content_length_repeated_same_value", &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), B400,
            "RFC 9112 §6.3(5) as above; strict: repeated Content-Length is 400"),
        reject("content_length_plus_sign", &post("Content-Length: +5\r\n", "hello"), B400,
            "RFC 9110 §8.6: Content-Length = 1*DIGIT; a sign is invalid framing"),
        reject("content_length_negative", &post("Content-Length: -1\r\n", ""), B400,
            "RFC 9110 §8.6: 1*DIGIT"),
        reject("content_length_hex", &post("Content-Length: 0x5\r\n", "hello"), B400,
            "RFC 9110 §8.6: decimal digits only (a lenient parser reads 0 and leaves `hello` as a request)"),
        reject("content_length_empty", &post("Content-Length: \r\n", ""), B400,
            "RFC 9110 §8.6: at least one digit"),
        reject("content_length_inner_space", &post("Content-Length: 1 0\r\n", "0123456789"), B400,
            "RFC 9110 §8.6: 1*DIGIT, no inner whitespace"),
        reject("content_length_overflows_u64", &post("Content-Length: 18446744073709551616\r\n", ""), &[400, 413],
            "RFC 9112 §6.3(5): an unparsable length is invalid (413 acceptable: it is also above max_body_bytes)"),
        reject("te_xchunked", &post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §6.1: unknown coding; issue 2: only exactly `chunked` is accepted"),
        reject("te_chunked_chunked", &post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §6.1: chunked MUST NOT be applied more than once"),
        reject("te_gzip", &post("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §6.3(4): a request whose final coding is not chunked has no determinable length: 400"),
        reject("te_chunked_identity", &post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §6.1: chunked must be final; `identity` is no longer a coding"),
        reject("te_gzip_chunked", &post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), B400,
            "issue 2: any Transfer-Encoding other than exactly `chunked` (the proxy decodes no codings)"),
        reject("te_two_header_lines", &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9110 §5.3: two lines combine to `chunked, chunked`"),
        reject("te_space_before_colon", &post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §5.1: whitespace between field name and colon MUST be rejected with 400"),
        reject("te_obs_fold", &post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §5.2: obs-fold; issue 2 rejects it (the RFC's other option, SP replacement, hides TE)"),
        reject("te_vertical_tab", &post("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9110 §5.5: VT is not field-vchar nor OWS; `\\x0bchunked` is not `chunked`"),
        reject("te_empty", &post("Transfer-Encoding: \r\n", ""), B400,
            "RFC 9112 §6.1: transfer-coding list must name a coding"),
        reject("te_on_http10", b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", B400,
            "RFC 9112 §6.1: TE in an HTTP/1.0 request means faulty framing; MUST close"),
        reject("declared_body_too_large", &post("Content-Length: 1001\r\n", ""), &[413],
            "limits.max_body_bytes = 1000: declared length above it is 413 (and close: the body is unread)"),
        // --- line endings and characters ---
        reject("bare_lf_line_endings", b"GET / HTTP/1.1\nHost: a.test\n\n", B400,
            "RFC 9112 §2.2 only MAY accept bare LF; a proxy must not, its upstream may frame differently"),
        reject("bare_lf_after_request_line", b"GET / HTTP/1.1\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §2.2: as above, mixed endings"),
        reject("bare_lf_between_headers", b"GET / HTTP/1.1\r\nHost: a.test\nX-A: 1\r\n\r\n", B400,
            "RFC 9112 §2.2: as above; a lenient upstream would see `X-A` as a header, a strict one would not"),
        reject("bare_cr_in_value", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\rb\r\n\r\n", B400,
            "RFC 9112 §2.2: a bare CR MUST be rejected or replaced by SP before further processing"),
        reject("bare_cr_end_of_value", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\r\n\r\n", B400,
            "RFC 9112 §2.2: as above"),
        reject("bare_cr_in_target", b"GET /a\rb HTTP/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §2.2 and §3.2: CR is not allowed in a request-target"),
        reject("nul_in_value", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x00b\r\n\r\n", B400,
            "RFC 9110 §5.5: NUL MUST be rejected or replaced"),
        reject("nul_in_name", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-\x00A: 1\r\n\r\n", B400,
            "RFC 9110 §5.1: field-name is a token"),
        reject("control_char_in_target", b"GET /a\x01b HTTP/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §3.2 / RFC 3986: no CTLs in a request-target"),
        reject("header_name_with_space", b"GET / HTTP/1.1\r\nHost: a.test\r\nX A: 1\r\n\r\n", B400,
            "RFC 9110 §5.1: field-name is a token (no SP)"),
        reject("header_name_empty", b"GET / HTTP/1.1\r\nHost: a.test\r\n: v\r\n\r\n", B400,
            "RFC 9110 §5.1: token is 1*tchar"),
        reject("header_name_not_token", b"GET / HTTP/1.1\r\nHost: a.test\r\nX<A>: 1\r\n\r\n", B400,
            "RFC 9110 §5.6.2: < and > are delimiters, not tchar"),
        reject("header_name_non_ascii", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-\xc3\xa9: 1\r\n\r\n", B400,
            "RFC 9110 §5.6.2: tchar is ASCII"),
        reject("header_line_without_colon", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-No-Colon\r\n\r\n", B400,
            "RFC 9112 §5: field-line = field-name \":\" OWS field-value OWS"),
        reject("whitespace_before_first_header", b"GET / HTTP/1.1\r\n X-A: 1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §2.2: whitespace-preceded first line MUST be rejected or ignored; issue 2: reject"),
        reject("obs_fold_in_ordinary_header", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n 2\r\n\r\n", B400,
            "RFC 9112 §5.2: obs-fold outside message/http MUST be rejected (400) or replaced; issue 2: reject"),
        // --- request line and Host ---
        reject("missing_host_http11", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", B400,
            "RFC 9112 §3.2: a server MUST 400 an HTTP/1.1 request without Host"),
        reject("duplicate_host", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", B400,
            "RFC 9112 §3.2: MUST 400 a request with more than one Host (routing ambiguity)"),
        reject("host_with_space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", B400,
            "RFC 9112 §3.2: MUST 400 a Host with an invalid field value (uri-host has no SP)"),
        reject("request_line_double_space", b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §3: request-line = method SP request-target SP HTTP-version"),
        reject("request_line_lowercase_version", b"GET / http/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §2.3: HTTP-name is case-sensitive"),
        reject("request_line_no_version", b"GET /\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §3: HTTP/0.9 request lines are not HTTP/1.x"),
        reject("method_not_token", b"G(T / HTTP/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9110 §9.1: method is a token"),
        reject("target_with_space", b"GET /a b HTTP/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §3.2: SP inside a request-target is invalid"),
        reject("target_not_origin_form", b"GET a HTTP/1.1\r\nHost: a.test\r\n\r\n", B400,
            "RFC 9112 §3.2.1: origin-form starts with /"),
        reject("version_http2_in_http1", b"GET / HTTP/2.0\r\nHost: a.test\r\n\r\n", &[400, 505],
            "RFC 9110 §15.6.6: major version 2 is not HTTP/1.x (505 or 400)"),
        // --- limits ---
        reject("request_line_too_long", long_target.as_bytes(), &[414],
            "limits.max_request_line_bytes = 1024; RFC 9112 §3: 414 for a long target"),
        reject("head_too_large", big_head.as_bytes(), &[431],
            "limits.max_request_head_bytes = 4096; RFC 6585 §5: 431"),
        reject("too_many_headers", many_headers.as_bytes(), &[431],
            "limits.max_headers = 20; RFC 6585 §5: 431"),
    ]
}

#[rustfmt::skip]
fn relayed_cases() -> Vec<Case> {
    let body_at_limit = "x".repeat(1000);
    let fields: String = (1..20).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let at_limit_headers = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{fields}\r\n");
    let at_limit_forwarded = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{fields}{}", fwd_tail!());
    vec![
        relayed("te_chunked_uppercase_accepted",
            b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            concat!("POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: CHUNKED\r\n", fwd_tail!(), "5\r\nhello\r\n0\r\n\r\n").as_bytes(),
            "RFC 9112 §7: coding names are case-insensitive; the header goes upstream as received"),
        relayed("te_value_ows_trimmed",
            b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: \tchunked \t\r\n\r\n0\r\n\r\n",
            concat!("POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n", fwd_tail!(), "0\r\n\r\n").as_bytes(),
            "RFC 9112 §5: OWS around a field value is not part of it"),
        relayed("chunk_extensions_and_trailers_forwarded_byte_for_byte",
            b"POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            concat!("POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n", fwd_tail!(),
                "5;name=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n").as_bytes(),
            "RFC 9112 §7.1: extensions and trailers belong to the message; issue 2: chunked bodies forwarded as received"),
        relayed("content_length_body_at_limit",
            &cat(&[b"POST /l HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n", body_at_limit.as_bytes()]),
            &cat(&[concat!("POST /l HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n", fwd_tail!()).as_bytes(), body_at_limit.as_bytes()]),
            "limits.max_body_bytes = 1000 is inclusive: only larger bodies are 413"),
        relayed("chunk_size_uppercase_hex_and_leading_zeros",
            b"POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0005\r\nabcde\r\n0000\r\n\r\n",
            concat!("POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n", fwd_tail!(),
                "A\r\n0123456789\r\n0005\r\nabcde\r\n0000\r\n\r\n").as_bytes(),
            "RFC 9112 §7.1: HEXDIG is case-insensitive and leading zeros are digits (within the 16-digit bound)"),
        relayed("headers_at_max_headers_limit", at_limit_headers.as_bytes(), at_limit_forwarded.as_bytes(),
            "limits.max_headers = 20: exactly 20 fields is allowed, only more is 431"),
        relayed("content_length_zero",
            b"POST /z HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",
            concat!("POST /z HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §8.6: 0 is a valid length"),
        relayed("hop_by_hop_request_headers_removed",
            b"GET /h HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-End: 2\r\n\r\n",
            concat!("GET /h HTTP/1.1\r\nHost: a.test\r\nX-End: 2\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §7.6.1: Connection, the fields it names, Keep-Alive, Proxy-Connection and TE (not `trailers`) are hop-by-hop"),
        relayed("te_trailers_kept",
            b"GET /t HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\n\r\n",
            concat!("GET /t HTTP/1.1\r\nHost: a.test\r\nTE: trailers\r\n", fwd_tail!()).as_bytes(),
            "issue 2: TE is kept when exactly `trailers` (gRPC needs it end to end)"),
        relayed("te_trailers_with_other_coding_removed",
            b"GET /t HTTP/1.1\r\nHost: a.test\r\nTE: trailers, deflate\r\n\r\n",
            concat!("GET /t HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "issue 2: TE other than exactly `trailers` is hop-by-hop"),
        relayed("connection_names_x_forwarded_for",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §7.6.1: the named field is dropped, then the proxy emits its own XFF: a client cannot erase it"),
        relayed("connection_names_end_to_end_header",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: authorization\r\nAuthorization: Bearer x\r\nX-End: 1\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\nX-End: 1\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §7.6.1: a proxy MUST remove every field the Connection header names (case-insensitive)"),
        relayed("connection_list_with_empty_elements",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: , ,X-Hop ,\r\nX-Hop: 1\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §5.6.1.2: a recipient MUST accept empty list elements; X-Hop is still named"),
        relayed("upgrade_h2c_not_tunnelled",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "RFC 9113 §3.1 removed h2c upgrade; tunnelling it lets a client speak h2 past the proxy (h2c smuggling)"),
        relayed("x_forwarded_for_chain_appended",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.2.3.4\r\nX-A: 1\r\nX-Forwarded-For: 5.6.7.8, 9.9.9.9\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\nX-Forwarded-For: 1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1\r\n",
                "X-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nVia: 1.1 fastproxy\r\n\r\n").as_bytes(),
            "issue 2: client XFF values joined, then the client address appended"),
        relayed("x_forwarded_proto_and_host_spoof_replaced",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "issue 2: the proxy owns X-Forwarded-Proto/-Host; a client's values are replaced, not kept"),
        relayed("absolute_form_becomes_origin_form",
            b"GET http://a.test/p?q=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            concat!("GET /p?q=1 HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "RFC 9112 §3.2.2: absolute-form accepted; sent to an origin in origin-form"),
        relayed("http10_forwarded_as_http11",
            b"GET /old HTTP/1.0\r\nHost: a.test\r\n\r\n",
            concat!("GET /old HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §6.2: a proxy sends its own version"),
        relayed("field_value_ows_trimmed",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: \t v  v \t\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\nX-A: v  v\r\n", fwd_tail!()).as_bytes(),
            "RFC 9112 §5: leading/trailing OWS is not part of the value; inner whitespace is"),
        relayed("header_names_case_and_order_preserved",
            b"GET / HTTP/1.1\r\nx-lower: 1\r\nHost: a.test\r\nX-MiXeD: 2\r\nx-lower: 3\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nx-lower: 1\r\nHost: a.test\r\nX-MiXeD: 2\r\nx-lower: 3\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §5.3: order of same-name fields is significant; names go as received"),
        relayed("obs_text_in_value_forwarded",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Name: caf\xc3\xa9\r\n\r\n",
            &cat(&[b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Name: caf\xc3\xa9\r\n", fwd_tail!().as_bytes()]),
            "RFC 9110 §5.5: obs-text (0x80-0xFF) is allowed in values; rejecting breaks real UTF-8 clients"),
    ]
}

#[rustfmt::skip]
fn bad_body_cases() -> Vec<Case> {
    let too_big = format!("800\r\n{}\r\n0\r\n\r\n", "a".repeat(0x800));
    vec![
        bad_body("chunk_size_not_hex", b"Z\r\nhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: chunk-size = 1*HEXDIG"),
        bad_body("chunk_size_0x_prefix", b"0x10\r\n0123456789abcdef\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: 1*HEXDIG; a lenient parser reads `0` = last chunk and leaves a request behind"),
        bad_body("chunk_size_underscore", b"1_0\r\n0123456789abcdef\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: 1*HEXDIG (Rust's integer parsers would not accept `_`, hand-written ones may)"),
        bad_body("chunk_size_empty", b"\r\nhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: at least one HEXDIG"),
        bad_body("chunk_size_17_digits_overflow", b"10000000000000005\r\nhello\r\n0\r\n\r\n", 400,
            "issue 2: 17+ hex digits rejected; a wrapping u64 parser reads 5"),
        bad_body("chunk_size_17_digits_leading_zeros", b"00000000000000005\r\nhello\r\n0\r\n\r\n", 400,
            "issue 2: 17+ hex digits rejected even when the value fits (bounded parser)"),
        bad_body("chunk_size_negative", b"-5\r\nhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: 1*HEXDIG"),
        bad_body("chunk_size_leading_space", b" 5\r\nhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: no whitespace before chunk-size"),
        bad_body("chunk_size_bare_lf", b"5\nhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: chunk-size line ends in CRLF"),
        bad_body("chunk_size_bare_cr", b"5\rhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §2.2: bare CR"),
        bad_body("chunk_data_not_followed_by_crlf", b"5\r\nhelloXX\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: chunk = chunk-size CRLF chunk-data CRLF"),
        bad_body("chunk_data_followed_by_bare_lf", b"5\r\nhello\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: CRLF after chunk-data"),
        bad_body("chunk_extension_ending_in_bare_lf", b"5;e=1\nhello\r\n0\r\n\r\n", 400,
            "RFC 9112 §7.1: the chunk-size line, extensions included, ends in CRLF"),
        bad_body("trailer_line_without_colon", b"5\r\nhello\r\n0\r\nX-No-Colon\r\n\r\n", 400,
            "RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ); a field-line has a colon"),
        bad_body("trailer_obs_fold", b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n", 400,
            "RFC 9112 §5.2: obs-fold is invalid in any field section, trailers included"),
        bad_body("trailer_bare_lf", b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n", 400,
            "RFC 9112 §7.1.2: trailer-section lines end in CRLF"),
        bad_body("chunked_body_above_max_body_bytes", too_big.as_bytes(), 413,
            "limits.max_body_bytes = 1000 applies to streamed bodies: cut, 413 or close"),
    ]
}

/// Runs one case; Err explains the mismatch.
///
/// `streamed`: for a broken chunked body, first send the head and one valid chunk and wait until
/// the head is upstream, then the broken rest; this exercises the streaming path, where the
/// proxy has already committed the request to an upstream connection when the body breaks.
fn run(case: &Case, streamed: bool) -> Result<(), String> {
    let up = Upstream::ok();
    let mut proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut client = proxy.connect();
    let mut bytes = case.request.clone();
    if !matches!(case.answer, Answer::Relayed) {
        bytes.extend_from_slice(SMUGGLE);
    }
    let mut seen = &case.seen;
    let streamed_seen;
    if streamed {
        const FIRST: &[u8] = b"3\r\nabc\r\n";
        let Seen::NoCompleteMessage(prefix) = &case.seen else {
            return Err("streamed mode is for broken chunked bodies only".into());
        };
        let body = &bytes[CHUNKED_HEAD.len()..];
        let _ = client.try_send(&[CHUNKED_HEAD.as_bytes(), FIRST].concat());
        if !wait_until(Duration::from_secs(1), || up.total_received() >= CHUNKED_FWD.len()) {
            return Err(format!(
                "the head and a valid chunk did not reach the upstream within 1s (streaming expected); upstream:\n{}",
                up.dump()
            ));
        }
        let _ = client.try_send(body);
        bytes = [CHUNKED_HEAD.as_bytes(), FIRST, body].concat();
        streamed_seen = Seen::NoCompleteMessage([CHUNKED_FWD.as_bytes(), FIRST, &prefix[CHUNKED_FWD.len()..]].concat());
        seen = &streamed_seen;
    } else {
        // The proxy may legitimately stop reading (and close) before a large request is written.
        let _ = client.try_send(&bytes);
    }

    let client_result: Result<(), String> = match case.answer {
        Answer::Reject(statuses) => match client.read_response() {
            Err(e) => Err(format!("expected a {statuses:?} response: {e}")),
            Ok(r) => {
                let mut errs = Vec::new();
                if !statuses.contains(&r.status) {
                    errs.push(format!("status {} (expected one of {statuses:?})", r.status));
                }
                if r.header("content-length") != Some("0") {
                    errs.push("no `Content-Length: 0`".to_string());
                }
                if !r.says_close() {
                    errs.push("no `Connection: close` although the connection must close".into());
                }
                if let Err(e) = client.expect_eof() {
                    errs.push(e);
                }
                if errs.is_empty() { Ok(()) } else { Err(format!("{}; response:\n    {}", errs.join("; "), show(&r.raw))) }
            }
        },
        Answer::Relayed => match client.read_response() {
            Ok(r) if r.status == 200 && r.body == b"ok" => Ok(()),
            Ok(r) => Err(format!("expected the upstream's 200 ok, got:\n    {}", show(&r.raw))),
            Err(e) => Err(format!("expected the upstream's 200 ok: {e}")),
        },
        Answer::StatusOrClose(status) => {
            let (got, closed) = client.read_to_close();
            let prefix = format!("HTTP/1.1 {status} ");
            if !closed {
                Err(format!("connection neither closed nor answered within the timeout; got:\n    {}", show(&got)))
            } else if !got.is_empty() && !got.starts_with(prefix.as_bytes()) {
                Err(format!("expected {status} or a bare close, got:\n    {}", show(&got)))
            } else if !got.is_empty() && got.windows(5).filter(|w| w == b"HTTP/").count() > 1 {
                Err(format!("more than one response:\n    {}", show(&got)))
            } else {
                Ok(())
            }
        }
    };

    std::thread::sleep(SETTLE);
    let upstream_result: Result<(), String> = match seen {
        Seen::Nothing => {
            if up.total_received() == 0 {
                Ok(())
            } else {
                Err("the upstream received bytes (expected nothing)".into())
            }
        }
        Seen::Exactly(expected) => {
            let all = up.received_all();
            if all.len() != 1 {
                Err(format!("expected 1 upstream connection, got {}", all.len()))
            } else {
                check_bytes("upstream received", expected, &all[0])
            }
        }
        Seen::NoCompleteMessage(prefix) => {
            let mut errs = Vec::new();
            let reqs = up.requests();
            if !reqs.is_empty() {
                errs.push(format!("the upstream parsed {} complete request(s), first: {}", reqs.len(), show(&reqs[0].raw)));
            }
            for (i, got) in up.received_all().iter().enumerate() {
                if !prefix.starts_with(got) {
                    errs.push(format!("upstream conn {i} got bytes the client did not send as this message"));
                }
                if !got.is_empty() && !up.wait_closed(i, Duration::from_secs(2)) {
                    errs.push(format!("upstream conn {i} holds a half-sent message and was not closed by the proxy"));
                }
            }
            if errs.is_empty() { Ok(()) } else { Err(errs.join("; ")) }
        }
    };

    let alive = if proxy.alive() { Ok(()) } else { Err("the proxy process died".to_string()) };

    let errs: Vec<String> = [client_result, upstream_result, alive].into_iter().filter_map(Result::err).collect();
    if errs.is_empty() {
        // Written down for the record: for streamed bodies, whether the head went upstream.
        if matches!(seen, Seen::NoCompleteMessage(_)) {
            eprintln!("    note {}: upstream received {} byte(s) before the cut", case.name, up.total_received());
        }
        Ok(())
    } else {
        Err(format!(
            "{}\n  request:\n    {}\n  upstream:\n{}  proxy stderr:\n{}",
            errs.join("\n  "),
            show(&bytes),
            up.dump(),
            proxy.stderr()
        ))
    }
}

/// Runs a table, reporting every case (not only the first failure).
fn run_table(cases: Vec<Case>, streamed: bool) {
    let only = std::env::var("ADVERSARIAL_CASE").ok();
    let mut failed = Vec::new();
    let mut ran = 0;
    for case in &cases {
        if only.as_deref().is_some_and(|o| o != case.name) {
            continue;
        }
        ran += 1;
        match run(case, streamed) {
            Ok(()) => eprintln!("ok   {}", case.name),
            Err(e) => {
                eprintln!("FAIL {} ({})\n  {e}", case.name, case.why);
                failed.push(case.name);
            }
        }
    }
    assert!(failed.is_empty(), "{} of {ran} cases failed: {failed:?} (details above)", failed.len());
}

#[test]
fn malformed_requests_are_rejected_and_nothing_reaches_the_upstream() {
    run_table(rejected_cases(), false);
}

#[test]
fn accepted_requests_reach_the_upstream_byte_for_byte() {
    run_table(relayed_cases(), false);
}

#[test]
fn broken_chunked_bodies_never_reach_the_upstream_as_a_complete_message() {
    run_table(bad_body_cases(), false);
}

#[test]
fn broken_chunked_bodies_after_the_head_went_upstream_cut_that_upstream_connection() {
    run_table(bad_body_cases(), true);
}

/// A header that frames the message (Content-Length, Transfer-Encoding) named in Connection: the
/// proxy may reject it or keep the framing header, but must never drop the framing and forward
/// the body as the start of another request (RFC 9110 §7.6.1 does not override §6.3 framing).
#[test]
fn connection_naming_a_framing_header_never_desyncs_the_upstream() {
    let inner = SMUGGLE;
    let cl = [
        format!("POST / HTTP/1.1\r\nHost: a.test\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n", inner.len()).as_bytes(),
        inner,
    ]
    .concat();
    let te = [
        format!(
            "POST / HTTP/1.1\r\nHost: a.test\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            inner.len()
        )
        .as_bytes(),
        inner,
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    let cases: [(&str, &[u8]); 2] = [("content-length", &cl), ("transfer-encoding", &te)];
    let mut failures = Vec::new();
    for (name, request) in cases {
        let up = Upstream::ok();
        let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
        let mut client = proxy.connect();
        client.send(request);
        let r = client.read_response();
        std::thread::sleep(SETTLE);
        let reqs = up.requests();
        let smuggled = reqs.iter().any(|r| r.target == "/smuggled");
        let ok = match &r {
            Ok(r) if r.status == 400 => reqs.is_empty(),
            Ok(r) if r.status == 200 => reqs.len() == 1 && reqs[0].body == inner,
            _ => false,
        };
        if !ok || smuggled || !up.errors().is_empty() {
            failures.push(format!("Connection: {name}: client got {:?}; upstream:\n{}", r.map(|r| show(&r.raw)), up.dump()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The table can fail: a wrong expectation in each outcome kind is reported, not passed.
#[test]
fn the_adversarial_runner_detects_wrong_expectations() {
    let valid = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let wrong = [
        reject("valid_request_declared_rejected", valid, &[400], "self-test"),
        relayed("wrong_upstream_bytes", valid, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "self-test"),
        bad_body("valid_chunked_body_declared_broken", b"5\r\nhello\r\n0\r\n\r\n", 400, "self-test"),
    ];
    for case in &wrong {
        assert!(run(case, false).is_err(), "{}: a wrong expectation passed", case.name);
    }
    assert!(run(&wrong[2], true).is_err(), "streamed: a wrong expectation passed");
}

/// An upgrade the upstream declines (200, not 101) must not open a tunnel: the next bytes on the
/// client connection are parsed and rewritten as a request, not relayed raw (websocket smuggling).
#[test]
fn declined_upgrade_does_not_open_a_tunnel() {
    let up = Upstream::start(|req| Reply::Send(ok(req.target.as_bytes())));
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    let r = c.roundtrip(b"GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"/ws".as_slice()));
    if r.says_close() {
        c.expect_eof().unwrap();
        return;
    }
    let r = c.roundtrip(b"GET /internal HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!((r.status, r.body.as_slice()), (200, b"/internal".as_slice()));
    let second = up.requests().into_iter().find(|r| r.target == "/internal").expect("second request upstream");
    assert_bytes("second request", concat!("GET /internal HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(), &second.raw);
}

/// A 101 the client did not ask for is not a tunnel: RFC 9110 §15.2.2, a server MUST NOT switch
/// to a protocol the client did not offer in Upgrade. The client must not see a 101.
#[test]
fn unsolicited_101_from_the_upstream_is_not_relayed() {
    let up = Upstream::start(|_| {
        Reply::Tunnel(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec())
    });
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
    match c.read_response() {
        Ok(r) => assert_eq!(r.status, 502, "got {}", show(&r.raw)),
        Err(e) => assert!(!e.contains("HTTP/1.1 101") && !e.contains("read from proxy failed"), "{e}"),
    }
    assert!(up.wait_closed(0, Duration::from_secs(2)), "the switched upstream connection was kept");
}

/// A valid request, then a malformed one, pipelined: the first is answered normally, the second
/// gets 400 and the connection closes; the request pipelined after the bad one never goes upstream.
#[test]
fn malformed_request_pipelined_after_a_valid_one() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    let bad = b"POST /2 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    c.send(&[b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n".as_slice(), bad, SMUGGLE].concat());
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 400, "{}", show(&r.raw));
    assert!(r.says_close());
    c.expect_eof().unwrap();
    std::thread::sleep(SETTLE);
    assert_bytes("upstream received", concat!("GET /1 HTTP/1.1\r\nHost: a.test\r\n", fwd_tail!()).as_bytes(), &up.received(0));
    assert_eq!(up.accepted(), 1);
}

/// The upstream answers (here 413) before it has read the body. The rest of the body keeps
/// arriving from the client; it is body, and must never be taken as a request by the proxy or
/// reach the upstream as one.
#[test]
fn upstream_answering_before_the_body_ends_does_not_turn_the_body_into_requests() {
    let up = Upstream::start_opts(crate::harness::Opts { answer_before_body: true, ..Default::default() }, |req| {
        if req.target == "/upload" {
            Reply::Send(crate::harness::response("413 Content Too Large", &[], b""))
        } else {
            Reply::Send(ok(req.target.as_bytes()))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    let body: Vec<u8> = SMUGGLE.repeat(200);
    c.send(format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
    c.send(&body[..SMUGGLE.len() * 10]);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413, "{}", show(&r.raw));
    // The client keeps sending the rest of its body, as clients do.
    let _ = c.try_send(&body[SMUGGLE.len() * 10..]);
    if !r.says_close() {
        let _ = c.try_send(b"GET /after HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let r2 = c.read_response();
        if let Ok(r2) = &r2 {
            assert_eq!((r2.status, r2.body.as_slice()), (200, b"/after".as_slice()), "{}", show(&r2.raw));
        }
    }
    std::thread::sleep(SETTLE);
    let smuggled = up.requests().iter().filter(|r| r.target == "/smuggled").count();
    assert_eq!(smuggled, 0, "body bytes became requests upstream:\n{}", up.dump());
    assert!(!c.pending().windows(9).any(|w| w == b"/smuggled"), "{}", show(c.pending()));
}

/// `Expect: 100-continue` answered with a final status (no 100): the client may still send the
/// body (RFC 9110 §10.1.1). Those bytes are body; they must never be parsed as the next request.
#[test]
fn body_sent_after_a_final_answer_to_expect_100_continue_is_never_a_request() {
    let up = Upstream::start_opts(crate::harness::Opts { answer_before_body: true, ..Default::default() }, |req| {
        if req.target == "/guarded" {
            Reply::Send(crate::harness::response("401 Unauthorized", &[], b""))
        } else {
            Reply::Send(ok(req.target.as_bytes()))
        }
    });
    let proxy = Proxy::start(&config(&[up.addr], "", ""));
    let mut c = proxy.connect();
    c.send(
        format!("POST /guarded HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", SMUGGLE.len()).as_bytes(),
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 401, "{}", show(&r.raw));
    let _ = c.try_send(SMUGGLE);
    if !r.says_close()
        && let Ok(r2) = c.read_response()
    {
        panic!("a response to the body bytes: {}", show(&r2.raw));
    }
    std::thread::sleep(SETTLE);
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert!(!targets.iter().any(|t| t == "/smuggled"), "body became a request upstream: {targets:?}");
}

/// Found by the fuzzer (tests/fuzz): a status line without a reason phrase, or with a non-ASCII
/// one, made the response rewrite panic; the client got a closed connection instead of the
/// response. Both are relayed (the reason as the upstream sent it, or empty).
#[test]
fn status_line_without_reason_or_with_non_ascii_reason_is_relayed() {
    for line in ["HTTP/1.1 200", "HTTP/1.1 200 Caf\u{e9}"] {
        let up = Upstream::start(move |_| Reply::Send(format!("{line}\r\nContent-Length: 2\r\n\r\nok").into_bytes()));
        let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
        let mut c = proxy.connect();
        let r = c.roundtrip(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()), "{line:?}: {}", show(&r.raw));
    }
}

/// Found by the fuzzer (tests/fuzz): an HTTP/1.0 request without Host went upstream as an
/// HTTP/1.1 request without Host, which an HTTP/1.1 origin must refuse (RFC 9112 §3.2). It goes
/// with an empty Host, the value for a target without authority.
#[test]
fn http10_request_without_host_goes_upstream_with_an_empty_host() {
    let up = Upstream::ok();
    let proxy = Proxy::start(&config(&[up.addr], LIMITS, ""));
    let mut c = proxy.connect();
    c.send(b"GET /old HTTP/1.0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", show(&r.raw));
    std::thread::sleep(SETTLE);
    let want = "GET /old HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nVia: 1.1 fastproxy\r\n\r\n";
    assert_bytes("upstream received", want.as_bytes(), &up.received(0));
}
