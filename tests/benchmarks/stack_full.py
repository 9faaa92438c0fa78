"""The whole in-process stack as an e2e app (`--apps bare,full_stack`), the recommended order outermost first:
tracing (OpenTelemetry API only: nothing configured) → auth (cached ES256 token) → rate limit (memory,
never tripping) → cache (`tools/call` of `echo` passes through) → breaker (with timeouts) → the server.
Issue 17 target: at least 0.92 of bare in the same run.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp

from mcp_middleware.breaker import CircuitBreakerMiddleware
from mcp_middleware.cache import ResponseCacheMiddleware
from mcp_middleware.ratelimit import BucketPolicy, RateLimitMiddleware
from mcp_middleware.tracing import TracingMiddleware

from .apps import Stack
from .stack_auth import _TOKEN
from .stack_auth import _wrap as _auth

_NEVER = 1e9


def untraced_stack(app: ASGIApp) -> ASGIApp:
    """The same stack without tracing: what the other four cost together."""
    app = CircuitBreakerMiddleware(app)
    app = ResponseCacheMiddleware(app)
    app = RateLimitMiddleware(app, policies=[BucketPolicy("per-caller", rate=_NEVER, capacity=_NEVER)])
    return _auth(app)


def full_stack(app: ASGIApp) -> ASGIApp:
    return TracingMiddleware(untraced_stack(app))


def awaited_stack(app: ASGIApp) -> ASGIApp:
    """The full stack with every layer awaiting the next one's `__call__` (no direct entries, see
    `mcp_middleware.core.direct`): what the direct entries save, measured in one run."""
    outer = full_stack(app)
    layer: Any = outer
    while hasattr(layer, "_next"):
        layer._next = layer.app
        layer = layer.app
    return outer


_HEADERS = (("authorization", f"Bearer {_TOKEN}"),)
STACKS = {
    "full_stack": Stack(full_stack, headers=_HEADERS),
    "full_stack_untraced": Stack(untraced_stack, headers=_HEADERS),
    "full_stack_awaited": Stack(awaited_stack, headers=_HEADERS),
}
