"""The aggregate's notifier: backends' list_changed and resource updates, relayed to connected clients.

A backend's list_changed becomes one debounced list_changed to every connected
client: legacy sessions on their standalone stream, modern clients on their
`subscriptions/listen` streams. A legacy client's `resources/subscribe` is made
once at the backend; the backend's `resources/updated` goes to every client that
subscribed, under the public URI.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import anyio.abc
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ServerEvent, ToolsListChanged

__all__ = ["Notifier"]


class Notifier:
    """Who is listening, and what to tell them.

    >>> # notifier.remember(session_id, session); notifier.changed("github", frozenset({"tools"}))
    """

    def __init__(self, *, debounce: float, max_listeners: int) -> None:
        self.debounce = debounce
        self.max_listeners = max_listeners
        self.bus = InMemorySubscriptionBus()
        self.group: anyio.abc.TaskGroup | None = None
        self._sessions: OrderedDict[str, ServerSession] = OrderedDict()
        self._pending: set[str] = set()
        self._scheduled = False
        self._subscribers: dict[tuple[str, str], set[str]] = {}  # (server, uri) -> legacy sessions
        self.listeners: list[Callable[[frozenset[str]], None]] = []
        """Told of every (debounced) change too: the relay's legacy sessions have streams of their own."""

    def remember(self, session_id: str, session: ServerSession) -> None:
        """Legacy sessions get list_changed on their standalone stream: keep one handle per session."""
        sessions = self._sessions
        sessions[session_id] = session
        sessions.move_to_end(session_id)
        while len(sessions) > self.max_listeners:
            sessions.popitem(last=False)

    def forget_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        for subscribers in self._subscribers.values():
            subscribers.discard(session_id)

    # --- list_changed -----------------------------------------------------------------------

    def changed(self, kinds: frozenset[str]) -> None:
        """Backends' lists of these families changed: tell every client once, after the debounce."""
        self._pending |= kinds
        if not self._scheduled and self.group is not None:
            self._scheduled = True
            self.group.start_soon(self._flush)

    async def _flush(self) -> None:
        await anyio.sleep(self.debounce)  # many backends changing at once: one notification per kind
        kinds, self._pending = self._pending, set()
        self._scheduled = False
        events: list[ServerEvent] = []
        if "tools" in kinds:
            events.append(ToolsListChanged())
        if "prompts" in kinds:
            events.append(PromptsListChanged())
        if "resources" in kinds:
            events.append(ResourcesListChanged())
        for event in events:
            await self.bus.publish(event)
        for listener in self.listeners:
            listener(frozenset(kinds))
        for session_id, session in list(self._sessions.items()):
            try:
                if "tools" in kinds:
                    await session.send_tool_list_changed()
                if "prompts" in kinds:
                    await session.send_prompt_list_changed()
                if "resources" in kinds:
                    await session.send_resource_list_changed()
            except Exception:  # the session is gone
                self._sessions.pop(session_id, None)

    # --- resource subscriptions (legacy) ------------------------------------------------------

    def subscribed(self, server: str, uri: str) -> bool:
        """Whether anyone already holds the backend subscription to this resource."""
        return bool(self._subscribers.get((server, uri)))

    def subscribe(self, server: str, uri: str, session_id: str | None) -> None:
        subscribers = self._subscribers.setdefault((server, uri), set())
        if session_id is not None and len(subscribers) < self.max_listeners:
            subscribers.add(session_id)

    def unsubscribe(self, server: str, uri: str, session_id: str | None) -> bool:
        """Drop one subscriber; True when nobody is left (the backend subscription can end)."""
        subscribers = self._subscribers.get((server, uri), set())
        subscribers.discard(session_id or "")
        if subscribers:
            return False
        self._subscribers.pop((server, uri), None)
        return True

    def resource_updated(self, server: str, uri: str, public_uri: Callable[[str, str], str]) -> None:
        sessions = [self._sessions.get(s) for s in self._subscribers.get((server, uri), ())]
        if self.group is None:
            return
        public = public_uri(server, uri)

        async def tell() -> None:
            for session in sessions:
                if session is not None:
                    with contextlib.suppress(Exception):  # that client is gone
                        await session.send_resource_updated(public)

        self.group.start_soon(tell)
