"""The response cache: in-process cost of a hit and of a miss, and cached `tools/list` throughput end to end.

In-process (as bench_core: fake-but-valid ASGI scope, the app awaited in a plain loop, cases
interleaved sample by sample, medians per request):

- hit: a modern `tools/list` answered from the memory store: the core's parse, the key, the
  lookup and the rendered answer (the inner app is never called), against the trivial app
  answering the same request itself;
- miss: the same request when its result may not be stored (`ttlMs: 0`): the whole miss path
  (tap, parse of the result, the decision) on top of the trivial app;
- pass-through: a `tools/call` the cache does not cache, on top of the trivial app.

End to end: the bare test server and the same server behind `ResponseCacheMiddleware`
(`cache_lists` of stack_cache.py) as uvicorn subprocesses (bench_e2e's), loaded in turn
(ABBA) with modern `tools/list` requests over keep-alive connections, same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.cache import ResponseCacheMiddleware
from mcp_middleware.core import McpCoreMiddleware

from ._common import MODERN_VERSION, median, section, table
from .bench_core import asgi_case, calibrate, fixture, json_response, measure, raw_headers
from .bench_e2e import HOST, LoadError, read_response, start_server, wait_ready

HIT_TARGET_US = 20.0
THROUGHPUT_TARGET = 3.0

_META = {"io.modelcontextprotocol/protocolVersion": MODERN_VERSION, "io.modelcontextprotocol/clientCapabilities": {}}
LIST_BODY = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": _META}})
LIST_HEADERS = [
    ("content-type", "application/json"),
    ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", MODERN_VERSION),
    ("mcp-method", "tools/list"),
]
_TOOLS = [
    {
        "name": f"tool_{i}",
        "description": "Does one thing well.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "annotations": {"readOnlyHint": i % 2 == 0},
    }
    for i in range(20)
]


def list_app(ttl_ms: int) -> Any:
    """The trivial inner app: a 20-tool `tools/list` result with the given `ttlMs`, public."""
    start, end = json_response(
        orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "result": {"tools": _TOOLS, "ttlMs": ttl_ms, "cacheScope": "public", "resultType": "complete"},
            }
        )
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send(start)
        await send(end)

    return app


async def check(app: Any, headers: list[tuple[bytes, bytes]], body: bytes, expect: bytes) -> None:
    sent: list[Message] = []

    async def keep(message: Message) -> None:
        sent.append(message)

    from .bench_core import body_receive, http_scope

    await app(http_scope(headers), body_receive(body), keep)
    assert sent[0]["status"] == 200 and dict(sent[0]["headers"]).get(b"x-mcp-cache") == expect, sent[0]
    assert b'"tools"' in sent[-1]["body"] or b'"result"' in sent[-1]["body"], sent[-1]


async def in_process(quick: bool) -> dict[str, Any]:
    headers = raw_headers(LIST_HEADERS, LIST_BODY)
    cached_app, uncacheable_app = list_app(60_000), list_app(0)
    hit = ResponseCacheMiddleware(cached_app)
    miss = ResponseCacheMiddleware(uncacheable_app)
    await check(hit, headers, LIST_BODY, b"miss")  # stores
    await check(hit, headers, LIST_BODY, b"hit")
    await check(miss, headers, LIST_BODY, b"miss")
    call = fixture("modern")
    from .bench_core import json_app

    cases = [
        asgi_case("tools/list: app", cached_app, headers, LIST_BODY),
        asgi_case(
            "tools/list: core+tap(app)", McpCoreMiddleware(cached_app, on_outcome=lambda r, o: None), headers, LIST_BODY
        ),
        asgi_case("tools/list hit: cache(app)", hit, headers, LIST_BODY),
        asgi_case("tools/list miss: cache(app)", miss, headers, LIST_BODY),
        asgi_case("tools/call: app", json_app, call.headers, call.body),
        asgi_case("tools/call pass-through: cache(app)", ResponseCacheMiddleware(json_app), call.headers, call.body),
    ]
    await calibrate(cases, (1.0 if quick else 3.0) * 1e6)
    await measure(cases, 30 if quick else 150)
    by = {c.name: c for c in cases}
    rows = [[c.name, c.median_us, c.p90_us, c.min_us] for c in cases]
    print(section("cache: in-process, per request (medians of samples)"))
    print(table(["case", "median µs", "p90 µs", "min µs"], rows))
    hit_us = by["tools/list hit: cache(app)"].median_us
    miss_over = by["tools/list miss: cache(app)"].median_us - by["tools/list: app"].median_us
    miss_over_core = by["tools/list miss: cache(app)"].median_us - by["tools/list: core+tap(app)"].median_us
    pass_over = by["tools/call pass-through: cache(app)"].median_us - by["tools/call: app"].median_us
    print(f"\n  hit, whole middleware (parse, key, lookup, answer): {hit_us:.2f} µs (target ≤ {HIT_TARGET_US:g})")
    print(
        f"  miss overhead over the bare app: {miss_over:+.2f} µs; over the core with its tap: {miss_over_core:+.2f} µs"
    )
    print(f"  pass-through overhead (uncached tools/call): {pass_over:+.2f} µs")
    return {
        "hit_us": hit_us,
        "miss_overhead_us": miss_over,
        "miss_overhead_over_core_us": miss_over_core,
        "pass_through_overhead_us": pass_over,
        "cases": {c.name: {"median_us": c.median_us, "p90_us": c.p90_us} for c in cases},
    }


# --- end to end: tools/list throughput ---------------------------------------------------------------


class ListWire:
    """The bytes of one modern `tools/list` POST with its id spliced in."""

    def __init__(self, port: int) -> None:
        head, tail = LIST_BODY.split(b'"id":1')
        self._tail = tail
        self._head = head
        self._port = port

    def request(self, request_id: int) -> bytes:
        body = self._head + b'"id":%d' % request_id + self._tail
        lines = ["POST /mcp HTTP/1.1", f"host: {HOST}:{self._port}", *(f"{k}: {v}" for k, v in LIST_HEADERS)]
        lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _load_one(port: int, seconds: float, connections: int) -> tuple[float, int]:
    wire = ListWire(port)
    stop = time.perf_counter() + seconds
    done = [0]
    errors = [0]

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        request_id = 100_000 + index
        try:
            while time.perf_counter() < stop:
                writer.write(wire.request(request_id))
                await writer.drain()
                status, body = await read_response(reader)
                if status != 200 or b'"tools"' not in body or b'"id":%d' % request_id not in body:
                    errors[0] += 1
                    if errors[0] == 1:
                        raise LoadError(f"unexpected tools/list answer: {status} {body[:200]!r}")
                else:
                    done[0] += 1
                request_id += connections
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(connections)))
    return done[0] / (time.perf_counter() - started), errors[0]


async def end_to_end(quick: bool) -> dict[str, Any]:
    repeats, warmup, duration, connections = (3, 0.5, 2.0, 16) if quick else (5, 1.0, 5.0, 16)
    apps = ("bare", "cache_lists")
    rates: dict[str, list[float]] = {name: [] for name in apps}
    cpu_us: dict[str, list[float]] = {name: [] for name in apps}
    print(section(f"cache: e2e modern tools/list over loopback, {connections} connections"))
    print("  one uvicorn subprocess per run (bench_e2e's), apps in ABBA order; server CPU from /proc")
    for round_ in range(repeats):
        order = apps if round_ % 2 == 0 else tuple(reversed(apps))
        for name in order:
            server = start_server(name, hash_seed=round_)
            try:
                await wait_ready(server)
                await _load_one(server.port, warmup, connections)
                cpu_before = server.cpu_seconds()
                rps, errors = await _load_one(server.port, duration, connections)
                cpu = server.cpu_seconds() - cpu_before
            finally:
                server.stop()
            per_request = cpu / (rps * duration) * 1e6 if rps else float("nan")
            rates[name].append(rps)
            cpu_us[name].append(per_request)
            print(
                f"  round {round_ + 1} {name:12s} {rps:10,.0f} req/s  server CPU {per_request:7,.0f} µs/req"
                f"  errors {errors}",
                flush=True,
            )
    ratio = median(rates["cache_lists"]) / median(rates["bare"])
    cpu_ratio = median(cpu_us["bare"]) / median(cpu_us["cache_lists"])
    print(
        f"\n  cached tools/list / bare tools/list, throughput (ratio of medians): {ratio:.2f}"
        f"  ({median(rates['cache_lists']):,.0f} / {median(rates['bare']):,.0f} req/s)"
    )
    print(
        f"  requests per server CPU-second, cached / bare: {cpu_ratio:.2f}"
        f"  ({median(cpu_us['cache_lists']):,.0f} vs {median(cpu_us['bare']):,.0f} µs per request)"
    )
    return {"rps": rates, "cpu_us_per_request": cpu_us, "ratio": ratio, "cpu_ratio": cpu_ratio}


async def run(quick: bool) -> dict[str, Any]:
    micro = await in_process(quick)
    e2e = await end_to_end(quick)
    return {
        "micro": micro,
        "e2e": e2e,
        "targets": [
            [
                "cache hit in-process (modern tools/list)",
                micro["hit_us"],
                "µs",
                f"≤ {HIT_TARGET_US:g}",
                micro["hit_us"] <= HIT_TARGET_US,
            ],
            ["cache miss overhead in-process", micro["miss_overhead_us"], "µs", "reported", True],
            [
                "cached tools/list requests per server CPU-second / bare",
                e2e["cpu_ratio"],
                "x",
                f"≥ {THROUGHPUT_TARGET:g}",
                e2e["cpu_ratio"] >= THROUGHPUT_TARGET,
            ],
            [
                "cached tools/list throughput / bare",
                e2e["ratio"],
                "x",
                f"≥ {THROUGHPUT_TARGET:g}",
                e2e["ratio"] >= THROUGHPUT_TARGET,
            ],
        ],
    }


def main(quick: bool) -> dict[str, Any]:
    return asyncio.run(run(quick))


if __name__ == "__main__":
    main(quick=True)
