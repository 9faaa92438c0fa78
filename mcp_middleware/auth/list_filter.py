"""Trim `tools/list`, `prompts/list` and `resources/list` results to what the caller may use.

The response is rewritten one message at a time: a JSON body (the one response) is held
until complete, fixed and sent with a new `Content-Length`; in an SSE stream only the
event carrying this request's result is held until its blank line, every other event
(progress, logging) passes at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Message, Send

from mcp_middleware.core import RequestId

__all__ = ["LIST_METHODS", "ListFilter"]

logger = logging.getLogger("mcp_middleware.auth")

LIST_METHODS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "name", "tools/call"),
    "prompts/list": ("prompts", "name", "prompts/get"),
    "resources/list": ("resources", "uri", "resources/read"),
}
"""List method → (result key, item field naming the target, the method that uses the item)."""

Allowed = Callable[[str, str], bool]
"""`allowed(method, target)`: may the caller invoke `method` on `target`?"""

_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")


def _next_event_end(buffer: bytes | bytearray) -> int:
    """Index just past the first complete event's blank line, or -1."""
    best = -1
    for separator in _SEPARATORS:
        found = buffer.find(separator)
        if found != -1 and (best == -1 or found + len(separator) < best):
            best = found + len(separator)
    return best


class ListFilter:
    """A `send` wrapper that filters the list result of one request (see the module docstring)."""

    __slots__ = (
        "_allowed",
        "_buffer",
        "_done",
        "_held_start",
        "_max_bytes",
        "_method",
        "_mode",
        "_request_id",
        "_send",
    )

    def __init__(
        self, send: Send, *, method: str, request_id: RequestId | None, allowed: Allowed, max_bytes: int
    ) -> None:
        self._send = send
        self._method = method
        self._request_id = request_id
        self._allowed = allowed
        self._max_bytes = max_bytes
        self._mode = "pass"
        self._held_start: Message | None = None
        self._buffer = bytearray()
        self._done = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body" and self._mode == "json":
            await self._json_body(message)
        elif kind == "http.response.body" and self._mode == "sse":
            await self._sse_body(message)
        else:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        content_type = b""
        for key, value in message.get("headers", ()):
            if key.lower() == b"content-type":
                content_type = value.lower()
        if message["status"] == 200 and content_type.startswith(b"application/json"):
            self._mode = "json"
            self._held_start = message
            return
        if message["status"] == 200 and content_type.startswith(b"text/event-stream"):
            self._mode = "sse"
        await self._send(message)

    async def _json_body(self, message: Message) -> None:
        self._buffer += message.get("body", b"")
        if len(self._buffer) > self._max_bytes:
            logger.warning("%s result larger than %d bytes: sent unfiltered", self._method, self._max_bytes)
            await self._flush_unfiltered(message)
            return
        if message.get("more_body", False):
            return
        body = self._rewrite(bytes(self._buffer)) or bytes(self._buffer)
        start = self._held_start
        assert start is not None
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        self._mode = "pass"
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _flush_unfiltered(self, message: Message) -> None:
        start = self._held_start
        assert start is not None
        self._mode = "pass"
        await self._send(start)
        await self._send(
            {"type": "http.response.body", "body": bytes(self._buffer), "more_body": message.get("more_body", False)}
        )
        self._buffer.clear()

    async def _sse_body(self, message: Message) -> None:
        more = message.get("more_body", False)
        if self._done:
            await self._send(message)
            return
        self._buffer += message.get("body", b"")
        out = bytearray()
        while not self._done:
            end = _next_event_end(self._buffer)
            if end == -1:
                break
            event = bytes(self._buffer[:end])
            del self._buffer[:end]
            out += self._rewrite_event(event)
        if self._done or len(self._buffer) > self._max_bytes or not more:
            out += self._buffer  # after our result (or at the end) the rest passes untouched
            self._buffer.clear()
            self._done = True
        if out or not more:
            await self._send({"type": "http.response.body", "body": bytes(out), "more_body": more})

    def _rewrite_event(self, event: bytes) -> bytes:
        lines = event.splitlines()
        data = [line[6:] if line[5:6] == b" " else line[5:] for line in lines if line.startswith(b"data:")]
        if not data or b'"result"' not in event:
            return event
        rewritten = self._rewrite(b"\n".join(data))
        if rewritten is None:
            return event
        self._done = True
        kept = [line for line in lines if line and not line.startswith(b"data:")]
        return b"\r\n".join([*kept, b"data: " + rewritten]) + b"\r\n\r\n"

    def _rewrite(self, body: bytes) -> bytes | None:
        """The filtered message, or `None` if `body` is not this request's list result."""
        try:
            message: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict) or message.get("id") != self._request_id:
            return None
        result = message.get("result")
        key, field, use = LIST_METHODS[self._method]
        if not isinstance(result, dict) or not isinstance(result.get(key), list):
            return None
        allowed = self._allowed
        result[key] = [
            item
            for item in result[key]
            if isinstance(item, dict) and isinstance(item.get(field), str) and allowed(use, item[field])
        ]
        return orjson.dumps(message)
