"""Instructions per request, counted by valgrind's callgrind: a measure the VM's noise cannot move.

Wall-clock throughput on this 2-core VM drifts by ±15 % between runs, more than the
core's cost, so the end-to-end ratio needs many repeats. Instruction counts are
repeatable: the same binary, inputs and hash seed give the same total. This
benchmark drives each app of `tests.benchmarks.apps` in-process (a real ASGI call
per request, as uvicorn makes it: the SDK app, its session manager, its tool thread;
only the socket is missing) under `valgrind --tool=callgrind`, once with `low` and
once with `high` requests, and divides the difference by `high - low`, so start-up
and imports cancel out. The ratio bare/app of instructions per request is the
throughput ratio a CPU-bound server would have if every instruction cost the same;
cache effects are not counted, so quote it beside the end-to-end figure, not instead.

    python -m tests.benchmarks --only instructions
    python -m tests.benchmarks.bench_instructions drive core 200   # what valgrind runs
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import modern_headers, section, table, tools_call_body
from .apps import APPS, STACKS

ROOT = Path(__file__).resolve().parents[2]
_COLLECTED = re.compile(rb"Collected\s*:\s*(\d+)")


Request = Callable[[int], Awaitable[None]]
"""Send one modern `tools/call` of `echo` with this id into the app and check it answered 200."""


async def drive(app_name: str, requests: int) -> None:
    """Send `requests` modern `tools/call`s of `echo` straight into the app (one at a time)."""

    async def loop(one: Request) -> None:
        for i in range(requests):
            await one(100_000 + i)

    await serve_requests(app_name, loop)


async def serve_requests(app_name: str, body: Callable[[Request], Awaitable[None]]) -> None:
    """Run `app_name`'s lifespan, hand `body` a function sending one request, shut down."""
    app = APPS[app_name]()
    headers = [(b"host", b"127.0.0.1:8000")] + [
        (k.encode(), v.encode()) for k, v in (*modern_headers(), *STACKS[app_name].headers)
    ]
    path = STACKS[app_name].path
    started, shutdown = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "lifespan.startup"}
            await shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    async def one(request_id: int) -> None:
        payload = tools_call_body(request_id)
        delivered = False
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the request ends by itself
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [*headers, (b"content-length", str(len(payload)).encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await app(scope, receive, send)
        if statuses != [200]:
            raise RuntimeError(f"{app_name}: request {request_id} answered {statuses}")

    task = asyncio.create_task(lifespan())
    await asyncio.wait_for(started.wait(), 30)
    try:
        await body(one)
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 30)


@dataclass
class Count:
    app: str
    per_request: float
    low: int
    high: int


def _callgrind(app: str, requests: int, workdir: Path) -> int:
    out = workdir / f"callgrind.{app}.{requests}"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "tests.benchmarks.bench_instructions",
        "drive",
        app,
        str(requests),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=1800, check=False)
    match = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind of {app} x{requests} failed:\n{done.stderr.decode(errors='replace')[-2000:]}")
    return int(match.group(1))


def count(apps: Sequence[str], low: int, high: int) -> list[Count]:
    """Callgrind totals for each app at `low` and `high` requests (two at a time: 2 cores)."""
    return per_request(apps, low, high, _callgrind)


def per_request(apps: Sequence[str], low: int, high: int, callgrind: Callable[[str, int, Path], int]) -> list[Count]:
    """`callgrind(app, requests, workdir)` at `low` and `high` requests for each app, two at a time; the
    difference of the totals over `high - low` is the app's instructions per request."""
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {(app, n): pool.submit(callgrind, app, n, Path(tmp)) for app in apps for n in (low, high)}
        totals = {key: job.result() for key, job in jobs.items()}
    return [
        Count(app, (totals[app, high] - totals[app, low]) / (high - low), totals[app, low], totals[app, high])
        for app in apps
    ]


def main(
    apps: Sequence[str] = ("bare", "core"), low: int = 50, high: int = 250, *, wire: bool = False
) -> dict[str, Any] | None:
    """Count each app in process, or with `wire` through a uvicorn server loaded on loopback (:mod:`.bench_wire`)."""
    print(section(f"instructions per request{' over the wire' if wire else ''} (valgrind callgrind, deterministic)"))
    if shutil.which("valgrind") is None:
        print("  valgrind is not installed (apt-get install valgrind): skipped")
        return None
    started = time.perf_counter()
    if wire:
        from . import bench_wire

        print(f"  uvicorn (h11) loaded by 4 connections; {low} and {high} modern tools/calls of echo, the difference")
        counts = bench_wire.count(apps, low, high)
    else:
        print(f"  in-process modern tools/call of echo; {low} and {high} requests per app, the difference counted")
        counts = count(apps, low, high)
    base = counts[0].per_request
    rows = [
        [c.app, f"{c.per_request:,.0f}", f"{c.per_request - base:+,.0f}", f"{base / c.per_request:.4f}"] for c in counts
    ]
    print(table(["app", "instructions/request", f"vs {counts[0].app}", f"{counts[0].app}/app"], rows))
    print(f"\n  instructions took {time.perf_counter() - started:.1f} s")
    return {
        "wire": wire,
        "low": low,
        "high": high,
        "per_request": {c.app: c.per_request for c in counts},
        "ratio": {c.app: base / c.per_request for c in counts[1:]},
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "drive":
        import logging

        logging.disable(logging.INFO)
        asyncio.run(drive(sys.argv[2], int(sys.argv[3])))
    else:
        main()
