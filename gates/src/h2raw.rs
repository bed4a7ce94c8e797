//! The alloc probe's HTTP/2 client: a raw-frame writer and reader that allocates nothing per
//! request, so that dhat, which counts the whole process, sees the proxy's HTTP/2 allocations
//! only (the `h2` crate's client would allocate per stream as its server side does).
//!
//! Requests are pre-encoded: HEADERS frames whose header block uses HPACK's static table and,
//! from the connection's second request on, the dynamic-table entries its first request inserted
//! (`:authority`, `:path`, `user-agent`, `accept`, `content-length`: literal with incremental
//! indexing once, then one indexed byte each, as a real client's encoder does), and a DATA frame
//! for a request body. Per request only the stream id is patched into a buffer the client owns for
//! life. Frames are read into a reused buffer: SETTINGS are acknowledged, PING answered,
//! WINDOW_UPDATE ignored (a request body here fits the initial window), and each stream's
//! response checked: HEADERS whose block starts with `:status 200` (static index 8, as the `h2`
//! encoder writes it), then DATA frames of [`crate::harness::FILL`] bytes adding up to the
//! expected body, ending the stream. RST_STREAM, GOAWAY, a CONTINUATION or anything else
//! unexpected is an error. A gRPC-style call ([`H2Req::Grpc`]) is checked further: every response
//! block of its connection is HPACK-decoded ([`crate::hpack`]: static and dynamic tables,
//! Huffman, no allocation), the head must be `:status 200` with `content-type: application/grpc`,
//! and the stream must end with trailers that are exactly `grpc-status: 0` and `grpc-message: ok`.
//!
//! The client opens the connection with a receive window of 1 GiB (SETTINGS_INITIAL_WINDOW_SIZE
//! and a connection WINDOW_UPDATE), so it never has to send WINDOW_UPDATE while measured: a
//! connection that would receive more than that is refused ([`H2Raw::exchange`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::FILL;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER: usize = 9;
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// The receive window the client opens with, per stream and for the connection.
const WINDOW: u32 = 1 << 30;
/// Most streams one exchange may carry.
pub const MAX_DEPTH: usize = 16;
const READ_BUF: usize = 64 * 1024;

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The request every stream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Req {
    Get,
    /// POST with a `content-length` body of `body_bytes` [`FILL`] bytes.
    PostLength,
    /// A gRPC-style unary call: POST to `/pkg.Svc/Method` with `content-type:
    /// application/grpc` and `te: trailers`, no `content-length`, the body (`body_bytes` [`FILL`]
    /// bytes) in one DATA frame that ends the stream. Its response must be a 200 with
    /// `content-type: application/grpc`, the body, and trailers `grpc-status: 0` and
    /// `grpc-message: ok` ending the stream: every response header block is decoded
    /// ([`crate::hpack`]) to check it.
    Grpc,
}

impl H2Req {
    fn has_body(self) -> bool {
        self != H2Req::Get
    }
}

/// What the last response header block (or trailer block) decoded to, for [`H2Req::Grpc`].
#[derive(Debug, Default, Clone, Copy)]
struct Block {
    status_200: bool,
    grpc_content_type: bool,
    grpc_status_0: bool,
    grpc_message_ok: bool,
    pseudo: usize,
    fields: usize,
}

/// The client's connection: cleartext (h2c, prior knowledge) or TLS (ALPN h2).
enum Stream {
    Plain(TcpStream),
    Tls(Box<crate::tlsclient::TlsClient>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One HTTP/2 connection to the proxy.
pub struct H2Raw {
    io: Stream,
    rbuf: Box<[u8]>,
    start: usize,
    end: usize,
    /// What one exchange writes (HEADERS, and DATA for a body, `depth` times), rebuilt in place.
    out: Vec<u8>,
    /// The header block of the connection's first request (inserting into HPACK's dynamic
    /// table) and of every later one (indexing it).
    first_block: Vec<u8>,
    block: Vec<u8>,
    req: H2Req,
    body: Vec<u8>,
    body_bytes: u64,
    next_stream: u32,
    /// Bytes of DATA received over the connection (against [`WINDOW`]).
    received: u64,
    /// Responses received and checked.
    pub checked: u64,
    /// The response blocks' decoder ([`H2Req::Grpc`] decodes every block of the connection).
    hpack: crate::hpack::Decoder,
    last: Block,
}

impl std::fmt::Debug for H2Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Raw").field("req", &self.req).field("next_stream", &self.next_stream).finish_non_exhaustive()
    }
}

/// A request field's name: an index of HPACK's static table, or a literal name.
#[derive(Clone, Copy)]
enum Name {
    Static(u8),
    Literal(&'static [u8]),
}

/// Appends an HPACK string literal (no Huffman) of at most 126 bytes.
fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

/// The request's header blocks: (first on a connection, every later one).
fn blocks(req: H2Req, tls: bool, body_bytes: usize) -> (Vec<u8>, Vec<u8>) {
    let method = match req {
        H2Req::Get => 0x82,                      // :method GET
        H2Req::PostLength | H2Req::Grpc => 0x83, // :method POST
    };
    let scheme = if tls { 0x87 } else { 0x86 }; // :scheme https / http
    let path: &[u8] = match req {
        H2Req::Get => b"/bench",
        H2Req::PostLength => b"/upload",
        H2Req::Grpc => b"/pkg.Svc/Method",
    };
    let length = body_bytes.to_string();
    // (name, value): literal with incremental indexing (0x40 | static index, 6-bit prefix; or
    // 0x40 and the name as a literal).
    let mut fields: Vec<(Name, &[u8])> = vec![(Name::Static(1), b"bench.local"), (Name::Static(4), path)];
    match req {
        H2Req::Get | H2Req::PostLength => {
            fields.extend([(Name::Static(58), &b"gates"[..]), (Name::Static(19), b"*/*")]);
        }
        H2Req::Grpc => {
            fields.extend([(Name::Static(31), &b"application/grpc"[..]), (Name::Literal(b"te"), b"trailers"), (Name::Static(58), b"gates")])
        }
    }
    if req == H2Req::PostLength {
        fields.push((Name::Static(28), length.as_bytes()));
    }
    let mut first = vec![method, scheme];
    for (name, value) in &fields {
        match name {
            Name::Static(index) => first.push(0x40 | index),
            Name::Literal(n) => {
                first.push(0x40);
                string(&mut first, n);
            }
        }
        string(&mut first, value);
    }
    // The dynamic table's newest entry is index 62: the last field inserted.
    let mut rest = vec![method, scheme];
    let n = fields.len();
    for i in 0..n {
        rest.push(0x80 | (62 + (n - 1 - i)) as u8);
    }
    (first, rest)
}

fn frame_header(out: &mut Vec<u8>, len: usize, typ: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(typ);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

impl H2Raw {
    /// Connects (over TLS with ALPN h2 when `tls` is given), sends the preface, its SETTINGS and
    /// a connection WINDOW_UPDATE, and waits for the server's SETTINGS (acknowledged).
    pub fn connect(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, req: H2Req, body_bytes: usize) -> io::Result<H2Raw> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let io = match tls {
            None => Stream::Plain(tcp),
            Some(config) => Stream::Tls(Box::new(crate::tlsclient::TlsClient::handshake(tcp, config)?)),
        };
        let (first_block, block) = blocks(req, tls.is_some(), body_bytes);
        let mut c = H2Raw {
            io,
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            out: Vec::with_capacity(MAX_DEPTH * (2 * HEADER + first_block.len() + body_bytes) + 64),
            first_block,
            block,
            req,
            body: vec![FILL; body_bytes],
            body_bytes: body_bytes as u64,
            next_stream: 1,
            received: 0,
            checked: 0,
            hpack: crate::hpack::Decoder::new(),
            last: Block::default(),
        };
        let mut hello = PREFACE.to_vec();
        // SETTINGS: ENABLE_PUSH 0, INITIAL_WINDOW_SIZE 1 GiB.
        frame_header(&mut hello, 12, SETTINGS, 0, 0);
        hello.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
        hello.extend_from_slice(&[0, 4]);
        hello.extend_from_slice(&WINDOW.to_be_bytes());
        frame_header(&mut hello, 4, WINDOW_UPDATE, 0, 0);
        hello.extend_from_slice(&(WINDOW - 65_535).to_be_bytes());
        c.io.write_all(&hello)?;
        // The server's SETTINGS (answered in `frame`) before anything else of ours.
        let mut settings = false;
        while !settings {
            let (typ, flags, _, _) = c.frame(None)?;
            settings = typ == SETTINGS && flags & ACK == 0;
        }
        Ok(c)
    }

    /// Sends `depth` requests on new streams in one write, then reads until every one of their
    /// responses has ended, each checked.
    pub fn exchange(&mut self, depth: usize) -> io::Result<()> {
        if depth == 0 || depth > MAX_DEPTH {
            return Err(invalid("depth out of range"));
        }
        if self.received + depth as u64 * self.body_bytes >= u64::from(WINDOW) {
            return Err(invalid("the connection's receive window (1 GiB) would run out"));
        }
        self.out.clear();
        let first = self.next_stream;
        for _ in 0..depth {
            let id = self.next_stream;
            self.next_stream += 2;
            let block = if id == 1 { &self.first_block } else { &self.block };
            let flags = END_HEADERS | if self.req.has_body() { 0 } else { END_STREAM };
            frame_header(&mut self.out, block.len(), HEADERS, flags, id);
            self.out.extend_from_slice(block);
            if self.req.has_body() {
                frame_header(&mut self.out, self.body.len(), DATA, END_STREAM, id);
                self.out.extend_from_slice(&self.body);
            }
        }
        self.io.write_all(&self.out)?;
        // Per stream (index (id - first) / 2): got a 200 HEADERS, body bytes, ended.
        let grpc = self.req == H2Req::Grpc;
        let mut headed = [false; MAX_DEPTH];
        let mut bytes = [0u64; MAX_DEPTH];
        let mut open = depth;
        while open > 0 {
            let mut intact = true;
            let (typ, flags, id, len) = self.frame(Some(&mut intact))?;
            if id == 0 {
                continue;
            }
            if id < first || id >= self.next_stream || id % 2 == 0 {
                return Err(invalid("a frame on a stream this exchange did not open"));
            }
            let i = ((id - first) / 2) as usize;
            match typ {
                HEADERS if !headed[i] => {
                    headed[i] = true;
                    if grpc {
                        let b = self.last;
                        if !b.status_200 || !b.grpc_content_type || flags & END_STREAM != 0 {
                            return Err(invalid("a gRPC response head that is not 200 with content-type application/grpc and a body"));
                        }
                    }
                }
                // gRPC: the trailers, ending the stream, exactly grpc-status 0 and grpc-message ok.
                HEADERS if grpc => {
                    let b = self.last;
                    if flags & END_STREAM == 0 || !b.grpc_status_0 || !b.grpc_message_ok || b.fields != 2 || b.pseudo != 0 {
                        return Err(invalid("gRPC trailers that are not exactly grpc-status 0 and grpc-message ok ending the stream"));
                    }
                }
                DATA if grpc && flags & END_STREAM != 0 => return Err(invalid("a gRPC response that ended without trailers")),
                DATA if headed[i] && intact => {
                    bytes[i] += len as u64;
                    self.received += len as u64;
                }
                RST_STREAM => return Err(invalid("the proxy reset a stream")),
                _ => return Err(invalid("unexpected frame on a stream (trailers, a CONTINUATION, DATA before HEADERS or not FILL bytes)")),
            }
            if flags & END_STREAM != 0 {
                if bytes[i] != self.body_bytes {
                    return Err(invalid("a response's body is not --body-bytes long"));
                }
                open -= 1;
                self.checked += 1;
            }
        }
        Ok(())
    }

    /// Reads one frame and deals with the connection-level ones (SETTINGS acknowledged, PING
    /// answered, WINDOW_UPDATE ignored, GOAWAY an error); returns (type, flags, stream, payload
    /// length without padding). A HEADERS frame must carry END_HEADERS and start with `:status
    /// 200`; a DATA frame's bytes are checked against [`FILL`] (`intact` set false if not).
    fn frame(&mut self, mut intact: Option<&mut bool>) -> io::Result<(u8, u8, u32, usize)> {
        loop {
            let avail = self.end - self.start;
            if avail >= HEADER {
                let h = &self.rbuf[self.start..self.start + HEADER];
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                let (typ, flags) = (h[3], h[4]);
                let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                if HEADER + len > self.rbuf.len() {
                    return Err(invalid("a frame larger than the client's buffer"));
                }
                if avail >= HEADER + len {
                    let at = self.start + HEADER;
                    self.start = at + len;
                    let mut payload = &self.rbuf[at..at + len];
                    if flags & PADDED != 0 && matches!(typ, DATA | HEADERS) {
                        let pad = usize::from(*payload.first().ok_or_else(|| invalid("padded frame without its pad length"))?);
                        payload = payload.get(1..len - pad).ok_or_else(|| invalid("padding longer than the frame"))?;
                    }
                    let plen = payload.len();
                    match typ {
                        SETTINGS if flags & ACK == 0 => {
                            let mut ack = [0u8; HEADER];
                            ack[3] = SETTINGS;
                            ack[4] = ACK;
                            self.io.write_all(&ack)?;
                        }
                        PING if flags & ACK == 0 => {
                            let mut pong = [0u8; HEADER + 8];
                            pong[2] = 8;
                            pong[3] = PING;
                            pong[4] = ACK;
                            pong[HEADER..].copy_from_slice(&payload[..8.min(plen)]);
                            self.io.write_all(&pong)?;
                        }
                        GOAWAY => return Err(invalid("the proxy sent GOAWAY")),
                        HEADERS => {
                            if flags & END_HEADERS == 0 {
                                return Err(invalid("a response header block in more than one frame"));
                            }
                            // PRIORITY fields, if flagged, precede the block.
                            let block = if flags & 0x20 != 0 { payload.get(5..).unwrap_or(&[]) } else { payload };
                            if self.req == H2Req::Grpc {
                                // Every block of the connection, in order (they share the table).
                                let mut b = Block::default();
                                self.hpack
                                    .decode(block, |name, value| {
                                        b.fields += 1;
                                        match name {
                                            b":status" => b.status_200 = value == b"200",
                                            b"content-type" => b.grpc_content_type = value == b"application/grpc",
                                            b"grpc-status" => b.grpc_status_0 = value == b"0",
                                            b"grpc-message" => b.grpc_message_ok = value == b"ok",
                                            _ => {}
                                        }
                                        if name.starts_with(b":") {
                                            b.pseudo += 1;
                                        }
                                    })
                                    .map_err(|e| invalid(e.0))?;
                                self.last = b;
                            } else if block.first() != Some(&0x88) {
                                return Err(invalid("a response whose header block does not start with :status 200"));
                            }
                        }
                        DATA => {
                            if let Some(ok) = intact.as_deref_mut() {
                                *ok = payload.iter().all(|&b| b == FILL);
                            }
                        }
                        _ => {}
                    }
                    return Ok((typ, flags, id, plen));
                }
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.end == self.rbuf.len() || self.rbuf.len() - self.start < HEADER + 16_384 + 256 {
                self.rbuf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = self.io.read(&mut self.rbuf[self.end..])?;
            if n == 0 {
                return Err(invalid("the proxy closed the connection"));
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_requests_index_what_the_first_inserted() {
        let (first, rest) = blocks(H2Req::Get, false, 1024);
        assert_eq!(&first[..4], &[0x82, 0x86, 0x41, 11]);
        // authority 65, path 64, user-agent 63, accept 62.
        assert_eq!(rest, [0x82, 0x86, 0xc1, 0xc0, 0xbf, 0xbe]);
        let (first, rest) = blocks(H2Req::PostLength, true, 1024);
        assert!(first.ends_with(&[0x5c, 4, b'1', b'0', b'2', b'4']));
        assert_eq!(rest, [0x83, 0x87, 0xc2, 0xc1, 0xc0, 0xbf, 0xbe]);
        let (first, rest) = blocks(H2Req::Grpc, false, 1024);
        // content-type (31), then te as a literal name, then user-agent.
        let te: &[u8] = &[
            0x5f, 16, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'g', b'r', b'p', b'c', 0x40, 2, b't', b'e',
            8,
        ];
        assert!(first.windows(te.len()).any(|w| w == te), "{first:?}");
        let mut d = crate::hpack::Decoder::new();
        let mut fields = Vec::new();
        d.decode(&first, |n, v| fields.push((n.to_vec(), v.to_vec()))).expect("the first block decodes");
        d.decode(&rest, |n, v| fields.push((n.to_vec(), v.to_vec()))).expect("a later block decodes");
        assert_eq!(fields.len(), 14);
        assert_eq!(fields[..7], fields[7..], "the later block indexes what the first inserted");
        assert_eq!(fields[5], (b"te".to_vec(), b"trailers".to_vec()));
        assert_eq!(rest, [0x83, 0x86, 0xc2, 0xc1, 0xc0, 0xbf, 0xbe]);
    }
}
