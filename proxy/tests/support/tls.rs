//! TLS for the tests: a throwaway CA and leaf certificates made with rcgen (ECDSA P-256; RSA-2048
//! keys from `openssl genpkey`, which ring cannot generate), PEM files in a directory, and
//! blocking rustls clients over `std::net`.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::client::{Client, IO_TIMEOUT};
use super::config::temp_dir;
use super::process::Proxy;
use super::upstream::Upstream;

/// A TLS client connection as the tests use it.
pub type TlsClient = Client<StreamOwned<ClientConnection, TcpStream>>;

/// A CA that signs leaf certificates into PEM files under `dir`.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate's files and its DER (to tell which certificate a handshake got).
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "proxy test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { dir: dir.to_path_buf(), ca }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// An ECDSA P-256 leaf for `names`, written as `<file>.pem` and `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_with(file, names, KeyPair::generate().unwrap())
    }

    /// An RSA-2048 leaf (key from `openssl genpkey`).
    pub fn rsa_leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let out = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
            .output()
            .expect("openssl genpkey (apt-get install openssl)");
        assert!(out.status.success(), "openssl genpkey failed");
        let pem = String::from_utf8(out.stdout).unwrap();
        let key = KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        self.leaf_with(file, names, key)
    }

    /// An ECDSA P-256 client certificate (extended key usage: client authentication) for `name`.
    pub fn client_leaf(&self, file: &str, name: &str) -> Leaf {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf_params(file, params, KeyPair::generate().unwrap())
    }

    /// The CA certificate written as `<file>` (PEM) in the directory: a `client_ca` file.
    pub fn write_ca(&self, file: &str) -> PathBuf {
        let path = self.dir.join(file);
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    fn leaf_with(&self, file: &str, names: &[&str], key: KeyPair) -> Leaf {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        self.leaf_params(file, params, key)
    }

    fn leaf_params(&self, file: &str, params: CertificateParams, key: KeyPair) -> Leaf {
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// A client config trusting this CA, offering `http/1.1` by ALPN.
    pub fn client(&self) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    /// A client config presenting `leaf` (its chain and key files) as its client certificate.
    pub fn client_with_cert(&self, leaf: &Leaf) -> ClientConfig {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(&leaf.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    /// A client config offering only the key-exchange `groups`.
    pub fn client_with_groups(&self, groups: &[&'static dyn rustls::crypto::SupportedKxGroup]) -> ClientConfig {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.kx_groups = groups.to_vec();
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    /// A client config limited to `versions` and, when given, one cipher suite.
    pub fn client_with(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> ClientConfig {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(s) = suite {
            provider.cipher_suites = vec![s];
        }
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }
}

/// A `[listeners.tls]` certificate entry for a leaf.
pub fn cert_entry(leaf: &Leaf) -> String {
    format!("{{ cert = \"{}\", key = \"{}\" }}", leaf.cert.display(), leaf.key.display())
}

/// Writes a `ticket_keys` file of `count` random keys (80 bytes as hex, one per line) and
/// returns its lines, newest first.
pub fn write_ticket_keys(path: &Path, count: usize) -> Vec<String> {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let keys: Vec<String> = (0..count)
        .map(|_| {
            let mut k = [0u8; 80];
            rng.fill(&mut k).unwrap();
            k.iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    write_ticket_lines(path, &keys);
    keys
}

/// Writes `keys` (hex lines, newest first) as a `ticket_keys` file with a comment line.
pub fn write_ticket_lines(path: &Path, keys: &[String]) {
    std::fs::write(path, format!("# session-ticket keys, newest first\n{}\n", keys.join("\n"))).unwrap();
}

/// Whether the proxy refuses a connection with `config`: the handshake fails, or (TLS 1.3, where
/// the client finishes before the server has checked its certificate) the first request gets no
/// response.
pub fn refused(addr: SocketAddr, name: Option<&str>, config: &Arc<ClientConfig>) -> bool {
    let Ok(mut c) = tls_connect(addr, name, config) else { return true };
    if c.try_send(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n").is_err() {
        return true;
    }
    c.read_response().is_err()
}

/// Connects and completes the handshake for `name` (the SNI; `None` sends none: an IP name).
pub fn tls_connect(addr: SocketAddr, name: Option<&str>, config: &Arc<ClientConfig>) -> io::Result<TlsClient> {
    let server_name = match name {
        Some(n) => ServerName::try_from(n.to_string()).map_err(|e| io::Error::other(e.to_string()))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let conn = ClientConnection::new(Arc::clone(config), server_name).map_err(io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Client::over(stream))
}

/// The leaf certificate the server presented.
pub fn peer_leaf(c: &TlsClient) -> Option<CertificateDer<'static>> {
    c.stream.conn.peer_certificates().and_then(|certs| certs.first()).map(|c| c.clone().into_owned())
}

/// Sets the socket's read timeout under a TLS client.
pub fn set_tls_read_timeout(c: &TlsClient, t: Duration) {
    c.stream.sock.set_read_timeout(Some(t)).unwrap();
}

/// A proxy whose one listener speaks TLS with `certs` (entries of `certificates`) and `extra`
/// lines in `[listeners.tls]`, in front of `upstream`, with the admin API on and `tables` (whole
/// TOML tables, `[limits]` say) appended.
pub fn tls_proxy_with(dir: &Path, upstream: &Upstream, certs: &[String], extra: &str, tables: &str) -> Proxy {
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncertificates = [{}]\n{extra}\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{}\"]\n\n{tables}\n",
        certs.join(", "),
        upstream.addr
    );
    Proxy::start_in(dir, &config, 1)
}

/// The common set-up: a CA, an ECDSA leaf for `localhost`, an upstream answering 200 and a TLS
/// proxy in front of it with `extra` lines in `[listeners.tls]`.
pub struct Site {
    pub pki: Pki,
    pub leaf: Leaf,
    pub up: Upstream,
    pub proxy: Proxy,
}

pub fn site(extra: &str) -> Site {
    site_with(extra, "")
}

/// [`site`] with `tables` appended to the config.
pub fn site_with(extra: &str, tables: &str) -> Site {
    let dir = temp_dir();
    let pki = Pki::new(&dir);
    let leaf = pki.leaf("site", &["localhost"]);
    let up = Upstream::ok();
    let proxy = tls_proxy_with(&dir, &up, &[cert_entry(&leaf)], extra, tables);
    Site { pki, leaf, up, proxy }
}

/// What a [`TlsOrigin`] saw of one connection.
#[derive(Debug, Clone, Default)]
pub struct OriginConn {
    /// The SNI the client sent.
    pub sni: Option<String>,
    pub resumed: bool,
    /// The client presented a certificate (verified: the origin's config requires a valid one
    /// when it asks).
    pub client_cert: bool,
    pub requests: usize,
}

/// A TLS origin (rustls server, blocking threads): HTTP/1.1 keep-alive; reads a request's
/// `Content-Length` body; answers 200 with the body `sni=..;resumed=..;client_cert=..;conn=N;req=M;body=B`
/// padded to `pad` bytes when the path is `/pad/<pad>`. Every connection is recorded.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    pub conns: Arc<std::sync::Mutex<Vec<OriginConn>>>,
    /// Handshakes that failed on the origin's side.
    pub failed: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsOrigin {
    /// Serves `leaf`; with `client_ca`, requires client certificates signed by `pki`'s CA.
    pub fn start(pki: &Pki, leaf: &Leaf, require_client_cert: bool) -> TlsOrigin {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(&leaf.cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions().unwrap();
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(pki.ca_der()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(v)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<OriginConn>>> = Arc::default();
        let failed: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (c2, f2) = (Arc::clone(&conns), Arc::clone(&failed));
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let (config, conns, failed) = (Arc::clone(&config), Arc::clone(&c2), Arc::clone(&f2));
                std::thread::spawn(move || serve_origin_conn(tcp, config, conns, failed));
            }
        });
        TlsOrigin { addr, conns, failed }
    }

    pub fn conns(&self) -> Vec<OriginConn> {
        self.conns.lock().unwrap().clone()
    }
}

fn serve_origin_conn(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    conns: Arc<std::sync::Mutex<Vec<OriginConn>>>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let mut tls = StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return;
        }
    }
    let info = OriginConn {
        sni: tls.conn.server_name().map(str::to_string),
        resumed: tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_cert: tls.conn.peer_certificates().is_some_and(|c| !c.is_empty()),
        requests: 0,
    };
    let index = {
        let mut c = conns.lock().unwrap();
        c.push(info.clone());
        c.len() - 1
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        // One request head, then its Content-Length body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let req = {
            let mut c = conns.lock().unwrap();
            c[index].requests += 1;
            c[index].requests
        };
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut body = format!(
            "sni={};resumed={};client_cert={};conn={index};req={req};body={length}",
            info.sni.as_deref().unwrap_or("-"),
            info.resumed,
            info.client_cert
        )
        .into_bytes();
        if let Some(pad) = path.strip_prefix("/pad/").and_then(|p| p.parse::<usize>().ok()) {
            body.resize(pad.max(body.len()), b'x');
        }
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(&body);
        if tls.write_all(&out).and_then(|()| tls.flush()).is_err() {
            return;
        }
    }
}

/// A proxy with a cleartext listener in front of `origin` over TLS, with `group` lines in the
/// upstream group (after `tls = true`, unless `group` sets `tls` itself).
pub fn proxy_to_tls_origin(dir: &Path, origin: SocketAddr, group: &str) -> Proxy {
    let config = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n\n[upstreams.u]\nservers = [\"{origin}\"]\n{group}\n"
    );
    Proxy::start_in(dir, &config, 1)
}
