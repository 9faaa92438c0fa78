"""The full reference gateway vs the bare server: throughput and latency, and memory per idle legacy session.

- Throughput and p50/p99 of modern `tools/call` (echo, 1 KB) and `tools/list`, loaded over 16
  keep-alive connections: the bare test server and the same server behind the whole gateway
  (`stack_gateway.py`: front door, tracing with the Prometheus reader, static-token auth, a rate
  limit that never trips, cache, breaker, the path mount `/mcp/bench`), each a uvicorn
  subprocess, loaded in turn (ABBA), same run. The cache answers `tools/list` after the first
  miss: the gateway's `tools/list` figure is what a client of the gateway gets.
- Memory: resident set size of the server process before and after opening 1,000 legacy
  sessions (initialize + notifications/initialized each) that then stay idle, per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx2
import orjson

from ._common import MODERN_VERSION, median, percentile, section, table, tools_call_body
from .apps import STACKS
from .bench_e2e import HOST, LoadError, Server, read_response, start_server, wait_ready
from .stack_gateway import TOKEN

APPS = ("bare", "gateway")
_META = {"io.modelcontextprotocol/protocolVersion": MODERN_VERSION, "io.modelcontextprotocol/clientCapabilities": {}}


def _headers(app: str, method: str, name: str | None) -> list[tuple[str, str]]:
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", MODERN_VERSION),
        ("mcp-method", method),
    ]
    if name:
        headers.append(("mcp-name", name))
    if app == "gateway":
        headers.append(("authorization", f"Bearer {TOKEN}"))
    return headers


class Request:
    """The bytes of one modern POST with its 6-digit id spliced in."""

    def __init__(self, app: str, port: int, method: str) -> None:
        if method == "tools/call":
            body, name = tools_call_body(100_000), "echo"
        else:
            body, name = (
                orjson.dumps({"jsonrpc": "2.0", "id": 100_000, "method": method, "params": {"_meta": _META}}),
                None,
            )
        self.head, self.tail = body.split(b'"id":100000')
        path = STACKS[app].path  # the gateway's backend is its path mount `/mcp/bench`; `/mcp` is the aggregate
        lines = [
            f"POST {path} HTTP/1.1",
            f"host: {HOST}:{port}",
            *(f"{k}: {v}" for k, v in _headers(app, method, name)),
        ]
        lines.append(f"content-length: {len(body)}")
        self.prefix = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.marker = b"result"

    def bytes(self, request_id: int) -> bytes:
        return self.prefix + self.head + b'"id":%d' % request_id + self.tail


async def load(server: Server, app: str, method: str, seconds: float, connections: int) -> dict[str, float]:
    request = Request(app, server.port, method)
    stop = time.perf_counter() + seconds
    latencies: list[float] = []

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        request_id = 100_000 + index
        try:
            while time.perf_counter() < stop and len(latencies) < 2_000_000:
                sent = time.perf_counter()
                writer.write(request.bytes(request_id))
                await writer.drain()
                status, body = await read_response(reader)
                if status != 200 or request.marker not in body or b'"id":%d' % request_id not in body:
                    raise LoadError(f"{app} {method}: {status} {body[:200]!r}")
                latencies.append(time.perf_counter() - sent)
                request_id = 100_000 + (request_id - 100_000 + connections) % 899_999
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


async def throughput(quick: bool, connections: int = 16) -> dict[str, Any]:
    repeats, warmup, duration = (2, 0.5, 2.0) if quick else (4, 1.0, 4.0)
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        m: {a: [] for a in APPS} for m in ("tools/call", "tools/list")
    }
    print(
        section(f"gateway: modern tools/call and tools/list over loopback, {connections} connections, bare vs gateway")
    )
    for round_ in range(repeats):
        for app in APPS if round_ % 2 == 0 else tuple(reversed(APPS)):
            server = start_server(app, hash_seed=round_)
            try:
                await wait_ready(server)
                for method in ("tools/call", "tools/list"):
                    await load(server, app, method, warmup, connections)
                    figures = await load(server, app, method, duration, connections)
                    results[method][app].append(figures)
                    print(
                        f"  round {round_ + 1} {app:8s} {method:10s} {figures['rps']:8,.0f} req/s"
                        f"  p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:7.2f} ms",
                        flush=True,
                    )
            finally:
                server.stop()
    summary: dict[str, Any] = {}
    rows = []
    for method, by_app in results.items():
        medians = {
            app: {k: median([run[k] for run in runs]) for k in ("rps", "p50_ms", "p99_ms")}
            for app, runs in by_app.items()
        }
        ratio = medians["gateway"]["rps"] / medians["bare"]["rps"]
        summary[method] = {"medians": medians, "ratio": ratio}
        for app in APPS:
            m = medians[app]
            rows.append(
                [
                    method,
                    app,
                    f"{m['rps']:,.0f}",
                    f"{m['p50_ms']:.2f}",
                    f"{m['p99_ms']:.2f}",
                    f"{m['rps'] / medians['bare']['rps']:.3f}",
                ]
            )
    print()
    print(table(["method", "app", "req/s (median)", "p50 ms", "p99 ms", "vs bare"], rows))
    return summary


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _open_sessions(server: Server, app: str, count: int) -> int:
    headers = dict(_headers(app, "initialize", None))
    del headers["mcp-protocol-version"], headers["mcp-method"]
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "1"},
        },
    }
    opened = 0
    limits = httpx2.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx2.AsyncClient(base_url=f"http://{HOST}:{server.port}", limits=limits, timeout=30) as http:
        semaphore = asyncio.Semaphore(16)

        async def one() -> None:
            nonlocal opened
            async with semaphore:
                response = await http.post(STACKS[app].path, json=init, headers=headers)
                session = response.headers.get("mcp-session-id")
                if response.status_code != 200 or not session:
                    raise LoadError(f"{app} initialize: {response.status_code} {response.text[:200]}")
                follow = {**headers, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
                done = await http.post(
                    STACKS[app].path, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=follow
                )
                if done.status_code != 202:
                    raise LoadError(f"{app} initialized: {done.status_code}")
                opened += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return opened


async def memory(quick: bool) -> dict[str, float]:
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # MCPServer turns on INFO logging: one line per request
    count = 300 if quick else 1000
    print(section(f"gateway: resident memory per idle legacy session ({count} sessions)"))
    per_session: dict[str, float] = {}
    for app in APPS:
        server = start_server(app)
        try:
            await wait_ready(server)
            await _open_sessions(server, app, 20)  # warm-up: imports, pools, first-use allocations
            await asyncio.sleep(0.5)
            before = _rss_kib(server.process.pid)
            opened = await _open_sessions(server, app, count)
            await asyncio.sleep(1.0)
            after = _rss_kib(server.process.pid)
        finally:
            server.stop()
        per_session[app] = (after - before) / opened
        print(
            f"  {app:8s} RSS {before / 1024:7.1f} MiB -> {after / 1024:7.1f} MiB:"
            f" {per_session[app]:6.1f} KiB per idle session"
        )
    per_session["gateway_minus_bare"] = per_session["gateway"] - per_session["bare"]
    print(f"  the gateway adds {per_session['gateway_minus_bare']:.1f} KiB per session to the backend's own")
    return per_session


async def run(quick: bool) -> dict[str, Any]:
    started = time.perf_counter()
    summary = await throughput(quick)
    mem = await memory(quick)
    print(f"\n  gateway took {time.perf_counter() - started:.1f} s")
    return {
        "throughput": summary,
        "memory_kib_per_session": mem,
        "targets": [
            ["gateway tools/call throughput / bare", summary["tools/call"]["ratio"], "x", "reported", True],
            ["gateway tools/list throughput / bare (cached)", summary["tools/list"]["ratio"], "x", "reported", True],
            ["memory per 1,000 idle legacy sessions (gateway)", mem["gateway"] * 1000 / 1024, "MiB", "reported", True],
        ],
    }


def main(quick: bool) -> dict[str, Any]:
    return asyncio.run(run(quick))
