"""The kernel every middleware stands on: decide once, read once, replay once.

:func:`read_request` is the one entry point. It decides whether an HTTP request
is MCP traffic (by path, :class:`CoreConfig`), reads a POST body with a bound,
parses it once into the scope's :class:`~mcp_middleware.core.request.McpRequest`,
answers bad input with a JSON-RPC error, and hands back a `receive` that
replays the body once and then delegates to the real one (a `receive` that
kept returning empty bodies would make the SDK's disconnect watcher spin).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import Final

from starlette.types import Message, Receive, Scope, Send

from .decisions import Component, Outcome, record_decision
from .errors import ErrorCode, JsonRpcCode, send_error
from .headers import RequestHeaders
from .parsing import describe_exchange, parse_post
from .protocol import DEFAULT_MAX_BODY_SIZE
from .request import REQUEST_SCOPE_KEY, Era, McpRequest, Rejection

__all__ = [
    "ANSWERED",
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_BODY_SIZE",
    "EVERY_PATH",
    "CoreConfig",
    "read_request",
    "refuse",
    "relative_path",
    "replay",
]


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Which requests are MCP, and the bounds the core enforces on them.

    `paths` are matched against the path below the ASGI `root_path` (so a
    middleware inside a Starlette `Mount` sees the mount-relative path). An
    entry matches itself and itself with a trailing slash; an entry ending in
    `/*` matches everything below it; `"*"` matches every path. Requests to
    other paths (a FastAPI app's REST routes, docs, static files) pass through
    every middleware of the project untouched and unread.

    >>> CoreConfig(paths=("/mcp", "/servers/*")).is_mcp_path("/servers/github/mcp")
    True
    """

    paths: tuple[str, ...] = ("/mcp",)
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    """Largest POST body accepted; larger ones get HTTP 413 with a JSON-RPC error."""
    max_inspect_bytes: int = DEFAULT_MAX_BODY_SIZE
    """Largest response body (JSON) or SSE event the response tap parses."""
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _everything: bool = field(init=False, repr=False, compare=False)
    _digits: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        if not paths:
            raise ValueError("CoreConfig.paths must name at least one path")
        if self.max_body_size <= 0 or self.max_inspect_bytes <= 0:
            raise ValueError("CoreConfig bounds must be positive")
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in paths:
            if path == "*":
                continue
            if not path.startswith("/"):
                raise ValueError(f"MCP path {path!r} must start with '/'")
            if path.endswith("/*"):
                prefixes.append(path[:-1])
            else:
                base = path.rstrip("/")
                exact.update({base or "/", base + "/"})
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_prefixes", tuple(prefixes))
        object.__setattr__(self, "_everything", "*" in paths)
        object.__setattr__(self, "_digits", len(str(int(self.max_body_size))))

    def is_mcp_path(self, path: str) -> bool:
        return self._everything or path in self._exact or path.startswith(self._prefixes)

    def is_mcp(self, scope: Scope) -> bool:
        """Whether an `http` scope addresses the MCP endpoint."""
        return self.is_mcp_path(relative_path(scope))


def relative_path(scope: Scope) -> str:
    """The request's path below the ASGI `root_path` (where a host mounted this app), `/` at least.

    >>> relative_path({"path": "/gw/mcp", "root_path": "/gw"}), relative_path({"path": "/mcp"})
    ('/mcp', '/mcp')
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


DEFAULT_CONFIG = CoreConfig()

EVERY_PATH = CoreConfig(paths=("*",))
"""For a layer that knows the request is MCP whatever its path (the router's mounts, the aggregate)."""


async def refuse(send: Send, rejection: Rejection, headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer with a :class:`Rejection` (JSON-RPC error with the request's id)."""
    await send_error(
        send,
        status=rejection.status,
        code=rejection.code,
        message=rejection.message,
        request_id=rejection.request_id,
        data=rejection.data,
        headers=(*rejection.headers, *headers),
    )


_METHOD_NOT_ALLOWED = Rejection(
    405,
    JsonRpcCode.INVALID_REQUEST,
    "Method Not Allowed: this protocol revision accepts POST only",
    headers=(("Allow", "POST"),),
)
_NOT_ACCEPTABLE = Rejection(
    406, JsonRpcCode.INVALID_REQUEST, "Not Acceptable: Client must accept both application/json and text/event-stream"
)


_USUAL_ACCEPT = b"application/json, text/event-stream"
"""What the SDK clients send: one comparison instead of a parse on the common path."""


def accepts_json(accept: bytes) -> bool:
    """Whether an `Accept` value admits `application/json`, matched as the SDK matches it (wildcards, any case).

    The SDK also wants `text/event-stream` unless the server answers in JSON only, which the core
    cannot know: that part is left to the server (whose refusal the core completes on the way out).
    """
    for part in accept.split(b","):
        media = part.split(b";", 1)[0].strip().lower()
        if media in (b"application/json", b"application/*", b"*/*"):
            return True
    return False


class _Replay(RequestHeaders):
    """`receive` that yields the buffered body once (`_message`), then the real `receive`; for a request the core
    read, also the headers it read (one object for both: a request has one of each).

    Not a coroutine function: after the body it hands out the real `receive()` awaitable
    itself, so no frame of ours sits between the app and the server while the app waits
    (a cancelled wait would otherwise carry that frame in its traceback, into the
    reference cycles the SDK leaves for the garbage collector).

    - `disconnected`: `None`, nobody asked. A layer that must know whether the app was told the
      client left (the breaker) sets it to False before calling the app; it turns True when a
      `receive` after the body returns `http.disconnect`. Only then does a frame of ours wait in the
      host's `receive` (it holds this object alone, never the scope).
    - `headers_seen`: a copy of the header list :func:`read_request` read, taken in the same step as
      its one pass over it (None: no `Authorization` header, pairs that are not tuples, or a replay of a
      rewritten body, which has no headers). Auth takes `authorization`, that list's one `Authorization`
      value, instead of scanning the headers again, and only while the scope's headers still equal
      `headers_seen` (a layer between may have rewritten them: then it reads the list itself).
    """

    __slots__ = ("_message", "_receive", "disconnected", "headers_seen")

    _message: Message | None
    _receive: Receive
    disconnected: bool | None
    headers_seen: list[tuple[bytes, bytes]] | None

    def __call__(self) -> Awaitable[Message]:
        message = self._message
        if message is None:
            if self.disconnected is None:
                return self._receive()
            return self._noting()
        self._message = None
        return _ready(message)

    async def _noting(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
        return message


_new_replay = object.__new__


def replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields `body` as the whole request once, then the real `receive` (for a rewritten body)."""
    replayed: _Replay = _new_replay(_Replay)  # (no headers read: `headers_seen` None)
    replayed._message = {"type": "http.request", "body": body, "more_body": False}
    replayed._receive = receive
    replayed.disconnected = None
    replayed.headers_seen = None
    return replayed


async def _ready(message: Message) -> Message:
    return message


class _Answered:
    """The `receive` :func:`read_request` hands back once the core has answered: there is nothing left to read.

    Compared by identity (`receive is ANSWERED`); if it is called anyway, the client has gone.
    """

    __slots__ = ()

    def __call__(self) -> Awaitable[Message]:
        return _ready({"type": "http.disconnect"})

    def __repr__(self) -> str:
        return "ANSWERED"


ANSWERED: Final[Receive] = _Answered()
"""What :func:`read_request` returns for `receive` when the core has answered (or the client left)."""


async def read_request(
    scope: Scope, receive: Receive, send: Send, config: CoreConfig = DEFAULT_CONFIG
) -> tuple[McpRequest | None, Receive]:
    """Get the request view, reading and parsing the body only if no one has yet.

    Always a pair, unpacked at once (so nothing keeps it alive for the request):

    - `(request, receive)`: an MCP exchange; call the inner app with this `receive` (it replays the body);
    - `(None, receive)`: not an MCP request (another path, a lifespan or websocket scope); call the inner
      app unchanged;
    - `(None, ANSWERED)`: the core has answered (bad input) or the client went away; return at once.

    A middleware's prologue, whole::

        request, receive = await read_request(scope, receive, send, self.config)
        if request is None or request.kind is not RequestKind.REQUEST:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
    """
    if REQUEST_SCOPE_KEY in scope:  # an outer middleware decided already; its receive replays
        return scope[REQUEST_SCOPE_KEY], receive
    if scope["type"] != "http":  # lifespan, websocket: nothing of MCP's
        return None, receive
    # The common case (an exact MCP path, no root path) decided without a call; the rest by `is_mcp`.
    if (scope["path"] not in config._exact or scope.get("root_path")) and not config.is_mcp(scope):
        scope[REQUEST_SCOPE_KEY] = None
        return None, receive

    started = perf_counter()
    raw = scope["headers"]
    headers = _Replay(raw)  # (the headers read; the same object replays the body, once it is read)
    if scope["method"] != "POST":
        view = describe_exchange(scope["method"], headers, started)
        if view.era is Era.MODERN:  # the modern era has only POST; the SDK says so with an empty 405
            await _refuse(scope, send, _METHOD_NOT_ALLOWED)
            return None, ANSWERED
        scope[REQUEST_SCOPE_KEY] = view
        return view, receive

    # Every configuration of the SDK refuses an `Accept` without JSON (406), so the core may; it answers
    # once the body is read, to give the request's id (the SDK answers first, with `id: null`).
    accept = headers.raw_accept
    acceptable = accept == _USUAL_ACCEPT or (accept is not None and accepts_json(accept))
    content_type = headers.raw_content_type  # bytes: `.lower()` is ASCII-only, as the comparison needs
    if (
        content_type != b"application/json"
        and (  # (what every client sends: one comparison)
            content_type is None or content_type[:16].lower() != b"application/json"
        )
    ):
        if not acceptable:  # the SDK's order: Accept before Content-Type
            await _refuse(scope, send, _NOT_ACCEPTABLE)
            return None, ANSWERED
        rejection = Rejection(415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
        await _refuse(scope, send, rejection)
        return None, ANSWERED
    limit = config.max_body_size
    declared = headers.raw_content_length
    # (a value with fewer characters than the bound has digits cannot exceed it, whatever it spells: no parse)
    if declared is not None and len(declared) >= config._digits:
        try:
            too_large = int(declared) > limit
        except ValueError:  # not a number: the server answers that; the streamed size is bounded below anyway
            too_large = False
        if too_large:
            await _refuse(scope, send, _too_large(limit))
            return None, ANSWERED

    # What auth checks the core's `Authorization` value against (see `_Replay`), taken before any wait; only
    # for pairs that are tuples, which no layer can change in place (a list of lists: auth reads it itself).
    # Each pair is taken as a tuple (an exact tuple is itself: no copy), so a list pair among tuples, which a
    # layer could change in place, never equals its snapshot: auth then reads the list itself.
    seen = [*map(tuple, raw)] if headers.authorization is not None and raw[0].__class__ is tuple else None
    message = await receive()
    if message["type"] != "http.request":  # http.disconnect: nobody to answer
        return None, ANSWERED
    body: bytes = message.get("body", b"")
    more = message.get("more_body")
    if more:  # chunked: gather, refusing as soon as the bound is passed
        chunks = [body]
        size = len(body)
        while more and size <= limit:
            message = await receive()
            if message["type"] != "http.request":
                return None, ANSWERED
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
        if size > limit:
            await _refuse(scope, send, _too_large(limit))
            return None, ANSWERED
        body = b"".join(chunks)
        message = {"type": "http.request", "body": body, "more_body": False}
    elif len(body) > limit:
        await _refuse(scope, send, _too_large(limit))
        return None, ANSWERED
    elif more is not False:  # (the replay hands the app the server's own message when it says it is the whole body)
        message = {"type": "http.request", "body": body, "more_body": False}

    parsed = parse_post(body, headers, started)
    if not acceptable:
        request_id = parsed.request_id if isinstance(parsed, Rejection) else parsed.id
        await _refuse(scope, send, replace(_NOT_ACCEPTABLE, request_id=request_id))
        return None, ANSWERED
    if isinstance(parsed, Rejection):
        await _refuse(scope, send, parsed)
        return None, ANSWERED
    scope[REQUEST_SCOPE_KEY] = parsed
    headers._message = message
    headers._receive = receive
    headers.headers_seen = seen
    headers.disconnected = None
    return parsed, headers


async def _refuse(scope: Scope, send: Send, rejection: Rejection) -> None:
    """Refuse bad input, and say so to whoever observes decisions (tracing sees refused requests too)."""
    record_decision(scope, Component.CORE, Outcome.REJECTED, status=rejection.status, code=int(rejection.code))
    await refuse(send, rejection)


def _too_large(limit: int) -> Rejection:
    return Rejection(413, ErrorCode.PAYLOAD_TOO_LARGE, f"Request body exceeds {limit} bytes", data={"maxBytes": limit})
