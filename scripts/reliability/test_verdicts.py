"""Unit tests of the reliability scripts' verdicts (run by `cargo test`: gates/tests/scripts.rs).

    python3 -m unittest discover -s scripts/reliability -p 'test_*.py'
"""

import os
import sys
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rel_common as C  # noqa: E402
import slowloris  # noqa: E402


def rep(p99_us, valid=True):
    return {"valid": valid, "p99": p99_us}


def rounds(pairs):
    """(baseline report, attack report) per round -> (rounds_out, base_reps, atk_reps)."""
    ro = [{"round": i, "baseline": b, "attack": a} for i, (b, a) in enumerate(pairs)]
    return ro, [b for b, _ in pairs], [a for _, a in pairs]


class P99Verdict(unittest.TestCase):
    def setUp(self):
        # Merging HdrHistograms is summarize.Hist's job (tested with compare); here the largest P99.
        self.saved = C.merged_p
        C.merged_p = lambda reps, q: max(r["p99"] for r in reps) if reps else None

    def tearDown(self):
        C.merged_p = self.saved

    def test_invalid_windows_are_never_evidence(self):
        # The old script merged every window: this gave PASS from windows loadgen marked INVALID.
        v = slowloris.p99_verdict(*rounds([(rep(9000, False), rep(7000)), (rep(400), rep(8000, False)),
                                           (rep(9000, False), rep(7000, False))]), 2.0)
        self.assertEqual(v["status"], "INCONCLUSIVE")
        self.assertEqual(v["rounds_used"], [])

    def test_half_valid_is_not_a_majority(self):
        v = slowloris.p99_verdict(*rounds([(rep(400), rep(500)), (rep(400), rep(500, False))]), 2.0)
        self.assertEqual(v["status"], "INCONCLUSIVE")

    def test_valid_rounds_decide_and_invalid_ones_are_left_out(self):
        # The invalid round's huge baseline would have hidden the attack's rise.
        pairs = [(rep(400), rep(3000)), (rep(400), rep(3100)), (rep(20000, False), rep(3000))]
        v = slowloris.p99_verdict(*rounds(pairs), 2.0)
        self.assertEqual((v["status"], v["rounds_used"]), ("FAIL", [0, 1]))
        pairs = [(rep(400), rep(500)), (rep(420), rep(610)), (rep(400), rep(9000, False))]
        self.assertEqual(slowloris.p99_verdict(*rounds(pairs), 2.0)["status"], "PASS")

    def test_overall(self):
        self.assertEqual(slowloris.overall(["PASS", "INCONCLUSIVE", "PASS"]), "INCONCLUSIVE")
        self.assertEqual(slowloris.overall(["FAIL", "INCONCLUSIVE"]), "FAIL")
        self.assertEqual(slowloris.overall(["PASS", "PASS"]), "PASS")


if __name__ == "__main__":
    unittest.main()
