"""A transparent, streaming reverse proxy to one remote Streamable HTTP MCP endpoint.

Bytes go through unchanged both ways and as they come: request bodies are
streamed up, responses (JSON, SSE, the legacy GET stream) are streamed down
chunk by chunk, so progress notifications arrive while a tool runs. Session and
protocol headers (`Mcp-Session-Id`, `MCP-Protocol-Version`, `Mcp-Method`,
`Mcp-Name`, `Mcp-Param-*`, `Last-Event-ID`) pass as they are. The client's
`Authorization` (and cookies) are dropped — no token passthrough — unless
explicitly allowed; the backend's own credentials come from the configured
headers, or per caller from an RFC 8693 token exchange (`credentials`, see
:mod:`.credentials`). `Host` is the backend's. Connections are pooled and kept alive
(:class:`~mcp_middleware.router._upstream.UpstreamPool`).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import anyio
import httpx2
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import (
    Component,
    ErrorCode,
    McpRequest,
    Outcome,
    get_mcp_request,
    get_principal,
    record_decision,
    send_error,
)
from mcp_middleware.core.errors import request_id_in

from ._upstream import BROKEN_BODY, UpstreamError, UpstreamPool, UpstreamResponse, UpstreamUnreachable
from .credentials import BackendCredentials, ExchangeError, send_exchange_error
from .origins import identity_of_url
from .safety import MAY_HAVE_RUN
from .sessions import SessionOwners, owner_of, refuse_session, sealed_session
from .tls import tls_refusal

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
        b"content-length",  # set again from the body actually sent
    }
)
_DROP_UP = _HOP_BY_HOP | {b"host", b"authorization", b"cookie", b"x-forwarded-for", b"x-forwarded-proto"}
_DROP_UP_KEEP_AUTH = _DROP_UP - {b"authorization"}
_DROP_DOWN = (_HOP_BY_HOP - {b"content-length"}) | {b"date", b"server", b"set-cookie"}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def pooled_client(
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = 10.0,
    max_connections: int = 200,
    max_keepalive: int = 100,
    verify: bool | ssl.SSLContext = True,
    auth: httpx2.Auth | None = None,
) -> httpx2.AsyncClient:
    """The pooled keep-alive `httpx2` client the aggregate's SDK session to a remote backend uses.

    No read timeout: SSE responses and the legacy GET stream stay open as long as the
    backend streams; per-call deadlines belong to the caller.
    """
    return httpx2.AsyncClient(
        headers=dict(headers or {}),
        timeout=httpx2.Timeout(connect_timeout, read=None, write=30.0, pool=connect_timeout),
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive),
        verify=verify,
        auth=auth,
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
        name: str | None = None,
        headers: Mapping[str, str] | None = None,
        forward_authorization: bool = False,
        connect_timeout: float = 10.0,
        max_idle: int = 100,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        credentials: BackendCredentials | None = None,
    ) -> None:
        """`ssl_context`: how to reach an `https` backend (a client certificate, a CA bundle; mTLS).
        `credentials`: each caller's requests carry a token exchanged for this backend (never the caller's)."""
        if credentials is not None and (
            forward_authorization or any(k.lower() == "authorization" for k in (headers or {}))
        ):
            raise ValueError("credentials (token exchange) replace the Authorization header: set only one")
        parts = urlsplit(url)
        self.url = url
        self.name = name or url
        self._down = False
        self.path = (parts.path or "/").encode("latin-1")
        context = ssl_context
        if parts.scheme == "https" and not verify and context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.pool = UpstreamPool(url, connect_timeout=connect_timeout, max_idle=max_idle, ssl_context=context)
        own = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self._own = b"".join(k + b": " + v + b"\r\n" for k, v in own)
        self._drop = (_DROP_UP_KEEP_AUTH if forward_authorization else _DROP_UP) | {k for k, _ in own}
        self._host = b"host: " + self.pool.host_header + b"\r\n"
        self.forward_authorization = forward_authorization
        self.credentials = credentials
        self.owners = SessionOwners()
        self.identity = identity_of_url(url)
        """The server a sealed handle's session must have been issued by to be sent here (origins.py)."""

    async def aclose(self) -> None:
        await self.pool.aclose()
        if self.credentials is not None:
            await self.credentials.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        view = get_mcp_request(scope)
        session_id = view.session_id if view is not None else None
        if session_id is not None and not self.owners.allows(session_id, owner := owner_of(scope)):
            handle = sealed_session(scope)  # its word counts for sessions this instance has not bound
            if handle is None or not handle.vouches(session_id, owner, self.identity) or self.owners.bound(session_id):
                moved = handle is not None and not handle.issued_by(self.identity)
                if handle is not None and moved:
                    handle.refused = True  # another server's session (the name moved): never sent here, nor re-opened
                await refuse_session(scope, send, view.id if view else None, moved=moved)
                return
            self.owners.bind(session_id, owner)  # opened through another instance: its sealed handle says whose
        if view is not None and view.method == "initialize":
            send = self._binding(scope, send)
        elif session_id is not None and scope["method"] == "DELETE":
            self.owners.forget(session_id)
        authorization = b""
        if self.credentials is not None:
            exchanged = await self._authorization(scope, send, view)
            if exchanged is None:
                return  # answered: no token for this backend
            authorization = exchanged
        message = await receive()
        if message["type"] != "http.request":
            return  # the client left before sending its request
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        body_sent = anyio.Event()
        head, chunked = self._head(scope, body, more_body, authorization)
        rest = None if not more_body else _rest_of_body(receive, body_sent)
        if rest is None:
            body_sent.set()
        try:
            response = await self.pool.request(head, body, rest, chunked=chunked)
            if response.status == 401 and self.credentials is not None and rest is None:
                # The backend refused its token (revoked, rotated keys): exchange anew and send once more.
                # Only a body wholly at hand is sent again (the router's parsed requests always are).
                renewed = await self._renewed(scope, send, view, response)
                if renewed is None:
                    return
                response = await self.pool.request(
                    self._head(scope, body, False, renewed)[0], body, None, chunked=False
                )
        except TimeoutError:  # connecting timed out (reads have no timeout here): nothing was sent
            await self._fail(
                scope, send, 504, ErrorCode.TIMEOUT, "Backend did not answer in time", sent=False, body=body
            )
            return
        except UpstreamError as exc:
            self._unreachable(tls_refusal(exc) or str(exc))  # a refused handshake says tls: …
            sent = not isinstance(exc, UpstreamUnreachable)
            await self._fail(scope, send, 502, ErrorCode.BAD_GATEWAY, "Backend is unreachable", sent=sent, body=body)
            return
        except _ClientGone:
            return
        if self._down:
            self._down = False
            logger.warning("backend %r reachable again", self.name)
        if response.status == 401 and self.credentials is not None:
            # Its own exchanged token refused even when fresh: the gateway's problem, not the caller's (and the
            # backend's challenge would send the client's OAuth flow to the backend's authorization server).
            await response.aclose()
            refused = ExchangeError(502, "the backend refused the token exchanged for it")
            await self._no_token(scope, send, view, refused)
            return
        try:
            headers = [(k, v) for k, v in response.headers if k not in _DROP_DOWN]
            start = {"type": "http.response.start", "status": response.status, "headers": headers}
            if any(k == b"content-length" for k, _ in headers):  # a finite body (JSON): nothing to cancel
                try:
                    whole = await response.small_body()
                except BROKEN_BODY as exc:  # nothing reached the client yet: a JSON-RPC error, not a cut
                    logger.warning("backend %r broke off a response: %r", self.name, exc)
                    said = "Backend failed while answering; the request may have run"
                    await self._fail(scope, send, 502, ErrorCode.BAD_GATEWAY, said, sent=True, body=body)
                    return
                await send(start)
                if whole is not None:
                    await send({"type": "http.response.body", "body": whole, "more_body": False})
                    return
                await self._relay(scope, response.body(), send)
                return
            await send(start)
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_on_disconnect, receive, body_sent, group.cancel_scope)
                await self._relay(scope, response.body(), send)
                group.cancel_scope.cancel()
        finally:
            await response.aclose()

    def _binding(self, scope: Scope, send: Send) -> Send:
        """The session this `initialize` opens belongs to whoever sent it."""
        owner = owner_of(scope)
        handle = sealed_session(scope)

        async def bind(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", ()):
                    if key.lower() == b"mcp-session-id":
                        self.owners.bind(value.decode("latin-1"), owner)
                        if handle is not None:
                            handle.note_origin(self.identity)  # a sealed handle is bound to this server
            await send(message)

        return bind

    def _unreachable(self, reason: str) -> None:
        """One WARNING when an outage starts (and one when it ends), the failures between at DEBUG."""
        if self._down:
            logger.debug("backend %r still unreachable: %s", self.name, reason)
            return
        self._down = True
        logger.warning("backend %r unreachable (%s): %s", self.name, self.url, reason)

    async def _authorization(self, scope: Scope, send: Send, view: McpRequest | None) -> bytes | None:
        """The `Authorization` line with this caller's exchanged token, or None when a JSON-RPC error was sent."""
        assert self.credentials is not None
        try:
            token, cached = await self.credentials.token_for(get_principal(scope))
        except ExchangeError as exc:
            await self._no_token(scope, send, view, exc)
            return None
        record_decision(scope, Component.CREDENTIALS, Outcome.ALLOW, backend=self.url, cached=cached)
        return b"authorization: Bearer " + token.encode("ascii") + b"\r\n"

    async def _renewed(
        self, scope: Scope, send: Send, view: McpRequest | None, refused: UpstreamResponse
    ) -> bytes | None:
        assert self.credentials is not None
        await refused.aclose()
        self.credentials.forget(get_principal(scope))
        record_decision(scope, Component.CREDENTIALS, Outcome.RETRY, backend=self.url, status=401)
        return await self._authorization(scope, send, view)

    async def _no_token(self, scope: Scope, send: Send, view: McpRequest | None, exc: ExchangeError) -> None:
        """401/403 when the caller may not have a token for this backend, 502/504 when the exchange failed."""
        request_id = view.id if view is not None else None
        await send_exchange_error(scope, send, exc, backend=self.url, name=self.name, request_id=request_id)

    def _head(self, scope: Scope, body: bytes, more_body: bool, authorization: bytes = b"") -> tuple[bytes, bool]:
        """The request line and headers for the backend, and whether the body goes chunked."""
        drop = self._drop
        declared: bytes | None = None
        lines = [scope["method"].encode("latin-1"), b" ", self.path]
        query: bytes = scope.get("query_string", b"")
        if query:
            lines += [b"?", query]
        lines += [b" HTTP/1.1\r\n", self._host, self._own, authorization]
        accept_encoding = False
        for key, value in scope["headers"]:
            if key in drop:
                if key == b"content-length":
                    declared = value
                continue
            if key == b"accept-encoding":
                accept_encoding = True
            lines += [key, b": ", value, b"\r\n"]
        if not accept_encoding:
            lines.append(b"accept-encoding: identity\r\n")
        client = scope.get("client")
        if client:
            lines += [b"x-forwarded-for: ", str(client[0]).encode("latin-1"), b"\r\n"]
        lines += [b"x-forwarded-proto: ", str(scope.get("scheme", "http")).encode("latin-1"), b"\r\n"]
        chunked = False
        if not more_body:
            if body or scope["method"] in _BODY_METHODS:
                lines += [b"content-length: ", str(len(body)).encode("ascii"), b"\r\n"]
        elif declared is not None:
            lines += [b"content-length: ", declared, b"\r\n"]
        else:  # a body of unknown length: streamed up as it comes
            lines.append(b"transfer-encoding: chunked\r\n")
            chunked = True
        lines.append(b"\r\n")
        return b"".join(lines), chunked

    async def _relay(self, scope: Scope, chunks: AsyncIterator[bytes], send: Send) -> None:
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except BROKEN_BODY as exc:
            # The backend died mid-stream: end the response (the client sees it cut), say why in the log.
            logger.warning("backend %r broke off a response: %r", self.name, exc)
            record_decision(scope, Component.ROUTER, Outcome.BACKEND_ERROR, backend=self.url, reason="stream broken")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _fail(
        self, scope: Scope, send: Send, status: int, code: int, message: str, *, sent: bool, body: bytes
    ) -> None:
        """`sent`: the request may have reached the backend (`data.mayHaveRun`, for routes and failover);
        `body`: the request's, for its id when no layer in front parsed it."""
        request = get_mcp_request(scope)
        record_decision(scope, Component.ROUTER, Outcome.BACKEND_ERROR, backend=self.url, status=status)
        await send_error(
            send,
            status=status,
            code=code,
            message=message,
            request_id=request.id if request is not None else request_id_in(body),
            data={"backend": self.url, MAY_HAVE_RUN: sent},
        )


class _ClientGone(Exception):
    """The client disconnected while its request body was being sent up."""


async def _rest_of_body(receive: Receive, done: anyio.Event) -> AsyncIterator[bytes]:
    """The client's body after the first message, as it arrives; then `receive` belongs to the watcher."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        more = message.get("more_body", False)
        yield message.get("body", b"")
    done.set()


async def _cancel_on_disconnect(receive: Receive, body_sent: anyio.Event, scope: anyio.CancelScope) -> None:
    """Closing the client's stream is cancellation (modern era): stop streaming, close the backend's."""
    await body_sent.wait()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return
