"""One attempt of a routed call: its answer held back only until it shows whether the backend answered.

A route may move a call to its next backend only while **no JSON-RPC message has reached the client**.
:class:`HeldAnswer` is the `send` of one attempt. It forwards at once every answer that
cannot be an outage (a 4xx refusal of the backend's own stack, anything not JSON or SSE);
it holds a JSON answer until it is complete (one JSON-RPC message, bounded), and an SSE
answer until its first event that carries a message: a notification (progress, a log) or the
backend's response commits the attempt, and from then on every event passes as it completes.
An outage before that — the breaker's `-32015` (circuit open), `-32016` (timeout), `-32017`
(unreachable, or it broke off) — is kept as the attempt's :class:`Failure` and nothing of it
is sent: the caller decides whether the next backend may try.

An SSE answer's head (status 200, `text/event-stream`) is sent at once, as the backend sent it:
a client waiting for a long tool gets its headers as it always did, and no JSON-RPC message has
reached it yet. Once the stream is open (:class:`OpenStream`, shared by the attempts of one call),
whatever a later attempt answers — a JSON result, a refusal, the route's own error — is sent on it
as an event.

The committed answer's result gets `_meta["io.github.mcp-middleware/router"]`: which backend
served it (`route`, `server`, `fallback`, and the backends `tried` before it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from starlette.types import Message, Send

from mcp_middleware.core import ErrorCode, RequestId, error_body
from mcp_middleware.core.protocol import is_event_stream, is_json

from .listing import ROUTER_META_KEY
from .safety import MAY_HAVE_RUN

__all__ = ["OUTAGE_CODES", "Failure", "HeldAnswer", "OpenStream", "sse_event"]

OUTAGE_CODES = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.BAD_GATEWAY})
"""Errors that say the backend did not serve the call (its breaker, its proxy, the relay): a route may move on."""

_STATUS = {ErrorCode.UNAVAILABLE: 503, ErrorCode.TIMEOUT: 504, ErrorCode.BAD_GATEWAY: 502}
_EVENT_ENDS = (b"\r\n\r\n", b"\n\n", b"\r\r")
_KEPT_HEADERS = frozenset({b"retry-after"})


class Failure(NamedTuple):
    """Why an attempt did not get the backend's answer, as the client would have seen it."""

    status: int
    code: int
    message: str
    data: Any
    headers: tuple[tuple[str, str], ...]
    nothing_ran: bool
    """Nothing reached the backend (its breaker refused, it could not be connected to): always safe to move on."""
    reason: str
    """`breaker_open`, `unavailable`, `unreachable`, `timeout` or `backend_error` (decisions, logs, `_meta`)."""


def failure_of(
    status: int, error: Any, headers: tuple[tuple[str, str], ...] = (), *, streamed: bool = False
) -> Failure | None:
    """The attempt's failure, if `error` (a JSON-RPC error object) is an outage.

    `streamed`: it came as an event of a stream the backend's side opened, so the request reached
    something that may have run it, whatever the error says (a tool can raise any code).
    """
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if code not in OUTAGE_CODES:
        return None
    data = error.get("data")
    said = data.get(MAY_HAVE_RUN) if isinstance(data, dict) else None
    nothing_ran = not streamed and (code == ErrorCode.UNAVAILABLE or said is False)
    if code == ErrorCode.UNAVAILABLE:
        reason = "breaker_open" if isinstance(data, dict) and "breaker" in data else "unavailable"
    elif code == ErrorCode.TIMEOUT:
        reason = "timeout"
    else:
        reason = "unreachable" if nothing_ran else "backend_error"
    message = error.get("message")
    return Failure(
        status if status >= 500 else _STATUS[ErrorCode(code)],
        int(code),
        message if isinstance(message, str) else "Backend failed",
        data,
        headers,
        nothing_ran,
        reason,
    )


class OpenStream:
    """The client's side of one routed call: whether an SSE head has been sent to it (by any attempt)."""

    __slots__ = ("opened", "send")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.opened = False


def sse_event(message: bytes) -> bytes:
    return b"event: message\r\ndata: " + message + b"\r\n\r\n"


class HeldAnswer:
    """The `send` of one attempt; after it ran, `failure` says whether the client got nothing of it."""

    __slots__ = (
        "_buffer",
        "_held",
        "_id",
        "_max",
        "_meta",
        "_mode",
        "_send",
        "_start",
        "_stream",
        "committed",
        "failure",
    )

    def __init__(
        self, stream: OpenStream, request_id: RequestId | None, meta: dict[str, Any], *, max_bytes: int
    ) -> None:
        self._stream = stream
        self._send = stream.send
        self._id = request_id
        self._meta = meta
        self._max = max_bytes
        self._start: Message | None = None
        self._mode = ""
        self._buffer = b""
        self._held: list[bytes] = []
        self.committed = False
        self.failure: Failure | None = None

    async def __call__(self, message: Message) -> None:
        if self.failure is not None:
            return  # the rest of an attempt that failed: the client never sees any of it
        kind = message["type"]
        if kind == "http.response.start":
            status: int = message["status"]
            content_type = next((v for k, v in message.get("headers", ()) if k.lower() == b"content-type"), b"")
            if status == 200 and is_event_stream(content_type):
                self._mode = "sse"
                if not self._stream.opened:  # the head only: no JSON-RPC message reaches the client with it
                    self._stream.opened = True
                    await self._send(message)
            elif self._stream.opened or (status in (200, 502, 503, 504) and is_json(content_type)):
                self._mode, self._start = "json", message
            else:  # a refusal of the backend's own stack (401, 403, 429 …): the backend's answer, as it is
                self._mode, self.committed = "pass", True
                await self._send(message)
            return
        if self._mode == "done":
            return
        if kind != "http.response.body" or self._mode == "pass":
            await self._send(message)
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        self._buffer += body
        if self._mode == "json":
            if more and len(self._buffer) <= self._max:
                return
            await self._finish_json(more)
            return
        await self._events(more)

    async def _finish_json(self, more: bool) -> None:
        data, self._buffer = self._buffer, b""
        assert self._start is not None
        start, self._mode = self._start, "pass"
        answer = _loads(data) if not more else None
        if isinstance(answer, dict) and answer.get("id") == self._id:
            error = answer.get("error")
            outage = start["status"] >= 500 or _bridged(error, self._meta.get("server"))
            failure = failure_of(start["status"], error, _kept(start)) if outage else None
            if failure is not None:
                self.failure = failure
                return
            if self._stream.opened:  # an earlier attempt opened the client's stream: this answer is its event
                self._stamp(answer)
                self.committed, self._mode = True, "done"
                event = sse_event(orjson.dumps(answer))
                await self._send({"type": "http.response.body", "body": event, "more_body": False})
                return
            if self._stamp(answer):
                data = orjson.dumps(answer)
                headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(data)).encode("latin-1")))
                start = {**start, "headers": headers}
        self.committed = True
        if self._stream.opened:  # not a JSON-RPC answer for this request: the stream ends with an error for it
            error = error_body(ErrorCode.BAD_GATEWAY, "Backend answered with no JSON-RPC response", self._id)
            await self._send({"type": "http.response.body", "body": sse_event(error), "more_body": False})
            self._mode = "done"
            return
        await self._send(start)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def _events(self, more: bool) -> None:
        out: list[bytes] = []
        while True:
            end = _event_end(self._buffer)
            if end < 0:
                break
            event, self._buffer = self._buffer[:end], self._buffer[end:]
            if self.committed:
                out.append(self._stamped_event(event))
                continue
            message = _event_message(event)
            if message is None:  # a comment, a priming id: says nothing yet
                self._held.append(event)
                continue
            if message.get("id") == self._id and "method" not in message:
                error = message.get("error")  # a bridge's own outage is its word; any other may be a tool's
                failure = failure_of(200, error, streamed=not _bridged(error, self._meta.get("server")))
                if failure is not None:
                    self.failure = failure
                    return
                event = self._stamped_event(event, message)
            await self._commit()
            out.append(event)
        if not self.committed and (not more or sum(map(len, self._held)) + len(self._buffer) > self._max):
            await self._commit()  # nothing decisive within the bound, or the end: the client gets it as it is
        if self.committed:
            if len(self._buffer) > self._max or not more:  # an event past the bound passes as it is
                out.append(self._buffer)
                self._buffer = b""
            if out or not more:
                await self._send({"type": "http.response.body", "body": b"".join(out), "more_body": more})

    async def _commit(self) -> None:
        self.committed = True
        if self._held:
            held, self._held = b"".join(self._held), []
            await self._send({"type": "http.response.body", "body": held, "more_body": True})

    def _stamped_event(self, event: bytes, message: dict[str, Any] | None = None) -> bytes:
        if message is None:
            if b'"result"' not in event:
                return event
            message = _event_message(event)
            if message is None or message.get("id") != self._id:
                return event
        if not self._stamp(message):
            return event
        lines = event.splitlines(keepends=True)
        for index, line in enumerate(lines):
            if line.startswith(b"data:"):
                ending = line[len(line.rstrip(b"\r\n")) :]
                lines[index] = b"data: " + orjson.dumps(message) + ending
                break
        return b"".join(lines)

    def _stamp(self, message: dict[str, Any]) -> bool:
        """Say in the result's `_meta` which backend served it."""
        result = message.get("result")
        if not isinstance(result, dict):
            return False
        meta = result.get("_meta")
        result["_meta"] = {**(meta if isinstance(meta, dict) else {}), ROUTER_META_KEY: self._meta}
        return True


def _bridged(error: Any, server: Any) -> bool:
    """An outage a stdio backend's bridge (its one-backend aggregate) reports in an HTTP 200 answer: its
    own error codes, naming the very server this attempt went to (a tool's own error names none)."""
    if not isinstance(error, dict) or error.get("code") not in OUTAGE_CODES:
        return False
    data = error.get("data")
    return isinstance(data, dict) and server is not None and data.get("server") == server


def _kept(start: Message) -> tuple[tuple[str, str], ...]:
    return tuple(
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ()) if k.lower() in _KEPT_HEADERS
    )


def _event_end(data: bytes) -> int:
    ends = [index + len(marker) for marker in _EVENT_ENDS if (index := data.find(marker)) >= 0]
    return min(ends) if ends else -1


def _event_message(event: bytes) -> dict[str, Any] | None:
    data = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if len(data) != 1 or not data[0]:
        return None
    message = _loads(data[0])
    return message if isinstance(message, dict) else None


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
