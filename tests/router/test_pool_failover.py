"""Proof under load: three replica processes, 16 clients in both eras, one replica SIGKILLed mid-run.

No read-only or idempotent call fails; a non-idempotent call in flight on the killed replica fails with
the documented error (502, -32017, `mayHaveRun: true`) and no other way; the replica is ejected within
the configured budget and readmitted once it runs again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError

from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.router import HttpBackend, McpRouter, PoolBackend
from tests.conftest import SIGNALS, Era, connect, free_port
from tests.support import processes
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 16
CALLS = 24
"""Calls per client (half reads, half writes): bounded, whatever happens."""
PROBE_INTERVAL = 0.25
PROBE_TIMEOUT = 3.0
"""Generous: on a loaded test machine a live replica must not look dead."""
PROBE_FAILURES = 2
EJECTION_BUDGET = PROBE_INTERVAL * PROBE_FAILURES + PROBE_TIMEOUT
"""What the configuration promises when no traffic tells first (under load, failed calls eject sooner)."""


class Replica:
    """One replica process (`tests.router.pool_replica`), restartable on its port."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = directory / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "--factory", "tests.router.pool_replica:app"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        env = {**os.environ, "POOL_REPLICA": self.name}
        self.process = processes.start(command, cwd=ROOT, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        processes.wait_listening(self.port, self.process, self.log)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)  # the process this test started, by its pid
        self.process.wait(10)
        processes.stop(self.process)  # and anything left in its group
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process)
            self.process = None


@pytest.fixture
def three(tmp_path: Path) -> Iterator[list[Replica]]:
    started = [Replica(f"r{index}", tmp_path) for index in range(3)]
    try:
        for replica in started:
            replica.start()
        yield started
    finally:
        for replica in started:
            replica.stop()


class Tally:
    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.read_errors: list[str] = []
        self.write_errors: list[tuple[int, str, Any]] = []


async def _client(url: str, era: Era, index: int, tally: Tally, running: anyio.Event) -> None:
    async with connect(url, era) as client:
        for call in range(CALLS):
            if call == 2:
                running.set()
            try:
                result = await client.call_tool("lookup", {"key": f"c{index}-{call}", "delay": 0.05})
                tally.reads[result.content[0].text.split("@")[1]] += 1  # type: ignore[union-attr]
            except Exception as exc:  # must not happen: a read is sent again elsewhere
                tally.read_errors.append(f"{era} client {index}: {type(exc).__name__}: {exc}")
            try:
                result = await client.call_tool("record", {"entry": f"c{index}-{call}", "delay": 0.15})
                tally.writes[result.content[0].text.rsplit(" ", 1)[1]] += 1  # type: ignore[union-attr]
            except MCPError as exc:
                tally.write_errors.append((exc.code, exc.message, exc.data))


async def _doomed(url: str, victim: str, pinned: anyio.Event, outcome: list[BaseException | str]) -> None:
    """A legacy session on the victim replica, running a long non-idempotent call when it is killed."""
    for _ in range(40):  # where a session lands depends on the load around it: (2/3)^40 never misses
        async with connect(url, "legacy") as client:
            if (await client.call_tool("whoami", {})).content[0].text != victim:  # type: ignore[union-attr]
                continue
            pinned.set()
            try:
                result = await client.call_tool("record", {"entry": "in flight", "delay": 5.0})
                outcome.append(result.content[0].text)  # type: ignore[union-attr]
            except MCPError as exc:
                outcome.append(exc)
            return
    outcome.append("no session landed on the victim")
    pinned.set()


@pytest.mark.xdist_group(SIGNALS)
async def test_sigkill_of_one_replica_under_load(
    three: list[Replica], serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mcp_middleware.router.pool")
    pool = PoolBackend(
        [HttpBackend(replica.url) for replica in three],
        probe_interval=PROBE_INTERVAL,
        probe_timeout=PROBE_TIMEOUT,
        probe_failures=PROBE_FAILURES,
        on_replica_loss="reinitialize",
        health=BreakerPolicy(consecutive_failures=3, open_for=0.5, max_open_for=2.0),
    )
    router = McpRouter()
    router.mount("pooled", pool)
    url = f"{serve(router).base}/mcp/pooled"
    tally = Tally()
    running, pinned = anyio.Event(), anyio.Event()
    victim = three[1]
    doomed: list[BaseException | str] = []
    with anyio.fail_after(180):
        async with anyio.create_task_group() as group:
            group.start_soon(_doomed, url, victim.name, pinned, doomed)
            for index in range(CLIENTS):
                group.start_soon(_client, url, "legacy" if index % 2 else "modern", index, tally, running)
            await running.wait()
            await pinned.wait()
            await anyio.sleep(0.5)
            killed_at = time.time()
            victim.kill()
    assert not tally.read_errors, tally.read_errors
    (call,) = doomed  # the write in flight on the killed replica: the documented error
    assert isinstance(call, MCPError), call
    assert (call.code, call.data) == (-32017, {"backend": "pooled", "mayHaveRun": True})
    for code, message, data in tally.write_errors:  # only calls in flight on the dead replica, and said so
        assert (code, data) == (-32017, {"backend": "pooled", "mayHaveRun": True}), (code, message, data)
    assert len(tally.write_errors) <= CLIENTS  # at most one call in flight per client when it died
    assert sum(tally.reads.values()) == CLIENTS * CALLS
    assert set(tally.reads) == {"r0", "r1", "r2"}  # every replica served before the kill

    ejected = [r for r in caplog.records if "replica 1 " in r.getMessage() and "ejected" in r.getMessage()]
    assert len(ejected) == 1, [r.getMessage() for r in caplog.records]
    # Within the budget (under load it is sooner: the killed replica's failed calls trip its breaker);
    # a few seconds of slack for a loaded machine's scheduling.
    assert ejected[0].created - killed_at <= EJECTION_BUDGET + 3.0

    victim.start()  # the same port: the pool's probe finds it and readmits it
    await until(
        lambda: any("replica 1" in r.getMessage() and "readmitted" in r.getMessage() for r in caplog.records), 30
    )
    seen: Counter[str] = Counter()
    async with connect(url, "modern") as client:
        for _ in range(12):
            seen[(await client.call_tool("whoami", {})).content[0].text] += 1  # type: ignore[union-attr]
    assert "r1" in seen, seen  # back in rotation
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "mcp_middleware.router.pool" and r.levelno == logging.WARNING and "replica 1 " in r.getMessage()
    ]
    # One line when it left rotation, one when it came back: the failed probes in between are DEBUG.
    assert [("ejected" in m, "readmitted" in m) for m in warnings] == [(True, False), (False, True)], warnings
