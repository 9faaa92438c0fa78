"""What sealing the aggregate's backend sessions costs: a legacy `initialize` at `/mcp` with 3 remote backends.

    python -m tests.benchmarks --only sealed_aggregate [--quick]

Three `tests.benchmarks.apps:bare` uvicorn backends and two gateway processes with the same three
URL members, one with a `session_key` (its `initialize` opens the client's three backend sessions
before it answers, to seal their ids) and one without (they open on first use). Rounds alternate
between the two gateways; each round opens a fresh legacy session and times, in wall clock:

* `initialize`: the `initialize` request until its whole answer arrived;
* `+ first calls`: that, then `notifications/initialized` and one `tools/call` to each backend in turn
  (without a key the first call to a backend opens its session there: the cost moves, it is not added).

The session is deleted after each round (not timed). Wall-clock milliseconds on a shared machine are
noise: compare medians of the same run only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from tests.conftest import free_port
from tests.support import processes

from ._common import median, percentile, section, table
from .bench_e2e import ROOT, start_server, wait_ready

_KEY = "the sealed aggregate benchmark's session key (32+ chars)"
_LEGACY = "2025-11-25"
_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _config(ports: list[int], key: bool) -> str:
    servers = "".join(
        f'[[servers]]\nname = "b{i}"\nurl = "http://127.0.0.1:{port}/mcp"\n' for i, port in enumerate(ports)
    )
    sealed = f'session_key = "{_KEY}"\n' if key else ""
    return f"[gateway]\nshutdown_timeout = 2\n{sealed}[aggregate]\nenabled = true\n{servers}"


async def _round(http: httpx2.AsyncClient, url: str, backends: int) -> tuple[float, float]:
    """One session: (seconds to the initialize's answer, seconds until a call to every backend answered)."""
    params = {"protocolVersion": _LEGACY, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
    start = time.perf_counter()
    opened = await http.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
    initialized = time.perf_counter() - start
    assert opened.status_code == 200, opened.text
    headers = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": _LEGACY}
    await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    for index in range(backends):
        call = {"name": f"b{index}__echo", "arguments": {"text": "x"}}
        answer = await http.post(
            url, json={"jsonrpc": "2.0", "id": index + 1, "method": "tools/call", "params": call}, headers=headers
        )
        assert answer.status_code == 200 and '"isError":false' in answer.text.replace(" ", ""), answer.text
    used = time.perf_counter() - start
    await http.delete(url, headers=headers)
    return initialized, used


def main(quick: bool = False) -> dict[str, Any]:
    return asyncio.run(_main(quick))


async def _main(quick: bool) -> dict[str, Any]:
    rounds = 8 if quick else 40
    backends = [start_server("bare") for _ in range(3)]
    gateways: dict[str, Any] = {}
    try:
        for server in backends:
            await wait_ready(server, app="bare")
        with tempfile.TemporaryDirectory() as scratch:
            for name, key in (("sealed", True), ("unsealed", False)):
                config = Path(scratch) / f"{name}.toml"
                config.write_text(_config([server.port for server in backends], key), encoding="utf-8")
                port = free_port()
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                process = await asyncio.to_thread(
                    processes.start_gateway, config, port, Path(scratch) / f"{name}.log", env=env
                )
                gateways[name] = (process, f"http://127.0.0.1:{port}/mcp")
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in gateways}
            async with httpx2.AsyncClient(headers=_HEADERS, timeout=60) as http:
                for _, url in gateways.values():  # warm-up: connections, imports, the catalogs
                    await _round(http, url, len(backends))
                for index in range(rounds):
                    order = list(gateways) if index % 2 == 0 else list(reversed(gateways))
                    for name in order:
                        times[name].append(await _round(http, gateways[name][1], len(backends)))
    finally:
        processes.stop_all([process for process, _ in gateways.values()], patience=10)
        for server in backends:
            server.stop()
    rows = []
    figures: dict[str, Any] = {"rounds": rounds, "python": sys.version.split()[0]}
    for name, samples in times.items():
        first = [1000 * initialize for initialize, _ in samples]
        whole = [1000 * used for _, used in samples]
        figures[name] = {"initialize_ms": median(first), "first_calls_ms": median(whole)}
        rows.append([name, f"{median(first):.1f}", f"{percentile(first, 90):.1f}", f"{median(whole):.1f}"])
    extra = figures["sealed"]["initialize_ms"] - figures["unsealed"]["initialize_ms"]
    print(section("sealed aggregate: legacy initialize with 3 remote backends (wall clock, noisy)"))
    print(
        table(
            ["gateway", "initialize ms (median)", "initialize ms (p90)", "+ a call to each backend ms (median)"], rows
        )
    )
    print(f"the key adds {extra:.1f} ms to initialize (median of {rounds} rounds each, alternating)")
    figures["targets"] = []
    return figures


if __name__ == "__main__":
    main("--quick" in sys.argv)
