"""The apps the end-to-end benchmark serves, as uvicorn factories (`--factory`).

Each is the test server of `tests/servers.py` (its `echo` tool answers the load),
served alone or wrapped in the core with default settings. Later issues add their
middlewares here, so every stack is measured against the same bare server.
"""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import McpCoreMiddleware, McpRequest, ResponseOutcome
from tests.servers import build_server


def bare() -> ASGIApp:
    """The SDK's Streamable HTTP app, nothing in front."""
    return build_server().streamable_http_app()


def core() -> ASGIApp:
    """The same app behind `McpCoreMiddleware` (default config: `/mcp`, 4 MiB bounds, no hook)."""
    return McpCoreMiddleware(build_server().streamable_http_app())


def _ignore(request: McpRequest, outcome: ResponseOutcome) -> None:
    return None


def core_tap() -> ASGIApp:
    """The core with an outcome hook: every response is tapped and its JSON-RPC outcome parsed."""
    return McpCoreMiddleware(build_server().streamable_http_app(), on_outcome=_ignore)


APPS = {"bare": bare, "core": core, "core_tap": core_tap}
"""Name → factory; `bench_e2e` serves `tests.benchmarks.apps:<name>`."""


def shared() -> ASGIApp:
    """Every app of `APPS` in one process, at `/<name>/mcp`: the `shared` e2e mode loads them in turn.

    One process removes what two processes of the same program differ by (memory layout,
    allocator state, the vCPU they land on), which on this VM is larger than the core's cost.
    """
    servers = {name: build_server() for name in APPS}
    wrappers = {"bare": lambda app: app, "core": McpCoreMiddleware}
    wrappers["core_tap"] = lambda app: McpCoreMiddleware(app, on_outcome=_ignore)
    routes = {f"/{name}/mcp".encode(): wrappers[name](s.streamable_http_app()) for name, s in servers.items()}

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            async with contextlib.AsyncExitStack() as stack:
                for server in servers.values():
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
        # Each app is a plain SDK app serving /mcp, as in the other modes.
        await app({**scope, "path": "/mcp", "raw_path": b"/mcp"}, receive, send)

    return dispatch
