"""The TLS comparison's targets (scripts/compare-tls.sh): each one's cleartext config from the
one description (peers.write_configs, so keep-alive, workers, timeouts and the memory variant are
those of the cleartext comparison), plus TLS termination on the client side and nothing else:
the same certificate and key for every target, cleartext to the upstream (no re-encryption).

- native (this proxy): `[listeners.tls] certificates = [{ cert, key }]` on its listener;
- relay: `loadgen relay --tls --cert --key` (the TLS byte-relay floor, to the cleartext upstream);
- traefik: the router gets `tls: {}`, the dynamic file a default certificate (`tls.stores`);
- nginx: `listen ... ssl`, `ssl_certificate`, `ssl_certificate_key`, tickets on, a shared
  session cache;
- haproxy: `bind ... ssl crt FILE` (certificate and key in one PEM file).

Certificates (`make_certs`): one ECDSA P-256 and one RSA-2048 key, each with a self-signed
certificate for the name `localhost` (SAN DNS:localhost, IP:127.0.0.1; CA:FALSE, so it serves as
its own trust anchor for loadgen's --ca), made with openssl once per run. A target runs with one
of them (`key_type`), so which one signs the handshake is never the client's choice.
"""

import os
import shlex
import socket
import ssl
import subprocess

from lib.procs import Fail

from .peers import write_configs
from .spec import DESC
from .targets import Target

TLS_TARGETS = ["relay", "native", "traefik", "nginx", "haproxy"]
KEY_TYPES = ["ecdsa", "rsa"]
SERVER_NAME = "localhost"

OPENSSL_NEWKEY = {"ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
                  "rsa": ["-newkey", "rsa:2048"]}


def make_certs(d):
    """Writes d/{ecdsa,rsa}.{pem,key} (and .combined.pem for HAProxy); returns
    {key_type: {"cert", "key", "combined", "command"}}."""
    os.makedirs(d, exist_ok=True)
    out = {}
    for kt in KEY_TYPES:
        cert, key = os.path.join(d, f"{kt}.pem"), os.path.join(d, f"{kt}.key")
        argv = (["openssl", "req", "-x509"] + OPENSSL_NEWKEY[kt] +
                ["-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", f"/CN={SERVER_NAME}",
                 "-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1",
                 "-addext", "basicConstraints=critical,CA:FALSE",
                 "-addext", "keyUsage=critical,digitalSignature" + (",keyEncipherment" if kt == "rsa" else ""),
                 "-addext", "extendedKeyUsage=serverAuth"])
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise Fail(f"openssl ({kt} certificate) failed: {r.stdout.decode('utf-8', 'replace')[-500:]}")
        combined = os.path.join(d, f"{kt}.combined.pem")
        with open(combined, "w") as f:
            f.write(open(cert).read() + open(key).read())
        out[kt] = {"cert": cert, "key": key, "combined": combined, "command": shlex.join(argv)}
    return out


def _patch(path, anchor, new):
    """Replaces the one `anchor` in file `path` with `new`; Fail when it is not there once (the
    cleartext config changed shape: this module must follow)."""
    with open(path) as f:
        s = f.read()
    if s.count(anchor) != 1:
        raise Fail(f"{path}: expected exactly one {anchor!r} to add TLS to (peers.py changed?)")
    with open(path, "w") as f:
        f.write(s.replace(anchor, new))


def write_tls_configs(cfgdir, name, port, up_addr, bins, cert, for_memory=False):
    """`name`'s cleartext config (peers.write_configs under cfgdir) with TLS termination added;
    cert: one entry of make_certs. Returns argv, env."""
    os.makedirs(cfgdir, exist_ok=True)
    argv, env = write_configs(cfgdir, name, port, up_addr, bins, for_memory=for_memory)
    d = os.path.join(cfgdir, name + ("-memory" if for_memory else ""))
    listen = f"127.0.0.1:{port}"
    marker = "# TLS termination added by scripts/comparison/tls.py\n"
    if name == "relay":
        return argv + ["--tls", "--cert", cert["cert"], "--key", cert["key"]], env
    if name == "native":
        _patch(os.path.join(d, "proxy.toml"), f'address = "{listen}"\n',
               f'address = "{listen}"\n{marker}[listeners.tls]\n'
               f'certificates = [{{ cert = "{cert["cert"]}", key = "{cert["key"]}" }}]\n')
        return argv, env
    if name == "traefik":
        dyn = os.path.join(d, "dynamic.yml")
        _patch(dyn, "      service: s\n", "      service: s\n      tls: {}\n")
        with open(dyn, "a") as f:
            f.write(f"""{marker}tls:
  stores:
    default:
      defaultCertificate:
        certFile: "{cert['cert']}"
        keyFile: "{cert['key']}"
""")
        return argv, env
    if name == "nginx":
        _patch(os.path.join(d, "nginx.conf"), f"        listen {listen};\n",
               f"        listen {listen} ssl;\n        {marker}"
               f"        ssl_certificate {cert['cert']};\n"
               f"        ssl_certificate_key {cert['key']};\n"
               f"        ssl_protocols TLSv1.2 TLSv1.3;\n"
               f"        ssl_session_tickets on;\n"
               f"        ssl_session_cache shared:TLS:20m;\n")
        return argv, env
    if name == "haproxy":
        _patch(os.path.join(d, "haproxy.cfg"), f"    bind {listen}\n",
               f"    {marker}    bind {listen} ssl crt {cert['combined']} alpn http/1.1\n")
        return argv, env
    raise ValueError(f"{name}: not a TLS target")


def https_get_ok(addr, timeout=2.0):
    """One GET / over TLS (certificate not checked: this is a start-up check only) with
    Connection: close; True when a 200 with the expected body came back."""
    host, port = addr.rsplit(":", 1)
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw:
            with c.wrap_socket(raw, server_hostname=SERVER_NAME) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    try:
                        chunk = s.recv(65536)
                    except ssl.SSLError:
                        break  # a close without close_notify
                    if not chunk:
                        break
                    data += chunk
    except (OSError, ssl.SSLError):
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200") and len(body) == DESC["body_bytes"]


class TlsTarget(Target):
    """A target terminating TLS with one key type's certificate; loadgen verifies it (--ca)."""

    scheme = "https"

    def __init__(self, name, ctx, certs, key_type, for_memory=False):
        cert = certs[key_type]
        cfgdir = os.path.join(ctx.cfgdir, key_type)
        self.key_type = key_type
        self.client_args = ("--ca", cert["cert"])
        super().__init__(name, ctx, for_memory=for_memory, ready=https_get_ok,
                         configure=lambda port: write_tls_configs(cfgdir, name, port, ctx.up_addr,
                                                                  ctx.bins, cert, for_memory=for_memory))

    @property
    def url(self):
        return f"https://{SERVER_NAME}:{self.addr.rsplit(':', 1)[1]}/"
