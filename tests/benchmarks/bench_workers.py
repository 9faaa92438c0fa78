"""`mcp-gateway serve --workers N`: throughput of 1, 2 and 4 workers in front of a remote backend pool.

- Backends: 3 uvicorn processes of the bare test server (`tests.benchmarks.apps:bare`) on loopback,
  one `[[servers]]` entry `url = [...]` (a pool balanced by in-flight requests), mounted at `/mcp/pool`.
- Gateway: the real CLI (`python -m mcp_middleware.gateway serve --workers N`), no auth, no
  stores, warnings-only logs, so the figure is the gateway's proxying and the workers' sharing.
- Load: modern `tools/call` of `echo` (1 KB) over `--connections` keep-alive connections (default
  16), opened 20 ms apart while the load runs (a burst of connects could all be accepted by the one
  worker that wakes first), `duration` seconds after a warm-up; runs alternate 1, 2, 4, 4, 2, 1 …;
  medians of the runs. Each run also reports how many connections each worker held, and the CPU
  time the gateway's processes (supervisor and workers) spent per request: the figure that says
  whether N workers cost more per request, which throughput on a loaded machine cannot.

Wall-clock figures: on a shared machine they are noise beyond their order of magnitude, and with
2 cores the load generator, 3 backends and N workers share two CPUs (`os.cpu_count()` is printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from ._common import median, modern_headers, percentile, section, table, tools_call_body
from .bench_e2e import HOST, ROOT, LoadError, Server, free_port, read_response, start_server, wait_ready

WORKERS = (1, 2, 4)
_FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")
BACKENDS = 3
_STAGGER = 0.02
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Gateway:
    """`mcp-gateway serve --workers N` in a group of its own, its output in a temporary file."""

    def __init__(self, config: Path, workers: int) -> None:
        self.port = free_port()
        self.workers = workers
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        command = [sys.executable, "-m", "mcp_middleware.gateway", "serve", "-c", str(config)]
        command += ["--port", str(self.port), "--workers", str(workers)]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def wait_started(self, patience: float = 120.0) -> None:
        """Until the banner (printed once every worker serves)."""
        deadline = time.monotonic() + patience
        while "mcp-gateway on" not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise LoadError(f"gateway with {self.workers} workers did not start:\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The processes that serve (the supervisor's workers; with one worker, the gateway itself)."""
        if self.workers == 1:
            return [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            pids = [int(pid) for pid in children.read_text().split()]
            return [pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        return []

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)  # the supervisor stops its workers; the group catches stragglers
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(10)
        self.log.close()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` so far (a process that is gone counts nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def connections_per_worker(pids: list[int], port: int) -> list[int]:
    """Established connections to `port` each worker holds (its socket inodes in /proc/net/tcp)."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "01":
                    inodes.add(fields[9])
    counts = []
    for pid in pids:
        held = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    match = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                    held += bool(match and match.group(1) in inodes)
        counts.append(held)
    return sorted(counts, reverse=True)


class Request:
    """The bytes of one modern `tools/call` POST to the pool's mount, its 6-digit id spliced in."""

    def __init__(self, port: int) -> None:
        body = tools_call_body(100_000)
        self.head, self.tail = body.split(b'"id":100000')
        headers = modern_headers()
        lines = ["POST /mcp/pool HTTP/1.1", f"host: {HOST}:{port}", *(f"{k}: {v}" for k, v in dict(headers).items())]
        lines.append(f"content-length: {len(body)}")
        self.prefix = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def bytes(self, request_id: int) -> bytes:
        return self.prefix + self.head + b'"id":%d' % request_id + self.tail


async def load(gateway: Gateway, seconds: float, connections: int) -> dict[str, Any]:
    request = Request(gateway.port)
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    spread: list[int] = []

    async def connection(index: int) -> None:
        await asyncio.sleep(index * _STAGGER)
        reader, writer = await asyncio.open_connection(HOST, gateway.port)
        request_id = 100_000 + index
        try:
            while time.perf_counter() < stop:
                sent = time.perf_counter()
                writer.write(request.bytes(request_id))
                await writer.drain()
                status, body = await read_response(reader)
                if status != 200 or b'"result"' not in body or b'"id":%d' % request_id not in body:
                    raise LoadError(f"{gateway.workers} workers: {status} {body[:200]!r}")
                latencies.append(time.perf_counter() - sent)
                request_id = 100_000 + (request_id - 100_000 + connections) % 899_999
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def look() -> None:  # once every connection is open, which worker holds which
        await asyncio.sleep(connections * _STAGGER + min(0.5, seconds / 4))
        spread.extend(connections_per_worker(gateway.worker_pids(), gateway.port))

    serving = [gateway.process.pid, *gateway.worker_pids()] if gateway.workers > 1 else gateway.worker_pids()
    cpu_before = cpu_seconds(serving)
    started = time.perf_counter()
    await asyncio.gather(look(), *(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(serving) - cpu_before
    return {
        "cpu_ms_per_request": cpu * 1000 / max(1, len(latencies)),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "connections_per_worker": spread,
    }


def _config(directory: Path, backends: list[Server]) -> Path:
    urls = ", ".join(f'"http://{HOST}:{server.port}/mcp"' for server in backends)
    path = directory / "gateway.toml"
    path.write_text(
        f'[gateway]\nlog_level = "warning"\nshutdown_timeout = 2\n[aggregate]\nenabled = false\n'
        f'[[servers]]\nname = "pool"\nurl = [{urls}]\n',
        encoding="utf-8",
    )
    return path


async def run(quick: bool, connections: int = 16) -> dict[str, Any]:
    repeats, warmup, duration = (1, 0.5, 2.0) if quick else (3, 1.0, 5.0)
    cpus = os.cpu_count() or 1
    print(
        section(
            f"workers: modern tools/call through `serve --workers N` to a pool of {BACKENDS} backends, "
            f"{connections} connections, {cpus} CPUs"
        )
    )
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in WORKERS}
    backends = [start_server("bare", hash_seed=index) for index in range(BACKENDS)]
    try:
        for server in backends:
            await wait_ready(server)
        with tempfile.TemporaryDirectory() as scratch:
            config = _config(Path(scratch), backends)
            for round_ in range(repeats):
                for count in WORKERS if round_ % 2 == 0 else tuple(reversed(WORKERS)):
                    gateway = Gateway(config, count)
                    try:
                        await asyncio.to_thread(gateway.wait_started)
                        await load(gateway, warmup, connections)
                        figures = await load(gateway, duration, connections)
                    finally:
                        gateway.stop()
                    runs[count].append(figures)
                    print(
                        f"  round {round_ + 1} {count} worker{'s' if count > 1 else ' '} {figures['rps']:8,.0f} req/s"
                        f"  p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:7.2f} ms"
                        f"  gateway CPU {figures['cpu_ms_per_request']:.2f} ms/request"
                        f"  connections per worker {figures['connections_per_worker']}",
                        flush=True,
                    )
    finally:
        for server in backends:
            server.stop()
    medians = {count: {k: median([r[k] for r in done]) for k in _FIGURES} for count, done in runs.items()}
    one = medians[1]["rps"]
    rows = [
        [
            count,
            f"{m['rps']:,.0f}",
            f"{m['p50_ms']:.2f}",
            f"{m['p99_ms']:.2f}",
            f"{m['cpu_ms_per_request']:.2f}",
            f"{m['rps'] / one:.2f}",
        ]
        for count, m in medians.items()
    ]
    print()
    print(table(["workers", "req/s (median)", "p50 ms", "p99 ms", "gateway CPU ms/req", "vs 1 worker"], rows))
    return {
        "cpus": cpus,
        "connections": connections,
        "backends": BACKENDS,
        "medians": {str(count): m for count, m in medians.items()},
        "runs": {str(count): done for count, done in runs.items()},
        "targets": [
            [f"{count} workers throughput / 1 worker ({cpus} CPUs)", medians[count]["rps"] / one, "x", "reported", True]
            for count in WORKERS[1:]
        ],
    }


def main(quick: bool) -> dict[str, Any]:
    return asyncio.run(run(quick))
