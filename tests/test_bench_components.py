"""`make bench` runs every benchmark it finds (tests/benchmarks/__main__.py): each runs, and loads what it names."""

from __future__ import annotations

from tests.benchmarks.__main__ import components
from tests.benchmarks.bench_gateway import Request


def test_every_benchmark_make_bench_finds_has_a_main() -> None:
    found = components()
    assert "gateway" in found and "wire" not in found  # (bench_wire is `--only instructions --wire`'s driver)
    for name, module in found.items():
        assert callable(getattr(module, "main", None)), name


def test_the_gateway_benchmark_loads_the_gateways_path_mount() -> None:
    assert Request("gateway", 8000, "tools/call").prefix.startswith(b"POST /mcp/bench HTTP/1.1\r\n")
    assert Request("bare", 8000, "tools/call").prefix.startswith(b"POST /mcp HTTP/1.1\r\n")
