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

from collections import OrderedDict
from dataclasses import dataclass, field

import anyio

from .pool_health import Replica

__all__ = ["MAX_INITIALIZE_BYTES", "Sticky", "StickySessions"]

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
