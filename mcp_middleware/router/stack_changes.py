"""Telling a backend's stack that the backend's lists changed, as the router's own session heard it.

The aggregate holds one session to each backend (legacy notifications on it, a modern
`subscriptions/listen` stream beside it); that session reaches the backend directly, not
through the backend's stack, so the stack's middlewares would not hear of a change nobody else
was listening for. Each middleware that keeps something learned from the backend's lists (the
policy's and the validator's tool catalog) has a `lists_changed(kinds)` method; this finds them
by walking the stack, as `list_gate` does, and calls each one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.types import ASGIApp

__all__ = ["tell_lists_changed"]

logger = logging.getLogger("mcp_middleware.router")

_DEPTH = 64


def tell_lists_changed(app: ASGIApp, kinds: frozenset[str]) -> int:
    """Call `lists_changed(kinds)` on every layer of `app` that has one; how many did."""
    told = 0
    for _ in range(_DEPTH):
        hook: Callable[[frozenset[str]], None] | None = getattr(app, "lists_changed", None)
        if callable(hook):
            try:
                hook(kinds)
            except Exception:  # one layer's bug must not keep the others (or the clients) from hearing
                logger.exception("lists_changed of %r failed", app)
            else:
                told += 1
        inner = getattr(app, "app", None)
        if inner is None:
            break
        app = inner
    return told
