"""Invalidation: from what the backend says on its streams, and on the operator's demand.

The streams are the legacy GET stream and the modern `subscriptions/listen` response. Each
event is read before the chunk that completes it is forwarded, and the matching entries are
dropped first: a client that reacts to the notification by asking again must not get the
answer the notification just declared out of date.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import orjson
from starlette.types import Message, Scope, Send

from mcp_middleware.core.decisions import Component, Outcome
from mcp_middleware.core.protocol import is_event_stream

from ..core.decisions import record_decision
from ..core.tap import SseParser
from .keys import invalidation_tag
from .store import CacheStore
from .tools import ReadOnlyTools

__all__ = ["DROPPED_BY", "NOTIFICATION_MAX_BYTES", "STORE_PATIENCE", "Invalidate", "Invalidator", "StreamWatch"]

logger = logging.getLogger("mcp_middleware.cache")

DROPPED_BY: dict[str, tuple[str, ...]] = {
    "notifications/tools/list_changed": ("tools/list", "tools/call"),
    "notifications/prompts/list_changed": ("prompts/list", "prompts/get"),
    "notifications/resources/list_changed": ("resources/list", "resources/templates/list", "resources/read"),
}
"""Which cached methods a list_changed notification makes out of date.

A changed tool list can mean a changed tool, so opted-in `tools/call` results go too (and the
read-only annotations learned from the old list); likewise prompts and resources.
"""

UPDATED = "notifications/resources/updated"

NOTIFICATION_MAX_BYTES = 64 * 1024
"""The largest event a stream watch reads: no notification of interest is that large."""

STORE_PATIENCE = 2.0
"""Seconds a store write or invalidation may take where the app could cancel it (it is shielded)."""

Invalidate = Callable[[str, "str | None"], Awaitable[None]]
"""`(notification method, resource URI or None)`: drop what it makes out of date."""


class StreamWatch:
    """A `send` for a notification stream that invalidates before it forwards.

    Bounded: an event (or a line) larger than `max_bytes` is neither read nor held; the
    stream passes through untouched. Only events that mention a notification of interest
    are decoded.
    """

    __slots__ = ("_invalidate", "_max_bytes", "_parser", "_send")

    def __init__(self, send: Send, invalidate: Invalidate, max_bytes: int = NOTIFICATION_MAX_BYTES) -> None:
        self._send = send
        self._invalidate = invalidate
        self._max_bytes = max_bytes
        self._parser: SseParser | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            for name, value in message.get("headers", ()):
                if name == b"content-type" and is_event_stream(value):
                    self._parser = SseParser(self._max_bytes)
        elif kind == "http.response.body" and self._parser is not None:
            body: bytes = message.get("body", b"")
            if body:
                for _, data in self._parser.feed(body, final=not message.get("more_body", False)):
                    if b"list_changed" in data or b"resources/updated" in data:
                        await self._read(data)
        await self._send(message)

    async def _read(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict) or "id" in message:
            return
        method = message.get("method")
        if method in DROPPED_BY:
            await self._invalidate(method, None)
        elif method == UPDATED:
            params = message.get("params")
            uri = params.get("uri") if isinstance(params, dict) else None
            if isinstance(uri, str):
                await self._invalidate(method, uri)


class Invalidator:
    """Drops entries (and learned tool annotations) from the store, and counts each invalidation.

    `generation` grows with every invalidation: a miss remembers it when it goes to the
    backend, and does not store an answer fetched before an invalidation that came after.
    """

    __slots__ = ("_sync", "generation", "store", "tools")

    def __init__(self, store: CacheStore, tools: ReadOnlyTools) -> None:
        self.store = store
        self._sync = store.sync
        self.tools = tools
        self.generation = 0

    async def notified(self, scope: Scope, mount: str, notification: str, uri: str | None) -> None:
        """A backend said `notification` on a stream of `mount`: drop what it makes stale, and say so."""
        try:
            dropped = await self._drop_for(mount, notification, uri)
        except Exception:  # inside the stream's send: never break the stream over the cache
            logger.exception("cache invalidation for %s failed", notification)
            return
        record_decision(scope, Component.CACHE, Outcome.INVALIDATE, notification=notification, dropped=dropped)

    async def _drop_for(self, mount: str, notification: str, uri: str | None) -> int:
        self.generation += 1
        if uri is not None:
            tags = [invalidation_tag(mount, uri=uri)]
        else:
            methods = DROPPED_BY[notification]
            if "tools/call" in methods:
                self.tools.forget(mount)
            tags = [invalidation_tag(mount, method) for method in methods]
        if self._sync is not None:
            return self._sync.drop(tags)
        dropped = 0
        with anyio.move_on_after(STORE_PATIENCE, shield=True):  # inside a stream's send, like a store write
            dropped = await self.store.invalidate(tags)
        return dropped

    async def drop(self, *, mount: str | None, method: str | None, partition: str | None, uri: str | None) -> int:
        """The operator's invalidation (see :meth:`ResponseCacheMiddleware.invalidate`)."""
        self.generation += 1
        if uri is not None:
            return await self.store.invalidate([invalidation_tag(mount, uri=uri)])
        if method in (None, "tools/list", "tools/call"):
            self.tools.forget(mount)
        return await self.store.invalidate([invalidation_tag(mount, method, partition)])
