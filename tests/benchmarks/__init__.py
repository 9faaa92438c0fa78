"""Benchmarks (never tests): `make bench` = `python -m tests.benchmarks`.

Every figure is printed next to the bare server (or bare app) measured in the same
run, because the machine is small and noisy: absolute numbers drift, ratios hold.

* `bench_core.py`: in-process cost of the core per request (µs), driving the ASGI
  callable directly with a fake-but-valid scope.
* `bench_e2e.py`: `tools/call` throughput and latency over loopback, bare server vs
  `McpCoreMiddleware(server)`, each under uvicorn in its own subprocess.

Files are named `bench_*.py` so that pytest, which collects `tests/`, never runs them.
"""
