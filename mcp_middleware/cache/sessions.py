"""Legacy sessions the backend opened: a hit is answered only on a session the backend knows."""

from __future__ import annotations

from cachetools import TTLCache
from starlette.types import Message, Send

__all__ = ["SESSION_HEADER", "LegacySessions", "SessionWatch"]

SESSION_HEADER = b"mcp-session-id"


class LegacySessions:
    """Live legacy sessions per (mount, session id, partition), re-checked with the backend every `check_interval`.

    A session the backend ended (or never opened) gets no hits: its requests reach the
    backend, which answers 404 and the session is forgotten. Bounded at 10 000 sessions.
    """

    __slots__ = ("_live",)

    def __init__(self, check_interval: float) -> None:
        self._live: TTLCache[tuple[str, str, str], bool] = TTLCache(maxsize=10_000, ttl=check_interval)

    def live(self, mount: str, session_id: str | None, partition: str) -> bool:
        return (mount, session_id or "", partition) in self._live

    def opened(self, mount: str, session_id: str | None, partition: str) -> None:
        self._live[(mount, session_id or "", partition)] = True

    def closed(self, mount: str, session_id: str | None, partition: str) -> None:
        self._live.pop((mount, session_id or "", partition), None)

    def answered(self, mount: str, session_id: str | None, partition: str, status: int) -> None:
        """The backend answered a request of this session with `status`: a success proves it, a 404 ends it."""
        if 200 <= status < 300:
            self.opened(mount, session_id, partition)
        elif status == 404:
            self.closed(mount, session_id, partition)


class SessionWatch:
    """The `send` of a legacy `initialize`: remembers the status and the session id the backend gave."""

    __slots__ = ("_send", "session_id", "status")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status: int | None = None
        self.session_id: str | None = None

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == SESSION_HEADER:
                    self.session_id = value.decode("latin-1")
        await self._send(message)
