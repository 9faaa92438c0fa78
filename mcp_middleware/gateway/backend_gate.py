"""The innermost layer of each stdio or URL backend's stack: a backend that is down answers 502, not an empty list.

A stdio command that cannot start (it exits at once, its program fails) has no HTTP side: its
mount is a one-backend aggregate, which would answer `tools/list` with `200` and no tools. The
gate asks the router for the command's session first and answers `502` with the request's
JSON-RPC id instead; why (an OS error, a path) stays in the operator's log. A URL backend's
proxy answers `502` itself; the gate's presence in its stack is what has the router read the
request once, so that answer carries the request's id too.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ErrorCode, get_mcp_request, send_error
from mcp_middleware.router import McpRouter

__all__ = ["BackendGate", "gate_layer"]


class BackendGate:
    """Refuse requests for backend `name` while its supervised session cannot be opened (502, with the id)."""

    def __init__(self, app: ASGIApp, *, name: str, router: Callable[[], McpRouter | None], patience: float) -> None:
        self.app = app
        self.name = name
        self.router = router
        self.patience = patience

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        router = self.router() if scope["type"] == "http" and scope["method"] == "POST" else None
        reason = await router.session_failure(self.name, self.patience) if router is not None else None
        if reason is None:
            await self.app(scope, receive, send)
            return
        request = get_mcp_request(scope)
        await send_error(
            send,
            status=502,
            code=ErrorCode.BAD_GATEWAY,
            message="Backend is unavailable",
            request_id=request.id if request is not None else None,
            data={"backend": self.name},  # why (an OS error, a path) is the operator's, in the log
        )


def gate_layer(name: str, router: Callable[[], McpRouter | None], patience: float) -> Callable[[ASGIApp], ASGIApp]:
    """The gate as a mount layer (the router is built after the layers, hence the callable)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        return BackendGate(app, name=name, router=router, patience=patience)

    return wrap
