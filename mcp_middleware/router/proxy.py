"""A transparent, streaming reverse proxy to one remote Streamable HTTP MCP endpoint.

Bytes go through unchanged both ways and as they come: request bodies are
streamed up, responses (JSON, SSE, the legacy GET stream) are streamed down
chunk by chunk, so progress notifications arrive while a tool runs. Session and
protocol headers (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`,
`Mcp-Name`, `Mcp-Param-*`, `Last-Event-ID`) pass as they are. The client's
`Authorization` is dropped (no token passthrough) unless explicitly allowed;
the backend's own credentials come from the configured headers. `Host` is the
backend's. Connections are pooled and kept alive: one `httpx2.AsyncClient` per
backend, shared by every request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2
from starlette.types import Receive, Scope, Send

from mcp_middleware.core import ErrorCode, get_mcp_request, record_decision, send_error

__all__ = ["StreamingProxy", "pooled_client"]

logger = logging.getLogger("mcp_middleware.router")

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROP_UP = _HOP_BY_HOP | {b"host", b"authorization", b"cookie"}
_DROP_UP_KEEP_AUTH = _HOP_BY_HOP | {b"host", b"cookie"}
_DROP_DOWN = _HOP_BY_HOP | {b"date", b"server", b"set-cookie"}


def pooled_client(
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = 10.0,
    max_connections: int = 200,
    max_keepalive: int = 100,
    verify: bool = True,
) -> httpx2.AsyncClient:
    """The pooled keep-alive client a backend shares between its proxy and its aggregate session.

    No read timeout: SSE responses and the legacy GET stream stay open as long as the
    backend streams; per-call deadlines belong to the caller.
    """
    return httpx2.AsyncClient(
        headers=dict(headers or {}),
        timeout=httpx2.Timeout(connect_timeout, read=None, write=30.0, pool=connect_timeout),
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive),
        verify=verify,
        follow_redirects=False,
    )


class StreamingProxy:
    """Pure-ASGI reverse proxy to one MCP endpoint URL.

    >>> proxy = StreamingProxy("http://127.0.0.1:9000/mcp", headers={"Authorization": "Bearer backend-token"})
    >>> # await proxy(scope, receive, send) for every request of the mount; close with `await proxy.aclose()`
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        forward_authorization: bool = False,
        client: httpx2.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/") if url.endswith("/") and not url.endswith("://") else url
        self.forward_authorization = forward_authorization
        self._own_client = client is None
        self.client = client if client is not None else pooled_client(headers=headers)
        self._drop = _DROP_UP_KEEP_AUTH if forward_authorization else _DROP_UP

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        request = self._build(scope, receive)
        body_sent = anyio.Event()
        request.stream = _RequestBody(receive, body_sent)
        try:
            response = await self.client.send(request, stream=True)
        except httpx2.TimeoutException:
            await self._fail(scope, send, 504, ErrorCode.TIMEOUT, "Backend did not answer in time")
            return
        except httpx2.HTTPError as exc:
            logger.warning("backend %s unreachable: %s", self.url, exc)
            await self._fail(scope, send, 502, ErrorCode.BAD_GATEWAY, "Backend is unreachable")
            return
        except _ClientGone:
            return
        try:
            headers = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _DROP_DOWN]
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            if "content-length" in response.headers:  # a finite body (JSON): no stream to cancel, no watcher
                await self._relay(scope, response, send)
                return
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, body_sent, group.cancel_scope)
                await self._relay(scope, response, send)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def _relay(self, scope: Scope, response: httpx2.Response, send: Send) -> None:
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx2.HTTPError as exc:  # the backend died mid-stream: end the response, say why in the log
            logger.warning("backend %s broke off a response: %s", self.url, exc)
            record_decision(scope, "router", "backend_error", backend=self.url, reason="stream broken")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _build(self, scope: Scope, receive: Receive) -> httpx2.Request:
        drop = self._drop
        headers: list[tuple[bytes, bytes]] = []
        accept_encoding = length = False
        for key, value in scope["headers"]:
            if key in drop:
                continue
            if key == b"accept-encoding":
                accept_encoding = True
            elif key == b"content-length":
                length = True
            headers.append((key, value))
        if not length and scope["method"] in ("POST", "PUT", "PATCH"):
            headers.append((b"transfer-encoding", b"chunked"))  # a body of unknown length is streamed up as it comes
        if not accept_encoding:  # otherwise httpx2 would ask for gzip the client never asked for
            headers.append((b"accept-encoding", b"identity"))
        client = scope.get("client")
        if client:
            headers.append((b"x-forwarded-for", str(client[0]).encode("latin-1")))
        headers.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode("latin-1")))
        query: bytes = scope.get("query_string", b"")
        url = self.url if not query else f"{self.url}?{query.decode('latin-1')}"
        return self.client.build_request(scope["method"], url, headers=headers)

    async def _fail(self, scope: Scope, send: Send, status: int, code: int, message: str) -> None:
        request = get_mcp_request(scope)
        record_decision(scope, "router", "backend_error", backend=self.url, status=status)
        await send_error(
            send,
            status=status,
            code=code,
            message=message,
            request_id=request.id if request is not None else None,
            data={"backend": self.url},
        )


class _ClientGone(Exception):
    """The client disconnected while its request body was being sent up."""


class _RequestBody(httpx2.AsyncByteStream):
    """The client's body as it arrives; then the client's `receive` belongs to the disconnect watcher."""

    def __init__(self, receive: Receive, done: anyio.Event) -> None:
        self._receive = receive
        self._done = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._done.is_set():
            return
        more = True
        while more:
            message = await self._receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                yield chunk
        self._done.set()


async def _cancel_on_disconnect(receive: Receive, body_sent: anyio.Event, scope: Any) -> None:
    """Closing the client's stream is cancellation (modern era): stop streaming, close the backend's."""
    await body_sent.wait()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
