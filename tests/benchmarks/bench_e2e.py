"""End-to-end `tools/call` throughput over loopback: the bare server vs the same server behind the core.

Each run starts a fresh uvicorn subprocess serving one app of `tests.benchmarks.apps`
(one worker, asyncio loop, h11, log level warning, no access log), so the server
has a core to itself while the load generator in this process uses the other one,
and so the few-percent differences between two processes of the same program
(memory layout, hash seed) are averaged over the repeats instead of being
attributed to the app. The load generator is a minimal asyncio HTTP/1.1 client:
`connections` keep-alive connections, each sending the modern (2026-07-28)
`tools/call` of `echo` with a 1 KB body as soon as the previous response is in,
for `warmup` seconds (not counted) and then `duration` seconds (counted:
completed `200` responses and their latency, write-to-last-byte). Runs alternate
bare/core in ABBA order so a drift of the machine falls on both alike. Load
targets only 127.0.0.1, every run is bounded in time and in requests, and each
server is stopped through its own process handle after its run, also on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ._common import BODY_SIZE, median, modern_headers, percentile, section, table, tools_call_body
from .apps import APPS, STACKS

HOST = "127.0.0.1"
TARGET_RATIO = 0.95
"""The issue's target: throughput through the core ≥ 95 % of the bare server's."""
BOOTSTRAP_RESAMPLES = 2000
MAX_REQUESTS_PER_RUN = 2_000_000
"""A hard bound on one run, whatever the duration."""
ROOT = Path(__file__).resolve().parents[2]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_FIRST_ID = 100_000  # ids stay 6 digits, so every request has the same Content-Length
_LAST_ID = 999_999


class LoadError(RuntimeError):
    """The server answered something the load generator cannot use."""


# --- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One uvicorn subprocess serving `tests.benchmarks.apps:<name>`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far."""
        with open(f"/proc/{self.process.pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime

    def log_tail(self, size: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-size:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # uvicorn shuts down gracefully on SIGTERM
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


def uvicorn_command(name: str, port: int) -> list[str]:
    """The server every e2e and wire benchmark runs: one uvicorn worker, asyncio, h11, no access log."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"tests.benchmarks.apps:{name}",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "asyncio",
        "--http",
        "h11",
        "--lifespan",
        "on",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def start_server(name: str, *, cpu: int | None = None, hash_seed: int = 0) -> Server:
    """Start one server; `hash_seed` fixes PYTHONHASHSEED, one of the things two processes of
    the same program differ by (the apps of one round get the same seed, rounds differ)."""
    port = free_port()
    command = uvicorn_command(name, port)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server; closed by Server.stop)
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    server = Server(name, port, process, log)
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(process.pid, {cpu})
    return server


async def wait_ready(server: Server, patience: float = 30.0, path: str | None = None, app: str | None = None) -> None:
    """Until the server answers a `tools/call` correctly (or fail with its log)."""
    deadline = time.monotonic() + patience
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise LoadError(f"{server.name} server exited ({server.process.returncode}):\n{server.log_tail()}")
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
        except OSError as exc:
            last = exc
            await asyncio.sleep(0.05)
            continue
        try:
            stack = STACKS[app or server.name]
            wire = Wire(server.port, path or stack.path, stack.headers)
            writer.write(wire.request(_FIRST_ID))
            status, body = await asyncio.wait_for(read_response(reader), 10)
            wire.check(status, body, _FIRST_ID)
            return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    raise LoadError(f"{server.name} server not ready after {patience:g} s ({last!r}):\n{server.log_tail()}")


# --- the load generator -------------------------------------------------------------------------


class Wire:
    """The bytes of one modern `tools/call` POST, with a 6-digit id spliced in."""

    def __init__(self, port: int, path: str = "/mcp", headers: tuple[tuple[str, str], ...] = ()) -> None:
        body = tools_call_body(_FIRST_ID)
        marker = b'"id":%d' % _FIRST_ID
        head, tail = body.split(marker)
        self.text = orjson.loads(body)["params"]["arguments"]["text"]
        lines = [f"POST {path} HTTP/1.1", f"host: {HOST}:{port}", "user-agent: mcp-bench/1"]
        lines += [f"{k}: {v}" for k, v in (*modern_headers(), *headers)]
        lines.append(f"content-length: {len(body)}")
        self._prefix = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + head + b'"id":'
        self._suffix = tail

    def request(self, request_id: int) -> bytes:
        return self._prefix + str(request_id).encode("ascii") + self._suffix

    def check(self, status: int, body: bytes, request_id: int) -> None:
        """Full check of one response: 200, the JSON-RPC result for this id, echoing the text."""
        if status != 200:
            raise LoadError(f"HTTP {status}: {body[:300]!r}")
        message = orjson.loads(body)
        if message.get("id") != request_id or message["result"]["content"][0]["text"] != self.text:
            raise LoadError(f"unexpected response: {body[:300]!r}")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise LoadError(f"not an HTTP/1.1 response: {head[:100]!r}")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 17)
        return status, await reader.readexactly(int(lower[at + 17 : end]))
    if b"\r\ntransfer-encoding: chunked" in lower:
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the empty line
                    pass
                return status, b"".join(chunks)
            chunks.append((await reader.readexactly(size + 2))[:-2])
    raise LoadError(f"response without Content-Length or chunked body: {head[:300]!r}")


@dataclass
class _Window:
    start: int
    end: int
    stop: bool = False
    sent: int = 0
    completed: int = 0
    errors: int = 0
    first_error: str | None = None
    latencies: list[int] = field(default_factory=list)


async def _connection(port: int, wire: Wire, window: _Window, index: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    next_id = _FIRST_ID + index
    checked = False
    clock = time.perf_counter_ns
    try:
        while not window.stop and window.sent < MAX_REQUESTS_PER_RUN:
            window.sent += 1
            request_id = next_id
            next_id = next_id + 16 if next_id + 16 <= _LAST_ID else _FIRST_ID + index
            began = clock()
            writer.write(wire.request(request_id))
            await writer.drain()
            try:
                status, body = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                window.errors += 1
                window.first_error = window.first_error or repr(exc)
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
                continue
            ended = clock()
            if not checked:
                try:
                    wire.check(status, body, request_id)  # once per connection: the whole body
                except LoadError:
                    window.stop = True  # no point in loading a server that answers wrongly
                    raise
                checked = True
            ok = status == 200 and b'"isError":false' in body
            if window.start <= ended < window.end:
                if ok:
                    window.completed += 1
                    window.latencies.append(ended - began)
                else:
                    window.errors += 1
                    window.first_error = window.first_error or f"HTTP {status}: {body[:200]!r}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class Run:
    """One timed run against one server."""

    app: str
    index: int
    seconds: float
    completed: int
    errors: int
    first_error: str | None
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu: float
    """Server CPU seconds / wall seconds during the measured window (1.0 = one core saturated)."""
    client_cpu: float

    @property
    def rps(self) -> float:
        return self.completed / self.seconds

    @property
    def server_us_per_request(self) -> float:
        """Server CPU time spent per completed request, in µs."""
        return self.server_cpu * self.seconds / self.completed * 1e6 if self.completed else float("nan")


async def _until(deadline_ns: int, tasks: list[asyncio.Task[None]]) -> None:
    """Sleep until `deadline_ns` (perf_counter_ns), but raise at once if a connection failed."""
    while (left := deadline_ns - time.perf_counter_ns()) > 0:
        done, _ = await asyncio.wait(tasks, timeout=left / 1e9, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        if len(done) == len(tasks):
            return  # all stopped by themselves (the request bound)


async def load(
    server: Server,
    *,
    index: int,
    connections: int,
    warmup: float,
    duration: float,
    path: str | None = None,
    app: str | None = None,
) -> Run:
    stack = STACKS[app or server.name]
    wire = Wire(server.port, path or stack.path, stack.headers)
    now = time.perf_counter_ns()
    window = _Window(start=now + int(warmup * 1e9), end=now + int((warmup + duration) * 1e9))
    tasks = [asyncio.create_task(_connection(server.port, wire, window, i)) for i in range(connections)]
    try:
        await _until(window.start, tasks)
        cpu0, client0, wall0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        await _until(window.end, tasks)
        cpu1, client1, wall1 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        window.stop = True
        done, pending = await asyncio.wait(tasks, timeout=10)
        if pending:
            raise LoadError(f"{len(pending)} connections did not finish within 10 s of the end")
        for task in done:
            if (exc := task.exception()) is not None:
                raise exc
    finally:
        window.stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall = wall1 - wall0
    lat = window.latencies
    return Run(
        app=server.name,
        index=index,
        seconds=(window.end - window.start) / 1e9,
        completed=window.completed,
        errors=window.errors,
        first_error=window.first_error,
        p50_ms=percentile(lat, 50) / 1e6,
        p90_ms=percentile(lat, 90) / 1e6,
        p99_ms=percentile(lat, 99) / 1e6,
        server_cpu=(cpu1 - cpu0) / wall,
        client_cpu=(client1 - client0) / wall,
    )


# --- orchestration ------------------------------------------------------------------------------


def schedule(apps: Sequence[str], repeats: int) -> list[str]:
    """ABBA order: bare core, core bare, bare core, ... (each app `repeats` times)."""
    order: list[str] = []
    for i in range(repeats):
        order += list(apps) if i % 2 == 0 else list(reversed(apps))
    return order


@contextlib.contextmanager
def serving(name: str, *, pin: bool, hash_seed: int = 0) -> Iterator[Server]:
    """A fresh server process for one run, stopped by its handle afterwards (also on errors)."""
    server = start_server(name, cpu=1 if pin else None, hash_seed=hash_seed)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class E2EResult:
    apps: tuple[str, ...]
    """The apps in schedule order; the first is the baseline (`bare`)."""
    runs: list[Run]
    connections: int
    warmup: float
    duration: float
    pinned: bool
    seconds: float
    mode: str = "shared"

    @property
    def base(self) -> str:
        return self.apps[0]

    @property
    def simultaneous(self) -> bool:
        """The apps of a round ran at the same time (`paired`, `same-cpu`): the per-round ratio is the measure."""
        return self.mode in ("paired", "same-cpu")

    def of(self, app: str) -> list[Run]:
        return [r for r in self.runs if r.app == app]

    def median_rps(self, app: str) -> float:
        return median([r.rps for r in self.of(app)])

    def ratio(self, app: str = "core") -> float:
        """Throughput of `app` over the baseline's: the median of the per-round ratios when the apps
        of a round ran at the same time, else the ratio of the medians."""
        if self.simultaneous:
            return median(self.pair_ratios(app))
        return self.median_rps(app) / self.median_rps(self.base)

    def ratio_interval(self, app: str = "core") -> tuple[float, float]:
        """95 % bootstrap interval of the median per-round ratio (rounds resampled, fixed seed)."""
        pairs = self.pair_ratios(app)
        rng = random.Random(2026)
        medians = [median([pairs[rng.randrange(len(pairs))] for _ in pairs]) for _ in range(BOOTSTRAP_RESAMPLES)]
        return percentile(medians, 2.5), percentile(medians, 97.5)

    def cpu_ratio(self, app: str = "core") -> float:
        """Requests per CPU-second of `app` over the baseline's (ratio of the median CPU µs per request).

        At saturation a server's throughput is the CPU it gets divided by its CPU per request,
        so this is the throughput ratio on a core of its own, whatever share the scheduler gave.
        """
        base = median([r.server_us_per_request for r in self.of(self.base) if r.completed])
        return base / median([r.server_us_per_request for r in self.of(app) if r.completed])

    def pair_cpu_ratios(self, app: str = "core") -> list[float]:
        return [b.server_us_per_request / a.server_us_per_request for b, a in self._served_pairs(app)]

    def pair_ratios(self, app: str = "core") -> list[float]:
        """`app` over the baseline in each round of the schedule (runs close in time)."""
        return [a.rps / b.rps for b, a in self._served_pairs(app)]

    def _served_pairs(self, app: str) -> list[tuple[Run, Run]]:
        """(baseline, app) per round, without rounds where either served nothing: the host stalled
        (seen on a machine loaded by others), which says nothing about the apps."""
        return [(b, a) for b, a in zip(self.of(self.base), self.of(app), strict=False) if b.rps > 0 and a.rps > 0]

    def as_dict(self) -> dict[str, Any]:
        others = self.apps[1:]
        return {
            "apps": list(self.apps),
            "connections": self.connections,
            "warmup_s": self.warmup,
            "duration_s": self.duration,
            "pinned": self.pinned,
            "runs": [
                {
                    "app": r.app,
                    "index": r.index,
                    "rps": r.rps,
                    "completed": r.completed,
                    "errors": r.errors,
                    "p50_ms": r.p50_ms,
                    "p90_ms": r.p90_ms,
                    "p99_ms": r.p99_ms,
                    "server_cpu": r.server_cpu,
                    "client_cpu": r.client_cpu,
                    "server_us_per_request": r.server_us_per_request,
                }
                for r in self.runs
            ],
            "median_rps": {app: self.median_rps(app) for app in self.apps},
            "mode": self.mode,
            "ratio": {app: self.ratio(app) for app in others},
            "ratio_interval_95": {app: self.ratio_interval(app) for app in others},
            "cpu_ratio": {app: self.cpu_ratio(app) for app in others},
            "pair_cpu_ratios": {app: self.pair_cpu_ratios(app) for app in others},
            "pair_ratios": {app: self.pair_ratios(app) for app in others},
            "target_ratio": TARGET_RATIO,
            "seconds": self.seconds,
        }


def _run_line(run: Run, total: int) -> str:
    line = (
        f"  run {run.index:>2}/{total} {run.app:<5} {run.rps:>8,.0f} req/s  p50 {run.p50_ms:6.2f} ms"
        f"  p90 {run.p90_ms:6.2f}  p99 {run.p99_ms:6.2f}  server CPU {run.server_cpu:4.0%}"
        f"  ({run.server_us_per_request:,.0f} µs/req)  client CPU {run.client_cpu:4.0%}  errors {run.errors}"
    )
    if run.first_error:
        line += f"\n      first error: {run.first_error}"
    return line


async def run_shared(
    *, repeats: int, warmup: float, duration: float, connections: int, apps: Sequence[str]
) -> E2EResult:
    """One server process hosts every app (`apps:shared`, at `/<app>/mcp`); windows load them in turn (ABBA).

    Same process, same memory layout, same vCPU luck; consecutive windows a few seconds
    apart share the machine's drift. What differs between two windows is the app.
    """
    started = time.perf_counter()
    order = schedule(apps, repeats)
    print(section(f"e2e: modern tools/call ({BODY_SIZE} B body) over loopback, {connections} keep-alive connections"))
    print(
        f"  shared: one uvicorn subprocess (1 worker, asyncio, h11) serving {', '.join(apps)} at /<app>/mcp;"
        f" windows of {warmup:g} s warm-up + {duration:g} s measured, in the order {' '.join(order)}"
    )
    runs: list[Run] = []
    os.environ["BENCH_STACKS"] = ",".join(apps)  # the server builds only these (inherited by the subprocess)
    with serving("shared", pin=False) as server:
        for app in apps:
            await wait_ready(server, path=f"/{app}/mcp", app=app)
        for i, app in enumerate(order, 1):
            run = await load(
                server,
                index=i,
                connections=connections,
                warmup=warmup,
                duration=duration,
                path=f"/{app}/mcp",
                app=app,
            )
            run.app = app
            runs.append(run)
            print(_run_line(run, len(order)), flush=True)
    return E2EResult(tuple(apps), runs, connections, warmup, duration, False, time.perf_counter() - started, "shared")


async def run_paired(
    *, repeats: int, warmup: float, duration: float, connections: int, apps: Sequence[str], same_cpu: bool = False
) -> E2EResult:
    """Each round serves every app at once (fresh processes) and loads them in the same window.

    The VM's speed drifts by ±15 % over tens of seconds, and by ±25 % between half-second
    slices; loading the apps side by side makes a drift fall on all of them alike, so
    the per-round ratio measures the app. `paired`: each server takes a core where the
    scheduler puts it. `same-cpu`: every server is pinned to CPU 1 and the load generator
    to CPU 0, so the servers share one CPU in time slices of a few milliseconds, each
    saturated by its own connections: they see the same machine, and at equal shares
    of the CPU their throughputs compare as their costs per request.
    """
    started = time.perf_counter()
    mode = "same-cpu" if same_cpu else "paired"
    print(section(f"e2e: modern tools/call ({BODY_SIZE} B body) over loopback, {connections} keep-alive connections"))
    where = "all pinned to CPU 1 (the load generator to CPU 0)" if same_cpu else "side by side"
    print(
        f"  {mode}: each round runs fresh uvicorn subprocesses of {', '.join(apps)} at once, {where}"
        f" (1 worker each, asyncio, h11), each loaded by its own {connections} connections in the same window;"
        f" {warmup:g} s warm-up + {duration:g} s measured, {repeats} rounds"
    )
    runs: list[Run] = []
    total = repeats * len(apps)
    original_affinity = os.sched_getaffinity(0)
    try:
        if same_cpu:
            os.sched_setaffinity(0, {0})
        for round_ in range(repeats):
            order = list(apps) if round_ % 2 == 0 else list(reversed(apps))  # alternate who starts first
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(serving(name, pin=same_cpu, hash_seed=round_)) for name in order]
                for server in servers:
                    await wait_ready(server)
                first = round_ * len(apps) + 1
                done = await asyncio.gather(
                    *(
                        load(server, index=first + i, connections=connections, warmup=warmup, duration=duration)
                        for i, server in enumerate(servers)
                    )
                )
            for run in sorted(done, key=lambda r: apps.index(r.app)):
                runs.append(run)
                print(_run_line(run, total), flush=True)
    finally:
        if same_cpu:
            os.sched_setaffinity(0, original_affinity)
    return E2EResult(tuple(apps), runs, connections, warmup, duration, same_cpu, time.perf_counter() - started, mode)


async def run_e2e(
    *,
    repeats: int,
    warmup: float,
    duration: float,
    connections: int,
    pin: bool,
    apps: Sequence[str] = ("bare", "core"),
    mode: str = "same-cpu",
) -> E2EResult:
    """Serve and load each app `repeats` times; the first app is the baseline.

    Modes: `shared` (the default) serves all apps from one process and loads them in
    turn; `paired` runs a fresh process per app side by side in the same window;
    `sequential` runs a fresh process per app one after another (ABBA).
    """
    unknown = [name for name in apps if name not in APPS]
    if unknown or len(apps) < 2:
        raise ValueError(f"apps must name at least two of {sorted(APPS)}, the baseline first; got {list(apps)}")
    if mode == "shared":
        return await run_shared(repeats=repeats, warmup=warmup, duration=duration, connections=connections, apps=apps)
    if mode in ("paired", "same-cpu"):
        return await run_paired(
            repeats=repeats,
            warmup=warmup,
            duration=duration,
            connections=connections,
            apps=apps,
            same_cpu=mode == "same-cpu",
        )
    started = time.perf_counter()
    order = schedule(apps, repeats)
    print(section(f"e2e: modern tools/call ({BODY_SIZE} B body) over loopback, {connections} keep-alive connections"))
    print(
        f"  a fresh uvicorn subprocess per run (1 worker, asyncio, h11); {warmup:g} s warm-up"
        f" + {duration:g} s measured; order {' '.join(order)}"
        + ("; server pinned to CPU 1, client to CPU 0" if pin else "")
    )
    original_affinity = os.sched_getaffinity(0) if pin else None
    runs: list[Run] = []
    try:
        if pin:
            os.sched_setaffinity(0, {0})
        for i, name in enumerate(order, 1):
            with serving(name, pin=pin, hash_seed=(i - 1) // len(apps)) as server:
                await wait_ready(server)
                run = await load(server, index=i, connections=connections, warmup=warmup, duration=duration)
            runs.append(run)
            print(_run_line(run, len(order)), flush=True)
    finally:
        if original_affinity is not None:
            os.sched_setaffinity(0, original_affinity)
    return E2EResult(tuple(apps), runs, connections, warmup, duration, pin, time.perf_counter() - started, "sequential")


def report(result: E2EResult) -> str:
    frozen = os.environ.get("BENCH_GC_FREEZE") == "1"
    lines = ["", f"  summary (medians over runs{'; servers ran gc.freeze() after start-up' if frozen else ''})"]
    rows = []
    for app in result.apps:
        runs = result.of(app)
        rps = [r.rps for r in runs]
        rows.append(
            [
                app,
                len(runs),
                f"{median(rps):,.0f}",
                f"{min(rps):,.0f}..{max(rps):,.0f}",
                f"{median([r.p50_ms for r in runs]):.2f}",
                f"{median([r.p90_ms for r in runs]):.2f}",
                f"{median([r.p99_ms for r in runs]):.2f}",
                f"{median([r.server_us_per_request for r in runs]):,.0f}",
                f"{median([r.server_cpu for r in runs]):.0%}",
                f"{median([r.client_cpu for r in runs]):.0%}",
                sum(r.errors for r in runs),
            ]
        )
    headers = ["app", "runs", "req/s", "range", "p50 ms", "p90 ms", "p99 ms", "server CPU µs/req", "server CPU"]
    lines.append(table([*headers, "client CPU", "errors"], rows))
    base = result.base
    base_us = median([r.server_us_per_request for r in result.of(base)])
    for app in result.apps[1:]:
        ratio, pairs = result.ratio(app), result.pair_ratios(app)
        app_us = median([r.server_us_per_request for r in result.of(app)])
        how = "median of per-round ratios" if result.simultaneous else "ratio of medians"
        low, high = result.ratio_interval(app)
        lines.append(
            f"\n  throughput {app}/{base} ({how}): {ratio:.3f}"
            + (f"  (target ≥ {TARGET_RATIO:g}: {'PASS' if ratio >= TARGET_RATIO else 'MISS'})" if app == "core" else "")
        )
        lines.append(
            f"  per-round ratios: {' '.join(f'{p:.3f}' for p in pairs)}"
            f"  (median {median(pairs):.3f}, 95 % bootstrap interval {low:.3f}..{high:.3f})"
        )
        lines.append(f"  server CPU per request, {app} - {base}: {app_us - base_us:+.1f} µs")
        cpu_pairs = result.pair_cpu_ratios(app)
        lines.append(
            f"  requests per CPU-second {app}/{base} (ratio of median CPU µs/req): {result.cpu_ratio(app):.3f};"
            f" per round: {' '.join(f'{p:.3f}' for p in cpu_pairs)}  (median {median(cpu_pairs):.3f})"
        )
    if max(r.client_cpu for r in result.runs) > 0.8:
        lines.append("  WARNING: the load generator used > 80 % of a core; it may be the bottleneck")
    if any(r.errors for r in result.runs):
        lines.append("  WARNING: some requests failed; see the first errors above")
    lines.append(f"\n  e2e took {result.seconds:.1f} s")
    return "\n".join(lines)


def main(
    repeats: int = 5,
    warmup: float = 1.0,
    duration: float = 5.0,
    connections: int = 16,
    pin: bool = False,
    apps: Sequence[str] = ("bare", "core"),
    mode: str = "same-cpu",
) -> E2EResult:
    result = asyncio.run(
        run_e2e(
            repeats=repeats,
            warmup=warmup,
            duration=duration,
            connections=connections,
            pin=pin,
            apps=apps,
            mode="sequential" if pin else mode,
        )
    )
    print(report(result))
    return result


if __name__ == "__main__":
    main()
