"""Trim `tools/list`, `prompts/list` and `resources/list` results to what the caller may use.

The response is rewritten one message at a time: a JSON body (the one response) is held
until complete, fixed and sent with a new `Content-Length`; in an SSE stream only the
event carrying this request's result is held until its blank line, every other event
(progress, logging) passes at once.

Auth filters by scopes and the policy middleware by rules; both use this one filter (core, since a
middleware never imports another).

A filter that cannot inspect fails closed. A result larger than `max_bytes` is never sent
unfiltered: the caller gets a JSON-RPC error with its request id (-32017, HTTP 502 for a JSON
response; an error event in an SSE stream) and the operator a warning. An error, not an empty
list: an empty list is a lie a client would cache and act on ("this server has no tools"), while
an error says the list could not be given and why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.types import Message, Send

from .errors import ErrorCode, RequestId, error_body
from .protocol import is_event_stream, is_json

__all__ = ["LIST_METHODS", "Allowed", "ItemAllowed", "ListFilter"]

_AUTH_LOGGER = logging.getLogger("mcp_middleware.auth")
"""The filter's warnings go to the logger of whoever filters; auth's is the default (it came first)."""

LIST_METHODS: dict[str, tuple[str, str, str]] = {
    "tools/list": ("tools", "name", "tools/call"),
    "prompts/list": ("prompts", "name", "prompts/get"),
    "resources/list": ("resources", "uri", "resources/read"),
}
"""List method → (result key, item field naming the target, the method that uses the item)."""

Allowed = Callable[[str, str], bool]
"""`allowed(method, target)`: may the caller invoke `method` on `target`?"""

ItemAllowed = Callable[[str, str, Mapping[str, Any]], bool]
"""`allowed(method, target, item)`: the same question, with the listed item (a tool's `annotations`)."""

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
        "_buffer",
        "_done",
        "_held_start",
        "_item_allowed",
        "_logger",
        "_max_bytes",
        "_method",
        "_mode",
        "_request_id",
        "_send",
        "_skipped",
        "_skipping",
    )

    def __init__(
        self,
        send: Send,
        *,
        method: str,
        request_id: RequestId | None,
        allowed: Allowed | None = None,
        max_bytes: int,
        item_allowed: ItemAllowed | None = None,
        logger: logging.Logger = _AUTH_LOGGER,
    ) -> None:
        if (allowed is None) == (item_allowed is None):
            raise TypeError("ListFilter needs exactly one of allowed and item_allowed")
        self._send = send
        self._method = method
        self._request_id = request_id
        if item_allowed is None:
            assert allowed is not None
            scoped = allowed

            def item_allowed(method: str, target: str, item: Mapping[str, Any]) -> bool:
                return scoped(method, target)

        self._item_allowed = item_allowed
        self._logger = logger
        self._max_bytes = max_bytes
        self._mode = "pass"
        self._held_start: Message | None = None
        self._buffer = bytearray()
        self._done = False
        self._skipping = False
        """SSE: inside an event too large to inspect, dropping bytes until its blank line."""
        self._skipped = False
        """SSE: an event was dropped; if no result of ours followed, the stream ends with an error."""

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if self._mode == "drop":
            return  # the error was the answer; the app's late body goes nowhere
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
                content_type = value
        success = 200 <= message["status"] < 300
        if success and is_json(content_type):
            self._mode = "json"
            self._held_start = message
            return
        if success and is_event_stream(content_type):
            self._mode = "sse"
        await self._send(message)

    async def _json_body(self, message: Message) -> None:
        self._buffer += message.get("body", b"")
        if len(self._buffer) > self._max_bytes:
            await self._refuse_json()
            return
        if message.get("more_body", False):
            return
        body = self._rewrite(bytes(self._buffer)) or bytes(self._buffer)
        self._buffer.clear()
        await self._send_json(body)

    async def _send_json(self, body: bytes, status: int | None = None) -> None:
        start = self._held_start
        assert start is not None
        skip = (b"content-length", b"content-type") if status is not None else (b"content-length",)
        headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() not in skip]
        if status is not None:
            headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", str(len(body)).encode()))
        self._mode = "drop" if status is not None else "pass"
        await self._send({**start, "status": status or start["status"], "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _refuse_json(self) -> None:
        """Over the bound: answer the error now, and drop what the app still sends (memory stays bounded)."""
        self._buffer = bytearray()
        self._warn("result")
        await self._send_json(self._too_large(), status=502)

    def _warn(self, what: str) -> None:
        self._logger.warning(
            "%s %s larger than max_inspect_bytes (%d): not sent, as it cannot be filtered; "
            "raise CoreConfig.max_inspect_bytes or paginate the list",
            self._method,
            what,
            self._max_bytes,
        )

    def _too_large(self) -> bytes:
        return error_body(
            ErrorCode.BAD_GATEWAY,
            f"The {self._method} result is larger than the {self._max_bytes} bytes the access filter inspects",
            self._request_id,
            {"maxInspectBytes": self._max_bytes},
        )

    async def _sse_body(self, message: Message) -> None:
        more = message.get("more_body", False)
        if self._done:
            await self._send(message)
            return
        self._buffer += message.get("body", b"")
        out = bytearray()
        while not self._done:
            if self._skipping:
                end = _next_event_end(self._buffer)
                if end == -1:
                    del self._buffer[:-3]  # a blank line may straddle two chunks: keep its start
                    break
                del self._buffer[:end]
                self._skipping = False
                continue
            end = _next_event_end(self._buffer)
            if end == -1:
                if len(self._buffer) > self._max_bytes:
                    # Too large to inspect: it may be our result, so it is not forwarded (fail closed).
                    self._skipping = True
                    self._skip_event()
                    continue
                break
            event = bytes(self._buffer[:end])
            del self._buffer[:end]
            out += self._rewrite_event(event) if end <= self._max_bytes else self._skip_event()
        if not more and not self._done:
            if self._skipped:  # the stream ends and our result was (or may have been) the dropped event
                out += b"event: message\r\ndata: " + self._too_large() + b"\r\n\r\n"
            elif not self._skipping:
                out += self._buffer  # an unterminated tail passes as it came
            self._buffer.clear()
            self._done = True
        elif self._done:
            out += self._buffer  # after our result the rest passes untouched
            self._buffer.clear()
        if out or not more:
            await self._send({"type": "http.response.body", "body": bytes(out), "more_body": more})

    def _skip_event(self) -> bytes:
        self._skipped = True
        self._warn("SSE event")
        return b""

    def _rewrite_event(self, event: bytes) -> bytes:
        lines = event.splitlines()
        data = [line[6:] if line[5:6] == b" " else line[5:] for line in lines if line.startswith(b"data:")]
        if not data or (b'"result"' not in event and b"\\u" not in event):  # `"\u0072esult"` is a result too
            return event
        rewritten = self._rewrite(b"\n".join(data))
        if rewritten is None:
            return event
        self._done = True
        kept = [line for line in lines if line and not line.startswith(b"data:")]
        return b"\r\n".join([*kept, b"data: " + rewritten]) + b"\r\n\r\n"

    def _rewrite(self, body: bytes) -> bytes | None:
        """The filtered message, or `None` if `body` is not this request's list result."""
        message = loads_as_client(body)
        if not isinstance(message, dict) or message.get("id") != self._request_id:
            return None
        result = message.get("result")
        key, field, use = LIST_METHODS[self._method]
        if not isinstance(result, dict) or not isinstance(result.get(key), list):
            return None
        allowed = self._item_allowed
        result[key] = [
            item
            for item in result[key]
            if isinstance(item, dict) and isinstance(item.get(field), str) and allowed(use, item[field], item)
        ]
        try:
            return orjson.dumps(message)
        except TypeError:  # a lone surrogate orjson will not write: the standard library escapes it
            return json.dumps(message, separators=(",", ":")).encode()


def loads_as_client(body: bytes) -> Any:
    """JSON as the client will read it: orjson, or the standard library for what orjson refuses but JSON
    allows (an escaped lone surrogate), so such a result cannot slip through unfiltered."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except ValueError:
            return None
