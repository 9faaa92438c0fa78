"""A backend's `notifications/tools/list_changed` empties its tool catalog, so the next call meets the new schema.

Two ways the word reaches a backend's stack:

* **its notification streams** pass through it: the legacy GET stream of a path-mount client and a
  2026-07-28 `subscriptions/listen` response. :class:`ChangeWatch` reads them as they pass (bounded,
  only events that mention `list_changed` are decoded) and forgets *before* it forwards the event, so
  a client that calls again on the notification is already held to the new schema;
* **the router's own session** to the backend (legacy notifications on its session, modern on its
  listen stream) hears it whether or not a client listens: the router tells each middleware of the
  backend's stack through :meth:`lists_changed` (see `router/stack_changes.py`).

A catalog nobody tells still ages out (`ToolCatalog.max_age`, or the list's `ttlMs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson
from starlette.types import Message, Scope, Send

from mcp_middleware.core import SseParser
from mcp_middleware.core.protocol import is_event_stream

from .catalog import ToolCatalog

__all__ = ["TOOLS_CHANGED", "ChangeWatch", "watch_changes"]

logger = logging.getLogger("mcp_middleware.policy")

TOOLS_CHANGED = "notifications/tools/list_changed"
_MAX_EVENT = 64 * 1024
"""The largest event read: no list_changed is that large (a larger event passes unread)."""
_WATCHED_KEY = "mcp_middleware.policy.watched"
"""Scope key: the catalogs a stream is already watched for (the policy and the validator share one)."""


class ChangeWatch:
    """A `send` for a notification stream: forgets the catalog on `tools/list_changed`, then forwards."""

    __slots__ = ("_catalog", "_parser", "_send")

    def __init__(self, send: Send, catalog: ToolCatalog) -> None:
        self._send = send
        self._catalog = catalog
        self._parser: SseParser | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type" and is_event_stream(value):
                    self._parser = SseParser(_MAX_EVENT)
        elif kind == "http.response.body" and self._parser is not None:
            body: bytes = message.get("body", b"")
            if body:
                for _, data in self._parser.feed(body, final=not message.get("more_body", False)):
                    if b"list_changed" in data and _is_tools_changed(data):
                        logger.debug("tools/list_changed on a stream: the tool catalog starts over")
                        self._catalog.forget()
        await self._send(message)


def _is_tools_changed(data: bytes) -> bool:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and "id" not in message and message.get("method") == TOOLS_CHANGED


def watch_changes(scope: Scope, send: Send, catalog: ToolCatalog) -> Send:
    """`send` watched for `catalog` (once per stream, however many layers of the stack share the catalog)."""
    watched: Iterable[ToolCatalog] = scope.get(_WATCHED_KEY, ())
    if any(seen is catalog for seen in watched):
        return send
    scope[_WATCHED_KEY] = (*watched, catalog)
    return ChangeWatch(send, catalog)
