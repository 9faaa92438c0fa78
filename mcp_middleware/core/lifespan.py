"""The ASGI lifespan protocol, both ways: drive an inner app's, and answer one with a context manager.

:func:`run_lifespan` is the server's side (start an app, as uvicorn would, for an app we host:
an in-process backend); :func:`serve_lifespan` is the app's side (answer the server's lifespan
messages by entering and leaving a context: the router's backends, the gateway's stores).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message, Receive, Send

__all__ = ["run_lifespan", "serve_lifespan"]

logger = logging.getLogger("mcp_middleware")


@contextlib.asynccontextmanager
async def run_lifespan(app: ASGIApp) -> AsyncIterator[None]:
    """Drive an ASGI app's lifespan protocol: startup on entry, shutdown on exit.

    An app that does not speak lifespan (raises, or returns at once) is fine;
    one that reports `lifespan.startup.failed` makes entering fail.

    >>> # async with run_lifespan(server.streamable_http_app()): ... serve requests ...
    """
    inbox_send: MemoryObjectSendStream[Message]
    inbox: MemoryObjectReceiveStream[Message]
    inbox_send, inbox = anyio.create_memory_object_stream[Message](math.inf)
    started = anyio.Event()
    stopped = anyio.Event()
    outcome: dict[str, Message | None] = {"startup": None, "shutdown": None}

    async def receive() -> Message:
        return await inbox.receive()

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind.startswith("lifespan.startup."):
            outcome["startup"] = message
            started.set()
        elif kind.startswith("lifespan.shutdown."):
            outcome["shutdown"] = message
            stopped.set()

    async def run() -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await app(scope, receive, send)
        except Exception:  # apps without lifespan support raise on the scope: nothing to run
            if outcome["startup"] is None:
                logger.debug("app %r does not support lifespan", app)
            else:
                logger.exception("lifespan of %r failed", app)
        finally:
            started.set()
            stopped.set()

    with inbox_send, inbox:  # closed however it ends (else each warns "Unclosed" when collected)
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await inbox_send.send({"type": "lifespan.startup"})
            await started.wait()
            message = outcome["startup"]
            if message is not None and message["type"] == "lifespan.startup.failed":
                group.cancel_scope.cancel()
                raise RuntimeError(f"startup failed: {message.get('message', '')}")
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await inbox_send.send({"type": "lifespan.shutdown"})
                    with anyio.move_on_after(10):
                        await stopped.wait()
                group.cancel_scope.cancel()


async def serve_lifespan(
    context: contextlib.AbstractAsyncContextManager[object], receive: Receive, send: Send, *, name: str = "app"
) -> None:
    """Answer a `lifespan` scope: enter `context` at startup, leave it at shutdown, and say how each went.

    A failure on the way in is `lifespan.startup.failed` (the server does not start), one on the way
    out `lifespan.shutdown.failed`; both are logged with `name`.

    >>> # async def __call__(self, scope, receive, send):
    >>> #     if scope["type"] == "lifespan":
    >>> #         return await serve_lifespan(self.lifespan(), receive, send, name="router")
    """
    message = await receive()
    if message["type"] != "lifespan.startup":
        return
    stack = contextlib.AsyncExitStack()
    try:
        await stack.enter_async_context(context)
    except Exception as exc:
        logger.exception("%s startup failed", name)
        await stack.aclose()
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    try:
        await stack.aclose()
    except Exception as exc:
        logger.exception("%s shutdown failed", name)
        await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
        return
    await send({"type": "lifespan.shutdown.complete"})
