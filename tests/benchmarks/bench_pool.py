"""Issue 18: what balancing costs a request, a pool of 3 URL replicas against a one-URL mount.

The router runs in this process and is called as uvicorn calls it (one ASGI call per request, no
client socket); its backends are `tests.benchmarks.apps:bare` uvicorn subprocesses on loopback,
reached through the router's own keep-alive proxy. Two routers, built side by side:

* `mount`: `/mcp/bench` is `HttpBackend(url_0)`, the single-URL mount;
* `pool`: `/mcp/bench` is `PoolBackend([HttpBackend(url_0), HttpBackend(url_1), HttpBackend(url_2)])`
  (least in flight, breaker per replica, probing off while measured: a probe is the pool's
  background work, not a request's);
* `pool_same`: the same pool with `url_0` three times: the pool's own code, without the
  difference three backend processes make to the kernel's and the event loop's work;
* `mounts3` (timed only, a control): three one-URL mounts, one per backend, the requests sent to
  each in turn by the driver: spreading over three processes without any balancing code.

Each sends the 1 KB modern `tools/call` of `echo`, one at a time, in interleaved rounds (ABBA);
per request: this process's CPU time (the router's own work: the backends are other processes)
and wall time, medians of the rounds. The difference pool - mount is what balancing adds;
target ≤ 20 µs. The same routers are also counted by callgrind (instructions per request,
`low` and `high` requests, the difference), which the machine's load cannot move.

    python -m tests.benchmarks --only pool
    python -m tests.benchmarks.bench_pool drive pool 200 URL URL URL   # what valgrind runs
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message

from mcp_middleware.core.lifespan import run_lifespan
from mcp_middleware.router import HttpBackend, McpRouter, PoolBackend

from ._common import median, modern_headers, section, table, tools_call_body, verdict
from .bench_e2e import Server, start_server, wait_ready
from .bench_instructions import per_request

TARGET_US = 20.0
KINDS = ("mount", "pool", "pool_same")
TIMED = (*KINDS, "mounts3")
ROOT = Path(__file__).resolve().parents[2]
_COLLECTED = re.compile(rb"Collected\s*:\s*(\d+)")
_HEADERS = [(b"host", b"127.0.0.1:8000")] + [(k.encode(), v.encode()) for k, v in modern_headers()]


def router_of(kind: str, urls: Sequence[str]) -> McpRouter:
    """The single-URL mount (`urls[0]`) or the pool of every URL, at `/mcp/bench`."""
    router = McpRouter(aggregate_path=None)
    if kind == "mount":
        router.mount("bench", HttpBackend(urls[0]))
    elif kind == "mounts3":
        for index, url in enumerate(urls):
            router.mount(f"bench{index}", HttpBackend(url))
    else:
        members = urls if kind == "pool" else [urls[0]] * len(urls)
        router.mount("bench", PoolBackend([HttpBackend(url) for url in members], probe_interval=3600))
    return router


async def call(app: ASGIApp, request_id: int, path: str = "/mcp/bench") -> None:
    """One modern `tools/call` of `echo` into `app` at `path`, its answer read to the end."""
    body = tools_call_body(request_id)
    delivered = False
    status = 0
    answer: list[bytes] = []

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the request ends by itself
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            answer.append(message.get("body", b""))

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
        "headers": [*_HEADERS, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    text = b"".join(answer)
    if status != 200 or b'"result"' not in text or b'"isError":true' in text:
        raise RuntimeError(f"request {request_id} answered {status}: {text[:300]!r}")


async def drive(kind: str, urls: Sequence[str], requests: int) -> None:
    """`requests` calls, one at a time, through one router (what callgrind counts)."""
    router = router_of(kind, urls)
    async with run_lifespan(router):
        for index in range(requests):
            await call(router, 100_000 + index)


def _path(kind: str, request_id: int) -> str:
    return f"/mcp/bench{request_id % 3}" if kind == "mounts3" else "/mcp/bench"


async def timed(urls: Sequence[str], *, rounds: int, per_round: int) -> dict[str, dict[str, list[float]]]:
    """CPU and wall µs per request of each router, one figure per round, rounds interleaved ABBA."""
    routers = {kind: router_of(kind, urls) for kind in TIMED}
    figures: dict[str, dict[str, list[float]]] = {kind: {"cpu": [], "user": [], "wall": []} for kind in TIMED}
    async with run_lifespan(routers["mount"]), run_lifespan(routers["pool"]):
        for kind in TIMED:  # warm: connections opened to every replica, code paths compiled
            for index in range(30):
                await call(routers[kind], index, _path(kind, index))
        request_id = 1000
        for round_index in range(rounds):
            for kind in TIMED if round_index % 2 == 0 else reversed(TIMED):
                cpu, user, wall = (
                    time.process_time(),
                    resource.getrusage(resource.RUSAGE_SELF).ru_utime,
                    time.perf_counter(),
                )
                for _ in range(per_round):
                    request_id += 1
                    await call(routers[kind], request_id, _path(kind, request_id))
                figures[kind]["cpu"].append((time.process_time() - cpu) / per_round * 1e6)
                figures[kind]["user"].append(
                    (resource.getrusage(resource.RUSAGE_SELF).ru_utime - user) / per_round * 1e6
                )
                figures[kind]["wall"].append((time.perf_counter() - wall) / per_round * 1e6)
    return figures


def _callgrind(urls: Sequence[str]) -> Any:
    def run(kind: str, requests: int, workdir: Path) -> int:
        out = workdir / f"callgrind.{kind}.{requests}"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        command += ["-m", "tests.benchmarks.bench_pool", "drive", kind, str(requests), *urls]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=1800, check=False)
        match = _COLLECTED.search(done.stderr)
        if done.returncode != 0 or match is None:
            raise RuntimeError(
                f"callgrind of {kind} x{requests} failed:\n{done.stderr.decode(errors='replace')[-2000:]}"
            )
        return int(match.group(1))

    return run


async def _ready(servers: Sequence[Server]) -> None:
    for server in servers:
        await wait_ready(server, app="bare")


def main(quick: bool) -> dict[str, Any]:
    servers = [start_server("bare") for _ in range(3)]
    rounds, per_round = (6, 100) if quick else (20, 300)
    low, high = (20, 70) if quick else (50, 250)
    try:
        asyncio.run(_ready(servers))
        urls = [f"http://127.0.0.1:{server.port}/mcp" for server in servers]
        figures = asyncio.run(timed(urls, rounds=rounds, per_round=per_round))
        counts = None
        if shutil.which("valgrind") is not None:
            counts = {c.app: c.per_request for c in per_request(KINDS, low, high, _callgrind(urls))}
    finally:
        for server in servers:
            server.stop()
    cpu = {kind: median(figures[kind]["cpu"]) for kind in TIMED}
    user = {kind: median(figures[kind]["user"]) for kind in TIMED}
    wall = {kind: median(figures[kind]["wall"]) for kind in TIMED}
    pairs = [p - m for p, m in zip(figures["pool"]["cpu"], figures["mount"]["cpu"], strict=True)]
    added = median(pairs)
    lines = [section("pool: 3 URL replicas vs a one-URL mount (router in process, backends on loopback)")]
    lines.append(f"  modern tools/call of echo, one at a time; {rounds} rounds of {per_round} per router, ABBA")
    lines.append("  wall-clock and CPU figures are noise on a loaded machine: medians of the rounds")
    rows = [[kind, f"{cpu[kind]:.1f}", f"{user[kind]:.1f}", f"{wall[kind]:.1f}"] for kind in TIMED]
    same = median([p - m for p, m in zip(figures["pool_same"]["cpu"], figures["mount"]["cpu"], strict=True)])
    lines.append(table(["router", "CPU µs/request (router process)", "of which user", "wall µs/request"], rows))
    lines.append(
        f"  balancing adds {added:+.1f} µs CPU a request (median of per-round differences "
        f"{min(pairs):+.1f} … {max(pairs):+.1f}); ≤ {TARGET_US:g} µs: {verdict(added <= TARGET_US)}"
    )
    spread = median([p - m for p, m in zip(figures["mounts3"]["cpu"], figures["mount"]["cpu"], strict=True)])
    lines.append(f"  the pool's code alone (one backend three times): {same:+.1f} µs CPU a request")
    lines.append(f"  three one-URL mounts in turn (no balancing, the same three backends): {spread:+.1f} µs CPU")
    if counts is not None:
        lines.append(
            f"  instructions per request (callgrind, {low} and {high} requests, the difference): "
            + ", ".join(f"{kind} {counts[kind]:,.0f}" for kind in KINDS)
            + f"; pool - mount {counts['pool'] - counts['mount']:+,.0f}, pool_same - mount "
            + f"{counts['pool_same'] - counts['mount']:+,.0f}"
        )
    else:
        lines.append("  valgrind is not installed: no instruction count")
    print("\n".join(lines))
    return {
        "cpu_us": cpu,
        "user_us": user,
        "wall_us": wall,
        "added_cpu_us": added,
        "added_cpu_us_rounds": pairs,
        "pool_code_cpu_us": same,
        "spread_cpu_us": spread,
        "instructions": counts,
        "targets": [
            ["balancing: pool of 3 URLs vs one-URL mount, CPU a request", round(added, 1), "µs", "≤ 20", added <= 20]
        ],
    }


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "drive":
        import logging

        logging.disable(logging.INFO)
        asyncio.run(drive(sys.argv[2], sys.argv[4:], int(sys.argv[3])))
    else:
        main(quick="--quick" in sys.argv)
