"""Resource-prefix routes in the aggregate's lists: each routed resource listed once, under its own URI.

A route `resource_prefix = "docs://"` over `vendor_a` then `vendor_b` stands for every resource
whose URI starts with the prefix at any of its servers. The merged `resources/list` shows each
such URI once, as the first server of the route (primary first) lists it, under the backend's
own URI (never namespaced: the route is the server now); the members' namespaced entries
(`vendor_a+docs://guide`) are not listed. A read of the URI is the route's (:mod:`.fallback`);
where the aggregate's own server answers it (no relay), it names the route's primary.

The lists are merged by :class:`~mcp_middleware.router.catalog.Catalog`; this subclass folds
the routed resources into its result, once per merged list (the folded list keeps the merged
list's serial and is what :meth:`current` returns, so list answers are reused as before).
"""

from __future__ import annotations

from typing import Any

from .catalog import Catalog
from .catalog_kinds import RESOURCES, Kind, Merged
from .routes import RouteTable

__all__ = ["RoutedCatalog", "fold_routed_resources"]


class RoutedCatalog(Catalog):
    """A :class:`~mcp_middleware.router.catalog.Catalog` whose resource list honours resource-prefix routes."""

    _folded: tuple[int, Merged] | None = None

    async def merge(self, kind: Kind) -> Merged:
        return self._fold(await super().merge(kind))

    def current(self, kind: Kind) -> Merged | None:
        merged = super().current(kind)
        return self._fold(merged) if merged is not None else None

    async def resolve_uri(self, public_uri: str, *, template: bool = False) -> tuple[str, str] | None:
        route = None if template else self.routes.covering(public_uri)
        if route is not None:
            await self.merge(RESOURCES)  # the route's URIs are resolved from the folded list, as listed
            target = self._folded[1].uris.get(public_uri) if self._folded is not None else None
            return target if target is not None else (route.primary, public_uri)
        found = await super().resolve_uri(public_uri, template=template)
        if found is not None and found[1] != public_uri:  # a member's namespaced URI: the route's now, not its own
            covering = self.routes.covering(found[1])
            if covering is not None and found[0] in covering.servers:
                return None
        return found

    def _fold(self, merged: Merged) -> Merged:
        if merged.kind != RESOURCES.name or not self.routes.named("resources"):
            return merged
        folded = self._folded
        if folded is None or folded[0] != merged.serial:
            folded = self._folded = (merged.serial, fold_routed_resources(merged, self.routes))
        return folded[1]


def fold_routed_resources(merged: Merged, routes: RouteTable) -> Merged:
    """`merged` (a resources list) with every resource a route covers listed once, under its own URI."""
    kept: list[tuple[str, Any, str, str]] = []
    offered: dict[str, dict[str, Any]] = {}  # uri -> server -> its item
    for key, item, server, original in zip(merged.keys, merged.items, merged.servers, merged.originals, strict=True):
        route = routes.covering(original)
        if route is not None and server in route.servers:
            offered.setdefault(original, {}).setdefault(server, item)  # a server listing a URI twice: its first
            continue
        kept.append((key, item, server, original))
    # Another server's resource under a routed URI (names kept): the route has that URI; it is not listed.
    kept = [entry for entry in kept if entry[0] not in offered]
    uris = dict(merged.uris)
    for uri, by_server in offered.items():
        route = routes.covering(uri)
        assert route is not None
        server = next(server for server in route.servers if server in by_server)
        kept.append((uri, by_server[server].model_copy(update={"uri": uri}), server, uri))
        uris[uri] = (server, uri)
    kept.sort(key=lambda entry: entry[0])
    return Merged(
        kind=merged.kind,
        items=[entry[1] for entry in kept],
        keys=[entry[0] for entry in kept],
        servers=[entry[2] for entry in kept],
        originals=[entry[3] for entry in kept],
        table=merged.table,
        uris=uris,
        failures=merged.failures,
        collisions=merged.collisions,
        hidden=merged.hidden,
        serial=merged.serial,
    )
