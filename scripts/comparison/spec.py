"""What the comparison measures: the one description every target's config is written from, the
targets, and the durations of each mode."""

SCHEMA_VERSION = 1  # of compare.json

# The one description every target's config is written from.
DESC = {
    "body_bytes": 100,           # upstream response body
    "workers": 1,                # GOMAXPROCS=1 / worker_processes 1 / nbthread 1 / --workers 1
    "upstream_keepalive": 256,   # idle keep-alive connections to the upstream
    "access_log": False,
    "proxy_cpu": "1",            # the target under test
    "loader_cpu": "0",           # loadgen and the upstream
}

ALL_TARGETS = ["direct", "relay", "native", "hyper", "traefik", "nginx", "haproxy"]
VALGRIND_TARGETS = ["relay", "native", "hyper", "nginx", "haproxy"]  # Go does not run under valgrind

MODES = {
    # durations in seconds
    "quick": dict(rounds=1, calib_runs=1, calib_s=1.5, prewarm_s=0.3, closed_s=1.5, fixed_s=2.0,
                  step_s=0.7, ladder=[0.1, 0.5, 0.9, 2.0, 4.0],
                  strace_rate=2000, strace_s=1.5, cg_rate=500, cg_s=2.0,
                  search_step_s=0.7, search_warmup_s=0.2, search_precision=0.2, budget_s=300),
    "full": dict(rounds=5, calib_runs=3, calib_s=2.0, prewarm_s=0.5, closed_s=3.0, fixed_s=4.0,
                 step_s=1.0, ladder=[0.1, 0.3, 0.5, 0.7, 0.9, 1.25, 1.75, 2.5, 3.5, 5.0],
                 strace_rate=2000, strace_s=4.0, cg_rate=500, cg_s=6.0,
                 search_step_s=1.0, search_warmup_s=0.3, search_precision=0.1, budget_s=1200),
}

# The memory phase (issue 14): `loadgen hold` crowds of idle keep-alive clients, in turn.
MEMORY_CONNECTIONS = [1000, 10000]
MEMORY_SETTLE = "2.5s"            # idle before the held RSS is read, and after closing
MEMORY_MAX_CONNECTIONS = 20000    # the targets' connection limits in the memory phase
MEMORY_IDLE_TIMEOUT_S = 300       # client idle timeouts there: far longer than the hold (~20 s)
MEMORY_TARGETS = ["native", "hyper", "traefik", "nginx", "haproxy"]

CONNECTIONS = 50          # loadgen connections for every timed run (like wrk -c50; docs/benchmarking.md)
CG_CONNECTIONS = 8        # callgrind and strace runs: moderate rate, few connections
REQ_TIMEOUT = "2s"        # per-request timeout: bounds the drain of an overloaded open-loop run
