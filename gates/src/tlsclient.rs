//! The harness client's TLS: a rustls handshake, then records sealed and opened with the proxy's
//! own record layer (`proxy::data::tls::record`) in buffers the client owns for life, so the
//! client allocates nothing per request over TLS either (rustls alone allocates per record) and a
//! heap profile around it sees the proxy's cost. The handshake allocates (rustls's); a probe
//! shape that opens a connection per exchange says so.
//!
//! Also the test PKI: a certificate made at start (rcgen, Ed25519) for the proxy's TLS
//! listener, and the client config that trusts exactly it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proxy::data::tls::record::{self, ALERT, APPLICATION_DATA, HANDSHAKE, HEADER, Keys, MAX_CIPHERTEXT_12, MAX_OVERHEAD, MAX_PLAINTEXT};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The name the certificate is made for and the client asks for.
pub const SERVER_NAME: &str = "bench.local";

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The test key's Ed25519 seed (RFC 8032's first test vector's secret key).
const PKI_SEED: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32,
    0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];

/// An Ed25519 private key as PKCS#8 v1 DER (RFC 8410): the fixed prefix, then the 32-byte seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

/// A certificate and key for [`SERVER_NAME`] written to `dir` (`cert.pem`, `key.pem`), and a
/// client config trusting it. `version`: TLS 1.3 or 1.2 only.
pub fn make_pki(dir: &Path, tls13: bool) -> io::Result<(PathBuf, PathBuf, Arc<ClientConfig>)> {
    // Ed25519: its signatures have one length, so every handshake allocates the same (an ECDSA
    // signature's DER length varies by a byte or two, and with it, now and then, a buffer's growth).
    // One fixed key, so that every run serves the same certificate (rcgen derives the serial from
    // the key; the validity dates and the name are fixed; Ed25519 signing is deterministic): the
    // client verifies the certificate's signature in every full handshake, and ring verifies
    // Ed25519 in variable time, so a key and certificate made afresh each run moved the full
    // handshake's instruction count by up to ~1 % run to run (the floor: 3,530 k to 3,571 k),
    // which the resumed handshake, verifying no certificate, did not show. Loopback only: the
    // key protects nothing.
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(ed25519_pkcs8(&PKI_SEED));
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519).map_err(io::Error::other)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(io::Error::other)?;
    let certificate = params.self_signed(&key_pair).map_err(io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certificate.pem())?;
    std::fs::write(&key, key_pair.serialize_pem())?;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(certificate.der().to_vec())).map_err(io::Error::other)?;
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13 { &[&rustls::version::TLS13] } else { &[&rustls::version::TLS12] };
    let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.enable_secret_extraction = true;
    // A new connection per exchange does a full handshake every time (the probe's handshake
    // shape measures a full one; resumption is its own figure).
    c.resumption = rustls::client::Resumption::disabled();
    Ok((cert, key, Arc::new(c)))
}

/// A TLS connection after its handshake.
pub struct TlsClient {
    tcp: TcpStream,
    rx: Keys,
    tx: Keys,
    rbuf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Plaintext of the record at `start` not yet read (offsets into `rbuf`), and where that
    /// record ends.
    plain: (usize, usize, usize),
    wbuf: Box<[u8]>,
    eof: bool,
}

impl TlsClient {
    /// Handshakes over `tcp` (rustls), then takes the keys out of rustls.
    pub fn handshake(mut tcp: TcpStream, config: &Arc<ClientConfig>) -> io::Result<TlsClient> {
        let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
        let mut conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut tcp)?;
        }
        let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        let secrets = conn.dangerous_extract_secrets().map_err(io::Error::other)?;
        let keys = |(seq, s): (u64, rustls::ConnectionTrafficSecrets)| Keys::new(seq, &s, tls13).map_err(|_| invalid("cipher suite"));
        Ok(TlsClient {
            tcp,
            rx: keys(secrets.rx)?,
            tx: keys(secrets.tx)?,
            rbuf: vec![0; HEADER + MAX_CIPHERTEXT_12].into_boxed_slice(),
            start: 0,
            end: 0,
            plain: (0, 0, 0),
            wbuf: vec![0; MAX_PLAINTEXT + MAX_OVERHEAD].into_boxed_slice(),
            eof: false,
        })
    }
}

impl Write for TlsClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(MAX_PLAINTEXT);
        let len = self.tx.seal(APPLICATION_DATA, &buf[..n], &mut self.wbuf).map_err(|_| invalid("seal"))?;
        self.tcp.write_all(&self.wbuf[..len])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TlsClient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (a, b, rec_end) = self.plain;
            if a < b {
                let n = buf.len().min(b - a);
                buf[..n].copy_from_slice(&self.rbuf[a..a + n]);
                self.plain.0 += n;
                if self.plain.0 == b {
                    self.start = rec_end;
                    self.plain = (0, 0, 0);
                }
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            match record::record_len(&self.rbuf[self.start..self.end], self.rx.max_ciphertext()) {
                Err(_) => return Err(invalid("not a TLS record")),
                Ok(Some(len)) if len <= self.end - self.start => {
                    let at = self.start;
                    let (typ, pa, pb) = self.rx.open(&mut self.rbuf[at..at + len]).map_err(|_| invalid("record does not open"))?;
                    match typ {
                        APPLICATION_DATA => self.plain = (at + pa, at + pb, at + len),
                        // The server's session tickets (TLS 1.3): not needed.
                        HANDSHAKE => self.start += len,
                        ALERT => {
                            self.eof = true;
                            self.start += len;
                        }
                        _ => return Err(invalid("unexpected record type")),
                    }
                    continue;
                }
                _ => {}
            }
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            } else if self.end == self.rbuf.len() {
                self.rbuf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = self.tcp.read(&mut self.rbuf[self.end..])?;
            if n == 0 {
                return if self.start == self.end { Ok(0) } else { Err(invalid("connection cut mid-record")) };
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every run serves the same certificate: the instruction rows that count full handshakes
    /// depend on it (see `make_pki`).
    #[test]
    fn the_test_pki_is_the_same_every_time() {
        let base = std::env::temp_dir().join(format!("gates-pki-test-{}", std::process::id()));
        let (a, ka, _) = make_pki(&base.join("a"), true).expect("pki a");
        let (b, kb, _) = make_pki(&base.join("b"), false).expect("pki b");
        let read = |p: &Path| std::fs::read(p).expect("read");
        assert_eq!(read(&a), read(&b), "certificate");
        assert_eq!(read(&ka), read(&kb), "key");
        assert!(read(&a).starts_with(b"-----BEGIN CERTIFICATE-----"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
