"""Shared fixtures: real servers under uvicorn on 127.0.0.1, real `mcp` SDK clients in both eras."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import pytest
import uvicorn
from mcp import Client
from starlette.types import ASGIApp, Receive, Scope, Send

Era = Literal["modern", "legacy"]
ERAS: tuple[Era, ...] = ("modern", "legacy")


def require(module: str, why: str) -> ModuleType:
    """Import an optional dependency: skip without it locally, fail without it in CI (CI must not skip)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is required in CI ({why}): {exc}")
        pytest.skip(f"{module} not installed ({why})", allow_module_level=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Served:
    """An app running under uvicorn in a background thread."""

    base: str
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def tasks(self) -> int:
        """How many tasks the server's event loop is running right now."""
        assert self.loop is not None
        return len(asyncio.all_tasks(self.loop))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _LoopProbe:
    """Records the server's event loop (for task-leak checks) and otherwise stays out of the way."""

    def __init__(self, app: ASGIApp, served: Served) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.served.loop is None:
            self.served.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


@contextlib.contextmanager
def serve_app(app: ASGIApp) -> Iterator[Served]:
    """Serve `app` (lifespan on) on a free loopback port until the block ends."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    served = Served(base=f"http://127.0.0.1:{port}", server=server)
    config.app = _LoopProbe(app, served)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[ASGIApp], Served]]:
    """`serve(app)` starts a server for the test; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_app(app))


@contextlib.asynccontextmanager
async def connect(url: str, era: Era, **kwargs: Any) -> AsyncIterator[Client]:
    """An `mcp.Client` in the given era, with the client-side cache off (it would hide requests)."""
    mode = "legacy" if era == "legacy" else "auto"
    async with Client(url, mode=mode, cache=None, **kwargs) as client:
        expected = "2025-11-25" if era == "legacy" else "2026-07-28"
        assert client.protocol_version == expected
        yield client
