"""The response tap: observe a streamed MCP response without holding any of it back.

A tap wraps `send`. Every message is forwarded at once; afterwards the tap looks
at it: status and headers on `http.response.start`, and the body incrementally,
as JSON or as Server-Sent Events in any chunking, until it finds the JSON-RPC
response to the request. Memory is bounded by `max_bytes` (a larger body or
event is counted but not inspected). One tap serves the whole stack: the first
middleware that asks attaches it, later ones share it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Message, Scope, Send

from .request import McpRequest, RequestKind

__all__ = ["TAP_SCOPE_KEY", "ResponseOutcome", "ResponseTap", "SseParser"]

TAP_SCOPE_KEY = "mcp_middleware.tap"

_JSON, _SSE, _NONE = 1, 2, 0


@dataclass(frozen=True, slots=True)
class ResponseOutcome:
    """What the response to one MCP request turned out to be."""

    status: int | None
    """HTTP status, or `None` if no response was started."""
    content_type: str | None
    bytes: int
    """Body bytes sent to the client."""
    duration: float
    """Seconds from the request's arrival to the end of the response (or to now, if it has not ended)."""
    complete: bool
    """The final body message was sent."""
    result: dict[str, Any] | None = None
    """The JSON-RPC `result` object, when the response carried one."""
    error: dict[str, Any] | None = None
    """The JSON-RPC `error` object, when the response carried one."""
    truncated: bool = False
    """The body (or an SSE event) exceeded the tap's bound and was not inspected."""

    @property
    def error_code(self) -> int | None:
        code = self.error.get("code") if self.error is not None else None
        return code if isinstance(code, int) else None

    @property
    def is_tool_error(self) -> bool:
        """A `tools/call` result with `isError: true` (HTTP 200: status never reveals a tool error)."""
        return self.result is not None and self.result.get("isError") is True

    @property
    def succeeded(self) -> bool:
        """A 2xx response that carried a result which is not a tool error."""
        return (
            self.status is not None and 200 <= self.status < 300 and self.result is not None and not self.is_tool_error
        )


class SseParser:
    """Incremental `text/event-stream` parser (WHATWG rules) with a size bound.

    Accepts CRLF, LF or CR line endings split anywhere across chunks, ignores
    comments and unknown fields, and concatenates `data:` lines. An event whose
    data exceeds `max_bytes` is dropped and `truncated` is set.
    """

    __slots__ = ("_data", "_event", "_max", "_pending", "_size", "_skip_event", "_skip_line", "truncated")

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._pending = b""
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""
        self._skip_line = False
        self._skip_event = False
        self.truncated = False

    def feed(self, chunk: bytes, *, final: bool = False) -> list[tuple[str, bytes]]:
        """Add bytes; return the `(event type, data)` of every event completed by them."""
        data = self._pending + chunk if self._pending else chunk
        events: list[tuple[str, bytes]] = []
        pos, n = 0, len(data)
        while pos < n:
            cr = data.find(b"\r", pos)
            lf = data.find(b"\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == n and not final:
                    break  # maybe the first half of a CRLF split across chunks
                end, nxt = cr, (cr + 2 if cr + 1 < n and data[cr + 1] == 10 else cr + 1)
            else:
                end, nxt = lf, lf + 1
            self._line(data[pos:end], events)
            pos = nxt
        rest = data[pos:]
        if final:
            if rest and not self._skip_line:
                self._line(rest, events)
            self._pending = b""
        elif len(rest) > self._max:
            self._pending = b""
            self._skip_line = self._skip_event = self.truncated = True
        else:
            self._pending = rest
        return events

    def _line(self, line: bytes, events: list[tuple[str, bytes]]) -> None:
        if self._skip_line:
            self._skip_line = False
            return
        if not line:
            if self._data and not self._skip_event:
                events.append((self._event.decode("utf-8", "replace") or "message", b"\n".join(self._data)))
            self._data, self._size, self._event, self._skip_event = [], 0, b"", False
            return
        if line[0] == 58:  # ":" comment (pings)
            return
        field, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._size += len(value) + 1
            if self._size > self._max:
                self._skip_event = self.truncated = True
                self._data = []
            elif not self._skip_event:
                self._data.append(value)
        elif field == b"event":
            self._event = value


class ResponseTap:
    """Observes the response to one request; see :meth:`attach`.

    >>> # in a pure-ASGI middleware, after the core has read the request:
    >>> # tap, send = ResponseTap.attach(scope, send, request)
    >>> # await app(scope, receive, send)
    >>> # tap.outcome().error_code, tap.outcome().is_tool_error
    """

    __slots__ = (
        "_buf",
        "_buf_size",
        "_ended",
        "_mode",
        "_request",
        "_send",
        "_sse",
        "bytes",
        "complete",
        "content_type",
        "error",
        "max_bytes",
        "result",
        "status",
        "truncated",
    )

    def __init__(self, send: Send, request: McpRequest, *, max_bytes: int = 4 * 1024 * 1024) -> None:
        self._send = send
        self._request = request
        self.max_bytes = max_bytes
        self.status: int | None = None
        self.content_type: str | None = None
        self.bytes = 0
        self.complete = False
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.truncated = False
        self._mode = _NONE
        self._buf: list[bytes] = []
        self._buf_size = 0
        self._sse: SseParser | None = None
        self._ended: float | None = None

    @classmethod
    def attach(
        cls, scope: Scope, send: Send, request: McpRequest, *, max_bytes: int = 4 * 1024 * 1024
    ) -> tuple[ResponseTap, Send]:
        """The request's tap and the `send` to call the inner app with.

        The first caller creates the tap and gets its wrapped `send`; later callers
        (inner middlewares) get the same tap and keep their own `send`, which already
        flows through it.
        """
        existing = scope.get(TAP_SCOPE_KEY)
        if isinstance(existing, ResponseTap) and existing._request is request:
            return existing, send
        tap = cls(send, request, max_bytes=max_bytes)
        scope[TAP_SCOPE_KEY] = tap
        return tap, tap.send

    @property
    def started(self) -> bool:
        """`http.response.start` has been sent."""
        return self.status is not None

    async def send(self, message: Message) -> None:
        await self._send(message)  # forward first: observation never delays the client
        kind = message["type"]
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            self.bytes += len(body)
            if self._mode is not _NONE:
                self._observe(body, more)
            if not more:
                self.complete = True
                self._ended = time.perf_counter()
        elif kind == "http.response.start":
            self._on_start(message)

    def _on_start(self, message: Message) -> None:
        self.status = message["status"]
        encoded = False
        for key, value in message.get("headers", ()):
            if key == b"content-type":
                self.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
            elif key == b"content-encoding" and value.strip().lower() != b"identity":
                encoded = True
        if encoded or self._request.kind is not RequestKind.REQUEST:
            return  # only requests have a response to find; compressed bodies are not inspected
        if self.content_type == "application/json":
            self._mode = _JSON
        elif self.content_type == "text/event-stream":
            self._mode = _SSE
            self._sse = SseParser(self.max_bytes)

    def _observe(self, body: bytes, more: bool) -> None:
        if self._mode is _JSON:
            self._buf_size += len(body)
            if self._buf_size > self.max_bytes:
                self._buf, self._mode, self.truncated = [], _NONE, True
                return
            self._buf.append(body)
            if not more:
                self._take(b"".join(self._buf))
                self._buf = []
            return
        sse = self._sse
        assert sse is not None
        for event, data in sse.feed(body, final=not more):
            if event == "message" and self._take(data):
                self._mode, self._sse = _NONE, None  # found it: stop parsing the rest of the stream
                return
        if sse.truncated:
            self.truncated = True

    def _take(self, data: bytes) -> bool:
        """Record `data` if it is the JSON-RPC response to this request."""
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(message, dict) or "method" in message:
            return False
        result, error, rid = message.get("result"), message.get("error"), message.get("id")
        if isinstance(result, dict) and rid == self._request.id:
            self.result = result
        elif isinstance(error, dict) and (rid == self._request.id or rid is None):
            # An error with a null id answers this request too (the peer could not read its id).
            self.error = error
        else:
            return False
        return True

    def outcome(self) -> ResponseOutcome:
        """A snapshot of what has been observed so far."""
        end = self._ended if self._ended is not None else time.perf_counter()
        return ResponseOutcome(
            status=self.status,
            content_type=self.content_type,
            bytes=self.bytes,
            duration=end - self._request.started,
            complete=self.complete,
            result=self.result,
            error=self.error,
            truncated=self.truncated,
        )
