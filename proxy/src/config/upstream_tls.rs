//! An upstream group's TLS keys: `tls = true` and its options, compiled into a rustls client
//! config ([`crate::snapshot::UpstreamTls`]).
//!
//! - `tls_server_name`: the name the servers' certificates are verified against, sent as SNI.
//!   Without it each server is verified against its own IP address (an IP SAN), and no SNI is
//!   sent (TLS has none for addresses).
//! - `tls_ca`: a PEM file of CA certificates to verify the servers with; without it, the system's
//!   roots (`SSL_CERT_FILE`, else the distribution's bundle).
//! - `tls_client_cert` / `tls_client_key`: a client certificate for servers that ask (mTLS).
//! - `tls_insecure_skip_verify`: no verification of the server's certificate (its signature over
//!   the handshake is still checked); for test set-ups only.
//!
//! Sessions are resumed from one process-wide cache (kept across reloads, as the listener's
//! ticket keys are), so a pooled connection that is replaced resumes instead of paying a full
//! handshake. ALPN offers `http/1.1`, the protocol the upstream side speaks.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert};
use rustls::crypto::ring::default_provider;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use toml::Spanned;

use super::raw;
use super::{Compiler, ConfigError};
use crate::snapshot::UpstreamTls;

/// Sessions kept for resumption, across every TLS upstream group (rustls evicts the oldest).
const SESSION_CACHE: usize = 1024;

/// Where Linux distributions keep the system's CA bundle (Debian/Ubuntu, Fedora/RHEL, Alpine/Arch).
const SYSTEM_BUNDLES: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The process's client session cache: made once, kept across reloads.
fn session_cache() -> Arc<dyn ClientSessionStore> {
    static CACHE: OnceLock<Arc<ClientSessionMemoryCache>> = OnceLock::new();
    CACHE.get_or_init(|| Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE))).clone()
}

impl Compiler<'_> {
    /// The group's TLS, or `None` for cleartext; TLS options without `tls = true` are an error
    /// (they would silently do nothing).
    /// `h2`: the group speaks HTTP/2 (`protocol = "h2"`): ALPN offers `h2` only.
    pub(super) fn upstream_tls(&self, g: &raw::Upstream, key: &str, h2: bool) -> Result<Option<UpstreamTls>, ConfigError> {
        let on = g.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !on {
            let stray = [
                ("tls_server_name", g.tls_server_name.as_ref().map(Spanned::span)),
                ("tls_ca", g.tls_ca.as_ref().map(Spanned::span)),
                ("tls_client_cert", g.tls_client_cert.as_ref().map(Spanned::span)),
                ("tls_client_key", g.tls_client_key.as_ref().map(Spanned::span)),
                ("tls_insecure_skip_verify", g.tls_insecure_skip_verify.as_ref().map(Spanned::span)),
            ];
            if let Some((k, span)) = stray.into_iter().find(|(_, s)| s.is_some()) {
                return self.err(span, format!("{key}.{k}"), "applies to TLS upstreams only: set tls = true in this group".into());
            }
            return Ok(None);
        }
        let provider = Arc::new(default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| self.fail(format!("{key}.tls"), format!("{e}")))?;
        let insecure = g.tls_insecure_skip_verify.as_ref().is_some_and(|v| *v.get_ref());
        let builder = if insecure {
            if let Some(ca) = &g.tls_ca {
                return self.err(
                    Some(ca.span()),
                    format!("{key}.tls_ca"),
                    "tls_insecure_skip_verify = true verifies nothing: leave tls_ca out or verification on".into(),
                );
            }
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let roots = match &g.tls_ca {
                Some(ca) => self.ca_file(ca, &format!("{key}.tls_ca"))?,
                None => self.system_roots(key)?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match (&g.tls_client_cert, &g.tls_client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(k)) => {
                let pair = raw::Certificate { cert: cert.clone(), key: k.clone() };
                let (certified, _) = self.certified_key(&pair, key)?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))))
            }
            (Some(c), None) => {
                return self.err(Some(c.span()), format!("{key}.tls_client_key"), "tls_client_cert needs tls_client_key".into());
            }
            (None, Some(k)) => {
                return self.err(Some(k.span()), format!("{key}.tls_client_cert"), "tls_client_key needs tls_client_cert".into());
            }
        };
        config.alpn_protocols = if h2 { vec![b"h2".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        // The record layer after the handshake is the proxy's own (data::tls::record).
        config.enable_secret_extraction = true;
        config.resumption = rustls::client::Resumption::store(session_cache());
        let server_name = match &g.tls_server_name {
            None => None,
            Some(n) => match ServerName::try_from(n.get_ref().as_str()) {
                Ok(name) => Some(name.to_owned()),
                Err(_) => {
                    return self.err(
                        Some(n.span()),
                        format!("{key}.tls_server_name"),
                        format!("\"{}\" is not a DNS name or an IP address", n.get_ref()),
                    );
                }
            },
        };
        Ok(Some(UpstreamTls { config: Arc::new(config), server_name }))
    }

    /// The system's CA certificates: `SSL_CERT_FILE` if set, else the first bundle found.
    fn system_roots(&self, key: &str) -> Result<rustls::RootCertStore, ConfigError> {
        let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
        let path = match from_env {
            Some(p) => p,
            None => match SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
                Some(p) => p.to_path_buf(),
                None => {
                    return Err(self.fail(
                        format!("{key}.tls_ca"),
                        format!("no system CA bundle found (looked for {}): name one with tls_ca", SYSTEM_BUNDLES.join(", ")),
                    ));
                }
            },
        };
        let bad = |why: String| self.fail(format!("{key}.tls_ca"), format!("system CA bundle {}: {why}", path.display()));
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&path).map_err(|e| bad(format!("cannot read ({e})")))?;
        // A distribution bundle may hold a certificate webpki cannot use: skip it, as browsers do.
        let (_, _) = roots.add_parsable_certificates(certs.filter_map(Result::ok));
        if roots.is_empty() {
            return Err(bad("holds no usable CA certificate".into()));
        }
        Ok(roots)
    }
}

/// The group's client certificate, offered to every server that asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        sigschemes.iter().any(|s| self.0.key.choose_scheme(&[*s]).is_some()).then(|| Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `tls_insecure_skip_verify`: accepts any certificate; still checks the handshake signatures
/// (so the server holds the key of the certificate it sent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
