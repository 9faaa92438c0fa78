"""The reference gateway with its access log on, under four logging set-ups (`bench_logging.py`).

Each stack is the gateway of `stack_gateway.py` (test server in process at /mcp/bench, static token,
rate limit, breaker, cache, tracing) with `[tracing] access_log = true`; only the logging differs.
The server process is the e2e one (`uvicorn --log-level warning`, stderr to a file), where building
the test server's `MCPServer` has already run the SDK's `logging.basicConfig`: a `RichHandler` (rich
is installed with fastmcp) on the root logger at INFO.

- `logs_off`: `configure_logging(level="WARNING")`: nothing per request (the floor);
- `logs_json`: `configure_logging(format="json")`: what `mcp-gateway serve` does by default off a
  terminal: one JSON access line per request, the SDK's loggers at WARNING;
- `logs_text`: the same in the text format;
- `logs_rich`: nothing configured: the SDK's Rich handler left on, every access line goes through it.

And the bare test server (no gateway, no access log) with `configure_logging(format="json")`,
`bare_logs`, to set against `bare` (the SDK's Rich handler left on) under legacy sessions, for which
the SDK writes two INFO lines each.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config
from mcp_middleware.logs import configure_logging

from .apps import Stack
from .stack_gateway import _CONFIG, _HEADERS, _apps

_LOGGED = _CONFIG.replace("[tracing]\naccess_log = false\n", "[tracing]\naccess_log = true\n")
assert _LOGGED != _CONFIG


def _gateway(setup: Callable[[], object]) -> Callable[[ASGIApp], ASGIApp]:
    def wrap(app: ASGIApp) -> ASGIApp:
        setup()  # after the test server was built: the SDK's handler is on the root logger by now
        _apps.append(app)
        try:
            return build_gateway(parse_config(_LOGGED)).app
        finally:
            _apps.pop()

    return wrap


def _bare_logs(app: ASGIApp) -> ASGIApp:
    configure_logging("json")
    return app


STACKS = {
    "bare_logs": Stack(_bare_logs),
    "logs_off": Stack(
        _gateway(lambda: configure_logging("json", "WARNING")), headers=_HEADERS, lifespan=True, path="/mcp/bench"
    ),
    "logs_json": Stack(_gateway(lambda: configure_logging("json")), headers=_HEADERS, lifespan=True, path="/mcp/bench"),
    "logs_text": Stack(_gateway(lambda: configure_logging("text")), headers=_HEADERS, lifespan=True, path="/mcp/bench"),
    "logs_rich": Stack(_gateway(lambda: None), headers=_HEADERS, lifespan=True, path="/mcp/bench"),
}
