//! HTTP/1.1 message heads: strict parsing with `httparse`, classification of every field, and
//! the framing decision (RFC 9112 §6). Hot path.
//!
//! A parsed head is a set of byte offsets into the connection's read buffer ([`Span`]s), kept in
//! vectors that live as long as the connection: parsing allocates nothing. The parser header
//! array lives on the stack of the (synchronous) parse call only.
//!
//! Strictness is deliberate (request smuggling lives in the gaps between parsers): bare LF or CR
//! line endings, obs-fold, NUL and other controls, Content-Length with Transfer-Encoding, repeated
//! or list-valued Content-Length, any Transfer-Encoding but exactly `chunked`, and
//! Transfer-Encoding on HTTP/1.0 are all refused.

use std::mem::MaybeUninit;

use crate::config::MAX_HEADERS_CEILING;
use crate::data::error::ProxyError;
use crate::snapshot::Limits;

/// A byte range in the buffer the head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    fn within(outer: &[u8], inner: &[u8]) -> Self {
        // Both slices come from the same buffer; the offset is plain pointer arithmetic.
        let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
        Span { start: start as u32, end: (start + inner.len()) as u32 }
    }
}

/// The fields the proxy treats specially; everything else is `Other` and passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
}

impl Kind {
    fn classify(name: &[u8]) -> Kind {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is(b"te") => Kind::Te,
            4 if is(b"host") => Kind::Host,
            6 if is(b"expect") => Kind::Expect,
            7 if is(b"upgrade") => Kind::Upgrade,
            10 if is(b"connection") => Kind::Connection,
            10 if is(b"keep-alive") => Kind::KeepAlive,
            14 if is(b"content-length") => Kind::ContentLength,
            15 if is(b"x-forwarded-for") => Kind::XForwardedFor,
            16 if is(b"proxy-connection") => Kind::ProxyConnection,
            16 if is(b"x-forwarded-host") => Kind::XForwardedHost,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            17 if is(b"x-forwarded-proto") => Kind::XForwardedProto,
            _ => Kind::Other,
        }
    }

    /// Never removed because a `Connection` header names them: dropping framing or Host would
    /// turn a hop-by-hop hint into a smuggling primitive.
    fn protected(self) -> bool {
        matches!(self, Kind::Host | Kind::ContentLength | Kind::TransferEncoding)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: Span,
    /// Without leading/trailing whitespace.
    pub value: Span,
    pub kind: Kind,
    /// Not forwarded (hop-by-hop, or re-emitted by the proxy).
    pub drop: bool,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body runs until the upstream closes.
    UntilClose,
}

/// What the Connection header and version say about persistence and upgrades.
#[derive(Debug, Default, Clone, Copy)]
struct ConnOpts {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

/// Fields shared by request and response heads.
#[derive(Debug, Default)]
pub struct Fields {
    pub list: Vec<Field>,
}

impl Fields {
    fn with_capacity(n: usize) -> Self {
        Fields { list: Vec::with_capacity(n) }
    }

    fn load(&mut self, buf: &[u8], headers: &[httparse::Header<'_>]) {
        self.list.clear();
        for h in headers {
            let name = h.name.as_bytes();
            let value = trim(h.value);
            self.list.push(Field {
                name: Span::within(buf, name),
                value: Span::within(buf, value),
                kind: Kind::classify(name),
                drop: false,
            });
        }
    }

    /// Applies Connection semantics: returns the options and marks hop-by-hop fields dropped.
    fn hop_by_hop(&mut self, buf: &[u8]) -> ConnOpts {
        let mut opts = ConnOpts::default();
        for i in 0..self.list.len() {
            let f = self.list[i];
            match f.kind {
                Kind::Connection => {
                    self.list[i].drop = true;
                    for token in f.value.of(buf).split(|&b| b == b',') {
                        let token = trim(token);
                        if token.is_empty() {
                            continue;
                        }
                        if token.eq_ignore_ascii_case(b"close") {
                            opts.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            opts.keep_alive = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            opts.upgrade = true;
                        }
                        // Every field the Connection header names is hop-by-hop.
                        for g in self.list.iter_mut() {
                            if !g.kind.protected() && g.name.of(buf).eq_ignore_ascii_case(token) {
                                g.drop = true;
                            }
                        }
                    }
                }
                Kind::KeepAlive | Kind::ProxyConnection | Kind::Upgrade => self.list[i].drop = true,
                Kind::Te if !f.value.of(buf).eq_ignore_ascii_case(b"trailers") => {
                    self.list[i].drop = true;
                }
                _ => {}
            }
        }
        opts
    }

    /// Content-Length / Transfer-Encoding, strictly: `Ok(None)` when neither is present.
    fn framing(&self, buf: &[u8]) -> Result<Option<Framing>, ()> {
        let mut length: Option<u64> = None;
        let mut chunked = false;
        for f in &self.list {
            match f.kind {
                Kind::ContentLength => {
                    if length.is_some() {
                        return Err(()); // repeated Content-Length, even if equal
                    }
                    length = Some(parse_content_length(f.value.of(buf)).ok_or(())?);
                }
                Kind::TransferEncoding => {
                    if chunked || !f.value.of(buf).eq_ignore_ascii_case(b"chunked") {
                        return Err(());
                    }
                    chunked = true;
                }
                _ => {}
            }
        }
        match (length, chunked) {
            (Some(_), true) => Err(()),
            (Some(n), false) => Ok(Some(Framing::Length(n))),
            (None, true) => Ok(Some(Framing::Chunked)),
            (None, false) => Ok(None),
        }
    }
}

/// Where the request target points.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target {
    /// The origin-form path with query (`/a/b?c`), always starting with `/` (or `*`).
    pub path: Span,
    /// Authority of an absolute-form target (`GET http://host/path`).
    pub authority: Option<Span>,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Span,
    pub target: Target,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub fields: Fields,
    /// Bytes of the head, CRLFCRLF included.
    pub len: usize,
    pub framing: Framing,
    /// The client wants the connection kept after this exchange.
    pub keep_alive: bool,
    /// The Upgrade field's value, when the client asked for a protocol upgrade we may tunnel.
    pub upgrade: Option<Span>,
    pub expect_continue: bool,
    pub host: Option<Span>,
    /// `HEAD`: the response carries no body whatever its headers say.
    pub is_head: bool,
    /// Safe to replay on a fresh connection (RFC 9110 §9.2.2).
    pub idempotent: bool,
}

pub enum Parsed {
    Complete,
    Partial,
}

/// All lenient options off (the default): no multiple spaces, no obs-fold, no invalid headers.
fn parser() -> httparse::ParserConfig {
    httparse::ParserConfig::default()
}

impl RequestHead {
    pub fn new(max_headers: usize) -> Self {
        RequestHead {
            method: Span::default(),
            target: Target::default(),
            minor: 1,
            fields: Fields::with_capacity(max_headers.min(MAX_HEADERS_CEILING)),
            len: 0,
            framing: Framing::None,
            keep_alive: true,
            upgrade: None,
            expect_continue: false,
            host: None,
            is_head: false,
            idempotent: true,
        }
    }

    /// Parses the head at the start of `buf`. `Partial` means more bytes are needed (limits
    /// already checked against what is there).
    pub fn parse(&mut self, buf: &[u8], limits: &Limits) -> Result<Parsed, ProxyError> {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING + 1];
        let mut req = httparse::Request::new(&mut []);
        let len = match parser().parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return partial_limits(buf, limits).map(|()| Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(ProxyError::HeadersTooLarge),
            Err(_) => return Err(bad_request_or_limit(buf, limits)),
        };
        let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(len);
        if line_len > limits.max_request_line_bytes {
            return Err(ProxyError::UriTooLong);
        }
        if len > limits.max_request_head_bytes || req.headers.len() > limits.max_headers {
            return Err(ProxyError::HeadersTooLarge);
        }
        check_line_endings(&buf[..len])?;
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(ProxyError::BadRequest);
        };
        self.len = len;
        self.minor = minor;
        self.method = Span::within(buf, method.as_bytes());
        self.target = parse_target(buf, path.as_bytes())?;
        let m = method.as_bytes();
        self.is_head = m == b"HEAD";
        self.idempotent = matches!(m, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE");
        if m == b"CONNECT" || (self.target.path.of(buf) == b"*" && m != b"OPTIONS") {
            return Err(ProxyError::BadRequest);
        }

        self.fields.load(buf, req.headers);
        let opts = self.fields.hop_by_hop(buf);
        self.framing = match self.fields.framing(buf) {
            Ok(Some(f)) => f,
            Ok(None) => Framing::None,
            Err(()) => return Err(ProxyError::BadRequest),
        };
        if minor == 0 && self.framing == Framing::Chunked {
            return Err(ProxyError::BadRequest); // RFC 9112 §6.1: TE is not HTTP/1.0
        }
        if let Framing::Length(n) = self.framing
            && n > limits.max_body_bytes
        {
            return Err(ProxyError::BodyTooLarge);
        }
        self.keep_alive = if minor == 0 { opts.keep_alive && !opts.close } else { !opts.close };

        self.host = None;
        self.upgrade = None;
        self.expect_continue = false;
        for f in &mut self.fields.list {
            match f.kind {
                Kind::Host => {
                    if self.host.is_some() || !valid_host(f.value.of(buf)) {
                        return Err(ProxyError::BadRequest); // RFC 9112 §3.2: exactly one valid Host
                    }
                    self.host = Some(f.value);
                }
                Kind::Upgrade if opts.upgrade && minor == 1 => {
                    let v = f.value.of(buf);
                    // h2c through a proxy is a known smuggling path: never tunnel it.
                    if self.upgrade.is_none() && !contains_token(v, b"h2c") {
                        self.upgrade = Some(f.value);
                    }
                }
                Kind::Expect => {
                    if minor == 0 {
                        f.drop = true; // RFC 9110 §10.1.1: ignored for HTTP/1.0
                    } else if f.value.of(buf).eq_ignore_ascii_case(b"100-continue") {
                        self.expect_continue = true;
                    } else {
                        return Err(ProxyError::ExpectationFailed);
                    }
                }
                // Named by Connection: hop-by-hop, so not even re-emitted (RFC 9110 §7.6.1).
                Kind::XForwardedFor if f.drop => f.kind = Kind::Other,
                Kind::XForwardedFor | Kind::XForwardedProto | Kind::XForwardedHost => f.drop = true,
                _ => {}
            }
        }
        if self.host.is_none() && minor == 1 {
            return Err(ProxyError::BadRequest);
        }
        if let Some(authority) = self.target.authority {
            // RFC 9112 §3.2.2: with an absolute-form target the Host field is replaced by the
            // target's authority (the rewriter writes it where Host stood, or first).
            self.host = Some(authority);
        }
        if self.upgrade.is_some() && self.framing != Framing::None {
            self.upgrade = None; // an upgrade with a body is served as a plain request
        }
        Ok(Parsed::Complete)
    }

    /// The host used for routing: the absolute-form authority, else the Host field.
    pub fn route_host<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match (self.target.authority, self.host) {
            (Some(a), _) => a.of(buf),
            (None, Some(h)) => h.of(buf),
            (None, None) => b"",
        }
    }

    /// The path used for routing: the target without its query.
    pub fn route_path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let p = self.target.path.of(buf);
        match p.iter().position(|&b| b == b'?') {
            Some(i) => &p[..i],
            None => p,
        }
    }
}

/// A parsed, validated response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Span,
    pub minor: u8,
    pub fields: Fields,
    pub len: usize,
    pub framing: Framing,
    /// The upstream keeps the connection after this response.
    pub keep_alive: bool,
}

impl ResponseHead {
    pub fn new() -> Self {
        Self::with_fields(32)
    }

    /// Room for `n` header fields before the list grows (0: an idle connection's empty husk).
    pub fn with_fields(n: usize) -> Self {
        ResponseHead {
            status: 0,
            reason: Span::default(),
            minor: 1,
            fields: Fields::with_capacity(n),
            len: 0,
            framing: Framing::None,
            keep_alive: true,
        }
    }

    /// Parses a response head; `head_request` is whether the request was HEAD.
    pub fn parse(&mut self, buf: &[u8], head_request: bool) -> Result<Parsed, ProxyError> {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING + 1];
        let mut res = httparse::Response::new(&mut []);
        let len = match parser().parse_response_with_uninit_headers(&mut res, buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(_) => return Err(ProxyError::BadResponse),
        };
        check_line_endings(&buf[..len]).map_err(|_| ProxyError::BadResponse)?;
        let (Some(minor), Some(status)) = (res.version, res.code) else {
            return Err(ProxyError::BadResponse);
        };
        if !(100..=999).contains(&status) {
            return Err(ProxyError::BadResponse);
        }
        self.len = len;
        self.minor = minor;
        self.status = status;
        // httparse gives a static "" (not a slice of `buf`) for a missing reason phrase or one
        // with obs-text: a span computed from it would point anywhere.
        self.reason = match res.reason {
            Some(r) if !r.is_empty() => Span::within(buf, r.as_bytes()),
            _ => Span::default(),
        };
        self.fields.load(buf, res.headers);
        let opts = self.fields.hop_by_hop(buf);
        self.keep_alive = if minor == 0 { opts.keep_alive && !opts.close } else { !opts.close };
        let declared = self.fields.framing(buf).map_err(|()| ProxyError::BadResponse)?;
        // RFC 9112 §6.3: HEAD responses, 1xx, 204 and 304 never have a body.
        self.framing = if head_request || status < 200 || status == 204 || status == 304 {
            Framing::None
        } else {
            match declared {
                Some(f) => f,
                None => Framing::UntilClose,
            }
        };
        if self.framing == Framing::UntilClose {
            self.keep_alive = false;
        }
        Ok(Parsed::Complete)
    }
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self::new()
    }
}

/// Content-Length: 1 to 19 digits, nothing else (no sign, no list, no spaces inside).
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Every LF must follow a CR and every CR must precede an LF (RFC 9112 §2.2: no bare CR/LF).
///
/// Equivalently: the positions of the LFs are exactly the positions of the CRs plus one. Checked
/// eight bytes at a time (SWAR): a byte-equality mask for CR and for LF per word, the CR mask
/// shifted by one byte (carrying into the next word) must equal the LF mask. A head is scanned
/// once per request, so this runs at ~2 instructions per byte instead of ~9 for a byte loop.
fn check_line_endings(head: &[u8]) -> Result<(), ProxyError> {
    let mut carry = 0u64;
    let mut words = head.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        carry = line_endings_word(u64::from_le_bytes(a), carry)?;
    }
    let rest = words.remainder();
    let mut a = [0u8; 8];
    a[..rest.len()].copy_from_slice(rest);
    // Zero padding is neither CR nor LF; a CR in the last byte leaves a carry: bare CR.
    match line_endings_word(u64::from_le_bytes(a), carry)? {
        0 => Ok(()),
        _ => Err(ProxyError::BadRequest),
    }
}

/// One little-endian word: checks its LFs against its CRs (and the previous word's carry);
/// returns the carry for the next word (bit 7 set when this word's last byte is a CR).
#[inline(always)]
fn line_endings_word(w: u64, carry: u64) -> Result<u64, ProxyError> {
    let cr = eq_bytes(w, b'\r');
    let lf = eq_bytes(w, b'\n');
    if lf != ((cr << 8) | carry) {
        return Err(ProxyError::BadRequest);
    }
    Ok(cr >> 56)
}

/// Bit 7 of each byte of the result is set exactly when that byte of `w` equals `b` (no false
/// positives: the low seven bits are added without carries between bytes).
#[inline(always)]
fn eq_bytes(w: u64, b: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (0x0101_0101_0101_0101 * u64::from(b));
    !(((x & LOW7) + LOW7) | x) & !LOW7
}

/// While the head is incomplete: stop reading once a limit can no longer be met.
fn partial_limits(buf: &[u8], limits: &Limits) -> Result<(), ProxyError> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.is_none() && buf.len() > limits.max_request_line_bytes + 1 {
        return Err(ProxyError::UriTooLong);
    }
    if buf.len() >= limits.max_request_head_bytes {
        return Err(ProxyError::HeadersTooLarge);
    }
    Ok(())
}

/// A parse error in a head that is already over a limit reports the limit.
#[cold]
fn bad_request_or_limit(buf: &[u8], limits: &Limits) -> ProxyError {
    match partial_limits(buf, limits) {
        Err(e) => e,
        Ok(()) => ProxyError::BadRequest,
    }
}

fn parse_target(buf: &[u8], t: &[u8]) -> Result<Target, ProxyError> {
    if t.first() == Some(&b'/') || t == b"*" {
        return Ok(Target { path: Span::within(buf, t), authority: None });
    }
    // absolute-form: scheme "://" authority [path-abempty] [ "?" query ]
    let rest = if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        &t[7..]
    } else if t.len() > 8 && t[..8].eq_ignore_ascii_case(b"https://") {
        &t[8..]
    } else {
        return Err(ProxyError::BadRequest);
    };
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains(&b'@') || !valid_host(authority) {
        return Err(ProxyError::BadRequest);
    }
    let path = &rest[end..];
    Ok(Target {
        // An empty path is written as "/" by the rewriter (see `path` being empty).
        path: Span::within(buf, path),
        authority: Some(Span::within(buf, authority)),
    })
}

/// Host: reg-name / IP-literal characters and an optional port; no spaces, no userinfo.
fn valid_host(h: &[u8]) -> bool {
    h.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'%'
                    | b'['
                    | b']'
            )
    })
}

fn contains_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| {
        let t = trim(t);
        let name = t.split(|&b| b == b'/').next().unwrap_or(t);
        name.eq_ignore_ascii_case(token)
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(bytes: &[u8]) -> Result<RequestHead, ProxyError> {
        let mut h = RequestHead::new(100);
        match h.parse(bytes, &Limits::default())? {
            Parsed::Complete => Ok(h),
            Parsed::Partial => panic!("partial"),
        }
    }

    /// The SWAR check agrees with a byte-by-byte definition on every placement of CR and LF.
    #[test]
    fn line_endings_match_the_byte_definition() {
        fn slow(h: &[u8]) -> bool {
            h.iter().enumerate().all(|(i, &b)| (b != b'\n' || (i > 0 && h[i - 1] == b'\r')) && (b != b'\r' || h.get(i + 1) == Some(&b'\n')))
        }
        let alphabet = [b'a', b'\r', b'\n', 0x8d, 0x8a, 0x0c, 0x0e, 0xff, 0];
        // Every string of length 0..=5 over the alphabet, then placed at offsets 0..=11 in
        // padding so CR/LF pairs straddle word boundaries.
        let mut cases = vec![Vec::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for c in &cases {
                for &b in &alphabet {
                    let mut v = c.clone();
                    v.push(b);
                    next.push(v);
                }
            }
            cases.extend(next.iter().cloned());
            cases = next.into_iter().chain(cases.into_iter().filter(|c| c.len() < 5)).collect();
        }
        cases.sort();
        cases.dedup();
        for c in &cases {
            for off in [0usize, 3, 6, 7, 8, 11] {
                let mut h = vec![b'x'; off];
                h.extend_from_slice(c);
                h.extend_from_slice(b"yz");
                assert_eq!(check_line_endings(&h).is_ok(), slow(&h), "{h:?}");
            }
        }
        assert!(check_line_endings(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(check_line_endings(b"GET / HTTP/1.1\r\nHost: a\r\n\r").is_err());
        assert!(check_line_endings(b"GET / HTTP/1.1\nHost: a\r\n\r\n").is_err());
    }

    #[test]
    fn simple_get() {
        let b = b"GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nX-Bar: 2\r\n\r\n";
        let h = req(b).unwrap();
        assert_eq!(h.method.of(b), b"GET");
        assert_eq!(h.route_path(b), b"/a");
        assert_eq!(h.route_host(b), b"x");
        assert!(h.keep_alive);
        assert_eq!(h.framing, Framing::None);
        let kept: Vec<&[u8]> = h.fields.list.iter().filter(|f| !f.drop).map(|f| f.name.of(b)).collect();
        assert_eq!(kept, vec![b"Host".as_slice(), b"X-Bar"]);
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
        ];
        for b in bad {
            assert!(req(b).is_err(), "accepted: {:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn connection_cannot_strip_framing_or_host() {
        let b = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Content-Length, Host, X-Forwarded-For\r\nContent-Length: 2\r\n\r\n";
        let h = req(b).unwrap();
        assert_eq!(h.framing, Framing::Length(2));
        assert!(h.fields.list.iter().any(|f| f.kind == Kind::Host && !f.drop));
        assert!(h.fields.list.iter().any(|f| f.kind == Kind::ContentLength && !f.drop));
    }

    #[test]
    fn limits_map_to_414_and_431() {
        let l = Limits { max_request_line_bytes: 20, max_request_head_bytes: 64, ..Limits::default() };
        let mut h = RequestHead::new(100);
        let long_line = b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(h.parse(long_line, &l).err(), Some(ProxyError::UriTooLong));
        assert_eq!(h.parse(b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaa", &l).err(), Some(ProxyError::UriTooLong));
        let big = b"GET / HTTP/1.1\r\nHost: x\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert_eq!(h.parse(big, &l).err(), Some(ProxyError::HeadersTooLarge));
        let l = Limits { max_headers: 2, ..Limits::default() };
        let many = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(h.parse(many, &l).err(), Some(ProxyError::HeadersTooLarge));
        let l = Limits { max_body_bytes: 10, ..Limits::default() };
        assert_eq!(h.parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", &l).err(), Some(ProxyError::BodyTooLarge));
    }

    #[test]
    fn absolute_form_and_http10_and_upgrade() {
        let b = b"GET http://Example.com:81 HTTP/1.1\r\nHost: other\r\n\r\n";
        let h = req(b).unwrap();
        assert_eq!(h.route_host(b), b"Example.com:81");
        assert!(h.target.path.is_empty());
        let b = b"GET / HTTP/1.0\r\n\r\n";
        let h = req(b).unwrap();
        assert!(!h.keep_alive);
        let b = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        assert!(req(b).unwrap().keep_alive);
        let b = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let h = req(b).unwrap();
        assert_eq!(h.upgrade.unwrap().of(b), b"websocket");
        let b = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n";
        let h = req(b).unwrap();
        assert!(h.upgrade.is_none());
        assert!(h.fields.list.iter().filter(|f| !f.drop).all(|f| f.kind == Kind::Host));
    }

    #[test]
    fn expect_and_te_trailers() {
        let b = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTE: trailers\r\nContent-Length: 1\r\n\r\n";
        let h = req(b).unwrap();
        assert!(h.expect_continue);
        assert!(h.fields.list.iter().any(|f| f.kind == Kind::Te && !f.drop));
        let b = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n";
        assert_eq!(req(b).err(), Some(ProxyError::ExpectationFailed));
    }

    #[test]
    fn response_framing() {
        let mut r = ResponseHead::new();
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(r.parse(b, false), Ok(Parsed::Complete)));
        assert_eq!(r.framing, Framing::Length(5));
        assert!(matches!(r.parse(b, true), Ok(Parsed::Complete)));
        assert_eq!(r.framing, Framing::None);
        let b = b"HTTP/1.1 200 OK\r\n\r\n";
        r.parse(b, false).unwrap();
        assert_eq!(r.framing, Framing::UntilClose);
        assert!(!r.keep_alive);
        let b = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n";
        r.parse(b, false).unwrap();
        assert_eq!(r.framing, Framing::None);
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(r.parse(b, false).err(), Some(ProxyError::BadResponse));
        let b = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n";
        r.parse(b, false).unwrap();
        assert!(!r.keep_alive);
        assert!(matches!(r.parse(b"HTTP/1.1 200 OK\r\nA: b\r\n", false), Ok(Parsed::Partial)));
    }

    /// Found by the fuzzer (tests/fuzz): a status line without a reason phrase, or with a
    /// non-ASCII one, left a span pointing outside the buffer and the rewrite panicked.
    #[test]
    fn missing_or_obs_text_reason_is_an_empty_span() {
        for b in [&b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"[..], b"HTTP/1.1 200 Caf\xc3\xa9\r\n\r\n", b"HTTP/1.0 404 \r\n\r\n"] {
            let mut r = ResponseHead::new();
            assert!(matches!(r.parse(b, false), Ok(Parsed::Complete)));
            assert!(r.reason.is_empty(), "{:?}", String::from_utf8_lossy(b));
            assert_eq!(r.reason.of(b), b"");
        }
    }
}
