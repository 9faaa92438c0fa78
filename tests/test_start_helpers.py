"""The test harness's start helpers fail loudly: a server that does not start names its cause.

`serve_app` (uvicorn in a thread), `serve_in_thread` under it, and `RedisServer` each raise with what
the server said (its lifespan's exception, uvicorn's log records, redis-server's output), never a bare
"did not start" after a silent wait.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.conftest import RedisServer, free_port, require_binary, serve_app
from tests.support.serving import ServerDidNotStart, serve_in_thread


def _app_whose_startup(fails: bool = False, sleeps: float = 0.0) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if sleeps:
            await anyio.sleep(sleeps)
        if fails:
            raise RuntimeError("the database at db.internal:5432 refused the connection")
        yield

    return Starlette(routes=[Route("/", lambda request: PlainTextResponse("up"))], lifespan=lifespan)


def test_a_lifespan_that_raises_is_named_in_the_failure() -> None:
    with pytest.raises(ServerDidNotStart) as failed, serve_app(_app_whose_startup(fails=True)):
        pytest.fail("the server started")
    message = str(failed.value)
    assert "did not start" in message
    assert "RuntimeError: the database at db.internal:5432 refused the connection" in message  # the cause
    assert "lifespan" in message  # and where it came from


def test_a_taken_port_is_named_in_the_failure() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerDidNotStart) as failed, serve_app(_app_whose_startup(), port):
            pytest.fail("the server started")
    message = str(failed.value)
    assert "address already in use" in message.lower() and str(port) in message, message


def test_a_server_that_does_not_start_in_time_is_stopped_and_said_so() -> None:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app_whose_startup(sleeps=2.0), host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    late = pytest.raises(ServerDidNotStart, match=r"uvicorn-slow did not start within 0.3 s")
    with late, serve_in_thread(server, name="uvicorn-slow", patience=0.3):
        pytest.fail("the server started")
    deadline = time.monotonic() + 10
    while any(thread.name == "uvicorn-slow" for thread in threading.enumerate()):  # told to stop: it does
        assert time.monotonic() < deadline, "the server that did not start in time was left running"
        time.sleep(0.05)
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_server_that_starts_serves_until_the_block_ends() -> None:
    with serve_app(_app_whose_startup()) as served:
        assert httpx2.get(f"{served.base}/", timeout=10).text == "up"
    with pytest.raises(httpx2.ConnectError):
        httpx2.get(f"{served.base}/", timeout=2)


def test_a_redis_server_that_cannot_start_quotes_what_it_said(tmp_path: Path) -> None:
    binary = require_binary("redis-server", "the start helper's failure message")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(binary, tmp_path, port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"(?s)redis-server exited with \d+; it said:.*Address already in use"):
            server.start()
    assert server.process is None  # nothing left running
