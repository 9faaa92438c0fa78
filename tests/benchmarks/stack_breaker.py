"""End-to-end stacks with the circuit breaker on and closed (`--apps bare,breaker,breaker_no_timeout`)."""

from __future__ import annotations

from mcp_middleware.breaker import CircuitBreakerMiddleware

from .apps import Stack

STACKS = {
    # Defaults: one breaker per path, classification through the tap, a timeout on every request.
    "breaker": Stack(CircuitBreakerMiddleware),
    # The same without timeouts: what the cancel scope costs end to end.
    "breaker_no_timeout": Stack(lambda app: CircuitBreakerMiddleware(app, timeouts={})),
}
