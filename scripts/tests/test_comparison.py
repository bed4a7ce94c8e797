"""Tests of the comparison's split: every module imports, compare.py and summarize.py keep their
command lines, the strace record, and summarize re-renders the latest committed run byte for
byte (run by `cargo test`: gates/tests/scripts.rs).

    python3 -B -m unittest discover -s scripts/tests -p 'test_*.py'
"""

import glob
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)

MODULES = ["lib." + m for m in ("procs", "procfs", "bins", "probe", "hist")] + [
    "comparison." + m for m in ("spec", "ctx", "peers", "targets", "loadruns", "rounds", "strace_phase",
                                "callgrind_phase", "search_phase", "record", "labels", "stats",
                                "markdown", "svg", "plots")]


class Layout(unittest.TestCase):
    def test_every_module_imports(self):
        for m in MODULES:
            with self.subTest(module=m):
                importlib.import_module(m)

    def test_entry_points_keep_their_command_lines(self):
        r = subprocess.run([sys.executable, "-B", os.path.join(SCRIPTS, "compare.py"), "--help"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        for opt in ("--quick", "--rounds", "--out", "--targets", "--slo-ms", "--rate-base", "--skip"):
            self.assertIn(opt, r.stdout)
        r = subprocess.run([sys.executable, "-B", os.path.join(SCRIPTS, "summarize.py")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage: summarize.py DIR", r.stderr)

    def test_reliability_common_imports_with_the_shared_helpers(self):
        sys.path.insert(0, os.path.join(SCRIPTS, "reliability"))
        try:
            import rel_common as C
            from lib import procfs, procs
        finally:
            sys.path.remove(os.path.join(SCRIPTS, "reliability"))
        self.assertIs(C.Proc, procs.Proc)
        self.assertIs(C.Fail, procs.Fail)
        self.assertIs(C.status_kb, procfs.status_kb)


class StraceRecord(unittest.TestCase):
    def test_per_request_sorts_by_count_and_sums(self):
        from comparison.strace_phase import per_request
        calls = {"recvfrom": 8000, "sendto": 8000, "epoll_wait": 9000, "close": 8}
        rec = per_request("native", calls, {"requests_handled": 8000, "valid": True}, 2000)
        self.assertEqual(rec["total_calls"], 25008)
        self.assertAlmostEqual(rec["per_request"], 3.126)
        self.assertEqual(list(rec["by_syscall_per_request"]), ["epoll_wait", "recvfrom", "sendto", "close"])
        self.assertEqual(rec["file"], "strace/native.txt")
        self.assertEqual((rec["rate"], rec["connections"], rec["valid"]), (2000, 8, True))

    def test_committed_strace_tables_give_the_committed_totals(self):
        """The probe's parser (gates' own) reads every committed strace table to the totals the
        Python parser once recorded."""
        import json
        from lib import probe
        for run in sorted(glob.glob(os.path.join(ROOT, "results", "compare", "*", "compare.json"))):
            with open(run) as f:
                sc = json.load(f).get("syscalls", {})
            for name, rec in sc.items():
                with self.subTest(run=run, target=name):
                    calls = dict(probe.strace_summary(os.path.join(os.path.dirname(run), rec["file"])))
                    self.assertEqual(sum(calls.values()), rec["total_calls"])
                    n = rec["requests"]
                    self.assertEqual({k: v / max(n, 1) for k, v in calls.items()}, rec["by_syscall_per_request"])


class Summarize(unittest.TestCase):
    def test_latest_committed_run_renders_byte_for_byte(self):
        runs = sorted(glob.glob(os.path.join(ROOT, "results", "compare", "*", "compare.json")))
        self.assertTrue(runs, "no committed comparison run")
        src = os.path.dirname(runs[-1])
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, os.path.basename(src))  # the title names the folder
            os.mkdir(out)
            for f in ("compare.json", "NOTES.md"):
                if os.path.exists(os.path.join(src, f)):
                    shutil.copy(os.path.join(src, f), out)
            r = subprocess.run([sys.executable, "-B", os.path.join(SCRIPTS, "summarize.py"), out],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            for f in ("summary.md", "README.md", "summary.json", "latency.svg", "cpu.svg", "cpu_vs_rate.svg"):
                with self.subTest(file=f):
                    with open(os.path.join(src, f), "rb") as a, open(os.path.join(out, f), "rb") as b:
                        self.assertTrue(a.read() == b.read(),
                                        f"{f} differs from {src}/{f}: if the change is deliberate, re-render "
                                        f"the committed runs (python3 scripts/summarize.py DIR) in the same commit")


if __name__ == "__main__":
    unittest.main()
