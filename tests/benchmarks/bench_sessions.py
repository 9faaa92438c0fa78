"""What a sealed session handle costs per request: the gateway's session layer, in process.

    python -m tests.benchmarks --only sessions [--quick]

The layer (`SealedSessionMiddleware`) is driven directly around a trivial app answering a small
JSON result, with a legacy 1 KB `tools/call` carrying a handle this process has seen (the common
case: a dict lookup, the inner id swapped into the headers and the request view, the response's
session header swapped back). The request view is parsed once beforehand and left in the scope,
as the gateway's tracing leaves it, so the figure is the layer's own work and not the core's
parse (measured by `--only micro`). Cases are interleaved sample by sample; the layer's cost is
the median of (layer + app) minus the median of the app alone in the same run. Time is the
process's CPU time (`time.process_time`), not the wall clock: on a shared, loaded machine the wall
clock also counts the time other processes held the CPU.

Without `--quick`, valgrind's callgrind also counts the instructions the layer adds per request
(the difference of two runs, 100 and 1100 requests, so start-up cancels out), as `--only
instructions` does for whole apps: a figure the machine's load cannot move.

Also reported, per operation: opening a handle this process has not seen (AES-GCM, inflate,
JSON: once per session per process) and minting one (once per `initialize`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import CoreConfig, read_request
from mcp_middleware.core.sealing import Sealer
from mcp_middleware.gateway.sealed_sessions import SealedSessionMiddleware
from mcp_middleware.gateway.session_handles import SessionHandles, SessionState

from ._common import median, percentile, section, table, tools_call_body
from .bench_instructions import _COLLECTED, ROOT, per_request

TARGET_US = 10.0
"""The issue's target: a handle costs at most 10 µs per request."""

_INNER = "3f9c2a7be4d84f0e9a1b6c5d7e8f9a0b"
_INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"sampling": {}, "elicitation": {"form": {}}, "roots": {"listChanged": True}},
    "clientInfo": {"name": "mcp", "version": "2.3.0"},
}
_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"mcp-session-id", _INNER.encode())],
}
_END: Message = {"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":1,"result":{}}', "more_body": False}


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send(_START)
    await send(_END)


async def _drop(message: Message) -> None:
    return None


def _scope(handle: str, body: bytes) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"mcp-protocol-version", b"2025-11-25"),
        (b"mcp-session-id", handle.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return {"type": "http", "method": "POST", "path": "/mcp/a", "raw_path": b"/mcp/a", "root_path": "",
            "query_string": b"", "headers": headers, "scheme": "http", "http_version": "1.1"}  # fmt: skip


async def _prepared(handle: str, body: bytes) -> dict[str, Any]:
    """A scope whose request view is parsed already (as the gateway's tracing leaves it)."""
    scope = _scope(handle, body)
    message: Message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> Message:
        return message

    view, _ = await read_request(scope, receive, _drop, CoreConfig(paths=("*",)))
    assert view is not None and view.session_id == handle
    return scope


async def _per_request(app: Callable[..., Awaitable[None]], scope: dict[str, Any], body: bytes, n: int) -> float:
    message: Message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> Message:
        return message

    started = time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, _drop)
    return (time.process_time() - started) / n * 1e6


async def _check(layer: SealedSessionMiddleware, scope: dict[str, Any], body: bytes, handle: str) -> None:
    """The layer does its work (the inner id goes in, the handle comes back), or the figures mean nothing."""
    seen: list[Scope] = []
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await _app(scope, receive, send)

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await SealedSessionMiddleware(app, handles=layer.handles)(dict(scope), receive, send)
    assert dict(seen[0]["headers"])[b"mcp-session-id"] == _INNER.encode()
    assert dict(sent[0]["headers"])[b"mcp-session-id"] == handle.encode()


def _per_call(call: Callable[[], object], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) / n * 1e6


async def _measure(samples: int, n: int) -> dict[str, list[float]]:
    sealer = Sealer(["a benchmark's session key, long enough"], purpose="mcp-session")
    handles = SessionHandles(sealer)
    state = SessionState("ab" * 32, "/mcp/a", _INNER, _INIT)
    handle = handles.mint(state)
    layer = SealedSessionMiddleware(_app, handles=handles)
    body = tools_call_body(1, era="legacy")
    scope = await _prepared(handle, body)
    await _check(layer, scope, body, handle)
    cold = SessionHandles(sealer, max_cached=1)
    other = cold.mint(state)  # keeps evicting `handle` from `cold`: every open of it is a miss
    runs: dict[str, list[float]] = {"app": [], "layer": [], "open (not seen)": [], "mint": []}
    for sample in range(samples):
        order = ["app", "layer"] if sample % 2 == 0 else ["layer", "app"]
        for case in order:
            runs[case].append(await _per_request(_app if case == "app" else layer, scope, body, n))
        runs["open (not seen)"].append(_per_call(lambda: (cold.open(other), cold.open(handle)), max(1, n // 10)) / 2)
        runs["mint"].append(_per_call(lambda: handles.mint(state), max(1, n // 10)))
    return runs


# --- instructions (valgrind): deterministic, what the loaded machine's clock cannot move ------------

_CASES = ("app", "layer")


async def _drive(case: str, requests: int) -> None:
    """`requests` legacy calls with a seen handle into the trivial app, alone or behind the layer."""
    sealer = Sealer(["a benchmark's session key, long enough"], purpose="mcp-session")
    handles = SessionHandles(sealer)
    handle = handles.mint(SessionState("ab" * 32, "/mcp/a", _INNER, _INIT))
    body = tools_call_body(1, era="legacy")
    scope = await _prepared(handle, body)
    app = _app if case == "app" else SealedSessionMiddleware(_app, handles=handles)
    await _per_request(app, scope, body, requests)


def _callgrind(case: str, requests: int, workdir: Path) -> int:
    out = workdir / f"callgrind.sessions.{case}.{requests}"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", __name__]
    done = subprocess.run(
        [*command, "drive", case, str(requests)],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        timeout=1800,
        check=False,
    )
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind of {case} x{requests} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return int(match.group(1))


def instructions(low: int = 100, high: int = 1100) -> float | None:
    """Instructions per request the layer adds (layer - app), or None without valgrind."""
    if shutil.which("valgrind") is None:
        print("  valgrind is not installed: instruction counts skipped")
        return None
    counts = {count.app: count.per_request for count in per_request(_CASES, low, high, _callgrind)}
    added = counts["layer"] - counts["app"]
    print(f"\n  instructions per request (callgrind, {low} and {high} requests, the difference):")
    print(table(["case", "instructions"], [[case, f"{value:,.0f}"] for case, value in counts.items()]))
    print(f"  the layer adds {added:,.0f} instructions per request")
    return added


def main(quick: bool) -> dict[str, Any]:
    samples, n = (20, 500) if quick else (100, 2000)
    print(section("sessions: the sealed-handle layer per legacy request (in process; CPU time)"))
    runs = asyncio.run(_measure(samples, n))
    medians = {case: median(values) for case, values in runs.items()}
    cost = medians["layer"] - medians["app"]
    rows = [[case, medians[case], percentile(values, 90)] for case, values in runs.items()]
    print(table(["case", "µs median", "µs p90"], rows))
    print(f"\n  layer cost per request (layer - app, medians): {cost:.2f} µs (target ≤ {TARGET_US:g} µs)")
    added = None if quick else instructions()
    return {
        "medians_us": medians,
        "layer_cost_us": cost,
        "layer_instructions": added,
        "targets": [
            ["sealed handle, per request (seen before)", cost, "µs", f"≤ {TARGET_US:g}", cost <= TARGET_US],
            ["sealed handle, first open in a process", medians["open (not seen)"], "µs", "reported", True],
            ["sealed handle, minting (per initialize)", medians["mint"], "µs", "reported", True],
        ],
    }


if __name__ == "__main__":  # what valgrind runs: python -m tests.benchmarks.bench_sessions drive layer 1100
    if len(sys.argv) == 4 and sys.argv[1] == "drive" and sys.argv[2] in _CASES:
        asyncio.run(_drive(sys.argv[2], int(sys.argv[3])))
    else:
        sys.exit(f"usage: python -m tests.benchmarks.bench_sessions drive {{{','.join(_CASES)}}} REQUESTS")
