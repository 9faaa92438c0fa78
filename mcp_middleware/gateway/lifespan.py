"""The gateway's lifespan: the router's (backends, the aggregate, stdio children), reloads, and what closes.

It also freezes what start-up built out of the garbage collector's scans (`[gateway] gc_freeze`).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.lifespan import serve_lifespan
from mcp_middleware.router import McpRouter

if TYPE_CHECKING:
    from .reload import Reloader

__all__ = ["AsyncCloser", "Closer", "GatewayLifespan"]

logger = logging.getLogger("mcp_middleware.gateway")

Closer = Callable[[], object]
"""Something the gateway opened, closed when its lifespan ends."""
AsyncCloser = Callable[[], Awaitable[object]]
"""Something the gateway opened on its event loop (a store's connections), closed there when its lifespan ends."""


class GatewayLifespan:
    """Run the router's lifespan (backends, the aggregate, stdio children) and close what the gateway opened."""

    def __init__(self, app: ASGIApp, router: McpRouter, closers: list[Closer], *, freeze_gc: bool = False) -> None:
        self.app = app
        self.router = router
        self.closers = closers
        self.freeze_gc = freeze_gc
        self.reloader: Reloader | None = None
        self.async_closers: list[AsyncCloser] = []
        """Awaited on the event loop at shutdown, after the router's lifespan and before `closers`."""
        self._answered: frozenset[str] = frozenset()
        self._beyond = app

    def bypass(self, answered: Iterable[str], beyond: ASGIApp) -> None:
        """Hand an HTTP request for any path but `answered` (and with no `root_path`) straight to `beyond`: the
        layers in between (operations, `/metrics`) answer only those paths and pass every other request on
        unchanged, so it need not be asked of each of them."""
        self._answered = frozenset(answered)
        self._beyond = beyond

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain call returning the next layer's awaitable: the outermost layer keeps no frame in a request's
        # await chain either (marked a coroutine function below: servers pick ASGI 3 by that).
        kind = scope["type"]
        if kind == "http" and scope["path"] not in self._answered and not scope.get("root_path"):
            return self._beyond(scope, receive, send)
        if kind != "lifespan":
            return self.app(scope, receive, send)
        return serve_lifespan(self._frozen(), receive, send, name="gateway")

    @contextlib.asynccontextmanager
    async def _frozen(self) -> AsyncIterator[None]:
        async with self._running():
            frozen = self.freeze_gc and _freeze_startup_objects()
            try:
                yield
            finally:
                if frozen:
                    gc.unfreeze()

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        try:
            async with self.router.lifespan():
                for name, mount in self.router.mounts.items():
                    if mount.backend.supervised:  # start each stdio command now: /readyz waits for it
                        await self.router.session_failure(name, 0)
                if self.reloader is None:
                    yield
                else:
                    async with anyio.create_task_group() as group:  # reloads (SIGHUP, watch_config)
                        group.start_soon(self.reloader.run)
                        yield
                        group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):  # the closers block (an exporter's flush, the audit writer's
                for aclose in self.async_closers:
                    await aclose()
                for close in self.closers:  # join): in a worker thread, never on the event loop
                    await anyio.to_thread.run_sync(close)


def _served_as_asgi3(cls: type[GatewayLifespan]) -> None:
    """Make `cls.__call__` what servers take for an ASGI 3 app: they ask whether it is a coroutine function
    (uvicorn `asyncio.iscoroutinefunction`, from 3.14 `inspect`'s; hypercorn `inspect.iscoroutinefunction`).
    From Python 3.12 the plain call is marked (`inspect.markcoroutinefunction`, which both honour). 3.11 has
    only asyncio's own marker, which `inspect` does not read (hypercorn would take the app for ASGI 2), so
    there the plain call is awaited by a coroutine of its own: one frame more a request, on 3.11 only."""
    plain = cls.__call__
    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(plain)
        return

    async def awaited(self: GatewayLifespan, scope: Scope, receive: Receive, send: Send) -> None:
        await plain(self, scope, receive, send)

    awaited.__doc__, awaited.__qualname__ = plain.__doc__, plain.__qualname__
    setattr(cls, "__call__", awaited)  # noqa: B010  # (a method replaced once, at import)


_served_as_asgi3(GatewayLifespan)


def _freeze_startup_objects() -> bool:
    """`gc.freeze()` what start-up built (the servers, the SDK, pydantic's schemas: ~10⁵ objects).

    Under load, requests in flight get promoted to the oldest generation, and each full
    collection then scans every long-lived object: a 60 to 90 ms pause about every 0.6 s on the
    test server, ≈ 11 % of its time. Frozen objects are never scanned (nor freed); what requests
    leave behind still is. Returns whether it froze (False if something froze already).
    """
    if gc.get_freeze_count():
        return False
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    logger.info(
        "froze %d start-up objects out of the garbage collector's scans (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - started) * 1000,
    )
    return True
