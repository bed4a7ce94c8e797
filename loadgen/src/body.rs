//! HTTP/1.1 message-body framing, shared by the client (responses) and the upstream (requests).
//!
//! [`BodySkipper`] consumes a body from a byte buffer without copying or storing it: a
//! `Content-Length` body, a `chunked` body (sizes, extensions, CRLFs and trailers checked), or a
//! read-until-close body (responses only). It is fed whatever bytes are buffered and says how many
//! it used and whether the body is complete, so it works across arbitrary split reads and leaves
//! pipelined bytes after the body untouched. No allocation, no per-byte work on data bytes.

/// How a message body is delimited (RFC 9112 §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD responses, 1xx/204/304, requests without CL/TE).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes the connection (responses without CL or TE).
    UntilClose,
}

/// A malformed chunked body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Reading chunk-size hex digits; `digits` counts them.
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to CR.
    Ext {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    TrailerEndLf,
    UntilClose,
    Done,
}

/// Consumes one message body incrementally; see the module docs.
#[derive(Clone, Debug)]
pub struct BodySkipper {
    state: State,
}

impl BodySkipper {
    /// A skipper for a body framed as `framing`.
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Size { size: 0, digits: 0 },
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    /// True once the whole body has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True when the body ends only at EOF (so EOF completes it instead of being an error).
    pub fn ends_at_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Consumes body bytes from the front of `buf`; returns how many bytes belonged to the body.
    /// Check [`is_done`](Self::is_done) afterwards; bytes past the returned count are not body.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, BodyError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => break,
                State::UntilClose => return Ok(buf.len()),
                State::Length(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = if left == 0 { State::Done } else { State::Length(left) };
                }
                State::Data(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = if left == 0 { State::DataCr } else { State::Data(left) };
                }
                State::Size { size, digits } => {
                    let b = buf[i];
                    i += 1;
                    self.state = match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            // 15 hex digits cover any body we could ever skip; more is an attack.
                            if digits >= 15 {
                                return Err(BodyError);
                            }
                            let v = (b as char).to_digit(16).ok_or(BodyError)? as u64;
                            State::Size { size: size * 16 + v, digits: digits + 1 }
                        }
                        b';' if digits > 0 => State::Ext { size },
                        b'\r' if digits > 0 => State::SizeLf { size },
                        _ => return Err(BodyError),
                    };
                }
                State::Ext { size } => {
                    // Extensions are ignored; a bare LF inside one is malformed.
                    match memchr_cr_lf(&buf[i..]) {
                        Some((off, b'\r')) => {
                            i += off + 1;
                            self.state = State::SizeLf { size };
                        }
                        Some(_) => return Err(BodyError),
                        None => i = buf.len(),
                    }
                }
                State::SizeLf { size } => {
                    if buf[i] != b'\n' {
                        return Err(BodyError);
                    }
                    i += 1;
                    self.state = if size == 0 { State::TrailerStart } else { State::Data(size) };
                }
                State::DataCr => {
                    if buf[i] != b'\r' {
                        return Err(BodyError);
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if buf[i] != b'\n' {
                        return Err(BodyError);
                    }
                    i += 1;
                    self.state = State::Size { size: 0, digits: 0 };
                }
                State::TrailerStart => {
                    let b = buf[i];
                    i += 1;
                    self.state = match b {
                        b'\r' => State::TrailerEndLf,
                        b'\n' => return Err(BodyError),
                        _ => State::TrailerLine,
                    };
                }
                State::TrailerLine => match memchr_cr_lf(&buf[i..]) {
                    Some((off, b'\r')) => {
                        i += off + 1;
                        self.state = State::TrailerLineLf;
                    }
                    Some(_) => return Err(BodyError),
                    None => i = buf.len(),
                },
                State::TrailerLineLf => {
                    if buf[i] != b'\n' {
                        return Err(BodyError);
                    }
                    i += 1;
                    self.state = State::TrailerStart;
                }
                State::TrailerEndLf => {
                    if buf[i] != b'\n' {
                        return Err(BodyError);
                    }
                    i += 1;
                    self.state = State::Done;
                }
            }
        }
        Ok(i)
    }
}

/// Position and value of the first CR or LF in `buf`.
fn memchr_cr_lf(buf: &[u8]) -> Option<(usize, u8)> {
    buf.iter().position(|&b| b == b'\r' || b == b'\n').map(|p| (p, buf[p]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Feeds `input` split at every possible point (and byte by byte); returns bytes consumed.
    fn feed_split(framing: Framing, input: &[u8]) -> Result<usize, BodyError> {
        let whole = {
            let mut s = BodySkipper::new(framing);
            let n = s.feed(input)?;
            assert!(s.is_done(), "not done on whole input");
            n
        };
        for cut in 0..=input.len() {
            let mut s = BodySkipper::new(framing);
            let a = s.feed(&input[..cut])?;
            assert!(a <= cut);
            // Unconsumed bytes of the first part are re-fed with the rest, as a reader would.
            let b = s.feed(&input[a..])?;
            assert_eq!(a + b, whole, "cut at {cut}");
            assert!(s.is_done());
        }
        let mut s = BodySkipper::new(framing);
        let mut used = 0;
        for i in 0..input.len() {
            if s.is_done() {
                break;
            }
            used += s.feed(&input[i..=i])?;
        }
        assert_eq!(used, whole);
        Ok(whole)
    }

    #[test]
    fn content_length_stops_at_length_and_leaves_pipelined_bytes() {
        assert_eq!(feed_split(Framing::Length(5), b"helloGET /"), Ok(5));
        let mut s = BodySkipper::new(Framing::Length(0));
        assert!(s.is_done());
        assert_eq!(s.feed(b"GET"), Ok(0));
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let body = b"5;name=v\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(feed_split(Framing::Chunked, body), Ok(body.len() - 4), "stops before NEXT");
        assert_eq!(feed_split(Framing::Chunked, b"0\r\n\r\n"), Ok(5));
    }

    #[test]
    fn chunked_rejects_malformed() {
        for bad in [&b"x\r\n"[..], b"\r\n", b"5\nhello\r\n", b"5\r\nhelloXX", b"1234567890abcdef\r\n", b"0\r\n\n"] {
            let mut s = BodySkipper::new(Framing::Chunked);
            assert_eq!(s.feed(bad), Err(BodyError), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn until_close_takes_everything() {
        let mut s = BodySkipper::new(Framing::UntilClose);
        assert!(s.ends_at_close());
        assert_eq!(s.feed(b"abc"), Ok(3));
        assert!(!s.is_done());
    }
}
