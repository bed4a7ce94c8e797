//! TLS for the client and the bundled upstream: rustls with the `ring` provider.
//!
//! Client ([`ClientSettings`] → [`client_config`]): the server name (SNI and the name the
//! certificate is checked against) comes from the URL's host or `--sni`; ALPN offers `http/1.1`;
//! the certificate is verified against the PEM roots of `--ca FILE`, or not at all with
//! `--insecure` (signatures of the handshake are still checked, the chain and name are not);
//! `--resume on` keeps rustls' in-memory session cache (TLS 1.3 tickets, TLS 1.2 ids/tickets),
//! one per generator thread, so resumption costs no lock shared between threads.
//!
//! Upstream ([`server_config`]): a certificate generated at start (rcgen, self-signed for
//! `localhost`, `127.0.0.1` and `::1`, optionally written as PEM for clients' `--ca`) or read from
//! `--cert`/`--key`; stateless session tickets (one ticketer shared by every serving thread, so a
//! ticket issued by one thread resumes on another), ALPN `http/1.1`.
//!
//! Every input-derived failure (unreadable or non-PEM files, no certificate, a bad key) is an
//! `Err(String)` naming the file, never a panic.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The ALPN protocols this client speaks: `http/1.1`, or `h2` alone with `--http2`.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ALPN_H2: &[u8] = b"h2";
/// HTTP/3 (QUIC).
pub const ALPN_H3: &[u8] = b"h3";

/// How the server's certificate is checked.
#[derive(Clone, Debug)]
pub enum Verify {
    /// Against these roots (from `--ca FILE`, which is kept for the report).
    Ca { file: PathBuf, roots: Vec<CertificateDer<'static>> },
    /// Not at all (`--insecure`): any certificate for any name is accepted.
    Insecure,
}

/// The client's TLS settings, validated from the command line.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// SNI (for a DNS name) and the name checked in the certificate.
    pub server_name: ServerName<'static>,
    pub verify: Verify,
    /// Keep a session cache (resumed handshakes on new connections).
    pub resume: bool,
    /// `--http2`: offer ALPN `h2` only (else `http/1.1` only).
    pub h2: bool,
    /// HTTP/3 `--early-data`: send requests in 0-RTT on resumed connections.
    pub early_data: bool,
}

impl ClientSettings {
    /// What the report says about verification.
    pub fn verify_label(&self) -> String {
        match &self.verify {
            Verify::Ca { file, .. } => format!("ca {}", file.display()),
            Verify::Insecure => "insecure (certificate NOT verified)".to_string(),
        }
    }

    /// The server name as text.
    pub fn server_name_str(&self) -> String {
        self.server_name.to_str().into_owned()
    }
}

/// The crypto provider of every config here.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server name for `host` (a DNS name such as `localhost`, or an IP address, which rustls
/// checks against the certificate's IP SANs and does not send as SNI).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|e| format!("'{host}' is not a valid TLS server name: {e}"))
}

/// Reads every certificate of a PEM file; at least one is required.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display()));
    }
    Ok(certs)
}

/// Reads the CA file of `--ca` and checks that its certificates can be trust anchors.
pub fn read_ca(path: &Path) -> Result<Verify, String> {
    let roots = read_certs(path)?;
    let mut store = RootCertStore::empty();
    let (_, bad) = store.add_parsable_certificates(roots.iter().cloned());
    if store.is_empty() {
        return Err(format!("{}: none of its {bad} certificate(s) can be a trust anchor", path.display()));
    }
    Ok(Verify::Ca { file: path.to_path_buf(), roots })
}

/// A client config (one per generator thread: each has its own session cache).
pub fn client_config(s: &ClientSettings) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| format!("tls: {e}"))?;
    let mut config = match &s.verify {
        Verify::Ca { roots, .. } => {
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(roots.iter().cloned());
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider.signature_verification_algorithms)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![if s.h2 { ALPN_H2 } else { ALPN_HTTP11 }.to_vec()];
    if !s.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// The one cipher suite the HTTP/3 client offers: QUIC's own (its Initial packets use it,
/// RFC 9001 §5.2), which every QUIC server supports and browsers offer first; offering only it
/// makes the report's cipher exact (quinn does not expose the negotiated one).
pub const QUIC_CIPHER: &str = "TLS13_AES_128_GCM_SHA256";

/// What one generator thread's QUIC handshakes did, counted where rustls does it: session tickets
/// taken for a ClientHello (a resumption offered; taken synchronously when the connection is
/// created, so attributable to it) and server certificates verified and accepted (full handshakes, including
/// offers the server refused; counted as they happen, not attributable to one connection).
#[derive(Debug, Default)]
pub struct QuicTlsCounts {
    pub tickets_taken: AtomicU64,
    pub verifications: AtomicU64,
}

/// The HTTP/3 client config of one generator thread: TLS 1.3 with [`QUIC_CIPHER`], ALPN `h3`,
/// the same verification as TCP (`--ca` or `--insecure`), a session cache unless `--resume off`,
/// 0-RTT only with `early_data`, a PING every 10 s on idle connections. Returns the counters its verifier and session cache update.
pub fn quic_client_config(s: &ClientSettings) -> Result<(quinn::ClientConfig, Arc<QuicTlsCounts>), String> {
    let counts = Arc::new(QuicTlsCounts::default());
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|c| c.suite().as_str() == Some(QUIC_CIPHER));
    let provider = Arc::new(provider);
    let inner: Arc<dyn ServerCertVerifier> = match &s.verify {
        Verify::Ca { roots, .. } => {
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(roots.iter().cloned());
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| format!("tls: {e}"))?
        }
        Verify::Insecure => Arc::new(AcceptAnyCert(provider.signature_verification_algorithms)),
    };
    let verifier = Arc::new(CountingVerifier { inner, counts: counts.clone() });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    config.enable_early_data = s.early_data;
    config.resumption = if s.resume {
        rustls::client::Resumption::store(Arc::new(CountingStore {
            inner: rustls::client::ClientSessionMemoryCache::new(256),
            counts: counts.clone(),
        }))
    } else {
        rustls::client::Resumption::disabled()
    };
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| format!("quic: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // A connection idle between slow requests must not reach the 30 s idle timeout (the next
    // request would fail on a connection the server already dropped): PING every 10 s.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    client.transport_config(Arc::new(transport));
    Ok((client, counts))
}

/// A verifier that counts the certificates it is asked to verify (full handshakes).
#[derive(Debug)]
struct CountingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    counts: Arc<QuicTlsCounts>,
}

impl ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if r.is_ok() {
            self.counts.verifications.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls' in-memory session cache, counting the TLS 1.3 tickets taken for a ClientHello.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    counts: Arc<QuicTlsCounts>,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        self.inner.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(server_name);
        if t.is_some() {
            self.counts.tickets_taken.fetch_add(1, Ordering::Relaxed);
        }
        t
    }
}

/// `--insecure`: accepts any certificate chain for any name. The handshake's signatures are
/// still verified (so the peer holds the key of the certificate it sent), nothing more.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Where the upstream's certificate comes from.
#[derive(Clone, Debug)]
pub enum ServerCert {
    /// Generated at start; its PEM is written to the path if one is given.
    Generate { cert_out: Option<PathBuf> },
    /// Read from PEM files (certificate chain, private key).
    Files { cert: PathBuf, key: PathBuf },
}

/// The upstream's certificate chain and key, read or generated once (its TLS and QUIC configs are
/// made from the same pair, so one `--cert-out` file verifies both).
#[derive(Debug)]
pub struct ServerKeys {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerKeys {
    /// Generates (and writes, if asked) or reads the certificate and key.
    pub fn load(c: &ServerCert) -> Result<ServerKeys, String> {
        match c {
            ServerCert::Generate { cert_out } => {
                let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
                let ck = rcgen::generate_simple_self_signed(names).map_err(|e| format!("generating a certificate: {e}"))?;
                if let Some(p) = cert_out {
                    std::fs::write(p, ck.cert.pem()).map_err(|e| format!("--cert-out {}: {e}", p.display()))?;
                }
                let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).map_err(|e| format!("generated key: {e}"))?;
                Ok(ServerKeys { chain: vec![ck.cert.der().clone()], key })
            }
            ServerCert::Files { cert, key } => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: no usable PEM private key: {e}", key.display()))?;
                Ok(ServerKeys { chain, key })
            }
        }
    }
}

/// The upstream's TLS config.
pub fn server_config(c: &ServerCert) -> Result<Arc<ServerConfig>, String> {
    tcp_server_config(&ServerKeys::load(c)?)
}

/// The upstream's TLS-over-TCP config for `keys`: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn tcp_server_config(keys: &ServerKeys) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(keys.chain.clone(), keys.key.clone_key())
        .map_err(|e| format!("certificate and key: {e}"))?;
    // h2 first: a client offering both gets HTTP/2 (the upstream serves either).
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls ticketer: {e}"))?;
    Ok(Arc::new(config))
}

/// The upstream's QUIC config for `keys`: TLS 1.3 (QUIC has nothing else), ALPN `h3`, session
/// tickets (one ticketer for every serving thread; with `early_data` instead a session cache shared
/// by them, which rustls requires for 0-RTT), 0-RTT accepted only with `early_data`; up to 1,000 concurrent request
/// streams per connection (what `--streams` allows).
pub fn quic_server_config(keys: &ServerKeys, early_data: bool) -> Result<quinn::ServerConfig, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(keys.chain.clone(), keys.key.clone_key())
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![ALPN_H3.to_vec()];
    if early_data {
        // QUIC allows only "none" or "any amount" (RFC 9001 §4.6.1); rustls takes early data only
        // on stateful resumption (a server-side session cache, each ticket usable once), not
        // with stateless tickets.
        config.max_early_data_size = u32::MAX;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(65_536);
    } else {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("tls ticketer: {e}"))?;
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config).map_err(|e| format!("quic: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1000));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// What a handshake negotiated (static strings: recording it does not allocate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub version: &'static str,
    pub cipher_suite: &'static str,
    /// The ALPN protocol the server chose; `None` when it chose none.
    pub alpn: Option<&'static str>,
}

impl Negotiated {
    /// Reads the parameters of an established connection.
    pub fn of(c: &rustls::CommonState) -> Negotiated {
        let version = match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            Some(_) => "other",
            None => "none",
        };
        let cipher_suite = c.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("unknown");
        let alpn = c.alpn_protocol().map(|p| match p {
            ALPN_HTTP11 => "http/1.1",
            ALPN_H2 => "h2",
            ALPN_H3 => "h3",
            _ => "other",
        });
        Negotiated { version, cipher_suite, alpn }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // reason: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("loadgen-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(read_ca(&missing).unwrap_err().contains("missing.pem"));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "hello, not a certificate\n").unwrap();
        assert!(read_ca(&junk).unwrap_err().contains("no PEM certificate"));
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        assert!(read_ca(&broken).is_err());
        let garbage_der = dir.join("garbage.pem");
        std::fs::write(&garbage_der, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        assert!(read_ca(&garbage_der).unwrap_err().contains("trust anchor"));
        let good = dir.join("good.pem");
        server_config(&ServerCert::Generate { cert_out: Some(good.clone()) }).unwrap();
        assert!(matches!(read_ca(&good).unwrap(), Verify::Ca { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn server_names() {
        assert!(matches!(server_name("localhost").unwrap(), ServerName::DnsName(_)));
        assert!(matches!(server_name("127.0.0.1").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(server_name("bad name").is_err());
    }
}
