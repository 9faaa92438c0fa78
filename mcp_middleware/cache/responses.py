"""Answering from the cache: a hit in the form the client asked for, and the guard that serves stale on failure."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Message, Send

from mcp_middleware.core.protocol import is_event_stream

from ..core.errors import ErrorCode, JsonRpcCode, RequestId
from ..core.protocol import META_NAMESPACE
from ..core.request import McpRequest
from ..core.tap import SseParser
from .store import CacheEntry

__all__ = ["CACHE_META_KEY", "FAILURE_CODES", "StaleGuard", "accepts", "render", "send_answer"]

CACHE_META_KEY = f"{META_NAMESPACE}/cache"
"""The `_meta` key a stale answer carries: `{"stale": true, "ageMs": …}`."""

FAILURE_CODES = frozenset(
    {
        int(JsonRpcCode.INTERNAL_ERROR),
        int(ErrorCode.UNAVAILABLE),
        int(ErrorCode.TIMEOUT),
        int(ErrorCode.BAD_GATEWAY),
        -32000,  # the SDK's "connection closed"
        -32001,  # the SDK's "request timed out"
    }
)
"""JSON-RPC error codes that mean the backend failed (not that the request was wrong)."""

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def accepts(raw_headers: list[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """`(json, sse)`: which response forms the request's `Accept` allows (wildcards as the SDK reads them)."""
    accept = b""
    for name, value in raw_headers:
        if name == b"accept":
            accept = value
            break
    if accept == b"application/json, text/event-stream":  # what the SDK client sends
        return True, True
    types = {part.split(b";", 1)[0].strip().lower() for part in accept.split(b",")}
    wildcard = b"*/*" in types
    return (
        wildcard or b"application/json" in types or b"application/*" in types,
        wildcard or b"text/event-stream" in types or b"text/*" in types,
    )


def _result_bytes(entry: CacheEntry, now: float, stale: bool) -> bytes:
    result = entry.result
    if stale:
        data: dict[str, Any] = orjson.loads(result)
        meta = data.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta[CACHE_META_KEY] = {"stale": True, "ageMs": int((now - entry.stored_at) * 1000)}
        data["_meta"] = meta
        if entry.ttl_field:
            data["ttlMs"] = 0
        return orjson.dumps(data)
    if entry.ttl_field:  # the time left, spliced in: the stored JSON has no ttlMs of its own
        remaining = b"%d" % max(0, int((entry.fresh_until - now) * 1000))
        return (result[:-1] + b',"ttlMs":' if len(result) > 2 else b'{"ttlMs":') + remaining + b"}"
    return result


def render(request_id: RequestId | None, entry: CacheEntry, now: float, *, sse: bool, stale: bool = False) -> bytes:
    """The body of a JSON-RPC response carrying the cached result and the request's own id."""
    body = b'{"jsonrpc":"2.0","id":%b,"result":%b}' % (orjson.dumps(request_id), _result_bytes(entry, now, stale))
    return b"event: message\r\ndata: " + body + b"\r\n\r\n" if sse else body


async def send_answer(send: Send, body: bytes, *, sse: bool, extra_headers: list[tuple[bytes, bytes]]) -> None:
    """One complete `200` response; an event stream ends right after its one event, as the SDK's do."""
    if sse:
        headers = [*_SSE_HEADERS, *extra_headers]
    else:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra_headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class StaleGuard:
    """Holds a response back only until it shows whether the backend failed.

    Used when a stale entry could stand in. A `5xx`, or a JSON-RPC error with a failure code as
    the JSON body or as the first event of a stream, is swallowed (`failed`) so that the stale
    answer can be sent instead. Anything else is released at once and streams on: a stream is
    held only until its first event (for a list or a read, that event is the response), never
    longer than `max_bytes`.
    """

    __slots__ = ("_held", "_held_bytes", "_max", "_request", "_send", "_sse", "decided", "failed", "forwarded")

    def __init__(self, send: Send, request: McpRequest, max_bytes: int) -> None:
        self._send = send
        self._request = request
        self._max = max_bytes
        self._held: list[Message] = []
        self._held_bytes = 0
        self._sse: SseParser | None = None
        self.decided = False
        self.failed = False
        self.forwarded = False

    def _is_failure(self, data: bytes) -> bool:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(message, dict) or message.get("id") not in (self._request.id, None):
            return False
        error = message.get("error")
        return isinstance(error, dict) and error.get("code") in FAILURE_CODES

    async def _release(self) -> None:
        self.decided = True
        self.forwarded = True
        held, self._held = self._held, []
        for message in held:
            await self._send(message)

    async def send(self, message: Message) -> None:
        if self.failed:
            return  # the stale answer replaces this response
        if self.decided:
            await self._send(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            status = message["status"]
            if status >= 500:
                self.failed = self.decided = True
                return
            content_type = b""
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    content_type = value
            self._held.append(message)
            if is_event_stream(content_type):
                self._sse = SseParser(self._max)
            elif content_type.split(b";", 1)[0].strip().lower() != b"application/json":
                await self._release()
            return
        if kind != "http.response.body":
            await self._release()
            await self._send(message)
            return
        self._held.append(message)
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        self._held_bytes += len(body)
        if self._sse is not None:
            for _, data in self._sse.feed(body, final=not more):
                if self._is_failure(data):
                    self.failed = self.decided = True
                    self._held = []
                    return
                await self._release()  # the first event decides
                return
        elif not more:
            if self._is_failure(b"".join(m.get("body", b"") for m in self._held[1:])):
                self.failed = self.decided = True
                self._held = []
                return
            await self._release()
            return
        if not more or self._held_bytes > self._max:
            await self._release()
