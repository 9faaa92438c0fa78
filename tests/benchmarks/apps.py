"""The stacks the end-to-end benchmarks serve: the test server, bare or wrapped.

A *stack* is a function that wraps the SDK app of `tests/servers.py` (whose `echo`
tool answers the load), plus any request headers the load must carry through it (a
bearer token, say). `bare` and `core` live here; each middleware adds its own stacks
in a module `tests/benchmarks/stack_<name>.py` that defines `STACKS = {name: Stack(...)}`,
found here by name, so every stack is measured against the same bare server.

Every stack is also a uvicorn factory: `uvicorn --factory tests.benchmarks.apps:<name>`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import McpCoreMiddleware, McpRequest, ResponseOutcome
from mcp_middleware.core.lifespan import run_lifespan
from tests.servers import build_server


@dataclass(frozen=True)
class Stack:
    """How to wrap the test server's app, and what headers a request needs to pass through it."""

    wrap: Callable[[ASGIApp], ASGIApp]
    headers: tuple[tuple[str, str], ...] = ()
    """Extra request headers for the load (e.g. `("authorization", "Bearer …")`)."""
    lifespan: bool = False
    """The wrapped app runs the server's lifespan itself (a router, the gateway): `shared()` runs the
    wrapped app's lifespan instead of the server's session manager."""
    path: str = "/mcp"
    """Where the load sends its requests: the path a client of this stack calls (the gateway's mount
    `/mcp/bench`); the bare server serves `/mcp`."""


def _ignore(request: McpRequest, outcome: ResponseOutcome) -> None:
    return None


STACKS: dict[str, Stack] = {
    # The SDK's Streamable HTTP app, nothing in front.
    "bare": Stack(lambda app: app),
    # Behind `McpCoreMiddleware` (default config: `/mcp`, 4 MiB bounds, no hook).
    "core": Stack(McpCoreMiddleware),
    # The bare app again: `--apps bare,bare_again` is an A/A run, the method's own bias and noise.
    "bare_again": Stack(lambda app: app),
    # The core with an outcome hook: every response is tapped and its JSON-RPC outcome parsed.
    "core_tap": Stack(lambda app: McpCoreMiddleware(app, on_outcome=_ignore)),
}
"""Name → stack; the built-in ones, then those of every `stack_*.py` module beside this one."""

for _module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
    if _module.name.startswith("stack_"):
        STACKS.update(importlib.import_module(f"{__package__}.{_module.name}").STACKS)


def build(name: str) -> ASGIApp:
    """A fresh test server wrapped in the stack `name`.

    With `BENCH_GC_FREEZE=1` (`--gc-freeze`), the objects that exist once the app is built (the
    SDK, pydantic's schemas, the app: ~120k) are frozen out of the garbage collector's sight,
    as `gc.freeze()` after start-up does in production: a full collection then scans only
    what requests left, instead of a 70 ms pause about every 0.6 s of load, whose count in a
    window is the largest noise between two windows.
    """
    app = STACKS[name].wrap(build_server().streamable_http_app())
    if os.environ.get("BENCH_GC_FREEZE") == "1":
        gc.collect()
        gc.freeze()
    return app


APPS: dict[str, Callable[[], ASGIApp]] = {name: (lambda name=name: build(name)) for name in STACKS}  # type: ignore[misc]
"""Name → factory."""


def __getattr__(name: str) -> Callable[[], ASGIApp]:
    """`tests.benchmarks.apps:<stack>` as a uvicorn factory."""
    try:
        return APPS[name]
    except KeyError:
        raise AttributeError(name) from None


def shared() -> ASGIApp:
    """Every stack in one process, at `/<name>/mcp`: the `shared` e2e mode loads them in turn.

    `BENCH_STACKS` (comma-separated names) limits it to those stacks. One process removes
    what two processes of the same program differ by (memory layout, allocator state, the
    vCPU they land on), which on this VM is larger than the core's cost.
    """
    wanted = [name for name in os.environ.get("BENCH_STACKS", "").split(",") if name] or list(STACKS)
    servers = {name: build_server() for name in wanted}
    routes = {f"/{name}/mcp".encode(): STACKS[name].wrap(s.streamable_http_app()) for name, s in servers.items()}
    paths = {f"/{name}/mcp".encode(): STACKS[name].path for name in servers}
    if os.environ.get("BENCH_GC_FREEZE") == "1":  # as in build()
        gc.collect()
        gc.freeze()

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            async with contextlib.AsyncExitStack() as stack:
                for name, server in servers.items():
                    if STACKS[name].lifespan:
                        await stack.enter_async_context(run_lifespan(routes[f"/{name}/mcp".encode()]))
                    else:
                        await stack.enter_async_context(server.session_manager.run())
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        app = routes.get(scope["raw_path"])
        if app is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        # Each app is served at its own path, as in the other modes (the scope is rewritten for every app alike).
        path = paths[scope["raw_path"]]
        await app({**scope, "path": path, "raw_path": path.encode()}, receive, send)

    return dispatch
