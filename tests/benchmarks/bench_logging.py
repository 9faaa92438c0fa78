"""What logging costs the gateway with an in-process backend, and what the SDK's Rich handler would.

    python -m tests.benchmarks --only logging [--quick]

1. The gateway (access log on) under four logging set-ups (`stack_logging.py`), by the e2e method
   (`bench_e2e`, same-cpu): each round starts fresh uvicorn processes of the four stacks at once,
   pinned to one CPU, each loaded by its own 16 keep-alive connections with the modern 1 KB
   `tools/call` in the same window; ratios are medians of per-round ratios against `logs_off` (the
   same gateway writing no line per request). Every server writes its stderr to a file.
   - `logs_json / logs_off`: the JSON access line, the only record per request once
     `configure_logging` has run: what the gateway pays for logging;
   - `logs_rich / logs_off`: the same gateway had the SDK's Rich handler been left on;
   - `logs_json / logs_rich`: what `configure_logging` saves.
2. The bare SDK server, legacy sessions (initialize, initialized, `tools/call`, DELETE: the SDK logs
   two INFO lines per session): `bare` (the SDK's Rich handler, as an `MCPServer` leaves it) and
   `bare_logs` (`configure_logging(format="json")`), a fresh process each, loaded in turn (ABBA) by
   8 concurrent clients; sessions per second and server CPU per session.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2

from ._common import median, section, table
from .bench_e2e import HOST, LoadError, Server, report, run_e2e, start_server, wait_ready

APPS = ("logs_off", "logs_json", "logs_text", "logs_rich")
BARE = ("bare", "bare_logs")
MAX_SESSIONS = 200_000
_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}
_CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}


async def _session(http: httpx2.AsyncClient) -> None:
    opened = await http.post("/mcp", json=_INIT, headers=_HEADERS)
    session = opened.headers.get("mcp-session-id")
    if opened.status_code != 200 or not session:
        raise LoadError(f"initialize: {opened.status_code} {opened.text[:200]}")
    headers = {**_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    done = await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    called = await http.post("/mcp", json=_CALL, headers=headers)
    closed = await http.delete("/mcp", headers=headers)
    if (done.status_code, called.status_code, closed.status_code) != (202, 200, 200) or '"hi"' not in called.text:
        raise LoadError(f"session: {done.status_code} {called.status_code} {closed.status_code} {called.text[:200]}")


async def _load_sessions(server: Server, seconds: float, clients: int) -> tuple[float, float]:
    """Sessions per second and server CPU µs per session over `seconds` (bounded by MAX_SESSIONS)."""
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(base_url=f"http://{HOST}:{server.port}", limits=limits, timeout=30) as http:
        count = 0
        stop = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal count
            while time.perf_counter() < stop and count < MAX_SESSIONS:
                await _session(http)
                count += 1

        cpu0, started = server.cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu0
    return count / elapsed, cpu / count * 1e6 if count else float("nan")


async def legacy_sessions(quick: bool, clients: int = 8) -> dict[str, Any]:
    repeats, warmup, duration = (2, 0.5, 2.0) if quick else (4, 1.0, 4.0)
    print(section(f"logging: bare SDK server, legacy sessions, {clients} clients: Rich (as the SDK leaves it) vs JSON"))
    runs: dict[str, list[tuple[float, float]]] = {app: [] for app in BARE}
    for round_ in range(repeats):
        for app in BARE if round_ % 2 == 0 else tuple(reversed(BARE)):
            server = start_server(app, hash_seed=round_)
            try:
                await wait_ready(server)
                await _load_sessions(server, warmup, clients)
                rate, cpu_us = await _load_sessions(server, duration, clients)
            finally:
                server.stop()
            runs[app].append((rate, cpu_us))
            print(f"  round {round_ + 1} {app:10s} {rate:7,.0f} sessions/s  server CPU {cpu_us:7,.0f} µs/session")
    medians = {app: (median([r for r, _ in v]), median([c for _, c in v])) for app, v in runs.items()}
    rows = [
        [app, f"{rate:,.0f}", f"{cpu:,.0f}", f"{rate / medians['bare'][0]:.3f}"] for app, (rate, cpu) in medians.items()
    ]
    print()
    print(table(["app", "sessions/s (median)", "server CPU µs/session", "vs bare"], rows))
    return {
        "medians": {app: {"sessions_per_s": rate, "cpu_us_per_session": cpu} for app, (rate, cpu) in medians.items()},
        "ratio": medians["bare_logs"][0] / medians["bare"][0],
        "cpu_ratio": medians["bare"][1] / medians["bare_logs"][1],
    }


def main(quick: bool) -> dict[str, Any]:
    repeats, warmup, duration = (2, 0.5, 2.0) if quick else (5, 1.0, 4.0)
    print(section("logging: the gateway (access log on) under four logging set-ups, in-process backend"))
    result = asyncio.run(
        run_e2e(repeats=repeats, warmup=warmup, duration=duration, connections=16, pin=False, apps=APPS)
    )
    print(report(result))
    json_ratio, rich_ratio = result.ratio("logs_json"), result.ratio("logs_rich")
    saved = json_ratio / rich_ratio
    print(f"\n  logs_json / logs_rich: {saved:.3f} (what configure_logging saves over the SDK's Rich handler)")
    bare = asyncio.run(legacy_sessions(quick))
    return {
        "e2e": result.as_dict(),
        "bare_legacy_sessions": bare,
        "targets": [
            ["gateway with JSON access log / without logging (same run)", json_ratio, "x", "reported", True],
            ["gateway with the SDK's Rich handler left on / without logging", rich_ratio, "x", "reported", True],
            ["gateway JSON logging / the SDK's Rich handler", saved, "x", "> 1", saved > 1],
            ["bare SDK, legacy sessions/s, configure_logging / Rich", bare["ratio"], "x", "> 1", bare["ratio"] > 1],
            [
                "bare SDK, sessions per CPU-second, configure_logging / Rich",
                bare["cpu_ratio"],
                "x",
                "> 1",
                bare["cpu_ratio"] > 1,
            ],
        ],
    }
