//! `[listeners.tls]`: certificates and keys from PEM files, compiled into a rustls server
//! config whose certificate resolver is the snapshot's SNI map ([`crate::snapshot::Sni`]).
//!
//! Names come from each certificate's subject alternative names (DNS names; `*.example.com`
//! wildcards). The first certificate listed is the default for clients that send no name or an
//! unknown one (unless `strict_sni`). Two certificates may share names (an ECDSA and an RSA
//! one): the handshake picks the first whose key signs with a scheme the client offers.
//! Relative paths are relative to the config file's directory.
//!
//! Also per listener: `ticket_keys` (session-ticket keys from a file, shared between instances:
//! [`FileTicketer`]), `client_ca` / `client_auth` (client certificates verified with rustls's
//! `WebPkiClientVerifier`), and `cipher_suites` / `kx_groups` (rustls *ring* provider names,
//! narrowing its defaults, which are every suite and group it has).

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
use crate::snapshot::{Http2, Limits, Sni, TlsListener};

/// The default `handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handshake offers by ALPN, in the server's order of preference: HTTP/2 first unless
/// `tls.http2 = false`. A client that offers neither (or no ALPN at all) speaks HTTP/1.1.
const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];
const ALPN_H1: &[&[u8]] = &[b"http/1.1"];

/// Without `ticket_keys`: the session-ticket keys of this process: made once, kept across reloads (a reload must not
/// invalidate every ticket out there), rotated by rustls every six hours.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER.get_or_init(|| rustls::crypto::ring::Ticketer::new().ok()).clone()
}

impl Compiler<'_> {
    /// A TLS listener's settings; with `http3` (the `[http2]` bounds and the limits a QUIC
    /// endpoint's transport follows) its QUIC server config too.
    pub(super) fn listener_tls(
        &self,
        t: &raw::ListenerTls,
        key: &str,
        http3: Option<(&Http2, &Limits)>,
    ) -> Result<TlsListener, ConfigError> {
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
        let provider = Arc::new(self.tls_provider(t, key)?);
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider)).with_protocol_versions(versions).map_err(|e| {
            // With the default suites every version has some; a narrowed list may have none.
            let k = if t.cipher_suites.is_some() { "cipher_suites" } else { "min_version" };
            self.fail(format!("{key}.{k}"), format!("{e} (cipher_suites has none for the TLS versions min_version allows)"))
        })?;
        let verifier = self.client_verifier(t, key, &provider)?;
        let builder = match verifier.clone() {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let sni = Arc::new(sni);
        let mut config = builder.with_cert_resolver(Arc::clone(&sni) as Arc<dyn rustls::server::ResolvesServerCert>);
        let alpn = if t.http2.unwrap_or(true) { ALPN_H2 } else { ALPN_H1 };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // The record layer after the handshake is the proxy's own (data::tls::record).
        config.enable_secret_extraction = true;
        config.max_early_data_size = 0;
        match &t.ticket_keys {
            Some(path) => config.ticketer = self.ticket_keys(path, key)?,
            None => {
                if let Some(t) = ticketer() {
                    config.ticketer = t;
                }
            }
        }
        let handshake_timeout = self.duration(t.handshake_timeout.as_ref(), &format!("{key}.handshake_timeout"), HANDSHAKE_TIMEOUT)?;
        let quic = match http3 {
            Some((h2, limits)) => Some(self.quic_config(key, &provider, verifier, sni, &config, h2, limits)?),
            None => None,
        };
        Ok(TlsListener { config: Arc::new(config), handshake_timeout, quic })
    }

    /// The listener's QUIC server config (`http3 = true`). Its TLS: the same certificates (the same SNI map),
    /// client authentication, cipher suites, key exchange groups and session-ticket keys as its
    /// TCP side, TLS 1.3 only (QUIC has no other), ALPN `h3`, no 0-RTT (`max_early_data_size`
    /// 0: a replayable request is not accepted early). Checked here as quinn will take it, so a
    /// narrowed `cipher_suites` without QUIC's initial suite is a config error, not a failure at
    /// start. Its transport is bounded like an HTTP/2 connection (`[http2]`: concurrent request
    /// streams, stream and connection windows), with QUIC's idle timeout at the client idle
    /// timeout plus the header timeout (the HTTP/3 connection's own idle timeout closes first,
    /// with a GOAWAY). Built per config load, so a reload's certificates and bounds reach every
    /// QUIC connection accepted after it (each worker accepts with its current snapshot's).
    #[allow(clippy::too_many_arguments)]
    fn quic_config(
        &self,
        key: &str,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
        sni: Arc<Sni>,
        tcp: &rustls::ServerConfig,
        h2: &Http2,
        limits: &Limits,
    ) -> Result<Arc<quinn::ServerConfig>, ConfigError> {
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.fail(format!("{key}.cipher_suites"), format!("{e} (http3 needs a TLS 1.3 cipher suite)")))?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(sni as Arc<dyn rustls::server::ResolvesServerCert>);
        config.alpn_protocols = vec![b"h3".to_vec()];
        config.max_early_data_size = 0;
        config.ticketer = Arc::clone(&tcp.ticketer);
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(config)).map_err(|e| {
            self.fail(format!("{key}.cipher_suites"), format!("{e}: http3 needs TLS13_AES_128_GCM_SHA256 among the cipher suites"))
        })?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(h2.max_concurrent_streams));
        transport.stream_receive_window(quinn::VarInt::from_u32(h2.initial_stream_window));
        transport.receive_window(quinn::VarInt::from_u32(h2.initial_connection_window));
        let idle = limits.client_idle_timeout + limits.header_read_timeout;
        transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
        server.transport_config(Arc::new(transport));
        Ok(Arc::new(server))
    }

    pub(super) fn fail(&self, key: String, message: String) -> ConfigError {
        ConfigError { file: self.path.to_path_buf(), line: None, key: Some(key), message }
    }

    /// A file path from the config, relative to the config file's directory.
    pub(super) fn config_relative(&self, p: &str) -> PathBuf {
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
    pub(super) fn certified_key(&self, c: &raw::Certificate, key: &str) -> Result<(CertifiedKey, Vec<String>), ConfigError> {
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

/// Every cipher suite the proxy can offer: the rustls *ring* provider's, all of which the proxy's
/// record layer seals and opens (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305). Also the default.
fn known_suites() -> &'static [rustls::SupportedCipherSuite] {
    rustls::crypto::ring::ALL_CIPHER_SUITES
}

/// Every key-exchange group the proxy can offer (the *ring* provider's). Also the default.
fn known_groups() -> &'static [&'static dyn rustls::crypto::SupportedKxGroup] {
    rustls::crypto::ring::ALL_KX_GROUPS
}

fn suite_name(s: &rustls::SupportedCipherSuite) -> &'static str {
    s.suite().as_str().unwrap_or("?")
}

fn group_name(g: &&'static dyn rustls::crypto::SupportedKxGroup) -> &'static str {
    g.name().as_str().unwrap_or("?")
}

/// Picks `wanted` (names, case-insensitive, in the order given, duplicates dropped) out of
/// `known`, or says which name is unknown and lists the known ones.
fn pick<T: Copy>(
    wanted: &[toml::Spanned<String>],
    known: &[T],
    name: fn(&T) -> &'static str,
) -> Result<Vec<T>, (std::ops::Range<usize>, String)> {
    let mut out: Vec<T> = Vec::with_capacity(wanted.len());
    let mut names: Vec<&'static str> = Vec::with_capacity(wanted.len());
    for w in wanted {
        match known.iter().find(|k| name(k).eq_ignore_ascii_case(w.get_ref())) {
            Some(k) if names.contains(&name(k)) => {}
            Some(k) => {
                names.push(name(k));
                out.push(*k);
            }
            None => {
                let all: Vec<&str> = known.iter().map(name).collect();
                return Err((w.span(), format!("unknown name \"{}\" (known: {})", w.get_ref(), all.join(", "))));
            }
        }
    }
    Ok(out)
}

impl Compiler<'_> {
    /// The crypto provider of a listener: rustls's *ring* provider, with `cipher_suites` and
    /// `kx_groups` narrowed to the names configured.
    fn tls_provider(&self, t: &raw::ListenerTls, key: &str) -> Result<rustls::crypto::CryptoProvider, ConfigError> {
        let mut provider = default_provider();
        if let Some(list) = &t.cipher_suites {
            let k = format!("{key}.cipher_suites");
            if list.get_ref().is_empty() {
                return self.err(Some(list.span()), k, "an empty list offers nothing; leave the key out for the defaults".into());
            }
            provider.cipher_suites = pick(list.get_ref(), known_suites(), suite_name).or_else(|(span, m)| self.err(Some(span), k, m))?;
        }
        if let Some(list) = &t.kx_groups {
            let k = format!("{key}.kx_groups");
            if list.get_ref().is_empty() {
                return self.err(Some(list.span()), k, "an empty list offers nothing; leave the key out for the defaults".into());
            }
            provider.kx_groups = pick(list.get_ref(), known_groups(), group_name).or_else(|(span, m)| self.err(Some(span), k, m))?;
        }
        Ok(provider)
    }

    /// `client_ca` and `client_auth`: a verifier of client certificates against the CA file, or
    /// none (no certificate asked for).
    fn client_verifier(
        &self,
        t: &raw::ListenerTls,
        key: &str,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, ConfigError> {
        let required = match t.client_auth.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("required", _)) => true,
            Some(("optional", _)) => false,
            Some((other, span)) => {
                return self.err(
                    Some(span),
                    format!("{key}.client_auth"),
                    format!("\"{other}\" is not a client_auth mode (\"required\" or \"optional\")"),
                );
            }
        };
        let Some(ca) = &t.client_ca else {
            if let Some(a) = &t.client_auth {
                return self.err(
                    Some(a.span()),
                    format!("{key}.client_auth"),
                    "client_auth needs client_ca (the CA file that signs client certificates)".into(),
                );
            }
            return Ok(None);
        };
        let roots = self.ca_file(ca, &format!("{key}.client_ca"))?;
        let bad = |why: String| ConfigError {
            file: self.path.to_path_buf(),
            line: Some(super::line_of(self.text, ca.span().start)),
            key: Some(format!("{key}.client_ca")),
            message: why,
        };
        let mut builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
        if !required {
            builder = builder.allow_unauthenticated();
        }
        builder.build().map(Some).map_err(|e| bad(format!("{e}")))
    }

    /// The CA certificates of a PEM file (`client_ca`, an upstream's `tls_ca`), each checked.
    pub(super) fn ca_file(&self, ca: &toml::Spanned<String>, key: &str) -> Result<rustls::RootCertStore, ConfigError> {
        let path = self.config_relative(ca.get_ref());
        let bad = |why: String| ConfigError {
            file: self.path.to_path_buf(),
            line: Some(super::line_of(self.text, ca.span().start)),
            key: Some(key.to_string()),
            message: format!("{}: {why}", path.display()),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
            .map_err(|e| bad(format!("cannot read ({e})")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err(bad("holds no CERTIFICATE block".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, c) in certs.into_iter().enumerate() {
            roots.add(c).map_err(|e| bad(format!("certificate {} is not a usable CA certificate ({e})", i + 1)))?;
        }
        Ok(roots)
    }

    /// `ticket_keys`: the session-ticket keys from a file (see [`FileTicketer`]).
    fn ticket_keys(&self, file: &toml::Spanned<String>, key: &str) -> Result<Arc<dyn ProducesTickets>, ConfigError> {
        let path = self.config_relative(file.get_ref());
        let bad = |why: String| ConfigError {
            file: self.path.to_path_buf(),
            line: Some(super::line_of(self.text, file.span().start)),
            key: Some(format!("{key}.ticket_keys")),
            message: format!("{}: {why}", path.display()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read ({e})")))?;
        let ticketer = FileTicketer::parse(&text).map_err(bad)?;
        Ok(Arc::new(ticketer))
    }
}

/// Bytes per key in a `ticket_keys` file: a 16-byte key name (sent in every ticket, so a
/// process finds the key that made it) and 64 bytes from which the AES-256-GCM key is derived.
pub const TICKET_KEY_BYTES: usize = 80;

/// At most this many keys in a `ticket_keys` file (each ticket is tried against one key only,
/// found by name; the bound keeps the file a rotation list, not a key store).
const MAX_TICKET_KEYS: usize = 16;

/// Tickets' advertised lifetime (the hint rustls sends, and the age past which it refuses one).
const TICKET_LIFETIME_SECS: u32 = 12 * 60 * 60;

/// Session-ticket keys read from a file, the same in every process given that file, so a session
/// made on one instance resumes on another. The first key encrypts new tickets; every key
/// decrypts (the one whose name a ticket carries). Immutable: a reload builds a new one with the
/// config, so the per-handshake paths take no lock.
///
/// A ticket is `key name (16) || nonce (12) || AES-256-GCM(ticket) || tag (16)`, with the key
/// name as associated data; the nonce is random per ticket.
pub struct FileTicketer {
    keys: Box<[TicketKey]>,
    rng: ring::rand::SystemRandom,
}

struct TicketKey {
    name: [u8; 16],
    aead: ring::aead::LessSafeKey,
}

/// The upper bound of a ticket this ticketer opens (rustls bounds the ClientHello anyway; a
/// ticket never comes near this).
const MAX_TICKET_BYTES: usize = 16 * 1024;

const NONCE_LEN: usize = 12;

impl FileTicketer {
    /// Parses a `ticket_keys` file: one key per line as 160 hex digits (80 bytes, what
    /// `openssl rand -hex 80` prints); blank lines and lines starting with `#` are skipped; the
    /// first key encrypts.
    pub fn parse(text: &str) -> Result<FileTicketer, String> {
        let mut keys: Vec<TicketKey> = Vec::new();
        let mut lines: Vec<usize> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(bytes) = unhex(line) else {
                return Err(format!(
                    "line {n}: a key is {} hex digits ({TICKET_KEY_BYTES} bytes, as `openssl rand -hex {TICKET_KEY_BYTES}` prints); found {} characters{}",
                    TICKET_KEY_BYTES * 2,
                    line.len(),
                    if line.len() == TICKET_KEY_BYTES * 2 { " that are not all hex digits" } else { "" }
                ));
            };
            let key = TicketKey::new(&bytes).ok_or_else(|| format!("line {n}: cannot make an AEAD key"))?;
            if let Some(i) = keys.iter().position(|k| k.name == key.name) {
                return Err(format!("line {n}: the same key name (first 16 bytes) as line {}", lines[i]));
            }
            keys.push(key);
            lines.push(n);
        }
        if keys.is_empty() {
            return Err(format!("holds no key (one per line: {} hex digits, newest first)", TICKET_KEY_BYTES * 2));
        }
        if keys.len() > MAX_TICKET_KEYS {
            return Err(format!("holds {} keys; at most {MAX_TICKET_KEYS}", keys.len()));
        }
        Ok(FileTicketer { keys: keys.into_boxed_slice(), rng: ring::rand::SystemRandom::new() })
    }
}

impl TicketKey {
    fn new(bytes: &[u8; TICKET_KEY_BYTES]) -> Option<TicketKey> {
        let mut name = [0u8; 16];
        name.copy_from_slice(&bytes[..16]);
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"proxy session ticket key");
        let prk = salt.extract(&bytes[16..]);
        let okm = prk.expand(&[b"aes-256-gcm"], &ring::aead::AES_256_GCM).ok()?;
        Some(TicketKey { name, aead: ring::aead::LessSafeKey::new(ring::aead::UnboundKey::from(okm)) })
    }
}

/// `TICKET_KEY_BYTES` bytes from exactly twice as many hex digits.
fn unhex(s: &str) -> Option<[u8; TICKET_KEY_BYTES]> {
    let s = s.as_bytes();
    if s.len() != TICKET_KEY_BYTES * 2 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0u8; TICKET_KEY_BYTES];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("FileTicketer").field("keys", &self.keys.len()).finish()
    }
}

impl ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use ring::rand::SecureRandom;
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let tag_len = key.aead.algorithm().tag_len();
        let mut out = Vec::with_capacity(16 + NONCE_LEN + plain.len() + tag_len);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(key.name),
                &mut out[16 + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET_BYTES {
            return None;
        }
        let (name, rest) = ticket.split_at_checked(16)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        // Key names are not secret (every ticket carries one): a plain comparison is fine.
        let key = self.keys.iter().find(|k| k.name[..] == *name)?;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut out = sealed.to_vec();
        let len = key.aead.open_in_place(nonce, ring::aead::Aad::from(&key.name), &mut out).ok()?.len();
        out.truncate(len);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{ServerIds, parse};

    fn key_line(seed: u8) -> String {
        (0..TICKET_KEY_BYTES).map(|i| format!("{:02x}", (i as u8).wrapping_mul(31).wrapping_add(seed))).collect()
    }

    #[test]
    fn file_ticketer_first_key_encrypts_and_every_key_decrypts() {
        let a = FileTicketer::parse(&format!("# keys\n{}\n", key_line(1))).unwrap();
        let rotated = FileTicketer::parse(&format!("{}\n\n{}\n", key_line(2), key_line(1))).unwrap();
        let other = FileTicketer::parse(&key_line(3)).unwrap();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(t.len(), 16 + 12 + 13 + 16);
        assert_eq!(a.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(rotated.decrypt(&t).as_deref(), Some(&b"session state"[..]), "an old key still decrypts");
        assert_eq!(other.decrypt(&t), None);
        let t2 = rotated.encrypt(b"newer").unwrap();
        assert_eq!(a.decrypt(&t2), None, "the new first key encrypts");
        // Same file, another process: the same keys.
        assert_eq!(FileTicketer::parse(&key_line(2)).unwrap().decrypt(&t2).as_deref(), Some(&b"newer"[..]));
        let mut bad = t.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(a.decrypt(&bad), None, "a tampered ticket");
        assert_eq!(a.decrypt(&t[..20]), None, "a truncated ticket");
        assert_ne!(a.encrypt(b"x").unwrap(), a.encrypt(b"x").unwrap(), "a fresh nonce per ticket");
    }

    #[test]
    fn ticket_key_files_are_checked_line_by_line() {
        let e = FileTicketer::parse("# only a comment\n\n").unwrap_err();
        assert!(e.contains("holds no key"), "{e}");
        let e = FileTicketer::parse(&format!("{}\nabc\n", key_line(1))).unwrap_err();
        assert!(e.starts_with("line 2: a key is 160 hex digits") && e.contains("found 3 characters"), "{e}");
        let e = FileTicketer::parse(&key_line(1).replace('0', "g")).unwrap_err();
        assert!(e.contains("not all hex digits"), "{e}");
        let e = FileTicketer::parse(&format!("{}\n{}\n", key_line(1), key_line(1))).unwrap_err();
        assert!(e.contains("line 2: the same key name (first 16 bytes) as line 1"), "{e}");
        let many: Vec<String> = (0..17).map(key_line).collect();
        assert!(FileTicketer::parse(&many.join("\n")).unwrap_err().contains("at most 16"));
        assert_eq!(FileTicketer::parse(&key_line(1).to_uppercase()).unwrap().keys.len(), 1, "either case");
    }

    /// A config with one TLS listener (a self-signed certificate in `dir`) and `extra` lines in
    /// its `[listeners.tls]`.
    fn tls_config(dir: &Path, extra: &str) -> Result<crate::config::Config, ConfigError> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("c.key"), cert.signing_key.serialize_pem()).unwrap();
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{{ cert = \"c.pem\", key = \"c.key\" }}]\n{extra}\n\
             [[routes]]\nupstream = \"b\"\n[upstreams.b]\nservers = [\"127.0.0.1:9000\"]\n"
        );
        let path = dir.join("p.toml");
        parse(&path, &text, &mut ServerIds::default())
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("proxy-config-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn listener(c: &crate::config::Config) -> &rustls::ServerConfig {
        &c.snapshot.listeners[0].tls.as_ref().unwrap().config
    }

    #[test]
    fn cipher_suites_and_kx_groups_narrow_the_provider_and_unknown_names_list_the_known() {
        let dir = temp("suites");
        let c = tls_config(&dir, "cipher_suites = [\"TLS13_CHACHA20_POLY1305_SHA256\", \"tls_ecdhe_ecdsa_with_aes_128_gcm_sha256\"]\nkx_groups = [\"secp384r1\"]").unwrap();
        let p = &listener(&c).crypto_provider();
        let suites: Vec<_> = p.cipher_suites.iter().map(suite_name).collect();
        assert_eq!(suites, ["TLS13_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]);
        let groups: Vec<_> = p.kx_groups.iter().map(group_name).collect();
        assert_eq!(groups, ["secp384r1"]);
        // Defaults: every suite and group of the ring provider.
        let c = tls_config(&dir, "").unwrap();
        assert_eq!(listener(&c).crypto_provider().cipher_suites.len(), 9);
        assert_eq!(listener(&c).crypto_provider().kx_groups.len(), 3);

        let e = tls_config(&dir, "cipher_suites = [\"TLS13_AES_128_GCM_SHA256\", \"TLS_RSA_WITH_RC4_128_MD5\"]").err().unwrap();
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("listeners[0].tls.cipher_suites")), "{e}");
        assert!(e.message.contains("unknown name \"TLS_RSA_WITH_RC4_128_MD5\" (known: TLS13_AES_256_GCM_SHA384, "), "{e}");
        let e = tls_config(&dir, "kx_groups = [\"X448\"]").err().unwrap();
        assert!(e.message.contains("(known: X25519, secp256r1, secp384r1)"), "{e}");
        let e = tls_config(&dir, "kx_groups = []").err().unwrap();
        assert!(e.message.contains("empty"), "{e}");
        // TLS 1.2 suites only, TLS 1.3 only: nothing left.
        let e = tls_config(&dir, "min_version = \"1.3\"\ncipher_suites = [\"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\"]").err().unwrap();
        assert_eq!(e.key.as_deref(), Some("listeners[0].tls.cipher_suites"), "{e}");
    }

    #[test]
    fn client_auth_and_ticket_key_errors_name_the_file_and_the_reason() {
        let dir = temp("mtls");
        let e = tls_config(&dir, "client_auth = \"optional\"").err().unwrap();
        assert!(e.message.contains("needs client_ca"), "{e}");
        let e = tls_config(&dir, "client_ca = \"c.pem\"\nclient_auth = \"sometimes\"").err().unwrap();
        assert_eq!(e.key.as_deref(), Some("listeners[0].tls.client_auth"), "{e}");
        let e = tls_config(&dir, "client_ca = \"missing.pem\"").err().unwrap();
        assert!(e.message.contains("missing.pem: cannot read"), "{e}");
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let e = tls_config(&dir, "client_ca = \"empty.pem\"").err().unwrap();
        assert!(e.message.contains("empty.pem: holds no CERTIFICATE block"), "{e}");
        assert!(tls_config(&dir, "client_ca = \"c.pem\"\nclient_auth = \"optional\"").is_ok());

        std::fs::write(dir.join("keys"), "abcd\n").unwrap();
        let e = tls_config(&dir, "ticket_keys = \"keys\"").err().unwrap();
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("listeners[0].tls.ticket_keys")), "{e}");
        assert!(e.message.contains("keys: line 1: a key is 160 hex digits"), "{e}");
        let e = tls_config(&dir, "ticket_keys = \"nokeys\"").err().unwrap();
        assert!(e.message.contains("nokeys: cannot read"), "{e}");
        std::fs::write(dir.join("keys"), key_line(7)).unwrap();
        assert!(tls_config(&dir, "ticket_keys = \"keys\"").is_ok());
    }
}
