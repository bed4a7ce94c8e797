"""Plumbing shared by the scripts (compare.py, summarize.py, reliability/*.py). Standard library
only; the readings with a Rust owner are taken by calling its binary.

- procs: child processes in their own process groups (killed on any exit), bounded commands,
  the one failure type and the log line.
- procfs: /proc readings of processes (tree, CPU ticks, status fields, fds, threads) and of the
  machine (CPU model, load average).
- bins: where the project's binaries are (environment, then the cargo target directory).
- probe: schedstat and `strace -c` summaries, read by gates' `probe` binary (gates/src/floor.rs).
- hist: HdrHistograms of loadgen's reports merged by `loadgen hist` (loadgen/src/report.rs).
"""
