"""Legacy (2025-11-25) client sessions at the aggregate, and each one's sessions at the backends.

A handshake-era client initializes once with the aggregate. Its first request
for a backend opens that client's own session there: `initialize` with the
client's own parameters (protocol version, capabilities, client info), sent
through the backend's stack like any request, then `notifications/initialized`.
The backend therefore sees the caller's capabilities, and its requests to the
client (sampling, elicitation, roots) belong to that client's session. Every
session is bound to the principal that opened it; another principal presenting
its id is told it does not exist.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import ASGIApp, Message, Scope, Send

from mcp_middleware.core import (
    Component,
    JsonRpcCode,
    Outcome,
    Principal,
    RequestId,
    SseParser,
    get_principal,
    record_decision,
    send_error,
)
from mcp_middleware.core.protocol import is_event_stream

from .answer_ids import answer_id
from .origins import UNKEYED, Fingerprints

__all__ = [
    "BackendSession",
    "SEALED_SESSION_SCOPE_KEY",
    "ClientSession",
    "Exchange",
    "SealedSession",
    "Outbox",
    "SessionOwners",
    "Running",
    "SessionTable",
    "owner_of",
    "refuse_session",
    "sealed_session",
]

_MAX_ANSWER = 1024 * 1024
"""Largest answer the router reads for its own exchanges with a backend (initialize, set level)."""
_OUTBOX_SIZE = 256
"""Messages kept for a client's standalone stream while it is not open."""
_LINGER = 5.0
"""Seconds an exchange may go on after its answer arrived before the router stops waiting for its end."""
_MAX_SERVER_REQUESTS = 1000
"""Server-to-client requests awaiting the client's answer, per client session (oldest forgotten first)."""


def owner_of(scope: Scope) -> str:
    """Who a session belongs to: a digest of the principal's issuer, subject and client (injective: a list)."""
    principal: Principal = get_principal(scope)
    if not principal.authenticated:
        return ""
    raw = orjson.dumps([principal.issuer, principal.subject, principal.client_id])
    return hashlib.sha256(raw).hexdigest()


SEALED_SESSION_SCOPE_KEY = "mcp_middleware.sealed_session"
"""Where the gateway's sealed-session layer leaves a :class:`SealedSession` for the stack below it."""


@dataclass(slots=True, eq=False)
class SealedSession:
    """What a verified sealed session handle says about this request's session, and what the stack learns.

    The gateway opens the handle (an AEAD token only it can mint) before the router; the parts of the
    stack that bind sessions to their owner read this instead of a local table another instance filled.
    Shared by reference: scopes copied below the gateway still point at the same object.
    """

    session_id: str | None = None
    """The session the handle names (as the stack below knows it); None: the request opens one."""
    owner: str | None = None
    """Whom the handle is bound to (:func:`owner_of`); checked against the caller once auth has run."""
    replica: str | None = None
    """A pool's replica that holds the session (its label), if the session was opened at a pool."""
    caller: str | None = None
    """Filled after authentication: :func:`owner_of` the caller (what a newly minted handle is bound to)."""
    refused: bool = False
    """Set when the session was refused to the caller (another principal's): never re-created for them."""
    backends: tuple[tuple[str, str], ...] = ()
    """An aggregate session's (backend, session id) pairs: what the aggregate opened at `initialize` (to be
    sealed), or what a re-opened session's handle carries (to be continued, not opened again)."""
    replicas: tuple[tuple[str, str], ...] = ()
    """(backend, replica) for the pools among `backends`."""
    origin: bytes | None = None
    """Fingerprint of the server that issued `session_id` (:mod:`.origins`): from the handle, or noted by the
    stack when it opens one (None: an in-process or aggregate session, which no remote server may be handed)."""
    origins: tuple[tuple[str, bytes], ...] = ()
    """(backend, fingerprint of the server that issued its session) for `backends`."""
    fingerprints: Fingerprints = UNKEYED
    """How the handle layer fingerprints servers (keyed by the session key)."""

    def vouches(self, session_id: str, owner: str, issuer: str | None) -> bool:
        """Whether the handle vouches that `session_id` belongs to `owner` and was issued by the server whose
        :func:`~.origins.identity_of` is `issuer` (what the name points at now: a reload may have moved it)."""
        return self.session_id == session_id and self.owner == owner and self.issued_by(issuer)

    def issued_by(self, issuer: str | None) -> bool:
        """Whether the handle's session was issued by the server `issuer` (never true for a handle without one)."""
        return self.fingerprints.match(self.origin, issuer)

    def note_origin(self, issuer: str | None) -> None:
        """The stack opened the session at the server `issuer`: what the handle is to be bound to."""
        self.origin = self.fingerprints.of(issuer)


def sealed_session(scope: Scope) -> SealedSession | None:
    """The request's :class:`SealedSession`, if the gateway seals session ids."""
    found: SealedSession | None = scope.get(SEALED_SESSION_SCOPE_KEY)
    return found


class Outbox:
    """Messages for one client's standalone stream (oldest dropped when nobody reads for too long)."""

    def __init__(self) -> None:
        self.send: MemoryObjectSendStream[bytes]
        self.receive: MemoryObjectReceiveStream[bytes]
        self.send, self.receive = anyio.create_memory_object_stream[bytes](_OUTBOX_SIZE)
        self.reading = False

    def put(self, message: bytes) -> None:
        try:
            self.send.send_nowait(message)
        except anyio.WouldBlock:  # nobody has read for a while: drop the oldest, keep the newest
            try:
                self.receive.receive_nowait()
                self.send.send_nowait(message)
            except (anyio.WouldBlock, anyio.EndOfStream):
                pass


REFUSED_MOVED = "moved"
"""The `reason` of a `session_refused` decision for a session another server issued: a reload (or another
instance's configuration) points the name elsewhere now (:mod:`.origins`); the client initializes again."""


async def refuse_session(scope: Scope, send: Send, request_id: RequestId | None, *, moved: bool = False) -> None:
    """Another principal's session, or (`moved`) another server's: answered exactly as if it did not exist
    (the SDK's answer, with the id). Only the decision tells the two apart, for the operator."""
    if moved:
        record_decision(scope, Component.ROUTER, Outcome.SESSION_REFUSED, reason=REFUSED_MOVED)
    else:
        record_decision(scope, Component.ROUTER, Outcome.SESSION_REFUSED)
    await send_error(
        send, status=404, code=JsonRpcCode.INVALID_REQUEST, message="Session not found", request_id=request_id
    )


@dataclass(slots=True)
class BackendSession:
    """A client's session at one backend."""

    id: str | None
    protocol_version: str
    log_level: str | None = None
    replica: str | None = None
    """For a pool: the replica holding this session (what a sealed handle vouches for)."""
    sealed: bool = False
    """Its id is sealed in the client's handle: other instances continue it (never ended on eviction)."""
    origin: bytes | None = None
    """Fingerprint of the server that issued `id` (:mod:`.origins`; a sealed handle is bound to it)."""
    stream_pending: bool = False
    """Opened or continued ahead of use: its standalone stream is pumped on first use, not before."""


@dataclass(slots=True, eq=False)
class Running:
    """One request of a client in flight at `server`: its own object, so that the end of one call never
    forgets a newer call that reused its id."""

    server: str


@dataclass(slots=True)
class ClientSession:
    """One legacy client's session at the aggregate."""

    id: str
    owner: str
    initialize: Mapping[str, Any]
    """The client's `initialize` params, sent on to every backend."""
    opened_by: Scope = field(default_factory=dict)
    """The scope of the request that opened it (who, from where): what ending its backend sessions uses."""
    log_level: str | None = None
    backends: dict[str, BackendSession] = field(default_factory=dict)
    opening: dict[str, anyio.Event] = field(default_factory=dict)
    server_requests: OrderedDict[str, tuple[str, RequestId]] = field(default_factory=OrderedDict)
    """Public id of a backend's request to this client → (backend, the backend's own id)."""
    running: dict[RequestId, Running] = field(default_factory=dict)
    """The client's requests in flight at a backend (where `notifications/cancelled` must go)."""
    outbox: Outbox = field(default_factory=lambda: Outbox())
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def server_request(self, server: str, backend_id: RequestId) -> str:
        """A public id for a backend's request to the client, unique across this client's backends, that names
        the backend and its id for an instance continuing the session (:mod:`.answer_ids`)."""
        public = answer_id(next(self._ids), server, backend_id)
        self.server_requests[public] = (server, backend_id)
        while len(self.server_requests) > _MAX_SERVER_REQUESTS:
            self.server_requests.popitem(last=False)
        return public


class SessionTable:
    """The aggregate's legacy client sessions (the most recently used `max_sessions`)."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, ClientSession] = OrderedDict()

    def add(self, session: ClientSession) -> list[ClientSession]:
        """Keep `session`; returns the least recently used ones that no longer fit (to be ended)."""
        self._sessions[session.id] = session
        evicted: list[ClientSession] = []
        while len(self._sessions) > self.max_sessions:
            evicted.append(self._sessions.popitem(last=False)[1])
        return evicted

    def get(self, session_id: str | None) -> ClientSession | None:
        session = self._sessions.get(session_id) if session_id is not None else None
        if session is not None:
            self._sessions.move_to_end(session.id)
        return session

    def pop(self, session_id: str) -> ClientSession | None:
        return self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[ClientSession]:
        return iter(list(self._sessions.values()))


class SessionOwners:
    """Who opened each legacy session of a proxied backend: another principal is told it does not exist.

    An in-process SDK server binds its sessions itself; a remote one cannot (it never sees the caller's
    token), so the proxy binds them. Bounded: a session whose binding was forgotten is refused too
    (fail closed: the client re-initializes).
    """

    def __init__(self, max_sessions: int = 100_000) -> None:
        self.max_sessions = max_sessions
        self._owners: OrderedDict[str, str] = OrderedDict()

    def bind(self, session_id: str, owner: str) -> None:
        self._owners[session_id] = owner
        self._owners.move_to_end(session_id)
        while len(self._owners) > self.max_sessions:
            self._owners.popitem(last=False)

    def allows(self, session_id: str, owner: str) -> bool:
        return self._owners.get(session_id) == owner

    def bound(self, session_id: str) -> bool:
        """Whether `session_id` is bound here (to anyone)."""
        return session_id in self._owners

    def forget(self, session_id: str) -> None:
        self._owners.pop(session_id, None)


@dataclass(slots=True)
class Exchange:
    """What a backend answered to one of the router's own requests."""

    status: int
    headers: dict[bytes, bytes]
    message: dict[str, Any] | None
    """The JSON-RPC response with the request's id, if one came."""


async def exchange(app: ASGIApp, scope: Scope, body: bytes, request_id: RequestId | None) -> Exchange:
    """Send one JSON-RPC message through `app` (a backend's stack) and read the answer (bounded).

    The answer may be JSON or an SSE stream; the stream is read until the response
    to `request_id` arrives (a notification needs none: 202).
    """
    status = 0
    headers: dict[bytes, bytes] = {}
    chunks: list[bytes] = []
    size = 0
    parser: SseParser | None = None
    found: dict[str, Any] | None = None
    done = anyio.Event()
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the answer is in: now the backend may stop its stream
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, size, parser, found
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.update((k.lower(), v) for k, v in message.get("headers", ()))
            if is_event_stream(headers.get(b"content-type", b"")):
                parser = SseParser(_MAX_ANSWER)
            return
        if message["type"] != "http.response.body" or done.is_set():
            return
        chunk: bytes = message.get("body", b"")
        if parser is not None:
            for _, data in parser.feed(chunk):
                decoded = _decode(data)
                if decoded is not None and decoded.get("id") == request_id and "method" not in decoded:
                    found = decoded
                    done.set()
        elif size + len(chunk) <= _MAX_ANSWER:
            size += len(chunk)
            chunks.append(chunk)
        if not message.get("more_body", False):
            if parser is None and chunks:
                found = _decode(b"".join(chunks))
            done.set()

    finished = anyio.Event()
    async with anyio.create_task_group() as group:

        async def run() -> None:
            try:
                await app(scope, receive, send)
            finally:
                done.set()
                finished.set()

        group.start_soon(run)
        await done.wait()
        # A backend forgets a session whose opening request was cancelled: let the exchange end by itself.
        with anyio.move_on_after(_LINGER):
            await finished.wait()
        group.cancel_scope.cancel()
    return Exchange(status, headers, found)


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None
