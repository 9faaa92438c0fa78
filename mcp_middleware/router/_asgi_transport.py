"""An `httpx2` transport into an ASGI app in the same process that streams the response.

`httpx2.ASGITransport` collects the whole response body before returning it, so
progress notifications of an in-process backend would reach the aggregate's
client only when the tool has finished, and a GET stream would never return.
This transport runs the app in a task and hands each body chunk over as it is
sent; closing the response is the client's disconnect (the modern era's
cancellation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import httpx2
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message

__all__ = ["AsgiStreamTransport"]

logger = logging.getLogger("mcp_middleware.router")


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(self, messages: MemoryObjectReceiveStream[Message], disconnected: anyio.Event) -> None:
        self._messages = messages
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for message in self._messages:
            if message["type"] != "http.response.body":
                continue
            body: bytes = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                break

    async def aclose(self) -> None:
        self._disconnected.set()
        self._messages.close()


class AsgiStreamTransport(httpx2.AsyncBaseTransport):
    """Send `httpx2` requests to an ASGI app without a socket, streaming responses.

    Enter it (an `httpx2.AsyncClient` using it enters it) before sending: the app
    runs in the transport's task group, which is cancelled on exit.

    >>> from mcp.server.mcpserver import MCPServer
    >>> transport = AsgiStreamTransport(MCPServer("demo").streamable_http_app())
    >>> client = httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")
    """

    def __init__(self, app: ASGIApp, *, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.app = app
        self.client = client
        self._group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> AsgiStreamTransport:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        group, self._group = self._group, None
        if group is not None:
            group.cancel_scope.cancel()
            await group.__aexit__(exc_type, exc_value, traceback)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        group = self._group
        if group is None:
            raise RuntimeError("AsgiStreamTransport must be entered before use")
        body = await request.aread()
        url = request.url
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(key.lower(), value) for key, value in request.headers.raw],
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?")[0],
            "query_string": url.query,
            "root_path": "",
            "server": (url.host, url.port),
            "client": self.client,
            "state": {},
        }
        outbox: MemoryObjectSendStream[Message]
        inbox: MemoryObjectReceiveStream[Message]
        outbox, inbox = anyio.create_memory_object_stream[Message](math.inf)
        disconnected = anyio.Event()
        pending_body: list[bytes] = [body]

        async def receive() -> Message:
            if pending_body:
                return {"type": "http.request", "body": pending_body.pop(), "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if disconnected.is_set():
                return
            try:
                await outbox.send(message)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                disconnected.set()

        async def run() -> None:
            with outbox:
                try:
                    await self.app(scope, receive, send)
                except Exception:  # the client sees a broken response, the log the reason
                    logger.exception("in-process backend failed on %s %s", request.method, url.path)

        group.start_soon(run)
        try:
            start = await _first_start(inbox)
        except BaseException:
            disconnected.set()
            inbox.close()
            raise
        if start is None:
            inbox.close()
            return httpx2.Response(500, headers=[(b"content-type", b"text/plain")], content=b"backend failed")
        return httpx2.Response(
            start["status"], headers=list(start.get("headers", [])), stream=_ResponseBody(inbox, disconnected)
        )


async def _first_start(inbox: MemoryObjectReceiveStream[Message]) -> Message | None:
    async for message in inbox:
        if message["type"] == "http.response.start":
            return message
    return None
