"""The apps the end-to-end benchmark serves, as uvicorn factories (`--factory`).

Each is the test server of `tests/servers.py` (its `echo` tool answers the load),
served alone or wrapped in the core with default settings. Later issues add their
middlewares here, so every stack is measured against the same bare server.
"""

from __future__ import annotations

from starlette.types import ASGIApp

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
