//! The adversarial case table: rows of request bytes, what the client must get, what the upstream
//! must have received, and the reason (RFC 9110/9112 section or the project's stricter rule from
//! issue 2). Data only, no runner.
//!
//! The rows exist once, as values: the test support module owns this file
//! (`support::adversarial_cases`, kept at this path, where the docs link it), and three users read
//! the rows directly:
//! - `tests/adversarial.rs` (in `cargo test`): every row against this project's proxy, exact bytes.
//! - `tests/fuzz/inputs.rs`: every row's request bytes (and a relayed row's forwarded bytes) are
//!   fuzz seeds.
//! - `examples/adversarial_peers.rs` (run by `scripts/adversarial-peers.sh`): every row against
//!   any proxy address (nginx, HAProxy, Traefik, this proxy), classified rather than compared byte
//!   for byte, since each proxy rewrites a forwarded request its own way.
//!
//! Expected bytes use `fwd_tail!()`: the headers this proxy appends for a client on 127.0.0.1.

use crate::fwd_tail;

/// Limits small enough to hit with small requests.
pub const LIMITS: &str = "max_request_line_bytes = 1024
max_request_head_bytes = 4096
max_headers = 20
max_body_bytes = 1000
header_read_timeout = \"2s\"";

/// The pipelined request that must never reach the upstream after a rejection.
pub const SMUGGLE: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n";

/// The head every chunked-body case uses, and what the proxy forwards for it.
pub const CHUNKED_HEAD: &str = "POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";
pub const CHUNKED_FWD: &str = concat!("POST /c HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n", fwd_tail!());

/// What the client must get.
pub enum Answer {
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
pub enum Seen {
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

pub struct Case {
    pub name: &'static str,
    pub request: Vec<u8>,
    pub answer: Answer,
    pub seen: Seen,
    pub why: &'static str,
}

pub fn reject(name: &'static str, request: &[u8], statuses: &'static [u16], why: &'static str) -> Case {
    Case { name, request: request.to_vec(), answer: Answer::Reject(statuses), seen: Seen::Nothing, why }
}

pub fn relayed(name: &'static str, request: &[u8], upstream: &[u8], why: &'static str) -> Case {
    Case { name, request: request.to_vec(), answer: Answer::Relayed, seen: Seen::Exactly(upstream.to_vec()), why }
}

/// A chunked POST whose body (`body`, after the head) is broken.
pub fn bad_body(name: &'static str, body: &[u8], status: u16, why: &'static str) -> Case {
    let mut request = CHUNKED_HEAD.as_bytes().to_vec();
    request.extend_from_slice(body);
    let mut prefix = CHUNKED_FWD.as_bytes().to_vec();
    prefix.extend_from_slice(body);
    Case { name, request, answer: Answer::StatusOrClose(status), seen: Seen::NoCompleteMessage(prefix), why }
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Every request row, by group, in table order: `rejected`, `relayed`, `bad_body` (the group names
/// are the peer runner's record field `group`).
pub fn request_tables() -> [(&'static str, Vec<Case>); 3] {
    [("rejected", rejected_cases()), ("relayed", relayed_cases()), ("bad_body", bad_body_cases())]
}

#[rustfmt::skip]
pub fn rejected_cases() -> Vec<Case> {
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
        reject("content_length_space_before_colon", &post("Content-Length : 5\r\n", "hello"), B400,
            "RFC 9112 §5.1: whitespace between field name and colon MUST be rejected with 400 (any field)"),
        reject("te_tab_before_colon", &post("Transfer-Encoding\t: chunked\r\n", "0\r\n\r\n"), B400,
            "RFC 9112 §5.1: as above, HTAB is whitespace too"),
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
pub fn relayed_cases() -> Vec<Case> {
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
        relayed("upgrade_h2c_without_connection_upgrade",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            concat!("GET / HTTP/1.1\r\nHost: a.test\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n", fwd_tail!()).as_bytes(),
            "RFC 9110 §7.6.1: intermediaries SHOULD remove Upgrade even when Connection does not name it; HTTP2-Settings, unnamed, is an ordinary field"),
        relayed("connection_names_content_length",
            &cat(&[b"POST / HTTP/1.1\r\nHost: a.test\r\nConnection: Content-Length\r\nContent-Length: 40\r\n\r\n", SMUGGLE]),
            &cat(&[concat!("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 40\r\n", fwd_tail!()).as_bytes(), SMUGGLE]),
            "RFC 9110 §7.6.1 does not override §6.3 framing: the body stays a body, never a second request upstream"),
        relayed("connection_names_transfer_encoding",
            &cat(&[b"POST / HTTP/1.1\r\nHost: a.test\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n28\r\n", SMUGGLE, b"\r\n0\r\n\r\n"]),
            &cat(&[concat!("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n", fwd_tail!(), "28\r\n").as_bytes(), SMUGGLE, b"\r\n0\r\n\r\n"]),
            "RFC 9110 §7.6.1 does not override §6.3 framing: the chunked body stays a body"),
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
pub fn bad_body_cases() -> Vec<Case> {
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

/// A response with broken framing from the upstream, to a plain `GET`.
pub struct ResponseCase {
    pub name: &'static str,
    /// What the upstream writes (it then keeps the connection open: only the proxy can drop it).
    pub response: &'static [u8],
    /// Whether relaying may already have started when the framing breaks (a bad chunk after the
    /// head): then a cut connection is as good as a 502.
    pub may_have_started: bool,
    pub why: &'static str,
}

/// Expected for every row: 502 with `Content-Length: 0` (or a cut once relaying started), that
/// upstream connection closed, and the next request on a new upstream connection.
#[rustfmt::skip]
pub fn bad_response_cases() -> Vec<ResponseCase> {
    vec![
        ResponseCase { name: "response_cl_and_te",
            response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            may_have_started: false,
            why: "RFC 9112 §6.3(3): CL+TE ought to be handled as an error (response splitting); issue 2: 502, never guess" },
        ResponseCase { name: "response_two_content_lengths",
            response: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            may_have_started: false,
            why: "RFC 9112 §6.3(5): a proxy MUST close the upstream connection, discard the response and send 502" },
        ResponseCase { name: "response_malformed_status_line",
            response: b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
            may_have_started: false,
            why: "RFC 9112 §4: status-code = 3DIGIT; an unparsable response is a 502" },
        ResponseCase { name: "response_bad_chunk_size",
            response: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZ\r\nhello\r\n0\r\n\r\n",
            may_have_started: true,
            why: "RFC 9112 §7.1: chunk-size = 1*HEXDIG; the body is unframeable: 502 or cut, never reused" },
    ]
}
