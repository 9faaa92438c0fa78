"""A mount's stack as the router builds and walks it: middleware wrapped around a target, its list gates,
and the answer for a path nothing is mounted at (shared by the router, its registry and virtual servers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import JsonRpcCode, send_error

from .aggregate import ListGate

__all__ = ["MountMiddleware", "list_gate", "not_found", "wrap"]

MountMiddleware = Middleware | Callable[[ASGIApp], ASGIApp]
"""A middleware for one mount: `starlette.middleware.Middleware(Cls, **options)` or `lambda app: Cls(app, ...)`."""


def list_gate(app: ASGIApp) -> ListGate | None:
    """The list filters of a backend's stack (auth with `filter_lists`, a policy), found by walking it: an item
    is listed when every one of them lets it through."""
    gates: list[ListGate] = []
    for _ in range(64):
        gate: ListGate | None = getattr(app, "list_gate", None)
        if gate is not None:
            gates.append(gate)
        inner = getattr(app, "app", None)
        if inner is None:
            break
        app = inner
    if len(gates) <= 1:
        return gates[0] if gates else None
    return lambda scope, method, target: all(gate(scope, method, target) for gate in gates)


def wrap(app: ASGIApp, middleware: Sequence[MountMiddleware]) -> ASGIApp:
    for item in reversed(middleware):
        app = item.cls(app, *item.args, **item.kwargs) if isinstance(item, Middleware) else item(app)
    return app


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    await send_error(send, status=404, code=JsonRpcCode.INVALID_REQUEST, message=f"No MCP server is mounted at {path}")
