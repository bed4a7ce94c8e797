//! The TLS record layer after the handshake: AEAD sealing and opening in place, in the
//! connection's own buffers. Hot path.
//!
//! rustls does the handshake; once it is done the traffic secrets are taken out of it
//! (`dangerous_into_kernel_connection`, the interface rustls offers for kTLS) and records are
//! protected here with `ring`'s AEAD, exactly as RFC 8446 §5.2–5.3 (TLS 1.3) and RFC 5288 / RFC
//! 7905 (TLS 1.2 AES-GCM / ChaCha20-Poly1305) define them. Why: rustls 0.23 allocates a buffer
//! for every record it encrypts and every record it decrypts, in its buffered and its unbuffered
//! API alike, and the contract allows no allocation per request. Sealing and opening here take
//! no allocation: the ciphertext is decrypted where it was read, and the plaintext is encrypted
//! where it is written.

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Content types (RFC 8446 §5.1).
pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// The record header: type, legacy version, length.
pub const HEADER: usize = 5;
/// The most plaintext one record carries (2^14).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The most ciphertext a peer may put in one record: 2^14 + 256 in TLS 1.3, 2^14 + 2048 in 1.2.
pub const MAX_CIPHERTEXT_12: usize = MAX_PLAINTEXT + 2048;
pub const MAX_CIPHERTEXT_13: usize = MAX_PLAINTEXT + 256;
/// What sealing adds to the plaintext at most: header, TLS 1.2's explicit nonce, TLS 1.3's inner
/// content type, the tag.
pub const MAX_OVERHEAD: usize = HEADER + 8 + 1 + TAG;
const TAG: usize = 16;

/// AES-GCM's confidentiality limit (RFC 8446 §5.5: 2^24.5 full-size records); a TLS 1.3
/// connection updates its sending key well before it, a TLS 1.2 connection is closed.
pub const KEY_USE_LIMIT: u64 = 1 << 24;

/// How records are framed and their nonces built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// TLS 1.3: outer type application_data, inner type after the plaintext, nonce = iv ^ seq.
    Tls13,
    /// TLS 1.2 AES-GCM: an 8-byte explicit nonce in each record, nonce = salt || explicit.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: nonce = iv ^ seq, no explicit part.
    Tls12Chacha,
}

/// Why a record could not be opened or sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Bad length, bad version, a type not allowed here.
    Malformed,
    /// The tag did not verify (tampered, or the wrong key).
    Decrypt,
    /// The cipher suite is not one this layer implements.
    Unsupported,
}

/// One direction's key, IV and sequence number.
pub struct Keys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    pub seq: u64,
    pub framing: Framing,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("seq", &self.seq).field("framing", &self.framing).finish_non_exhaustive()
    }
}

impl Keys {
    /// Keys from rustls's traffic secrets. `tls13`: the negotiated version.
    pub fn new(seq: u64, secrets: &ConnectionTrafficSecrets, tls13: bool) -> Result<Keys, RecordError> {
        let (alg, key, iv, gcm) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv, false),
            _ => return Err(RecordError::Unsupported),
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| RecordError::Unsupported)?;
        let iv: [u8; NONCE_LEN] = iv.as_ref().try_into().map_err(|_| RecordError::Unsupported)?;
        let framing = match (tls13, gcm) {
            (true, _) => Framing::Tls13,
            (false, true) => Framing::Tls12Gcm,
            (false, false) => Framing::Tls12Chacha,
        };
        Ok(Keys { key: LessSafeKey::new(key), iv, seq, framing })
    }

    /// iv XOR the sequence number, big-endian in the last 8 bytes.
    #[inline]
    fn nonce_bytes(&self) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[NONCE_LEN - 8..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// TLS 1.2's additional data: seq, type, version, plaintext length.
    #[inline]
    fn aad12(&self, typ: u8, len: usize) -> [u8; 13] {
        let mut a = [0u8; 13];
        a[..8].copy_from_slice(&self.seq.to_be_bytes());
        a[8] = typ;
        a[9] = 3;
        a[10] = 3;
        a[11..].copy_from_slice(&(len as u16).to_be_bytes());
        a
    }

    /// The most ciphertext a record may carry under this framing.
    #[inline]
    pub fn max_ciphertext(&self) -> usize {
        if self.framing == Framing::Tls13 { MAX_CIPHERTEXT_13 } else { MAX_CIPHERTEXT_12 }
    }

    /// Opens the whole record at the front of `rec` (header included, exactly one record) in
    /// place: `(content type, plaintext start, plaintext end)` as offsets into `rec`.
    pub fn open(&mut self, rec: &mut [u8]) -> Result<(u8, usize, usize), RecordError> {
        let Some((header, body)) = rec.split_first_chunk_mut::<HEADER>() else {
            return Err(RecordError::Malformed);
        };
        let outer = header[0];
        if self.seq == u64::MAX {
            return Err(RecordError::Malformed);
        }
        match self.framing {
            Framing::Tls13 => {
                if outer != APPLICATION_DATA || body.len() < TAG + 1 {
                    return Err(RecordError::Malformed);
                }
                let nonce = Nonce::assume_unique_for_key(self.nonce_bytes());
                let plain = self.key.open_in_place(nonce, Aad::from(*header), body).map_err(|_| RecordError::Decrypt)?;
                self.seq += 1;
                // Inner plaintext: content, content type, zero padding.
                let Some(at) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Malformed);
                };
                Ok((plain[at], HEADER, HEADER + at))
            }
            Framing::Tls12Gcm => {
                if body.len() < 8 + TAG {
                    return Err(RecordError::Malformed);
                }
                let (explicit, sealed) = body.split_at_mut(8);
                let mut n = [0u8; NONCE_LEN];
                n[..4].copy_from_slice(&self.iv[..4]);
                n[4..].copy_from_slice(explicit);
                let aad = self.aad12(outer, sealed.len() - TAG);
                let plain =
                    self.key.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(aad), sealed).map_err(|_| RecordError::Decrypt)?;
                let len = plain.len();
                self.seq += 1;
                Ok((outer, HEADER + 8, HEADER + 8 + len))
            }
            Framing::Tls12Chacha => {
                if body.len() < TAG {
                    return Err(RecordError::Malformed);
                }
                let aad = self.aad12(outer, body.len() - TAG);
                let nonce = Nonce::assume_unique_for_key(self.nonce_bytes());
                let plain = self.key.open_in_place(nonce, Aad::from(aad), body).map_err(|_| RecordError::Decrypt)?;
                let len = plain.len();
                self.seq += 1;
                Ok((outer, HEADER, HEADER + len))
            }
        }
    }

    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) of content type `typ` as one record at the
    /// front of `out`; returns the record's length. `out` must hold `plain.len() + MAX_OVERHEAD`.
    pub fn seal(&mut self, typ: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        self.seal_with(typ, plain.len(), out, |dst| dst.copy_from_slice(plain))
    }

    /// [`Keys::seal`] of `n` plaintext bytes that `fill` writes into the slice it is given
    /// (exactly `n` long, where the record's plaintext goes): one record gathered from several
    /// buffers without a copy of its own.
    #[inline]
    pub fn seal_with(&mut self, typ: u8, n: usize, out: &mut [u8], fill: impl FnOnce(&mut [u8])) -> Result<usize, RecordError> {
        if n > MAX_PLAINTEXT || out.len() < n + MAX_OVERHEAD || self.seq == u64::MAX {
            return Err(RecordError::Malformed);
        }
        let nonce_bytes = self.nonce_bytes();
        let (start, body_len, aad12) = match self.framing {
            Framing::Tls13 => (HEADER, n + 1 + TAG, None),
            Framing::Tls12Gcm => (HEADER + 8, 8 + n + TAG, Some(self.aad12(typ, n))),
            Framing::Tls12Chacha => (HEADER, n + TAG, Some(self.aad12(typ, n))),
        };
        let outer = if self.framing == Framing::Tls13 { APPLICATION_DATA } else { typ };
        let len = (body_len as u16).to_be_bytes();
        let header = [outer, 3, 3, len[0], len[1]];
        out[..HEADER].copy_from_slice(&header);
        if self.framing == Framing::Tls12Gcm {
            // The explicit nonce: the per-record part of iv ^ seq.
            out[HEADER..HEADER + 8].copy_from_slice(&nonce_bytes[4..]);
        }
        fill(&mut out[start..start + n]);
        let mut sealed_len = n;
        if self.framing == Framing::Tls13 {
            out[start + n] = typ;
            sealed_len += 1;
        }
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        let in_out = &mut out[start..start + sealed_len];
        let tag = match aad12 {
            None => self.key.seal_in_place_separate_tag(nonce, Aad::from(header), in_out),
            Some(a) => self.key.seal_in_place_separate_tag(nonce, Aad::from(a), in_out),
        }
        .map_err(|_| RecordError::Malformed)?;
        let end = start + sealed_len;
        out[end..end + TAG].copy_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(end + TAG)
    }
}

/// The length of the record at the front of `buf` (header included), once its header is there;
/// `Err` when the header is not a record header or announces more than `max` bytes.
#[inline]
pub fn record_len(buf: &[u8], max: usize) -> Result<Option<usize>, RecordError> {
    let Some(h) = buf.first_chunk::<HEADER>() else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([h[3], h[4]]) as usize;
    if h[1] != 3 || len > max || !matches!(h[0], ALERT | HANDSHAKE | APPLICATION_DATA) {
        return Err(RecordError::Malformed);
    }
    Ok(Some(HEADER + len))
}

/// [`record_len`] during the handshake, where a TLS 1.3 client also sends a ChangeCipherSpec
/// record (type 20, for middleboxes).
#[inline]
pub fn handshake_record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    match buf.first_chunk::<HEADER>() {
        Some(h) if h[0] == CHANGE_CIPHER_SPEC => {
            let mut as_alert = *h;
            as_alert[0] = ALERT;
            record_len(&as_alert, MAX_CIPHERTEXT_12)
        }
        _ => record_len(buf, MAX_CIPHERTEXT_12),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn keys(framing: Framing, chacha: bool) -> Keys {
        let key = AeadKey::from([7u8; 32]);
        let iv = Iv::new([9u8; 12]);
        let secrets =
            if chacha { ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } } else { ConnectionTrafficSecrets::Aes256Gcm { key, iv } };
        let k = Keys::new(5, &secrets, framing == Framing::Tls13).unwrap();
        assert_eq!(k.framing, framing);
        k
    }

    #[test]
    fn seal_then_open_round_trips_in_every_framing() {
        for (framing, chacha) in [(Framing::Tls13, false), (Framing::Tls13, true), (Framing::Tls12Gcm, false), (Framing::Tls12Chacha, true)]
        {
            let (mut tx, mut rx) = (keys(framing, chacha), keys(framing, chacha));
            let mut out = vec![0u8; 2000];
            for msg in [&b"hello"[..], &[0u8; 1000][..], b""] {
                let n = tx.seal(APPLICATION_DATA, msg, &mut out).unwrap();
                assert_eq!(record_len(&out[..n], rx.max_ciphertext()).unwrap(), Some(n));
                let (typ, a, b) = rx.open(&mut out[..n]).unwrap_or_else(|e| panic!("{framing:?}: {e:?}"));
                if framing == Framing::Tls13 && msg.is_empty() {
                    assert_eq!((typ, b - a), (APPLICATION_DATA, 0));
                } else {
                    assert_eq!((typ, &out[a..b]), (APPLICATION_DATA, msg), "{framing:?}");
                }
            }
            assert_eq!((tx.seq, rx.seq), (8, 8));
        }
    }

    #[test]
    fn a_flipped_bit_or_a_replayed_record_does_not_open() {
        for (framing, chacha) in [(Framing::Tls13, false), (Framing::Tls12Gcm, false), (Framing::Tls12Chacha, true)] {
            let (mut tx, mut rx) = (keys(framing, chacha), keys(framing, chacha));
            let mut out = vec![0u8; 200];
            let n = tx.seal(APPLICATION_DATA, b"GET / HTTP/1.1\r\n\r\n", &mut out).unwrap();
            let mut bad = out[..n].to_vec();
            bad[n - 3] ^= 1;
            assert_eq!(rx.open(&mut bad), Err(RecordError::Decrypt));
            // The sequence number did not move: the genuine record still opens, once.
            let mut good = out[..n].to_vec();
            rx.open(&mut good).unwrap();
            let mut replay = out[..n].to_vec();
            assert_eq!(rx.open(&mut replay), Err(RecordError::Decrypt));
        }
    }

    #[test]
    fn headers_that_are_not_records_are_refused() {
        assert_eq!(record_len(b"GET /", MAX_CIPHERTEXT_13), Err(RecordError::Malformed));
        assert_eq!(record_len(&[23, 3, 3, 0xff, 0xff], MAX_CIPHERTEXT_13), Err(RecordError::Malformed));
        assert_eq!(record_len(&[23, 3, 3], MAX_CIPHERTEXT_13), Ok(None));
        assert_eq!(record_len(&[23, 3, 3, 0, 20], MAX_CIPHERTEXT_13), Ok(Some(25)));
        // ChangeCipherSpec only during the handshake.
        assert_eq!(record_len(&[20, 3, 3, 0, 1, 1], MAX_CIPHERTEXT_13), Err(RecordError::Malformed));
        assert_eq!(handshake_record_len(&[20, 3, 3, 0, 1, 1]), Ok(Some(6)));
    }
}
