"""What a pass-through ASGI layer costs: the bare server behind five of them.

`layers5`: five `async def __call__` layers that only `await self.app(...)` (each stays in the
await chain for the whole request and is resumed every time the app wakes); `tail5`: five layers
whose plain `def __call__` returns the inner app's awaitable (no frame of their own stays in the
chain). `--apps bare,layers5,tail5` prices a layer, and what leaving the chain saves (in process only:
uvicorn takes an app whose `__call__` is not a coroutine function for ASGI 2, so `tail5` cannot be served).
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

from .apps import Stack


class _Awaiting:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Tail:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        return self.app(scope, receive, send)


def _five(layer: type[_Awaiting] | type[_Tail]) -> Stack:
    def wrap(app: ASGIApp) -> ASGIApp:
        for _ in range(5):
            app = layer(app)
        return app

    return Stack(wrap)


STACKS = {"layers5": _five(_Awaiting), "tail5": _five(_Tail)}
