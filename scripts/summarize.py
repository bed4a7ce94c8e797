#!/usr/bin/env python3
"""Render a comparison run (DIR/compare.json, written by compare.py) for people.

    python3 scripts/summarize.py DIR

Writes DIR/summary.md (the table, the goals), DIR/README.md (how the run was made) and the plots
DIR/latency.svg, DIR/cpu.svg, DIR/cpu_vs_rate.svg. Standard library only, plus the loadgen binary
(LOADGEN_BIN, default $CARGO_TARGET_DIR/release/loadgen), whose `loadgen hist` merges the
histograms; it can be re-run on a committed compare.json at any time (the JSON is the data,
everything else is derived from it). The parts are in comparison/ (stats, markdown, svg, plots).

Statistics: per-round values are reduced to median [min–max] over rounds; ratios (vs Traefik, vs
the byte-relay floor, P99 minus the direct path's) are taken within a round, then reduced. Latency
percentiles on the ladder come from the rounds' HdrHistograms merged per step (never an average
of percentiles).
"""

import json
import os
import sys

from comparison.markdown import write_readme, write_summary
from comparison.plots import plot_cpu, plot_cpu_vs_rate, plot_latency
from comparison.stats import compute
from lib.procs import Fail


def main():
    if len(sys.argv) != 2:
        print("usage: summarize.py DIR (holding compare.json)", file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    with open(os.path.join(out, "compare.json")) as f:
        d = json.load(f)
    if d.get("schema_version") != 1:
        print(f"summarize: unknown schema_version {d.get('schema_version')}", file=sys.stderr)
        sys.exit(2)
    try:
        targets, S, ladder = compute(d)
    except Fail as e:
        print(f"summarize: error: {e}", file=sys.stderr)
        sys.exit(1)
    write_summary(d, targets, S, ladder, out)
    write_readme(d, out)
    plot_latency(d, targets, ladder, out)
    plot_cpu(d, targets, S, out)
    plot_cpu_vs_rate(d, targets, ladder, out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"schema_version": 1, "kind": "compare-summary", "targets": S, "ladder": ladder}, f, indent=1)


if __name__ == "__main__":
    main()
