"""The response tap: observe a streamed MCP response without holding any of it back.

A tap wraps `send`. Every message is forwarded at once (but a small JSON error answer,
held until its body is complete so that it can be given the request's id: `ErrorHold`);
afterwards the tap looks at it: status and headers on `http.response.start`, and the body incrementally,
as JSON or as Server-Sent Events in any chunking, keeping what can be the JSON-RPC
response to the request and parsing it when someone asks. Memory is bounded by
`max_bytes` (a larger body or event is counted but not inspected). One tap serves
the whole stack: the first middleware that asks attaches it, later ones share it.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable
from time import perf_counter
from typing import Any, NamedTuple

import orjson
from starlette.types import Message, Scope, Send

from .error_answers import ErrorHold
from .protocol import DEFAULT_MAX_BODY_SIZE, EVENT_STREAM, JSON, media_type
from .request import McpRequest, RequestKind
from .sse import SseParser

__all__ = ["TAP_SCOPE_KEY", "ResponseOutcome", "ResponseTap", "SseParser"]

TAP_SCOPE_KEY = "mcp_middleware.tap"

_JSON, _SSE, _NONE = 1, 2, 0
_REQUEST = RequestKind.REQUEST
_MAX_CANDIDATES = 4
_NOTHING: tuple[None, None] = (None, None)
"""SSE events kept as possible responses (the response ends its stream, so it is among the last)."""


class ResponseOutcome(NamedTuple):
    """What the response to one MCP request turned out to be (immutable).

    - `status`: HTTP status, or `None` if no response was started;
    - `content_type`; `bytes`: body bytes sent to the client;
    - `duration`: seconds from the request's arrival to the end of the response
      (or to now, if it has not ended); `complete`: the final body message was sent;
    - `result` / `error`: the JSON-RPC `result` or `error` object, when the response carried one;
    - `truncated`: the body (or an SSE event) exceeded the tap's bound and was not inspected.
    """

    status: int | None
    content_type: str | None
    bytes: int
    duration: float
    complete: bool
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    truncated: bool = False

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


class ResponseTap:
    """Observes the response to one request; see :meth:`attach`.

    Observation is cheap on the way through: the tap records status, headers and
    sizes, keeps the JSON body (or the SSE events that can be a JSON-RPC response)
    within its bound, and parses them only when someone asks for the result:
    :attr:`result`, :attr:`error` or :meth:`outcome`.

    >>> # in a pure-ASGI middleware, after the core has read the request:
    >>> # tap, send = ResponseTap.attach(scope, send, request)
    >>> # await app(scope, receive, send)
    >>> # tap.outcome().error_code, tap.outcome().is_tool_error
    """

    __slots__ = (
        "__weakref__",
        "_candidates",
        "_ended",
        "_found",
        "_hold",
        "_mode",
        "_request",
        "_send",
        "_sse",
        "bytes",
        "complete",
        "content_type",
        "max_bytes",
        "status",
        "truncated",
    )

    def __init__(self, send: Send, request: McpRequest, *, max_bytes: int = DEFAULT_MAX_BODY_SIZE) -> None:
        self._send = send
        self._request = request
        self.max_bytes = max_bytes
        self.status: int | None = None
        self.content_type: str | None = None
        self.bytes = 0
        self.complete = False
        self.truncated = False
        self._mode = _NONE
        self._candidates: list[bytes] = []
        self._sse: SseParser | None = None
        self._ended: float | None = None
        self._found: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None
        """`(result, error)` once the response was looked for (`None` before: see :meth:`_parse`)."""
        self._hold: ErrorHold | None = None

    @classmethod
    def attach(
        cls, scope: Scope, send: Send, request: McpRequest, *, max_bytes: int = DEFAULT_MAX_BODY_SIZE
    ) -> tuple[ResponseTap, Send]:
        """The request's tap and the `send` to call the inner app with.

        The first caller creates the tap and gets its wrapped `send`; it must keep the
        tap referenced until the inner app returns (the scope holds it only weakly, so
        that scope → tap → send → scope is no reference cycle left to the garbage
        collector). Later callers (inner middlewares) get the same tap and keep their
        own `send`, which already flows through it.
        """
        ref = scope.get(TAP_SCOPE_KEY)
        existing = ref() if ref is not None else None
        if existing is not None and existing._request is request:
            return existing, send
        tap = cls(send, request, max_bytes=max_bytes)
        scope[TAP_SCOPE_KEY] = weakref.ref(tap)
        return tap, tap.send

    @classmethod
    def current(cls, scope: Scope, request: McpRequest) -> ResponseTap | None:
        """The tap an outer middleware attached for `request`, if any (attaches nothing)."""
        ref = scope.get(TAP_SCOPE_KEY)
        existing: ResponseTap | None = ref() if ref is not None else None
        return existing if existing is not None and existing._request is request else None

    @property
    def started(self) -> bool:
        """`http.response.start` has been sent."""
        return self.status is not None

    def send(self, message: Message) -> Awaitable[None]:
        """Observe `message` and hand it on: returns the forward's own awaitable (a plain call, no coroutine a
        message: the app awaits the server's `send` directly). The observation is a few attribute updates
        made before the awaitable is returned, so it never delays the client either; an error answer held
        to be completed (`ErrorHold`) and anything unusual go through :meth:`_send_held`, as before."""
        if self._hold is None:
            kind = message["type"]
            if kind == "http.response.body":  # the common case, first
                body: bytes = message.get("body", b"")
                more = message.get("more_body", False)
                size = self.bytes + len(body)
                self.bytes = size
                mode = self._mode
                if mode is _JSON:  # `_observe`'s JSON case inline: a JSON answer is (nearly always) one part
                    if size > self.max_bytes:
                        self._candidates, self._mode, self.truncated = [], _NONE, True
                    elif body:
                        self._candidates.append(body)
                elif mode is not _NONE:
                    self._observe(body, more)
                if not more:
                    self.complete = True
                    self._ended = perf_counter()
                return self._send(message)
            if kind == "http.response.start" and message["status"] < 400:
                self._on_start(message)
                return self._send(message)
        return self._send_held(message)

    async def _send_held(self, message: Message) -> None:
        """`send` for an error answer that may be held (`ErrorHold`), what follows it, and unusual messages:
        forwarded first, then observed."""
        kind = message["type"]
        hold = self._hold
        if hold is not None:  # an error answer held until its body is complete (`ErrorHold`)
            if kind != "http.response.start":
                released = hold.add(message)
                if released is not None:
                    self._hold = None
                    for item in released:
                        await self._send(item)
                        self._seen(item)
                return
            self._hold = None  # a new start replaces one whose app failed before its body
        if kind == "http.response.start" and message["status"] >= 400:
            hold = ErrorHold.start(self._request.id, message)
            if hold is not None:
                self._hold = hold
                return
        await self._send(message)
        self._seen(message)

    def _seen(self, message: Message) -> None:
        """Observe a message forwarded by :meth:`_send_held` (`send` has the same steps inline, for the common path)."""
        kind = message["type"]
        if kind == "http.response.body":
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            self.bytes += len(body)
            if self._mode is not _NONE:
                self._observe(body, more)
            if not more:
                self.complete = True
                self._ended = perf_counter()
        elif kind == "http.response.start":
            self._on_start(message)

    def _on_start(self, message: Message) -> None:
        self.status = message["status"]
        # One C-level pass over the headers (the last Content-Type wins, as the loop below finds it);
        # an encoded body is rare, and judged by the loop (every Content-Encoding counts).
        headers = message.get("headers", ())
        named = dict(headers)
        content_type = named.get(b"content-type")
        encoded = False
        if b"content-encoding" in named:
            for key, value in headers:
                if key == b"content-encoding" and value.strip().lower() != b"identity":
                    encoded = True
        if content_type is not None:
            if content_type in (JSON, EVENT_STREAM):  # the usual, as is
                self.content_type = content_type.decode("latin-1")
            else:
                self.content_type = media_type(content_type).decode("latin-1")
        if encoded or self._request.kind is not _REQUEST:
            return  # only requests have a response to find; compressed bodies are not inspected
        if self.content_type == "application/json":
            self._mode = _JSON
        elif self.content_type == "text/event-stream":
            self._mode = _SSE
            self._sse = SseParser(self.max_bytes)

    def _observe(self, body: bytes, more: bool) -> None:
        if self._mode is _JSON:
            if self.bytes > self.max_bytes:  # (`bytes` is the JSON body's size: its mode is set at the start)
                self._candidates, self._mode, self.truncated = [], _NONE, True
            elif body:
                self._candidates.append(body)
            return
        sse = self._sse
        assert sse is not None
        for event, data in sse.feed(body, final=not more):
            # Only an event naming "result" or "error" can be the response; progress and
            # other notifications are not kept. The response is (nearly always) the last.
            if event == "message" and (b'"result"' in data or b'"error"' in data):
                if len(self._candidates) == _MAX_CANDIDATES:
                    del self._candidates[0]
                self._candidates.append(data)
        if sse.truncated:
            self.truncated = True

    def _parse(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """`(result, error)` of the JSON-RPC response among what was kept (looked for once, on first
        demand after the response ended; `(None, None)` before). Callers look at `_found` first."""
        if not self.complete:
            return _NOTHING
        candidates = self._candidates
        self._candidates = []
        found: tuple[dict[str, Any] | None, dict[str, Any] | None] = _NOTHING
        if self._mode is _JSON:
            if candidates:
                found = self._take(candidates[0] if len(candidates) == 1 else b"".join(candidates)) or _NOTHING
        else:
            for data in reversed(candidates):
                taken = self._take(data)
                if taken is not None:
                    found = taken
                    break
        self._found = found
        return found

    def _take(self, data: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | None:
        """`(result, None)` or `(None, error)` if `data` is the JSON-RPC response to this request, else `None`."""
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if type(message) is not dict or "method" in message:  # (orjson makes plain dicts)
            return None
        rid = message.get("id")
        result = message.get("result")
        if isinstance(result, dict) and rid == self._request.id:
            return result, None
        error = message.get("error")
        if isinstance(error, dict) and (rid == self._request.id or rid is None):
            # An error with a null id answers this request too (the peer could not read its id).
            return None, error
        return None

    @property
    def result(self) -> dict[str, Any] | None:
        """The JSON-RPC `result` of the response, once it has ended."""
        found = self._found
        return (found if found is not None else self._parse())[0]

    @property
    def error(self) -> dict[str, Any] | None:
        """The JSON-RPC `error` of the response, once it has ended."""
        found = self._found
        return (found if found is not None else self._parse())[1]

    def found(self) -> tuple[int | None, dict[str, Any] | None, dict[str, Any] | None, float]:
        """`(status, result, error, duration)` of :meth:`outcome` without building it (for a caller on every
        request that needs no more of it)."""
        found = self._found
        result, error = found if found is not None else self._parse()
        end = self._ended if self._ended is not None else perf_counter()
        return self.status, result, error, end - self._request.started

    def outcome(self) -> ResponseOutcome:
        """A snapshot of what has been observed so far (parsing the response on first call)."""
        found = self._found
        result, error = found if found is not None else self._parse()
        end = self._ended if self._ended is not None else perf_counter()
        # tuple.__new__ builds the NamedTuple without its Python-level __new__ (every field given, in order).
        outcome: ResponseOutcome = tuple.__new__(
            ResponseOutcome,
            (
                self.status,
                self.content_type,
                self.bytes,
                end - self._request.started,
                self.complete,
                result,
                error,
                self.truncated,
            ),
        )
        return outcome
