//! `[listeners.tls]`: certificates and keys from PEM files, compiled into a rustls server
//! config whose certificate resolver is the snapshot's SNI map ([`crate::snapshot::Sni`]).
//!
//! Names come from each certificate's subject alternative names (DNS names; `*.example.com`
//! wildcards). The first certificate listed is the default for clients that send no name or an
//! unknown one (unless `strict_sni`). Two certificates may share names (an ECDSA and an RSA
//! one): the handshake picks the first whose key signs with a scheme the client offers.
//! Relative paths are relative to the config file's directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::ring::default_provider;
use rustls::server::ProducesTickets;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::raw;
use super::{Compiler, ConfigError};
use crate::snapshot::{Sni, TlsListener};

/// The default `handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handshake offers by ALPN: only what the proxy serves (HTTP/2 comes with phase 2b).
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// The session-ticket keys of this process: made once, kept across reloads (a reload must not
/// invalidate every ticket out there), rotated by rustls every six hours.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER.get_or_init(|| rustls::crypto::ring::Ticketer::new().ok()).clone()
}

impl Compiler<'_> {
    pub(super) fn listener_tls(&self, t: &raw::ListenerTls, key: &str) -> Result<TlsListener, ConfigError> {
        if t.certificates.is_empty() {
            return self.err(None, format!("{key}.certificates"), "a TLS listener needs at least one { cert, key } entry".into());
        }
        let mut sni = Sni { strict: t.strict_sni.unwrap_or(false), ..Sni::default() };
        let mut exact: HashMap<Box<str>, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut default = Vec::new();
        let mut default_names = Vec::new();
        for (i, c) in t.certificates.iter().enumerate() {
            let ckey = format!("{key}.certificates[{i}]");
            let (certified, names) = self.certified_key(c, &ckey)?;
            let certified = Arc::new(certified);
            if i == 0 {
                default.push(Arc::clone(&certified));
                default_names.clone_from(&names);
            } else if names.iter().any(|n| default_names.contains(n)) {
                // The default's twin (the other key type): offered to clients without a name too.
                default.push(Arc::clone(&certified));
            }
            for n in names {
                match n.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.into()).or_default().push(Arc::clone(&certified)),
                    None => exact.entry(n.into()).or_default().push(Arc::clone(&certified)),
                }
            }
        }
        sni.exact = exact.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect();
        sni.wildcard = wildcard.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect();
        sni.default = default.into_boxed_slice();

        let versions: &[&rustls::SupportedProtocolVersion] = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("1.2") => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Some("1.3") => &[&rustls::version::TLS13],
            Some(other) => {
                let span = t.min_version.as_ref().map(|v| v.span());
                return self.err(
                    span,
                    format!("{key}.min_version"),
                    format!("\"{other}\" is not a TLS version this proxy offers (\"1.2\" or \"1.3\")"),
                );
            }
        };
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_protocol_versions(versions)
            .map_err(|e| self.fail(format!("{key}.min_version"), format!("{e}")))?;
        let mut config = builder.with_no_client_auth().with_cert_resolver(Arc::new(sni));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // The record layer after the handshake is the proxy's own (data::tls::record).
        config.enable_secret_extraction = true;
        config.max_early_data_size = 0;
        if let Some(t) = ticketer() {
            config.ticketer = t;
        }
        let handshake_timeout = self.duration(t.handshake_timeout.as_ref(), &format!("{key}.handshake_timeout"), HANDSHAKE_TIMEOUT)?;
        Ok(TlsListener { config: Arc::new(config), handshake_timeout })
    }

    fn fail(&self, key: String, message: String) -> ConfigError {
        ConfigError { file: self.path.to_path_buf(), line: None, key: Some(key), message }
    }

    /// A file path from the config, relative to the config file's directory.
    fn config_relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Loads one `{ cert, key }` pair: the chain, the key, that they match, and the names the
    /// leaf certificate is valid for (lower-case).
    fn certified_key(&self, c: &raw::Certificate, key: &str) -> Result<(CertifiedKey, Vec<String>), ConfigError> {
        let cert_path = self.config_relative(c.cert.get_ref());
        let key_path = self.config_relative(c.key.get_ref());
        let bad = |span: std::ops::Range<usize>, k: &str, path: &Path, why: String| ConfigError {
            file: self.path.to_path_buf(),
            line: Some(super::line_of(self.text, span.start)),
            key: Some(format!("{key}.{k}")),
            message: format!("{}: {why}", path.display()),
        };
        let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&cert_path) {
            Ok(it) => match it.collect::<Result<Vec<_>, _>>() {
                Ok(v) => v,
                Err(e) => return Err(bad(c.cert.span(), "cert", &cert_path, format!("not a PEM certificate file ({e})"))),
            },
            Err(e) => return Err(bad(c.cert.span(), "cert", &cert_path, format!("cannot read ({e})"))),
        };
        let Some(leaf) = chain.first() else {
            return Err(bad(c.cert.span(), "cert", &cert_path, "holds no CERTIFICATE block".into()));
        };
        let names = match webpki::EndEntityCert::try_from(leaf) {
            Ok(ee) => ee.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect::<Vec<_>>(),
            Err(e) => return Err(bad(c.cert.span(), "cert", &cert_path, format!("the first certificate does not parse ({e:?})"))),
        };
        let private = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(k) => k,
            Err(e) => return Err(bad(c.key.span(), "key", &key_path, format!("no usable private key ({e})"))),
        };
        let signing = match default_provider().key_provider.load_private_key(private) {
            Ok(k) => k,
            Err(e) => return Err(bad(c.key.span(), "key", &key_path, format!("unsupported private key ({e})"))),
        };
        let certified = CertifiedKey::new(chain, signing);
        if let Err(e) = certified.keys_match() {
            return Err(bad(c.key.span(), "key", &key_path, format!("does not belong to {} ({e})", cert_path.display())));
        }
        Ok((certified, names))
    }
}
