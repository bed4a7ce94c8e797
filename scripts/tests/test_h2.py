"""Unit tests of the HTTP/2 comparison (scripts/comparison/h2.py, scripts/compare_h2.py): each
target's config is its cleartext (or TLS) config with only the HTTP/2 lines added, for both
families; the verdict rule; committed runs re-render as committed. Needs openssl.

    python3 -B -m unittest discover -s scripts/tests -p 'test_*.py'
"""

import glob
import os
import shutil
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
import compare_h2  # noqa: E402
from comparison import h2, peers, tls  # noqa: E402

BINS = {"proxy": "/nonexistent/proxy", "loadgen": "/nonexistent/loadgen", "traefik": "/nonexistent/traefik",
        "nginx": "/nonexistent/nginx", "haproxy": "/nonexistent/haproxy"}
UP = "127.0.0.1:9000"


def text_of(d):
    return "".join(open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, f)))


@unittest.skipUnless(shutil.which("openssl"), "openssl is needed for the certificates")
class H2Configs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.saved = (peers._PROXY_EXTRA, peers._PROXY_MEMORY)
        peers._PROXY_EXTRA = ""
        peers._PROXY_MEMORY = ""
        cls.tmp = tempfile.mkdtemp()
        cls.cert = tls.make_certs(os.path.join(cls.tmp, "certs"))["ecdsa"]

    @classmethod
    def tearDownClass(cls):
        peers._PROXY_EXTRA, peers._PROXY_MEMORY = cls.saved
        shutil.rmtree(cls.tmp)

    def cfg(self, family, name):
        d = os.path.join(self.tmp, "cfg")
        argv, _ = h2.write_h2_configs(d, family, name, 4443, UP, BINS, self.cert)
        sub = os.path.join(d, family, name)
        return argv, (text_of(sub) if os.path.isdir(sub) else "")

    def test_tls_family_offers_h2_and_keeps_http1_to_the_origin(self):
        for name in h2.H2_TARGETS:
            argv, text = self.cfg("tls", name)
            if name == "relay":
                # the floor speaks HTTP/1.1 to the origin too, as every other target does here
                self.assertEqual(argv[-7:], ["--tls", "--cert", self.cert["cert"], "--key", self.cert["key"], "--h2",
                                             "--upstream-http1"])
                continue
            self.assertIn(self.cert["combined"] if name == "haproxy" else self.cert["cert"], text, name)
            self.assertNotIn("h2c", text, name)  # HTTP/1.1 to the origin
            if name == "native":
                self.assertIn("[listeners.tls]\n# HTTP/2 added", text)
                self.assertIn("http2 = true\n", text)
                self.assertNotIn("protocol =", text)
            if name == "nginx":
                self.assertIn("listen 127.0.0.1:4443 ssl http2;", text)
                self.assertIn("proxy_pass http://up;", text)
            if name == "haproxy":
                self.assertIn("alpn h2,http/1.1\n", text)
                self.assertNotIn("proto h2", text)
            if name == "traefik":
                self.assertIn(f'url: "http://{UP}"', text)

    def test_h2c_family_speaks_h2c_both_ways(self):
        for name in h2.H2_TARGETS:
            argv, text = self.cfg("h2c", name)
            if name == "relay":
                self.assertEqual(argv[-1], "--h2")
                self.assertNotIn("--tls", argv)
                self.assertNotIn("--upstream-http1", argv)
                continue
            self.assertNotIn("ssl", text, name)
            if name == "native":
                self.assertIn("h2c = true\n", text)
                self.assertIn('protocol = "h2c"\n', text)
            if name == "nginx":
                self.assertIn("listen 127.0.0.1:4443 http2;", text)
                self.assertIn("grpc_pass grpc://up;", text)
                self.assertNotIn("proxy_pass", text)
            if name == "haproxy":
                self.assertIn("bind 127.0.0.1:4443 proto h2\n", text)
                self.assertIn(f"server s1 {UP} pool-max-conn 256 proto h2\n", text)
            if name == "traefik":
                self.assertIn(f'url: "h2c://{UP}"', text)


def fake_S(native, traefik, nginx, haproxy, floor):
    def st(xs):
        return {"median": sorted(xs)[len(xs) // 2], "min": min(xs), "max": max(xs), "n": len(xs)}
    s = {"native": {"fixed_traefik_x": st([t / n for t, n in zip(traefik, native)]),
                    "fixed_nginx_div": st([n / g for n, g in zip(native, nginx)]),
                    "fixed_haproxy_div": st([n / h for n, h in zip(native, haproxy)])},
         "traefik": {}, "nginx": {}, "haproxy": {}, "relay": {"fixed_us": st(floor)}}
    return {"c": s}


class Verdict(unittest.TestCase):
    def test_pass_fail_inconclusive(self):
        ok = fake_S([10, 10, 10], [40, 40, 40], [12, 12, 12], [12, 12, 12], [9, 9.5, 10])
        self.assertEqual(compare_h2.verdict(ok, "c", 3, "fixed")[0], "PASS")
        self.assertEqual(compare_h2.verdict(ok, "c", 1, "fixed")[0], "INCONCLUSIVE")
        slow = fake_S([10, 10, 10], [25, 25, 25], [12, 12, 12], [12, 12, 12], [9, 9.5, 10])
        v, why = compare_h2.verdict(slow, "c", 3, "fixed")
        self.assertEqual(v, "FAIL")
        self.assertIn("Traefik", why)
        noisy = fake_S([10, 10, 10], [40, 40, 40], [12, 12, 12], [12, 12, 12], [6, 9, 12])
        self.assertEqual(compare_h2.verdict(noisy, "c", 3, "fixed")[0], "INCONCLUSIVE")


class CommittedRuns(unittest.TestCase):
    def test_committed_runs_render_as_committed(self):
        for run in sorted(glob.glob(os.path.join(ROOT, "results", "compare-h2", "*", "h2.json"))):
            d = os.path.dirname(run)
            tmp = tempfile.mkdtemp()
            try:
                for f in ("h2.json",):
                    shutil.copy(os.path.join(d, f), tmp)
                compare_h2.summarize(tmp)
                for f in ("summary.md", "runs.csv", "commands.md"):
                    with open(os.path.join(d, f)) as a, open(os.path.join(tmp, f)) as b:
                        self.assertEqual(a.read(), b.read(), f"{run}: {f}")
            finally:
                shutil.rmtree(tmp)

    def test_a_run_with_the_http1_floor_and_trailers_says_so(self):
        """A run recorded by this version of the script (meta.floor, one origin per family, the
        trailer checks) renders the new floor, the trailers table and a warning where a target
        did not relay them or an origin check is off; the committed smoke run has none of that."""
        import json
        runs = sorted(glob.glob(os.path.join(ROOT, "results", "compare-h2", "*", "h2.json")))
        if not runs:
            self.skipTest("no committed run to start from")
        with open(runs[0]) as f:
            d = json.load(f)
        m = d["meta"]
        m["floor"] = {"tls": "loadgen relay --h2 --tls --upstream-http1", "h2c": "loadgen relay --h2"}
        m["upstream_commands"] = {"tls": "loadgen upstream --listen A", "h2c": "loadgen upstream --listen B --trailers"}
        d["trailers_relayed"] = {t: [True] for t in m["targets"]}
        d["trailers_relayed"]["haproxy"] = [False]
        d["origin_protocol"]["relay tls"] = ["http/1.1"]
        tmp = tempfile.mkdtemp()
        try:
            with open(os.path.join(tmp, "h2.json"), "w") as f:
                json.dump(d, f)
            compare_h2.summarize(tmp)
            text = open(os.path.join(tmp, "summary.md")).read()
            self.assertIn("one HTTP/1.1 request on a keep-alive connection", text)
            self.assertNotIn("It cannot relay to an HTTP/1.1", text)
            self.assertIn("## Trailers in the h2c case", text)
            self.assertIn("| HAProxy | **not relayed** (1 of 1 start-up checks) |", text)
            self.assertIn("| nginx | relayed |", text)
            self.assertIn("relay tls: http/1.1;", text)
            self.assertNotIn("check the configs", text)
            commands = open(os.path.join(tmp, "commands.md")).read()
            self.assertIn("Origin of the h2c cases: `loadgen upstream --listen B --trailers`", commands)
            d["origin_protocol"]["relay tls"] = ["h2c (HTTP/2 preface)"]
            with open(os.path.join(tmp, "h2.json"), "w") as f:
                json.dump(d, f)
            compare_h2.summarize(tmp)
            self.assertIn("check the configs", open(os.path.join(tmp, "summary.md")).read())
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
