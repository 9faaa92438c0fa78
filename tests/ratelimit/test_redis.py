"""Redis: several instances share one bucket; an outage degrades as configured and heals by itself."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from mcp_middleware.ratelimit import BucketPolicy, QuotaPolicy, RateLimitMiddleware, RedisBucketStore
from tests.conftest import ERAS, Era, RedisServer, connect, free_port
from tests.ratelimit import shared_app
from tests.ratelimit.wire import call_tool, error_of
from tests.servers import build_server
from tests.support import processes

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
UVICORN = [sys.executable, "-m", "uvicorn", "--factory", "tests.ratelimit.shared_app:build", "--host", "127.0.0.1"]
UVICORN += ["--log-level", "warning", "--no-access-log"]


def redis_limited(url: str, **options: Any) -> RateLimitMiddleware:
    store = RedisBucketStore.from_url(url, retry_interval=0.2, timeout=5.0)  # refused connections fail fast anyway
    policy = BucketPolicy("p", selector="tools/call", rate=0.001, capacity=2)
    return RateLimitMiddleware(build_server().streamable_http_app(), policies=[policy], store=store, **options)


async def test_fail_open_admits_during_an_outage_and_limits_again_after(
    redis_server: RedisServer, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mcp_middleware.ratelimit")
    app = redis_limited(redis_server.url)
    served = serve(app)
    async with httpx2.AsyncClient() as http:

        async def statuses(n: int) -> list[int]:
            return [(await call_tool(http, served.mcp_url, "echo", {"text": "x"})).status_code for _ in range(n)]

        assert await statuses(3) == [200, 200, 429]
        redis_server.stop()
        started = time.perf_counter()
        assert await statuses(5) == [200] * 5  # admitted, not limited, not failed
        assert time.perf_counter() - started < 2.0  # a dead Redis costs milliseconds, not timeouts
        assert app.limiter.store_failures == 5
        warnings = [r.getMessage() for r in caplog.records if r.name == "mcp_middleware.ratelimit"]
        assert len(warnings) == 1 and "admitting requests (fail-open)" in warnings[0]  # logged once, not per request
        redis_server.start()  # a fresh Redis: the bucket starts full again
        await anyio.sleep(0.3)
        assert await statuses(3) == [200, 200, 429]  # reconnected without restarting the app


@pytest.mark.parametrize("era", ERAS)
async def test_fail_closed_answers_503_during_an_outage_and_recovers(
    era: Era, redis_server: RedisServer, serve: Any
) -> None:
    served = serve(redis_limited(redis_server.url, failure="closed"))
    async with connect(served.mcp_url, era) as client, httpx2.AsyncClient() as http:
        assert (await client.call_tool("echo", {"text": "before"})).content[0].text == "before"  # type: ignore[union-attr]
        redis_server.stop()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("echo", {"text": "during"})
        assert refused.value.error.code == ErrorCode.UNAVAILABLE
        raw = await call_tool(http, served.mcp_url, "echo", {"text": "during"}, request_id=41)
        assert raw.status_code == 503
        assert raw.headers["retry-after"] == "1"
        assert error_of(raw)["id"] == 41 and error_of(raw)["code"] == -32015
        redis_server.start()
        await anyio.sleep(0.3)
        assert (await client.call_tool("echo", {"text": "after"})).content[0].text == "after"  # type: ignore[union-attr]


@contextlib.contextmanager
def instances(count: int, redis_url: str) -> Iterator[list[str]]:
    """`count` uvicorn processes serving `shared_app`, each on its own free port; stopped with their groups."""
    env = {**os.environ, "RATELIMIT_TEST_REDIS": redis_url, "PYTHONPATH": str(ROOT)}
    ports = [free_port() for _ in range(count)]
    started = [
        processes.start(
            [*UVICORN, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    try:
        deadline = time.monotonic() + 60
        for port, process in zip(ports, started, strict=True):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"instance on {port} exited: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("instances did not start")
                time.sleep(0.05)
        yield [f"http://127.0.0.1:{port}/mcp" for port in ports]
    finally:
        processes.stop_all(started)
        for process in started:
            process.stderr.close()  # type: ignore[union-attr]


async def test_three_instances_sharing_redis_admit_what_one_bucket_allows(redis_server: RedisServer) -> None:
    total, concurrency = 120, 12
    with instances(3, redis_server.url) as urls:
        answers: list[tuple[int, int]] = []
        limiter = anyio.Semaphore(concurrency)
        async with httpx2.AsyncClient(limits=httpx2.Limits(max_connections=concurrency), timeout=30) as http:

            async def one(n: int) -> None:
                async with limiter:
                    answer = await call_tool(http, urls[n % 3], "echo", {"text": str(n)}, request_id=n)
                    answers.append((n % 3, answer.status_code))

            started = time.monotonic()
            async with anyio.create_task_group() as tasks:
                for n in range(total):
                    tasks.start_soon(one, n)
            elapsed = time.monotonic() - started
    statuses = Counter(status for _, status in answers)
    assert set(statuses) <= {200, 429}
    admitted = statuses[200]
    # One bucket: its capacity plus what refilled meanwhile (the Lua script is atomic, so no in-flight
    # slack is needed). Three separate buckets would have admitted up to 3 x 30.
    assert shared_app.CAPACITY <= admitted <= shared_app.CAPACITY + shared_app.RATE * elapsed + 1, (statuses, elapsed)
    per_instance = Counter(instance for instance, status in answers if status == 200)
    assert len(per_instance) == 3 and all(count < shared_app.CAPACITY for count in per_instance.values())


async def test_window_quotas_in_redis_degrade_and_recover_too(redis_server: RedisServer, serve: Any) -> None:
    app = RateLimitMiddleware(
        build_server().streamable_http_app(),
        policies=[QuotaPolicy("hourly", selector="tools/call", limit="2/hour", strategy="moving-window")],
        quota_storage=redis_server.url,
        quota_timeout=5.0,  # a loaded machine must not look like an outage; refused connections fail fast anyway
        failure="closed",
    )
    served = serve(app)
    async with httpx2.AsyncClient() as http:

        async def statuses(n: int) -> list[int]:
            return [(await call_tool(http, served.mcp_url, "echo", {"text": "x"})).status_code for _ in range(n)]

        assert await statuses(3) == [200, 200, 429]
        redis_server.stop()
        started = time.perf_counter()
        assert await statuses(2) == [503, 503]
        assert time.perf_counter() - started < 2.0
        redis_server.start()
        assert await statuses(3) == [200, 200, 429]
