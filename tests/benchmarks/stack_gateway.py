"""The full reference gateway as an e2e stack: the test server mounted at /mcp/bench, every middleware on.

Built by `build_gateway` from a config like examples/gateway/gateway.toml, with a static
token (the load sends it), a rate limit that never trips, the breaker, the cache (a
`tools/call` of `echo` is not cached: not read-only), tracing with the Prometheus reader
and the front door. The load calls the gateway's path mount `/mcp/bench`, as a client of it would
(until session 8 a layer of the benchmark's own rewrote `/mcp` to it, and was charged to the gateway).
"""

from __future__ import annotations

from starlette.types import ASGIApp

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import parse_config

from .apps import Stack

TOKEN = "bench-token"
_CONFIG = f"""
[[servers]]
name = "bench"
app = "tests.benchmarks.stack_gateway:current_app"
[aggregate]
enabled = true
[auth]
mode = "static"
[auth.tokens]
"{TOKEN}" = ["mcp"]
[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 1000000
rate = 1000000
[breaker]
[cache]
honor_ttl_ms = false  # the SDK says ttlMs 0 by default; an operator of a static backend overrides
[tracing]
access_log = false
"""
_apps: list[ASGIApp] = []


def current_app() -> ASGIApp:
    """The app `wrap` is building around (the config's `app` names this function)."""
    return _apps[-1]


def gateway(app: ASGIApp) -> ASGIApp:
    _apps.append(app)
    try:
        return build_gateway(parse_config(_CONFIG)).app
    finally:
        _apps.pop()


def gateway_without_tracing(app: ASGIApp) -> ASGIApp:
    """The same gateway without `[tracing]` (no metrics, no access log): what observability costs in it."""
    _apps.append(app)
    try:
        config = parse_config(_CONFIG.replace("[tracing]\naccess_log = false\n", ""))
        assert not config.tracing.enabled
        return build_gateway(config).app
    finally:
        _apps.pop()


_HEADERS = (("authorization", f"Bearer {TOKEN}"),)
STACKS = {
    "gateway": Stack(gateway, headers=_HEADERS, lifespan=True, path="/mcp/bench"),
    "gateway_no_tracing": Stack(gateway_without_tracing, headers=_HEADERS, lifespan=True, path="/mcp/bench"),
}
