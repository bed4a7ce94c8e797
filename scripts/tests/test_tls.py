"""Unit tests of the TLS comparison's targets (scripts/comparison/tls.py): each target's config is
its cleartext config with TLS termination added, for both certificates and the memory variant;
a config that changed shape fails loudly. Needs openssl (as compare-tls.sh does).

    python3 -B -m unittest discover -s scripts/tests -p 'test_*.py'
"""

import os
import shutil
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, SCRIPTS)
from comparison import peers, tls  # noqa: E402
from lib.procs import Fail  # noqa: E402

BINS = {"proxy": "/nonexistent/proxy", "loadgen": "/nonexistent/loadgen", "traefik": "/nonexistent/traefik",
        "nginx": "/nonexistent/nginx", "haproxy": "/nonexistent/haproxy"}


@unittest.skipUnless(shutil.which("openssl"), "openssl is needed for the certificates")
class TlsConfigs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.saved = (peers._PROXY_EXTRA, peers._PROXY_MEMORY)
        peers._PROXY_EXTRA = ""   # no proxy binary here: the build-dependent keys are left out
        peers._PROXY_MEMORY = ""
        cls.tmp = tempfile.mkdtemp()
        cls.certs = tls.make_certs(os.path.join(cls.tmp, "certs"))

    @classmethod
    def tearDownClass(cls):
        peers._PROXY_EXTRA, peers._PROXY_MEMORY = cls.saved
        shutil.rmtree(cls.tmp)

    def test_certificates_are_for_localhost_one_key_type_each(self):
        for kt, marker in (("ecdsa", "PRIVATE KEY"), ("rsa", "PRIVATE KEY")):
            c = self.certs[kt]
            self.assertIn("BEGIN CERTIFICATE", open(c["cert"]).read())
            self.assertIn(marker, open(c["key"]).read())
            self.assertIn("subjectAltName=DNS:localhost", c["command"])
        self.assertIn("ec_paramgen_curve:P-256", self.certs["ecdsa"]["command"])
        self.assertIn("rsa:2048", self.certs["rsa"]["command"])

    def test_each_target_terminates_tls_with_the_given_certificate(self):
        for mem in (False, True):
            for name in tls.TLS_TARGETS:
                d = os.path.join(self.tmp, f"cfg-{mem}")
                c = self.certs["rsa"]
                argv, _ = tls.write_tls_configs(d, name, 4443, "127.0.0.1:9000", BINS, c, for_memory=mem)
                sub = os.path.join(d, name + ("-memory" if mem else ""))
                if name == "relay":
                    self.assertEqual(argv[-5:], ["--tls", "--cert", c["cert"], "--key", c["key"]])
                    continue
                text = "".join(open(os.path.join(sub, f)).read() for f in os.listdir(sub) if os.path.isfile(os.path.join(sub, f)))
                self.assertIn("TLS termination added by scripts/comparison/tls.py", text, name)
                self.assertIn(c["combined"] if name == "haproxy" else c["cert"], text, name)
                self.assertIn("127.0.0.1:9000", text, name)  # cleartext upstream, as before
                self.assertNotIn("https://127.0.0.1:9000", text, name)
                if name == "native":
                    self.assertIn('address = "127.0.0.1:4443"\n# TLS termination', text)
                    self.assertIn("[listeners.tls]\ncertificates = [{ cert = ", text)
                if name == "nginx":
                    self.assertIn("listen 127.0.0.1:4443 ssl;", text)
                if name == "traefik":
                    self.assertIn("      tls: {}\n", text)

    def test_a_config_without_the_anchor_fails_loudly(self):
        p = os.path.join(self.tmp, "x.conf")
        with open(p, "w") as f:
            f.write("listen somewhere else;\n")
        with self.assertRaises(Fail):
            tls._patch(p, "listen 127.0.0.1:1;\n", "x")


if __name__ == "__main__":
    unittest.main()
