"""Invalidation from what the backend says: list_changed and resources/updated on the streams passing through.

The streams are the legacy GET stream and the modern `subscriptions/listen` response. Each
event is read before the chunk that completes it is forwarded, and the matching entries are
dropped first: a client that reacts to the notification by asking again must not get the
answer the notification just declared out of date.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.types import Message, Send

from ..core.tap import SseParser

__all__ = ["DROPPED_BY", "StreamWatch"]

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

Invalidate = Callable[[str, "str | None"], Awaitable[None]]
"""`(notification method, resource URI or None)`: drop what it makes out of date."""


class StreamWatch:
    """A `send` for a notification stream that invalidates before it forwards.

    Bounded: an event larger than `max_bytes` is not read (no notification of interest is
    that large). Only events that mention a notification of interest are decoded.
    """

    __slots__ = ("_invalidate", "_parser", "_send")

    def __init__(self, send: Send, invalidate: Invalidate, max_bytes: int = 64 * 1024) -> None:
        self._send = send
        self._invalidate = invalidate
        self._parser: SseParser | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            for name, value in message.get("headers", ()):
                if name == b"content-type" and value.split(b";", 1)[0].strip().lower() == b"text/event-stream":
                    self._parser = SseParser(64 * 1024)
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
