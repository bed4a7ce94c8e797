"""The side-by-side comparison (scripts/compare.py measures, scripts/summarize.py renders), one
concern per module:

measuring (compare.py)
- spec: the one description every config is written from, the targets, the modes' durations.
- ctx: one run's folders, binaries and arguments.
- peers: each target's config and command line, written from the description.
- targets: a running target (or the upstream) and its readiness check.
- loadruns: one loadgen run against a target with its CPU read around it.
- rounds: calibration and the interleaved rounds (closed loop, fixed rate, ladder).
- strace_phase, callgrind_phase, search_phase: the single-shot phases.
- record: compare.json's metadata (machine, git, versions) and writing it.

rendering (summarize.py)
- labels: target order, names and colours.
- stats: medians, within-round ratios and the merged latency ladder (summary.json's numbers).
- markdown: summary.md and README.md.
- svg, plots: the SVG primitives and the three plots.
"""
