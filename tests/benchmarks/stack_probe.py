"""Probe stacks: parts of the core alone, to attribute its end-to-end cost.

`probe_pass` is an empty pure-ASGI middleware (one more coroutine per request);
`probe_replay` reads the body and replays it with the core's `replay`, and wraps
`send` in the core's `_StartGuard`, as `McpCoreMiddleware` does, without parsing.
Measured beside `bare` and `core` (`--apps bare,probe_pass,probe_replay,core`), what
is left of the core's cost is the parse and the view.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.kernel import replay
from mcp_middleware.core.middleware import _StartGuard

from .apps import Stack


class Passthrough:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class ReplayOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        message = await receive()  # the benchmark's bodies arrive in one message
        await self.app(scope, replay(message.get("body", b""), receive), _StartGuard(send))


STACKS = {
    "probe_pass": Stack(Passthrough),
    "probe_replay": Stack(ReplayOnly),
}
