//! HTTP/1.1 message body framing (RFC 9112 §6): how many of the bytes at hand belong to the body
//! of the message in flight, and whether it ended. Hot path.
//!
//! The framing comes from the parsed head ([`Framing`]); a body is then taken as it arrives, from
//! whatever buffer holds it, without being collected: [`ReqBody`] for the request read from the
//! client, [`ResBody`] for the response read from the upstream. Chunked bodies are validated by
//! [`Chunked`] and passed through as they are, except when a response is de-chunked for an
//! HTTP/1.0 client.

use crate::data::error::ProxyError;
use crate::data::h1::chunked::{ChunkError, Chunked};
use crate::data::h1::head::Framing;

/// The request body still to be read from the client.
pub enum ReqBody {
    Length(u64),
    Chunked(Chunked),
}

impl ReqBody {
    pub fn new(framing: Framing, max: u64) -> Option<Self> {
        match framing {
            Framing::None | Framing::Length(0) | Framing::UntilClose => None,
            Framing::Length(n) => Some(ReqBody::Length(n)),
            Framing::Chunked => Some(ReqBody::Chunked(Chunked::new(max))),
        }
    }

    /// How many bytes of `avail` belong to the body (validated); sets `done` at its end.
    pub fn take(&mut self, avail: &[u8], done: &mut bool) -> Result<usize, ProxyError> {
        match self {
            ReqBody::Length(left) => {
                let n = (*left).min(avail.len() as u64);
                *left -= n;
                *done = *left == 0;
                Ok(n as usize)
            }
            ReqBody::Chunked(c) => match c.feed(avail, |_, _| {}) {
                Ok(step) => {
                    *done = step.done;
                    Ok(step.consumed)
                }
                Err(ChunkError::Malformed) => Err(ProxyError::BadRequest),
                Err(ChunkError::TooLarge) => Err(ProxyError::BodyTooLarge),
            },
        }
    }

    /// As [`ReqBody::take`], appending the body's data (a chunked body de-chunked) to `data`:
    /// a request going upstream over HTTP/2, whose DATA frames carry no chunk framing.
    pub fn take_data<B: bytes::BufMut>(&mut self, avail: &[u8], data: &mut B, done: &mut bool) -> Result<usize, ProxyError> {
        match self {
            ReqBody::Length(_) => {
                let n = self.take(avail, done)?;
                data.put_slice(&avail[..n]);
                Ok(n)
            }
            ReqBody::Chunked(c) => match c.feed(avail, |s, e| data.put_slice(&avail[s..e])) {
                Ok(step) => {
                    *done = step.done;
                    Ok(step.consumed)
                }
                Err(ChunkError::Malformed) => Err(ProxyError::BadRequest),
                Err(ChunkError::TooLarge) => Err(ProxyError::BodyTooLarge),
            },
        }
    }
}

/// The response body still to be relayed to the client.
pub enum ResBody {
    Length(u64),
    Chunked { dec: Chunked, dechunk: bool },
    UntilClose,
}

impl ResBody {
    /// The response body a head with this framing announces; `dechunk`: a chunked body is
    /// relayed de-chunked (to an HTTP/1.0 client).
    pub fn new(framing: Framing, dechunk: bool) -> Option<Self> {
        match framing {
            Framing::None | Framing::Length(0) => None,
            Framing::Length(n) => Some(ResBody::Length(n)),
            Framing::Chunked => Some(ResBody::Chunked { dec: Chunked::new(u64::MAX), dechunk }),
            Framing::UntilClose => Some(ResBody::UntilClose),
        }
    }

    /// Validates the body bytes at the front of `avail`; returns how many input bytes belong to
    /// the body and whether it ended. Chunk data is appended to `dechunked` only when
    /// de-chunking (the one case where body bytes are copied instead of passed through): the
    /// output buffer of an HTTP/1.0 client, or the frame an HTTP/2 stream sends next.
    pub fn take<B: bytes::BufMut>(&mut self, avail: &[u8], dechunked: &mut B) -> Result<(usize, bool), ProxyError> {
        match self {
            ResBody::Length(left) => {
                let n = (*left).min(avail.len() as u64) as usize;
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            ResBody::Chunked { dec, dechunk } => {
                let dechunk = *dechunk;
                let step = dec
                    .feed(avail, |s, e| {
                        if dechunk {
                            dechunked.put_slice(&avail[s..e]);
                        }
                    })
                    .map_err(|_| ProxyError::BadResponse)?;
                Ok((step.consumed, step.done))
            }
            ResBody::UntilClose => Ok((avail.len(), false)),
        }
    }

    /// As [`ResBody::take`], appending the trailer section of a chunked body (its field lines,
    /// validated, each with its CRLF) to `trailers`: a response going to an HTTP/2 client, whose
    /// trailers travel as a HEADERS frame of their own (gRPC's `grpc-status`).
    pub fn take_keeping_trailers<B: bytes::BufMut>(
        &mut self,
        avail: &[u8],
        dechunked: &mut B,
        trailers: &mut Vec<u8>,
    ) -> Result<(usize, bool), ProxyError> {
        match self {
            ResBody::Chunked { dec, dechunk } => {
                let dechunk = *dechunk;
                let step = dec
                    .feed_with_trailers(
                        avail,
                        |s, e| {
                            if dechunk {
                                dechunked.put_slice(&avail[s..e]);
                            }
                        },
                        |s, e| trailers.extend_from_slice(&avail[s..e]),
                    )
                    .map_err(|_| ProxyError::BadResponse)?;
                Ok((step.consumed, step.done))
            }
            _ => self.take(avail, dechunked),
        }
    }

    pub fn dechunks(&self) -> bool {
        matches!(self, ResBody::Chunked { dechunk: true, .. })
    }
}
