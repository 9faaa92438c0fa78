"""Legacy (2025-11-25) sessions of a pool: each sticks to the replica that created it.

The pool records a session when a replica answers an `initialize` with a new
`Mcp-Session-Id`; nothing else adds an entry, so a client sending made-up session ids
neither grows the table nor reaches any replica (it is told the session does not exist).
Each entry is bound to the principal that opened it, like the proxy's sessions. Bounded
(least recently used forgotten first: that client re-initializes); an entry goes on DELETE,
when its replica says the session is gone (404), and when its replica is lost.

A session whose replica is lost may be re-created on another (`on_replica_loss="reinitialize"`):
the client's own `initialize` request is sent there, then `notifications/initialized`, and the
client keeps its session id: the pool translates it to the new replica's one way and back.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from starlette.types import Receive, Scope, Send

from mcp_middleware.core.errors import request_id_in

from ._pool_credentials import CallerToken
from ._pool_forward import Failure
from .credentials import ExchangeError
from .origins import identity_of, place_of
from .pool_health import Replica
from .sessions import Exchange, exchange, owner_of, sealed_session

__all__ = ["MAX_INITIALIZE_BYTES", "Sticky", "StickySessions", "note_replica", "open_session", "vouched_sticky"]

logger = logging.getLogger("mcp_middleware.router.pool")

_SESSION = b"mcp-session-id"
_NOT_SENT_ON = frozenset({_SESSION, b"content-length", b"last-event-id"})


MAX_INITIALIZE_BYTES = 64 * 1024
"""Largest `initialize` request kept for re-creating a session elsewhere (a larger one is not kept)."""


@dataclass(slots=True, eq=False)
class Sticky:
    """One client session: its replica, who opened it, and the replica's own id for it."""

    replica: Replica
    owner: str
    backend_id: str
    """The replica's session id: the client's own, unless the session was re-created elsewhere."""
    initialize: bytes | None = None
    """The client's `initialize` request (for `on_replica_loss="reinitialize"`)."""
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    """Held while the session is being re-created (concurrent requests of the session wait)."""


class StickySessions:
    """Client session id → :class:`Sticky`, at most `max_sessions` (least recently used dropped)."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be positive")
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Sticky] = OrderedDict()

    def bind(self, session_id: str, sticky: Sticky) -> None:
        self._sessions[session_id] = sticky
        self._sessions.move_to_end(session_id)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def get(self, session_id: str) -> Sticky | None:
        sticky = self._sessions.get(session_id)
        if sticky is not None:
            self._sessions.move_to_end(session_id)
        return sticky

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def on(self, replica: Replica) -> int:
        """How many sessions stick to `replica`."""
        return sum(1 for sticky in self._sessions.values() if sticky.replica is replica)

    def __len__(self) -> int:
        return len(self._sessions)


async def open_session(scope: Scope, replica: Replica, body: bytes, auth: CallerToken | None = None) -> str | None:
    """Open a session at `replica` with the client's own `initialize` request (then `notifications/initialized`),
    as the client (`auth`: its exchanged token): the replica's session id, or None when it cannot."""
    headers = [(k, v) for k, v in scope["headers"] if k not in _NOT_SENT_ON and not k.startswith(b"mcp-")]
    own = {k: v for k, v in scope.items() if not k.startswith("mcp_middleware.")}

    async def ask(payload: bytes, extra: list[tuple[bytes, bytes]]) -> Exchange:
        length = (b"content-length", str(len(payload)).encode("latin-1"))
        child = {**own, "method": "POST", "headers": [*headers, *extra, length]}

        async def via(child: Scope, receive: Receive, send: Send) -> None:
            answered = await replica.transport.forward(child, payload, receive, send, None, auth)
            if isinstance(answered, Failure | ExchangeError):
                raise ConnectionError(answered.reason)

        return await exchange(via, child, payload, request_id_in(payload))

    try:
        answer = await ask(body, [])
        backend_id = answer.headers.get(_SESSION)
        if answer.status != 200 or backend_id is None or answer.message is None or "result" not in answer.message:
            return None
        version = answer.message["result"].get("protocolVersion")
        extra = [(_SESSION, backend_id)]
        if isinstance(version, str):
            extra.append((b"mcp-protocol-version", version.encode("latin-1")))
        await ask(b'{"jsonrpc":"2.0","method":"notifications/initialized"}', extra)
    except Exception as exc:  # that replica cannot take it either
        logger.debug("pool %r: re-initialize at replica %s failed: %s", replica.pool, replica.label, exc)
        return None
    return backend_id.decode("latin-1")


def vouched_sticky(scope: Scope, session_id: str, replicas: Sequence[Replica]) -> Sticky | None:
    """A session another gateway instance opened at this pool, on its sealed handle's word: the handle
    (verified by the gateway) vouches for the owner and names the replica holding it, so the session is
    continued there instead of refused (at the server that issued it: found by its fingerprint when the list was
    reordered). None when there is no such word (the session is unknown), or when no replica is that server now
    (gone or replaced: the session is never sent to another)."""
    handle = sealed_session(scope)
    if handle is None or handle.replica is None:
        return None
    replica = next((replica for replica in replicas if replica.label == handle.replica), None)
    if replica is None or not handle.issued_by(identity_of(replica.backend)):  # that place holds another server now
        at = place_of(handle.fingerprints, handle.origin, [replica.backend for replica in replicas])
        replica = replicas[at] if at is not None else None  # the list was reordered: the session follows its server
    if replica is None:
        return None
    owner = owner_of(scope)
    if not handle.vouches(session_id, owner, identity_of(replica.backend)):
        return None
    return Sticky(replica, owner, session_id)


def note_replica(scope: Scope, replica: Replica) -> None:
    """Tell the gateway's sealed handle (if any) which replica holds the session being opened (and what server)."""
    handle = sealed_session(scope)
    if handle is not None:
        handle.replica = replica.label
        handle.note_origin(identity_of(replica.backend))
