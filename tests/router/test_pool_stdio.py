"""Stdio replica pools: several processes of one command behind one name, balanced, failing over safely.

Real child processes (`tests.router.pool_stdio_replica`, whose `whoami` answers `pid<N>`), a real
router under uvicorn, the SDK client in both eras; one child is SIGKILLed (by its pid, which this
test learns from the child itself) while calls run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from mcp import MCPError

from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.router import McpRouter, PoolBackend, StdioBackend
from mcp_middleware.router._pool_stdio import _OutageWatch
from tests.conftest import SIGNALS, Era, connect
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8
CALLS = 16


def stdio_pool(count: int = 3) -> PoolBackend:
    replicas = [
        StdioBackend(sys.executable, ["-m", "tests.router.pool_stdio_replica"], cwd=str(ROOT), restart_delay=0.2)
        for _ in range(count)
    ]
    return PoolBackend(
        replicas,
        probe_interval=0.25,
        probe_timeout=5.0,  # generous: on a loaded machine a live replica must not look dead
        health=BreakerPolicy(consecutive_failures=3, open_for=0.5, max_open_for=2.0),
        on_replica_loss="reinitialize",  # a legacy session whose process is killed mid-call moves to another
    )


async def whoami(url: str, era: Era, times: int, tool: str = "whoami") -> Counter[str]:
    seen: Counter[str] = Counter()
    async with connect(url, era) as client:
        for _ in range(times):
            seen[(await client.call_tool(tool, {})).content[0].text] += 1  # type: ignore[union-attr]
    return seen


def kill(pid_text: str) -> None:
    os.kill(int(pid_text.removeprefix("pid")), signal.SIGKILL)  # a child of this test's router, by its own pid


@pytest.mark.parametrize("era", ["modern", "legacy"])
async def test_three_processes_share_the_calls(serve: Any, era: Era) -> None:
    pool = stdio_pool()
    router = McpRouter()
    router.mount("pooled", pool)
    base = serve(router).base
    with anyio.fail_after(90):
        await until(lambda: pool.state().up == 3, 30)
        if era == "modern":
            seen = await whoami(f"{base}/mcp/pooled", era, 9)
        else:  # a legacy session stays on the process that opened it: three sessions, three processes
            sessions = [await whoami(f"{base}/mcp/pooled", era, 3) for _ in range(3)]
            assert all(len(session) == 1 for session in sessions), sessions
            seen = sum(sessions, Counter())
        assert len(seen) == 3, seen  # least in flight, one at a time: each process in turn
        aggregated = await whoami(f"{base}/mcp", era, 3, "pooled__whoami")  # the aggregate: the pool is one server
        assert set(aggregated) <= set(seen), (aggregated, seen)
    states = pool.state().replicas
    assert [replica.state for replica in states] == ["up"] * 3
    assert all("tests.router.pool_stdio_replica" in replica.target for replica in states)


@pytest.mark.xdist_group(SIGNALS)
async def test_sigkill_of_one_process_under_load(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "mcp_middleware.router")
    pool = stdio_pool()
    router = McpRouter()
    router.mount("pooled", pool)
    url = f"{serve(router).base}/mcp/pooled"
    with anyio.fail_after(30):
        await until(lambda: pool.state().up == 3 and len(pool.proxy.hints) >= 4, 30)  # annotations learned
    before = await whoami(url, "modern", 6)
    assert len(before) == 3, before
    victim = sorted(before)[1]
    errors: list[str] = []
    served: Counter[str] = Counter()
    running = anyio.Event()

    async def reader(index: int, era: Era) -> None:
        async with connect(url, era) as client:
            for call in range(CALLS):
                if call == 2:
                    running.set()
                try:
                    result = await client.call_tool("lookup", {"key": f"c{index}-{call}", "delay": 0.05})
                    served[result.content[0].text.split("@")[1]] += 1  # type: ignore[union-attr]
                except Exception as exc:  # must not happen: an idempotent read is sent to another process
                    errors.append(f"{era} client {index}: {type(exc).__name__}: {exc}")

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for index in range(CLIENTS):
                group.start_soon(reader, index, "legacy" if index % 2 else "modern")
            await running.wait()
            kill(victim)
    assert not errors, errors
    assert sum(served.values()) == CLIENTS * CALLS

    # The process is restarted (a new pid) and its replica is in rotation again.
    with anyio.fail_after(60):
        await until(lambda: pool.state().up == 3, 45)
        after: Counter[str] = Counter()
        while len(after) < 3:
            after += await whoami(url, "modern", 3)
    assert victim not in after
    assert len(set(after) - set(before)) == 1, (before, after)  # one new process, the two others as they were


async def test_a_write_in_flight_on_a_killed_process_says_it_may_have_run(serve: Any) -> None:
    pool = stdio_pool()
    router = McpRouter()
    router.mount("pooled", pool)
    url = f"{serve(router).base}/mcp/pooled"
    with anyio.fail_after(30):
        await until(lambda: pool.state().up == 3, 30)
    outcomes: list[str | MCPError] = []

    async def write(index: int) -> None:
        async with connect(url, "modern") as client:
            try:
                result = await client.call_tool("record", {"entry": f"w{index}", "delay": 4.0})
                outcomes.append(result.content[0].text)  # type: ignore[union-attr]
            except MCPError as exc:
                outcomes.append(exc)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for index in range(3):
                group.start_soon(write, index)
            await until(lambda: sum(replica.in_flight for replica in pool.state().replicas) == 3, 20)
            assert [replica.in_flight for replica in pool.state().replicas] == [1, 1, 1]  # least in flight
            pid = (await whoami(url, "modern", 1)).most_common(1)[0][0]
            kill(pid)
    failed = [outcome for outcome in outcomes if isinstance(outcome, MCPError)]
    assert len(outcomes) == 3 and len(failed) == 1, outcomes  # a write is never sent twice
    (error,) = failed
    assert (error.code, error.data) == (-32017, {"backend": "pooled", "mayHaveRun": True})
    assert all(f"at {pid}" not in str(outcome) for outcome in outcomes)


class Sink:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: Any) -> None:
        self.messages.append(message)


def _start(content_type: bytes) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}


def _body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


def _error(code: int, data: dict[str, Any], request_id: int = 7) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": "x", "data": data}})


async def test_only_the_bridges_own_outage_is_a_replica_failure() -> None:
    """What a stdio replica's answer must look like to move a call elsewhere (no processes: the watch alone)."""
    # The bridge's word, naming this pool: nothing reaches the client; -32015 means nothing ran.
    sink = Sink()
    watch = _OutageWatch(sink, 7, "pooled", None, 1 << 20)
    await watch(_start(b"application/json"))
    await watch(_body(_error(-32015, {"server": "pooled"})))
    assert sink.messages == [] and watch.failure is not None and watch.failure.may_have_run is False
    # -32017 in the first event of a stream: it may have run.
    sink, watch = Sink(), _OutageWatch(Sink(), 7, "pooled", None, 1 << 20)
    await watch(_start(b"text/event-stream"))
    await watch(_body(b"event: message\r\ndata: " + _error(-32017, {"server": "pooled"}) + b"\r\n\r\n", more=True))
    assert watch.failure is not None and watch.failure.may_have_run is True
    # A tool's own error with the same code (naming another server, or none), another request's id, a
    # progress notification first, or an answer past the bound: the backend's answer, passed on whole.
    for messages in (
        [_start(b"application/json"), _body(_error(-32015, {"server": "elsewhere"}))],
        [_start(b"application/json"), _body(_error(-32017, {}))],
        [_start(b"application/json"), _body(_error(-32015, {"server": "pooled"}, request_id=8))],
        [
            _start(b"text/event-stream"),
            _body(
                b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\r\n\r\n', True
            ),
            _body(b"event: message\r\ndata: " + _error(-32017, {"server": "pooled"}) + b"\r\n\r\n"),
        ],
        [_start(b"application/json"), _body(b"x" * 300, more=True), _body(_error(-32015, {"server": "pooled"}))],
    ):
        sink = Sink()
        watch = _OutageWatch(sink, 7, "pooled", None, 256)
        for message in messages:
            await watch(message)
        await watch.flush()
        assert watch.failure is None, messages
        assert b"".join(m.get("body", b"") for m in sink.messages) == b"".join(m.get("body", b"") for m in messages)
        assert sink.messages[0]["type"] == "http.response.start"
        assert sink.messages[-1]["more_body"] is False
