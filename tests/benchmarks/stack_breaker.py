"""Stacks with the circuit breaker on and closed (`--apps bare,breaker,breaker_no_timeout,breaker_call_path`)."""

from __future__ import annotations

from starlette.types import ASGIApp

from mcp_middleware.breaker import CircuitBreakerMiddleware

from .apps import Stack


def _call_path(app: ASGIApp) -> ASGIApp:
    breaker = CircuitBreakerMiddleware(app)
    breaker.fast_path = False  # every request through a `Call`, as before the common path
    return breaker


STACKS = {
    # Defaults: one breaker per path, classification through the tap, a timeout on every request.
    "breaker": Stack(CircuitBreakerMiddleware),
    # The same without timeouts: what the cancel scope costs end to end.
    "breaker_no_timeout": Stack(lambda app: CircuitBreakerMiddleware(app, timeouts={})),
    # The defaults on the `Call` path (`fast_path` off): what the common path saves, in one run.
    "breaker_call_path": Stack(_call_path),
}
