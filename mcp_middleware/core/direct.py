"""Stacked middlewares of this package, entered without a coroutine each.

Every middleware's `async __call__` stays in the await chain for the whole request and is
resumed each time the app wakes (≈ 2,000 CPU instructions a layer a request, measured), even
when it has nothing left to do after the app. When one of our middlewares wraps another, it
calls the inner one's :meth:`DirectApp.mcp_direct` instead of its `__call__`: a plain function
that does the request-phase work at once (the request is already parsed, in the scope) and
hands back what must be awaited next, the next layer's own awaitable when nothing is left to do
afterwards, else a coroutine of its own. Behaviour is the same either way; the outermost layer
is always entered by its `__call__` (servers look for a coroutine function).

The gateway's own layers (operations, `/metrics`, the front door, tracing, the router) define
`mcp_direct` too, and the gateway wires each to the next one's: one protocol, one name.

    self._next = inner_app(app)          # in __init__
    await self._next(scope, receive, send)  # instead of `await self.app(...)`
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["UNREAD", "DirectApp", "Dispatch", "inner_app"]

Dispatch = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI app's call, as a middleware of ours makes it: something to await."""

UNREAD: Final = object()
"""`scope.get(REQUEST_SCOPE_KEY, UNREAD)`: no middleware has looked at this request yet (`None`: not MCP)."""


class DirectApp(Protocol):
    """A middleware of this package that an outer one of ours may enter without a coroutine."""

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Do what `__call__` does before its first wait, and return what is left to await (same behaviour)."""
        ...


def inner_app(app: ASGIApp) -> Dispatch:
    """What a middleware calls for its inner `app`: its direct entry when it is one of ours, else `app` itself.

    Looked up on the class (an instance `__getattr__` that delegates to a wrapped app is not asked),
    and only where the class that defines `mcp_direct` also defines the `__call__` in use: a subclass
    that overrides `__call__` is entered by it.
    """
    cls = type(app)
    if getattr(cls, "mcp_direct", None) is None:
        return app
    owner = next(klass for klass in cls.__mro__ if "mcp_direct" in vars(klass))
    if vars(owner).get("__call__") is not cls.__call__:
        return app
    direct: DirectApp = app  # type: ignore[assignment]
    return direct.mcp_direct
