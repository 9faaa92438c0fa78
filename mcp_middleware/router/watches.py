"""Modern resource subscriptions at the aggregate: `subscriptions/listen` filters fanned out to their backends.

A 2026-07-28 client lists the resource URIs it wants `resources/updated` for in its
`subscriptions/listen` filter. The aggregate resolves each public URI to its backend
and holds one `subscriptions/listen` stream at that backend per watched URI (shared by
every client watching it, counted, closed when the last one leaves); each update
comes back under the public URI, onto the aggregate's own bus, which delivers it to
the listen streams whose filter names it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import anyio.abc
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated

from ._links import BackendLink

__all__ = ["ResourceWatches"]

logger = logging.getLogger("mcp_middleware.router")

Resolve = Callable[[str], Awaitable[tuple[str, str] | None]]
"""Public URI → (backend, the backend's URI), or None when no backend owns it."""


class ResourceWatches:
    """Counted backend listen streams, one per watched (backend, URI)."""

    def __init__(self, links: dict[str, BackendLink], bus: InMemorySubscriptionBus, *, max_watches: int = 1000) -> None:
        self.links = links
        self.bus = bus
        self.max_watches = max_watches
        self.group: anyio.abc.TaskGroup | None = None
        self._watches: dict[tuple[str, str], tuple[int, anyio.CancelScope | None]] = {}

    async def acquire(self, uris: Iterable[str], resolve: Resolve) -> list[tuple[str, str]]:
        """Watch these public URIs (those a backend owns); returns what to `release` later."""
        held: list[tuple[str, str]] = []
        for public in uris:
            target = await resolve(public)
            if target is None or self.group is None:
                continue
            key = (target[0], target[1])
            count, scope = self._watches.get(key, (0, None))
            if scope is None:
                if len(self._watches) >= self.max_watches:
                    logger.warning("aggregate: %d resource watches already; %s not watched", self.max_watches, public)
                    continue
                scope = anyio.CancelScope()
                self.group.start_soon(self._watch, key, public, scope)
            self._watches[key] = (count + 1, scope)
            held.append(key)
        return held

    def release(self, held: Iterable[tuple[str, str]]) -> None:
        for key in held:
            watch = self._watches.get(key)
            if watch is None:
                continue
            count, scope = watch
            if count <= 1:
                del self._watches[key]
                if scope is not None:
                    scope.cancel()
            else:
                self._watches[key] = (count - 1, scope)

    async def _watch(self, key: tuple[str, str], public: str, scope: anyio.CancelScope) -> None:
        server, uri = key
        with scope:
            try:
                client: Any = await self.links[server].client()
                async with client.listen(resource_subscriptions=[uri]) as subscription:
                    async for event in subscription:
                        if isinstance(event, ResourceUpdated):
                            await self.bus.publish(ResourceUpdated(uri=public))
            except Exception as exc:  # the backend cannot watch (legacy, gone): the client's stream stays open
                logger.info("aggregate: cannot watch %s at %s: %s", uri, server, str(exc)[:200])
