//! The referee: an independent reading of HTTP/1.1 messages over `httparse` (strict config) and
//! RFC 9112 framing, written without the proxy's code, and the checks a forwarded message must
//! pass. When the proxy and this module disagree about where a message ends, one of them is
//! wrong, and for a proxy that is the definition of request smuggling.

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One parsed message: the head's parts, and the body bytes exactly as framed on the wire.
#[derive(Debug, Clone)]
pub struct Msg {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub status: u16,
    pub minor: u8,
    /// Names as sent; values without surrounding whitespace.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub head: Vec<u8>,
    pub framing: Framing,
    /// The framed body (chunk lines and trailers included), as received.
    pub body: Vec<u8>,
    /// Head + body length.
    pub len: usize,
}

impl Msg {
    pub fn all(&self, name: &str) -> Vec<&[u8]> {
        self.fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v.as_slice()).collect()
    }

    pub fn one(&self, name: &str) -> Option<&[u8]> {
        match self.all(name).as_slice() {
            [v] => Some(v),
            _ => None,
        }
    }
}

/// What [`request`] or [`response`] found at the front of a buffer.
#[derive(Debug)]
pub enum Next {
    Msg(Msg),
    /// A valid prefix: more bytes needed.
    Partial,
    /// Not a valid message (the reason).
    Bad(String),
}

const MAX_FIELDS: usize = 512;

pub fn trim(v: &[u8]) -> &[u8] {
    let s = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let e = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(s, |i| i + 1);
    &v[s..e]
}

/// Bare CR or bare LF anywhere in a head (RFC 9112 §2.2); `httparse` alone accepts bare LF.
pub fn bare_cr_or_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| (b == b'\n' && (i == 0 || head[i - 1] != b'\r')) || (b == b'\r' && head.get(i + 1).is_some_and(|&n| n != b'\n')))
}

fn fields_of(headers: &[httparse::Header<'_>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    headers.iter().map(|h| (h.name.as_bytes().to_vec(), trim(h.value).to_vec())).collect()
}

/// Content-Length / Transfer-Encoding as a strict recipient reads them; `Err` when ambiguous.
fn declared(fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<Framing>, String> {
    let cl: Vec<&[u8]> = fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length")).map(|(_, v)| v.as_slice()).collect();
    let te: Vec<&[u8]> = fields.iter().filter(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding")).map(|(_, v)| v.as_slice()).collect();
    match (cl.as_slice(), te.as_slice()) {
        ([], []) => Ok(None),
        ([], [t]) if t.eq_ignore_ascii_case(b"chunked") => Ok(Some(Framing::Chunked)),
        ([], _) => Err("transfer-encoding other than one `chunked`".into()),
        ([v], []) => {
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err("content-length is not 1..19 digits".into());
            }
            let n = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or("content-length")?;
            Ok(Some(Framing::Length(n)))
        }
        (_, []) => Err("more than one content-length".into()),
        _ => Err("content-length and transfer-encoding together".into()),
    }
}

/// Takes the body at `buf[at..]`; `Ok(None)` when incomplete.
fn body(buf: &[u8], at: usize, framing: Framing) -> Result<Option<usize>, String> {
    match framing {
        Framing::None => Ok(Some(at)),
        Framing::Length(n) => {
            let end = (at as u64).saturating_add(n);
            Ok((end <= buf.len() as u64).then_some(end as usize))
        }
        Framing::Chunked => Ok(chunked_end(&buf[at..])?.map(|e| at + e)),
        Framing::UntilClose => Ok(None),
    }
}

/// The first request head in `buf`, its body not taken (`body` empty, `len` = head length).
pub fn request_head(buf: &[u8]) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Next::Partial,
        Err(e) => return Next::Bad(format!("httparse: {e}")),
    };
    if bare_cr_or_lf(&buf[..head_len]) {
        return Next::Bad("bare CR or LF in the head".into());
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Next::Bad("incomplete request line".into());
    };
    let fields = fields_of(req.headers);
    let framing = match declared(&fields) {
        Ok(f) => f.unwrap_or(Framing::None),
        Err(e) => return Next::Bad(e),
    };
    Next::Msg(Msg {
        method: method.as_bytes().to_vec(),
        target: target.as_bytes().to_vec(),
        status: 0,
        minor,
        fields,
        head: buf[..head_len].to_vec(),
        framing,
        body: Vec::new(),
        len: head_len,
    })
}

/// The first request in `buf`, body included.
pub fn request(buf: &[u8]) -> Next {
    let mut m = match request_head(buf) {
        Next::Msg(m) => m,
        other => return other,
    };
    let head_len = m.len;
    let end = match body(buf, head_len, m.framing) {
        Ok(Some(e)) => e,
        Ok(None) => return Next::Partial,
        Err(e) => return Next::Bad(e),
    };
    m.body = buf[head_len..end].to_vec();
    m.len = end;
    Next::Msg(m)
}

/// The first response head in `buf` (`head_request`: it answers a HEAD), body not taken.
pub fn response_head(buf: &[u8], head_request: bool) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Next::Partial,
        Err(e) => return Next::Bad(format!("httparse: {e}")),
    };
    if bare_cr_or_lf(&buf[..head_len]) {
        return Next::Bad("bare CR or LF in the head".into());
    }
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Next::Bad("incomplete status line".into());
    };
    let fields = fields_of(res.headers);
    let declared = match declared(&fields) {
        Ok(f) => f,
        Err(e) => return Next::Bad(e),
    };
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else {
        declared.unwrap_or(Framing::UntilClose)
    };
    Next::Msg(Msg {
        method: Vec::new(),
        target: Vec::new(),
        status,
        minor,
        fields,
        head: buf[..head_len].to_vec(),
        framing,
        body: Vec::new(),
        len: head_len,
    })
}

/// The first response in `buf`, body included; an `UntilClose` body takes the rest of `buf`
/// (call this on everything received up to the close).
pub fn response(buf: &[u8], head_request: bool) -> Next {
    let mut m = match response_head(buf, head_request) {
        Next::Msg(m) => m,
        other => return other,
    };
    let head_len = m.len;
    let end = match m.framing {
        Framing::UntilClose => buf.len(),
        f => match body(buf, head_len, f) {
            Ok(Some(e)) => e,
            Ok(None) => return Next::Partial,
            Err(e) => return Next::Bad(e),
        },
    };
    m.body = buf[head_len..end].to_vec();
    m.len = end;
    Next::Msg(m)
}

/// Content-Length / Transfer-Encoding of a field list, as [`declared`] reads them (public for
/// the codec checks).
pub fn declared_framing(m: &Msg) -> Result<Option<Framing>, String> {
    declared(&m.fields)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Where a strictly valid chunked body ends (RFC 9112 §7.1, with the project's bounds: 1–16 hex
/// digits, CRLF only, extensions and trailer values free of controls other than HTAB).
/// `Ok(None)`: valid so far, incomplete.
pub fn chunked_end(b: &[u8]) -> Result<Option<usize>, String> {
    let mut i = 0;
    loop {
        // chunk-size
        let start = i;
        while i < b.len() && is_hex(b[i]) {
            i += 1;
        }
        let digits = i - start;
        if digits > 16 {
            return Err("chunk size over 16 hex digits".into());
        }
        if i == b.len() {
            return Ok(None);
        }
        if digits == 0 {
            return Err("chunk size without digits".into());
        }
        let mut size: u64 = 0;
        for &d in &b[start..i] {
            size = (size << 4) | u64::from((d as char).to_digit(16).unwrap_or(0));
        }
        // BWS ; ext
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] == b';' {
            while i < b.len() && b[i] != b'\r' {
                if b[i] < 0x20 && b[i] != b'\t' || b[i] == 0x7f {
                    return Err("control byte in a chunk extension".into());
                }
                i += 1;
            }
        } else if i < b.len() && b[i] != b'\r' {
            return Err("junk after the chunk size".into());
        } else if i > start + digits {
            // Whitespace after the size is only allowed before an extension.
            if i < b.len() {
                return Err("whitespace after the chunk size without an extension".into());
            }
        }
        match b.get(i..i + 2) {
            None if b.len() - i < 2 && (i == b.len() || b[i] == b'\r') => return Ok(None),
            Some(b"\r\n") => i += 2,
            _ => return Err("chunk-size line does not end in CRLF".into()),
        }
        if size == 0 {
            // trailer-section, then the final CRLF
            loop {
                let line_start = i;
                let cr = b[i..].iter().position(|&c| c == b'\r' || c == b'\n').map(|p| i + p);
                let line = &b[line_start..cr.unwrap_or(b.len())];
                // Checked as far as it goes, complete or not (a bad byte is bad at once).
                if !line.is_empty() {
                    let colon = line.iter().position(|&c| c == b':');
                    let name = &line[..colon.unwrap_or(line.len())];
                    if colon == Some(0) || !name.iter().all(|&c| is_tchar(c)) {
                        return Err("trailer name is not a token".into());
                    }
                    if let Some(c) = colon
                        && line[c + 1..].iter().any(|&c| c < 0x20 && c != b'\t' || c == 0x7f)
                    {
                        return Err("control byte in a trailer value".into());
                    }
                    if colon.is_none() && cr.is_some() {
                        return Err("trailer line without a colon".into());
                    }
                }
                let Some(cr) = cr else { return Ok(None) };
                if b[cr] == b'\n' {
                    return Err("bare LF in the trailer section".into());
                }
                match b.get(cr + 1) {
                    None => return Ok(None),
                    Some(b'\n') => {}
                    Some(_) => return Err("bare CR in the trailer section".into()),
                }
                if cr == line_start {
                    return Ok(Some(cr + 2));
                }
                i = cr + 2;
            }
        }
        let data_end = (i as u64).saturating_add(size);
        if data_end > b.len() as u64 {
            return Ok(None);
        }
        i = data_end as usize;
        match b.get(i..i + 2) {
            Some(b"\r\n") => i += 2,
            None if b.len() == i || (b.len() == i + 1 && b[i] == b'\r') => return Ok(None),
            _ => return Err("chunk data not followed by CRLF".into()),
        }
    }
}

/// The data of a complete, valid chunked body (chunk lines and trailers removed).
pub fn dechunk(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && is_hex(b[i]) {
            i += 1;
        }
        let size = b[start..i].iter().fold(0u64, |n, &d| (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0)));
        let Some(lf) = b[i..].iter().position(|&c| c == b'\n') else { return out };
        i += lf + 1;
        if size == 0 {
            return out;
        }
        let end = (i + size as usize).min(b.len());
        out.extend_from_slice(&b[i..end]);
        i = end + 2;
    }
}

/// Fields that are meaningful for one connection only, never forwarded as received
/// (RFC 9110 §7.6.1); `Connection` and `Upgrade` are allowed when the proxy itself asks for an
/// upgrade, `TE` when exactly `trailers`.
pub fn hop_by_hop_problems(m: &Msg, proxy_upgrade: bool, problems: &mut Vec<String>) {
    for (name, value) in &m.fields {
        let n = name.to_ascii_lowercase();
        match n.as_slice() {
            b"keep-alive" | b"proxy-connection" => problems.push(format!("hop-by-hop field {} forwarded", String::from_utf8_lossy(name))),
            b"te" if !value.eq_ignore_ascii_case(b"trailers") => problems.push("TE other than `trailers` forwarded".into()),
            b"connection" | b"upgrade" if !proxy_upgrade => {
                problems.push(format!("{} forwarded without an upgrade", String::from_utf8_lossy(name)))
            }
            _ => {}
        }
    }
}

/// Framing fields of a forwarded message: at most one Content-Length (digits only), at most one
/// Transfer-Encoding (`chunked`), never both. Returns what they declare.
pub fn framing_problems(m: &Msg, problems: &mut Vec<String>) -> Option<Framing> {
    match declared(&m.fields) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("forwarded framing: {e}"));
            None
        }
    }
}

/// Everything a forwarded request must satisfy on its own (the codec and service layers add
/// what they know about the client's request).
pub fn forwarded_request_problems(m: &Msg) -> Vec<String> {
    let mut p = Vec::new();
    if m.minor != 1 {
        p.push("forwarded as HTTP/1.0".into());
    }
    if !(m.target.first() == Some(&b'/') || m.target == b"*") {
        p.push(format!("target {:?} is not origin-form", String::from_utf8_lossy(&m.target)));
    }
    if m.all("host").len() != 1 {
        p.push(format!("{} Host fields (RFC 9112 §3.2: exactly one)", m.all("host").len()));
    }
    let upgrade = m.one("connection").is_some_and(|c| c.eq_ignore_ascii_case(b"upgrade")) && m.one("upgrade").is_some();
    hop_by_hop_problems(m, upgrade, &mut p);
    framing_problems(m, &mut p);
    if m.all("x-forwarded-for").len() != 1 {
        p.push("not exactly one X-Forwarded-For".into());
    }
    if m.all("x-forwarded-proto") != [b"http"] {
        p.push("X-Forwarded-Proto is not exactly `http`".into());
    }
    if m.all("x-forwarded-host").len() > 1 {
        p.push("more than one X-Forwarded-Host".into());
    }
    if m.all("via").is_empty() {
        p.push("no Via".into());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_oracle() {
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n\r\nX"), Ok(Some(15)));
        assert_eq!(chunked_end(b"5;a=b\r\nhello\r\n0\r\nT: v\r\n\r\n"), Ok(Some(25)));
        assert_eq!(chunked_end(b"5 ;a\r\nhello\r\n0\r\n\r\n"), Ok(Some(18)));
        assert_eq!(chunked_end(b"5\r\nhel"), Ok(None));
        assert_eq!(chunked_end(b"5\r\nhello\r"), Ok(None));
        assert_eq!(chunked_end(b"5\r"), Ok(None));
        assert_eq!(chunked_end(b"0\r\nT: v\r"), Ok(None));
        for bad in
            [&b"5 \r\n"[..], b"5\nhello", b"0x5\r\n", b"\r\n", b"5\r\nhelloX", b"0\r\nT v\r\n\r\n", b"0\r\n\n", b"11111111111111111\r\n"]
        {
            assert!(chunked_end(bad).is_err(), "{bad:?}");
        }
        assert_eq!(dechunk(b"5;x\r\nhello\r\n1\r\n!\r\n0\r\n\r\n"), b"hello!");
    }

    #[test]
    fn request_oracle_frames_and_refuses() {
        let Next::Msg(m) = request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nabGET") else { panic!() };
        assert_eq!((m.framing, m.body.as_slice(), m.len), (Framing::Length(2), b"ab".as_slice(), 49));
        assert!(matches!(request(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"), Next::Bad(_)));
        assert!(matches!(request(b"GET / HTTP/1.1\nHost: a\n\n"), Next::Bad(_)));
        assert!(matches!(request(b"GET / HTTP/1.1\r\nHost: a\r\n"), Next::Partial));
    }

    #[test]
    fn forwarded_checks_catch_what_they_claim() {
        let bad = b"GET x HTTP/1.0\r\nHost: a\r\nHost: b\r\nKeep-Alive: 1\r\nTE: gzip\r\n\r\n";
        let Next::Msg(m) = request(bad) else { panic!() };
        let p = forwarded_request_problems(&m).join("\n");
        for want in ["HTTP/1.0", "origin-form", "Host fields", "Keep-Alive", "TE other", "X-Forwarded-For", "Via"] {
            assert!(p.contains(want), "{want} not reported in:\n{p}");
        }
        let good = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1\r\nX-Forwarded-Proto: http\r\nVia: 1.1 p\r\n\r\n";
        let Next::Msg(m) = request(good) else { panic!() };
        assert!(forwarded_request_problems(&m).is_empty(), "{:?}", forwarded_request_problems(&m));
    }
}
