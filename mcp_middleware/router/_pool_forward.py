"""How a pool reaches one replica: forward a request (streaming the answer) or ask it something itself.

A forward either hands the client the replica's answer, streamed as it comes, or reports a
:class:`Failure` before a single byte reached the client, saying whether the replica may
have run the request: a connection that could not be opened never delivered it; a
connection that broke before the response head, or a replica answering 502/503, may have.
The response head is looked at before it is passed on (nothing else is held back), so a
replica's 502/503 can be answered by another replica.

With backend credentials (token exchange) a forward carries the caller's exchanged token
(:class:`~._pool_credentials.CallerToken`) and a probe the gateway's own client-credentials token (or,
when none can be had, none: see :mod:`._pool_credentials`); a 401 is answered by one renewal and one
more try at the same replica (it refused before running).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import SseParser, replay
from mcp_middleware.core.errors import request_id_in
from mcp_middleware.core.protocol import is_event_stream

from ._pool_credentials import CallerToken, ChallengedWithoutToken, TokenRefused, bearer_challenge
from ._upstream import BROKEN_BODY, UpstreamError, UpstreamResponse, UpstreamUnreachable
from .backends import HttpBackend, InProcessBackend
from .credentials import ExchangeError
from .proxy import _DROP_DOWN, StreamingProxy, _cancel_on_disconnect
from .sessions import exchange
from .tls import tls_refusal

__all__ = ["Failure", "ReplicaTransport", "Resumed", "StartHook", "transport_for"]

FAILOVER_STATUS = frozenset({502, 503})
"""Statuses of a replica (or a balancer in front of it) that say it could not serve: tried elsewhere."""
_MAX_ANSWER = 1024 * 1024
"""Largest answer a probe reads."""

StartHook = Callable[[Message], Message]
"""Sees (and may rewrite) the response head before it reaches the client: session binding."""


class Failure(NamedTuple):
    """A forward that did not reach the client: why, and whether the replica may have run it.

    `started`: the response head (and maybe some events) went out before the replica broke off;
    the response is left open for the caller to finish (`sse`: it is an event stream).
    """

    may_have_run: bool
    reason: str
    started: bool = False
    sse: bool = False


class ReplicaTransport:
    """Forward to one replica, or exchange one message of the pool's own (a probe) with it."""

    async def forward(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        hook: StartHook | None,
        auth: CallerToken | None = None,
    ) -> Failure | int | ExchangeError:
        """Forward the request: the HTTP status passed on to the client, or why nothing was (a failure of
        the replica, or no token for it: an :class:`ExchangeError`, answered by the caller of `forward`)."""
        raise NotImplementedError

    async def ask(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any] | None]:
        """Send one JSON-RPC request; the HTTP status and the JSON-RPC answer to it (None if none came)."""
        raise NotImplementedError


def transport_for(backend: HttpBackend | InProcessBackend) -> ReplicaTransport:
    if isinstance(backend, HttpBackend):
        proxy = backend.path_app()
        assert isinstance(proxy, StreamingProxy)
        return _HttpTransport(proxy)
    return _AppTransport(backend.path_app())


class _HttpTransport(ReplicaTransport):
    """A remote replica, through the streaming proxy's own keep-alive pool and request head."""

    def __init__(self, proxy: StreamingProxy) -> None:
        self.proxy = proxy

    async def forward(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        hook: StartHook | None,
        auth: CallerToken | None = None,
    ) -> Failure | int | ExchangeError:
        proxy = self.proxy
        try:
            authorization = await auth.header() if auth is not None else b""  # the request's own, had before
        except ExchangeError as exc:
            return exc
        head, _ = proxy._head(scope, body, False, authorization)
        try:
            response = await proxy.pool.request(head, body, None, chunked=False)
            if response.status == 401 and auth is not None:  # refused before running: a fresh token, once more
                await response.aclose()
                try:
                    authorization = await auth.renew()
                except ExchangeError as exc:
                    return exc
                head = proxy._head(scope, body, False, authorization)[0]
                response = await proxy.pool.request(head, body, None, chunked=False)
                if response.status == 401:
                    await response.aclose()
                    return TokenRefused()
        except (UpstreamUnreachable, TimeoutError) as exc:  # no connection: the request was never sent
            return Failure(False, tls_refusal(exc) or str(exc))  # a refused handshake says so in the ejection
        except UpstreamError as exc:  # sent, and the connection broke before an answer: it may have run
            return Failure(True, tls_refusal(exc) or str(exc))
        try:
            if response.status in FAILOVER_STATUS:
                return Failure(True, f"answered HTTP {response.status}")
            found = dict(response.headers)  # one pass in C for the two headers looked at below
            start: Message = {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k, v) for k, v in response.headers if k not in _DROP_DOWN],
            }
            if b"content-length" in found:  # a finite body (JSON): nothing to cancel
                try:
                    whole = await response.small_body()
                except BROKEN_BODY as exc:  # before anything reached the client: answered as a failure
                    return Failure(True, f"broke off its answer: {exc!r}"[:200])
                await send(hook(start) if hook is not None else start)
                if whole is not None:
                    await send({"type": "http.response.body", "body": whole, "more_body": False})
                    return response.status
                broken = await _relay(response.body(), send)
            else:
                await send(hook(start) if hook is not None else start)
                sent = anyio.Event()
                sent.set()  # the body went with the head: what follows on `receive` is the client leaving
                finished = False
                async with anyio.create_task_group() as group:
                    group.start_soon(_cancel_on_disconnect, receive, sent, group.cancel_scope)
                    broken = await _relay(response.body(), send)
                    finished = True
                    group.cancel_scope.cancel()
                if not finished:
                    return response.status  # the client left (the modern era's cancellation): nobody to answer
            if broken is not None:  # the replica died mid-answer: the caller finishes the response
                sse = is_event_stream(found.get(b"content-type", b""))
                return Failure(True, f"broke off its answer: {broken!r}"[:200], started=True, sse=sse)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status
        finally:
            await response.aclose()

    async def ask(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any] | None]:
        """With credentials, as the gateway itself (its client-credentials token, renewed once on a 401).

        With no token to be had, asked without one: an OAuth challenge in answer raises
        :class:`ChallengedWithoutToken` (alive), an answer is returned as any (a 5xx: not alive), any other
        refusal raises the :class:`ExchangeError` (nothing learned); an unreachable replica raises as always.
        """
        credentials = self.proxy.credentials
        if credentials is None:
            return await self._read(await self._ask(body, headers, b""))
        try:
            token = await credentials.service_token()
            response = await self._ask(body, headers, b"authorization: Bearer " + token.encode("ascii") + b"\r\n")
            if response.status == 401:
                await response.aclose()
                token = await credentials.service_token(fresh=True)
                response = await self._ask(body, headers, b"authorization: Bearer " + token.encode("ascii") + b"\r\n")
        except ExchangeError as exc:  # the identity provider is down or refuses the gateway: ask without a token
            response = await self._ask(body, headers, b"")
            if response.status < 500 and not 200 <= response.status < 300:
                await response.aclose()
                if bearer_challenge(response.status, response.headers):
                    raise ChallengedWithoutToken(exc) from exc
                raise
        return await self._read(response)

    async def _ask(self, body: bytes, headers: list[tuple[bytes, bytes]], authorization: bytes) -> UpstreamResponse:
        proxy = self.proxy
        lines = [b"POST ", proxy.path, b" HTTP/1.1\r\n", proxy._host, proxy._own, authorization]
        for key, value in headers:
            lines += [key, b": ", value, b"\r\n"]
        lines += [b"content-length: ", str(len(body)).encode("ascii"), b"\r\n\r\n"]
        return await proxy.pool.request(b"".join(lines), body, None, chunked=False)

    async def _read(self, response: UpstreamResponse) -> tuple[int, dict[str, Any] | None]:
        try:
            content_type = next((v for k, v in response.headers if k == b"content-type"), b"")
            parser = SseParser(_MAX_ANSWER) if is_event_stream(content_type) else None
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.body():
                size += len(chunk)
                if size > _MAX_ANSWER:
                    return response.status, None
                if parser is None:
                    chunks.append(chunk)
                    continue
                for _, data in parser.feed(chunk):
                    answer = _answer(data)
                    if answer is not None:
                        return response.status, answer
            return response.status, _answer(b"".join(chunks)) if parser is None else None
        finally:
            await response.aclose()


class _AppTransport(ReplicaTransport):
    """An in-process replica: its ASGI app, called directly (no HTTP: no backend credentials)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def forward(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        hook: StartHook | None,
        auth: CallerToken | None = None,
    ) -> Failure | int:
        status = 0
        refused = False

        async def guarded(message: Message) -> None:
            nonlocal status, refused
            if refused:
                return
            if message["type"] == "http.response.start":
                if message["status"] in FAILOVER_STATUS:
                    refused = True
                    return
                status = message["status"]
                if hook is not None:
                    message = hook(message)
            await send(message)

        try:
            await self.app(scope, replay(body, receive) if scope["method"] == "POST" else receive, guarded)
        except Exception as exc:
            if status:
                raise  # the client has part of the answer: the connection must drop, as without a pool
            return Failure(True, f"{type(exc).__name__}: {exc}"[:200])
        if refused:
            return Failure(True, "answered HTTP 502/503")
        if not status:
            return Failure(True, "returned without answering")
        return status

    async def ask(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any] | None]:
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1:1"), *headers, (b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 1),
        }
        found = await exchange(self.app, scope, body, request_id_in(body))
        return found.status, found.message


async def _relay(chunks: AsyncIterator[bytes], send: Send) -> BaseException | None:
    """Pass the body on as it arrives (its end is the caller's to send); what broke it, if it broke."""
    try:
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except BROKEN_BODY as exc:
        return exc
    return None


class Resumed:
    """The client's `send` for a replica taking over a response another replica started (an event stream).

    The new head is dropped (the client has one); events pass as they come; a JSON answer becomes
    one event (held until complete, bounded: one JSON-RPC message cannot be passed on in parts).
    """

    def __init__(self, send: Send, max_bytes: int) -> None:
        self.send = send
        self.max_bytes = max_bytes
        self.json: list[bytes] | None = None
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            content_type = next((v for k, v in message.get("headers", ()) if k == b"content-type"), b"")
            self.json = None if is_event_stream(content_type) else []
            return
        if self.json is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        chunk: bytes = message.get("body", b"")
        self.size += len(chunk)
        if self.size <= self.max_bytes:
            self.json.append(chunk)
        if message.get("more_body", False):
            return
        data = b"".join(self.json) if self.size <= self.max_bytes else b""
        event = b"event: message\r\ndata: " + data.replace(b"\n", b"") + b"\r\n\r\n" if data else b""
        await self.send({"type": "http.response.body", "body": event, "more_body": False})


def _answer(data: bytes) -> dict[str, Any] | None:
    """A JSON-RPC response object (a result or an error), else None."""
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(decoded, dict) or "method" in decoded:
        return None
    if isinstance(decoded.get("result"), dict) or isinstance(decoded.get("error"), dict):
        return decoded
    return None
