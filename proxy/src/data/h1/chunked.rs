//! Streaming validator for the chunked transfer coding (RFC 9112 §7.1). Hot path.
//!
//! The proxy forwards chunked bodies byte for byte, so this is a state machine over the bytes as
//! they pass: it never copies or buffers, it only says how far the input is valid, where the
//! chunk data lies (for the rare de-chunking case) and when the body ended. Strict: 1–16 hex
//! digits, CRLF only, extensions limited in length, trailers validated like header bytes.

/// Writes `n` in hexadecimal: the size line of a chunk (without its CRLF), for a body this
/// proxy frames itself (a body that came over HTTP/2 going to an HTTP/1.1 peer).
pub fn size_line(out: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut started = false;
    for shift in (0..usize::BITS / 4).rev() {
        let d = (n >> (shift * 4)) & 0xf;
        if d != 0 || started || shift == 0 {
            out.push(DIGITS[d]);
            started = true;
        }
    }
}

/// Trailer fields that must not travel in an HTTP/1.1 trailer section: framing, routing and
/// connection fields (RFC 9110 §6.5.1), which a lenient upstream might act on.
pub fn forbidden_trailer(name: &[u8]) -> bool {
    matches!(
        name,
        b"content-length"
            | b"transfer-encoding"
            | b"host"
            | b"connection"
            | b"keep-alive"
            | b"te"
            | b"trailer"
            | b"upgrade"
            | b"proxy-connection"
            | b"content-encoding"
            | b"content-type"
            | b"content-range"
            | b"authorization"
            | b"set-cookie"
            | b"cookie"
    )
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size (`digits` counts them).
    Size,
    /// Whitespace after the size: only a `;` (extension) may follow.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// In a trailer field name (token characters up to the colon).
    TrailerName,
    /// After the colon: the field value up to CR.
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// Longest chunk-size line (size + extensions) or trailer section accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    remaining: u64,
    line: usize,
    trailers: usize,
    total: u64,
    max_total: u64,
}

/// Progress of one [`Chunked::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input that belong to the body (all of it unless `done`).
    pub consumed: usize,
    pub done: bool,
}

impl Chunked {
    pub fn new(max_total: u64) -> Self {
        Chunked { state: State::Size, size: 0, digits: 0, remaining: 0, line: 0, trailers: 0, total: 0, max_total }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Validates `input`; calls `data(start, end)` for each range of chunk data in it.
    pub fn feed(&mut self, input: &[u8], data: impl FnMut(usize, usize)) -> Result<Step, ChunkError> {
        self.feed_with_trailers(input, data, |_, _| {})
    }

    /// As [`Chunked::feed`], also calling `trailer(start, end)` for each range of the trailer
    /// section in `input`: its field lines with their CRLFs, without the final empty line (a
    /// section split across inputs comes in several ranges, in order).
    pub fn feed_with_trailers(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(usize, usize),
        mut trailer: impl FnMut(usize, usize),
    ) -> Result<Step, ChunkError> {
        let mut i = 0;
        // Where the run of trailer bytes in this input began.
        let mut from: Option<usize> = None;
        while i < input.len() {
            let b = input[i];
            let in_field = match self.state {
                State::TrailerStart => b != b'\r',
                State::TrailerName | State::TrailerLine | State::TrailerLf => true,
                _ => false,
            };
            if in_field {
                from.get_or_insert(i);
            } else if let Some(f) = from.take() {
                trailer(f, i);
            }
            match self.state {
                State::Size => match hex(b) {
                    Some(v) => {
                        if self.digits == 16 {
                            return Err(ChunkError::Malformed);
                        }
                        self.digits += 1;
                        self.size = (self.size << 4) | u64::from(v);
                    }
                    None if self.digits == 0 => return Err(ChunkError::Malformed),
                    None => match b {
                        b'\r' => self.state = State::SizeLf,
                        b';' => self.state = State::Ext,
                        b' ' | b'\t' => self.state = State::SizeWs,
                        _ => return Err(ChunkError::Malformed),
                    },
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => {}
                    b';' => self.state = State::Ext,
                    _ => return Err(ChunkError::Malformed),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\t' | b' '..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError::Malformed),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.line = 0;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.total = self.total.checked_add(self.size).ok_or(ChunkError::TooLarge)?;
                        if self.total > self.max_total {
                            return Err(ChunkError::TooLarge);
                        }
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    data(i, i + take);
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.size = 0;
                    self.digits = 0;
                    self.state = State::Size;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::FinalLf,
                    b' ' | b'\t' | b':' => return Err(ChunkError::Malformed), // no obs-fold, no empty name
                    _ if is_token(b) => self.state = State::TrailerName,
                    _ => return Err(ChunkError::Malformed),
                },
                // RFC 9112 §7.1.2: a trailer is a field line, `name ":" value`.
                State::TrailerName => match b {
                    b':' => self.state = State::TrailerLine,
                    _ if is_token(b) => {}
                    _ => return Err(ChunkError::Malformed),
                },
                State::TrailerLine => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\t' | b' '..=0x7e | 0x80..=0xff => {}
                    _ => return Err(ChunkError::Malformed),
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = State::Done;
                    return Ok(Step { consumed: i + 1, done: true });
                }
                State::Done => return Ok(Step { consumed: i, done: true }),
            }
            match self.state {
                State::TrailerStart | State::TrailerName | State::TrailerLine | State::TrailerLf | State::FinalLf => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkError::Malformed);
                    }
                }
                State::Size | State::SizeWs | State::Ext | State::SizeLf => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError::Malformed);
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if let Some(f) = from {
            trailer(f, i);
        }
        Ok(Step { consumed: i, done: self.state == State::Done })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn size_lines() {
        let mut out = Vec::new();
        for (n, want) in [(0usize, "0"), (1, "1"), (255, "ff"), (16_384, "4000"), (1 << 20, "100000")] {
            out.clear();
            size_line(&mut out, n);
            assert_eq!(out, want.as_bytes());
        }
    }

    fn run(input: &[u8]) -> Result<(Step, Vec<u8>), ChunkError> {
        let mut c = Chunked::new(1 << 20);
        let mut out = Vec::new();
        let step = c.feed(input, |s, e| out.extend_from_slice(&input[s..e]))?;
        Ok((step, out))
    }

    #[test]
    fn valid_bodies() {
        let (s, d) = run(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT").unwrap();
        assert!(s.done);
        assert_eq!(s.consumed, 32);
        assert_eq!(d, b"hello world");
        let (s, _) = run(b"0\r\nX-T: 1\r\n\r\n").unwrap();
        assert!(s.done);
        let (s, d) = run(b"A\r\n0123456789\r\n00\r\n\r\n").unwrap();
        assert!(s.done);
        assert_eq!(d.len(), 10);
        let (s, _) = run(b"1 ;a\r\nx\r\n0\r\n\r\n").unwrap();
        assert!(s.done);
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
        let mut c = Chunked::new(1 << 20);
        let mut data = 0;
        for (i, b) in body.iter().enumerate() {
            let s = c.feed(std::slice::from_ref(b), |a, e| data += e - a).unwrap();
            assert_eq!(s.done, i == body.len() - 1);
        }
        assert_eq!(data, 19);
    }

    #[test]
    fn trailer_sections_are_reported_however_the_input_is_split() {
        let body = b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut c = Chunked::new(1 << 20);
            let (mut data, mut trailers, mut used) = (Vec::new(), Vec::new(), 0);
            for part in [&body[..split], &body[split..]] {
                let s = c
                    .feed_with_trailers(part, |a, e| data.extend_from_slice(&part[a..e]), |a, e| trailers.extend_from_slice(&part[a..e]))
                    .unwrap();
                used += s.consumed;
                if s.done {
                    break;
                }
            }
            assert_eq!(data, b"abc", "split at {split}");
            assert_eq!(trailers, b"grpc-status: 0\r\ngrpc-message: ok\r\n", "split at {split}");
            assert_eq!(&body[used..], b"NEXT", "split at {split}");
        }
        let mut trailers = 0;
        let s = Chunked::new(1 << 20).feed_with_trailers(b"0\r\n\r\n", |_, _| {}, |a, e| trailers += e - a).unwrap();
        assert!(s.done);
        assert_eq!(trailers, 0, "no trailer section");
    }

    #[test]
    fn malformed_sizes_are_refused() {
        let bad: &[&[u8]] = &[
            b"Z\r\n",
            b"0x10\r\n",
            b"1_0\r\n",
            b"\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"1\nx\r\n",
            b"1\rx",
            b"1 \r\n",
            b"1\r\nxy",
            b"1\r\nx\n",
            b"0\r\n\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nX: \0\r\n\r\n",
            b"1;\x01\r\n",
            b"0\r\nX-No-Colon\r\n\r\n",
            b"0\r\nBad Name: v\r\n\r\n",
        ];
        for b in bad {
            assert_eq!(run(b).err(), Some(ChunkError::Malformed), "accepted {:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn size_limit() {
        let mut c = Chunked::new(4);
        assert_eq!(c.feed(b"5\r\n", |_, _| {}), Err(ChunkError::TooLarge));
        let mut c = Chunked::new(u64::MAX);
        assert!(c.feed(b"ffffffffffffffff\r\n", |_, _| {}).is_ok());
    }
}
