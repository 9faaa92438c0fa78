"""The aggregate's catalog: every backend's lists, fetched concurrently, merged under public names.

Lists are fetched from every backend concurrently (each with its own timeout,
following each backend's own pages), merged under namespaced names (:mod:`.names`)
in a deterministic order (by public name), and paged with opaque keyset cursors:
a cursor remembers the last name handed out, so a client walking the pages sees
every item that exists throughout the walk exactly once, even when a backend
changes in between. A backend that fails does not fail the list: the rest is
returned and the failure is reported (:class:`BackendFailure`). The catalog also
resolves public names back to `(server, name)` for the requests the aggregate routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

import anyio
from mcp.shared.exceptions import MCPError

from mcp_middleware.core import JsonRpcCode

from ._links import BackendLink, BackendUnavailable, connection_lost, short
from .backends import Backend
from .catalog_kinds import (
    KINDS,
    RESOURCES,
    TEMPLATES,
    TOOLS,
    BackendFailure,
    Gathered,
    Kind,
    Listing,
    Merged,
    SharedFetch,
    fetch_all,
    is_fresh,
)
from .curated_catalog import curated_entries, hidden_names
from .curation import Curation, Selection
from .names import NameTable, NamingPolicy, PrefixMode, namespace_uri, split_uri, template_matches
from .routes import RouteTable

__all__ = ["Catalog"]

logger = logging.getLogger("mcp_middleware.router")


class Catalog:
    """The merged lists of many backends, fetched through their shared sessions (`links`)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        links: Mapping[str, BackendLink],
        *,
        naming: NamingPolicy,
        list_ttl: float,
        failure_cooldown: float,
        routes: RouteTable | None = None,
        curations: Mapping[str, Curation] | None = None,
        selections: Mapping[str, Selection] | None = None,
    ) -> None:
        self.backends = backends
        self.routes = routes if routes is not None else RouteTable((), servers=())
        self._annotations: dict[str, dict[str, dict[str, Any]]] = {}
        """server → tool → its annotations as last listed (kept through outages: a route's rule needs them)."""
        self.curations = dict(curations or {})
        """Each backend's curation (its path mount applies the same one in its stack)."""
        self.selections = selections
        """A virtual server's choice from each backend (None: everything the curations leave)."""
        self.links = links
        self.naming = naming
        self.list_ttl = list_ttl
        self.failure_cooldown = failure_cooldown
        self._listings: dict[str, dict[str, Listing]] = {kind.name: {} for kind in KINDS}
        self._merged: dict[str, tuple[tuple[int, ...], Merged]] = {}
        self._cooling: dict[str, tuple[float, str]] = {}
        self._fetching: dict[tuple[str, str], SharedFetch] = {}

    def cooling(self, server: str) -> str | None:
        """Why `server` is cooling down after a failure, or None."""
        cooling = self._cooling.get(server)
        return cooling[1] if cooling is not None and cooling[0] > time.monotonic() else None

    def current(self, kind: Kind) -> Merged | None:
        """The merged list of this kind as last built (None before the first)."""
        cached = self._merged.get(kind.name)
        return cached[1] if cached is not None else None

    def forget(self, server: str, changes: frozenset[str]) -> None:
        """`server`'s lists of these families changed: fetch them anew on next use."""
        for kind in KINDS:
            if kind.change in changes:
                self._listings[kind.name].pop(server, None)

    # --- merging ----------------------------------------------------------------------------

    async def merge(self, kind: Kind) -> Merged:
        gathered = await self._gather(kind)
        version = tuple(
            listing.generation if (listing := gathered.listings.get(server)) is not None else 0
            for server in self.backends
        )
        cached = self._merged.get(kind.name)
        if cached is not None and cached[0] == version and not gathered.failures and not cached[1].failures:
            return cached[1]
        merged = self._build(kind, gathered)
        self._merged[kind.name] = (version, merged)
        return merged

    def _build(self, kind: Kind, gathered: Gathered) -> Merged:
        entries: list[tuple[str, Any]] = []
        originals: dict[tuple[str, str], str] = {}  # (server, curated key) -> the backend's own
        hidden_at: list[tuple[str, str, str]] = []  # (server, curated name, rule) of curated-away items
        for server in self.backends:  # mount order decides collisions
            listing = gathered.listings.get(server)
            if listing is not None:
                entries.extend(self._curated(kind, server, listing.items, originals, hidden_at))
        table: NameTable | None = None
        uris: dict[str, tuple[str, str]] = {}
        collisions: list[dict[str, str | None]] = []
        public: list[tuple[str, Any, str, str]] = []
        if kind.key == "name":
            routes = self.routes.named(kind.name)
            members = self.routes.members(kind.name) if routes else {}
            if members:  # a route's backends' items are listed once, under the route's name
                routed = [(server, item) for server, item in entries if (server, item.name) in members]
                entries = [(server, item) for server, item in entries if (server, item.name) not in members]
                public.extend(_routed_items(routes, routed))
            reserved = {name: (route.primary, name) for name, route in routes.items()}
            table = NameTable.build(self.naming, ((server, item.name) for server, item in entries), reserved=reserved)
            collisions = [collision.describe() for collision in table.collisions]
            taken: set[str] = set(routes)
            for server, item in entries:
                name = table.public_name(server, item.name)
                if name is not None and name not in taken:  # a backend listing a name twice: first one
                    taken.add(name)
                    own = originals.get((server, item.name), item.name)  # the backend's name, for its list filter
                    public.append((name, item.model_copy(update={"name": name}), server, own))
        else:
            keep = self.naming.prefix is PrefixMode.NEVER
            for server, item in entries:
                original: str = getattr(item, kind.key)
                uri = original if keep else namespace_uri(server, original)
                if uri in uris:
                    collisions.append({"name": uri, "kept": uris[uri][0], "renamed": server, "as": None})
                    continue
                uris[uri] = (server, original)  # routed in the curated spelling: the stack's curation renames back
                own = originals.get((server, original), original)  # the backend's URI, for its list filter
                public.append((uri, item.model_copy(update={kind.key: uri}), server, own))
        hidden = hidden_names(self.naming, table, hidden_at)
        public.sort(key=lambda entry: entry[0])
        if collisions:
            logger.info("aggregate %s: name collisions %s", kind.name, collisions)
        return Merged(
            kind=kind.name,
            items=[entry[1] for entry in public],
            keys=[entry[0] for entry in public],
            servers=[entry[2] for entry in public],
            originals=[entry[3] for entry in public],
            table=table,
            uris=uris,
            failures=gathered.failures,
            collisions=collisions,
            hidden=hidden,
        )

    def _curated(
        self,
        kind: Kind,
        server: str,
        items: list[Any],
        originals: dict[tuple[str, str], str],
        hidden_at: list[tuple[str, str, str]],
    ) -> list[tuple[str, Any]]:
        """A backend's items as its curation (and a virtual server's selection) lets clients see them."""
        if not self.curations and self.selections is None:
            return [(server, item) for item in items]
        selection = self.selections.get(server) if self.selections is not None else None
        if self.selections is not None and selection is None:
            return []  # a virtual server takes nothing of a backend it does not name
        return curated_entries(
            self.curations.get(server), selection, server, kind.name, kind.key, items, originals, hidden_at
        )

    def refusal(self, kind: Kind, public_name: str) -> tuple[Curation, str] | None:
        """`(the backend's curation, rule)` when a tool or prompt name is one its curation hides."""
        cached = self._merged.get(kind.name)
        found = cached[1].hidden.get(public_name) if cached is not None else None
        if found is None:
            return None
        curation = self.curations.get(found[0])
        return (curation, found[1]) if curation is not None else None

    def backend_name(self, kind: Kind, server: str, curated: str) -> str:
        """The backend's own name of a curated tool or prompt name (for calls that skip its stack)."""
        curation = self.curations.get(server)
        if curation is None:
            return curated
        rules = curation.tools if kind is TOOLS else curation.prompts
        return rules.backend(curated) or curated

    async def _gather(self, kind: Kind) -> Gathered:
        gathered = Gathered()
        listings = self._listings[kind.name]
        now = time.monotonic()
        stale = [server for server in self.backends if not is_fresh(listings.get(server), now, self.list_ttl)]
        for server in self.backends:
            if server not in stale:
                gathered.listings[server] = listings[server]
        if stale:
            async with anyio.create_task_group() as group:
                for server in stale:
                    group.start_soon(self._fetch_into, kind, server, gathered)
        return gathered

    async def _fetch_into(self, kind: Kind, server: str, gathered: Gathered) -> None:
        """One backend's list for this request; concurrent requests share one fetch (no herd of fan-outs)."""
        key = (kind.name, server)
        fetch = self._fetching.get(key)
        if fetch is None:
            fetch = self._fetching[key] = SharedFetch()
            try:
                fetch.outcome = await self._fetch(kind, server)
            finally:
                del self._fetching[key]
                fetch.done.set()
        else:
            await fetch.done.wait()
        if isinstance(fetch.outcome, Listing):
            gathered.listings[server] = fetch.outcome
        elif fetch.outcome is not None:
            gathered.failures.append(fetch.outcome)

    async def _fetch(self, kind: Kind, server: str) -> Listing | BackendFailure:
        cooling = self.cooling(server)
        if cooling is not None:
            return BackendFailure(server, "unavailable", f"cooling down after: {cooling}")
        backend = self.backends[server]
        link = self.links[server]
        started = time.monotonic()
        try:
            with anyio.fail_after(backend.timeout):
                client = await link.client(backend.timeout)
                items = await fetch_all(client, kind)
        except TimeoutError:
            return self._fail(server, "timeout", f"no answer within {backend.timeout:g} s")
        except BackendUnavailable as exc:
            return self._fail(server, "unavailable", exc.reason)
        except MCPError as exc:
            if exc.code != JsonRpcCode.METHOD_NOT_FOUND:
                if connection_lost(exc):
                    link.mark_broken(exc.message)
                return self._fail(server, "error", f"{exc.code}: {exc.message}")
            items = []  # the backend does not offer this kind at all
        except Exception as exc:  # garbage from the backend, a dead connection: this backend only
            link.mark_broken(short(exc))
            return self._fail(server, "error", short(exc))
        listing = Listing(items, started)
        self._listings[kind.name][server] = listing
        if kind is TOOLS:
            self._annotations[server] = {
                tool.name: tool.annotations.model_dump(by_alias=True, exclude_none=True)
                for tool in items
                if getattr(tool, "annotations", None) is not None
            }
        self._cooling.pop(server, None)
        return listing

    def _fail(self, server: str, error: Literal["timeout", "unavailable", "error"], message: str) -> BackendFailure:
        logger.warning("aggregate: backend %s failed (%s): %s", server, error, message)
        if self.failure_cooldown > 0 and error in ("timeout", "unavailable"):
            self._cooling[server] = (time.monotonic() + self.failure_cooldown, message)
        for listings in self._listings.values():  # nothing stale is offered for a failed backend
            listings.pop(server, None)
        return BackendFailure(server, error, message)

    def tool_annotations(self, server: str, name: str) -> dict[str, Any] | None:
        """The annotations `server` last listed for its tool `name` (None: none, or never listed)."""
        return self._annotations.get(server, {}).get(name)

    # --- resolving public names -------------------------------------------------------------

    async def resolve(self, kind: Kind, public_name: str) -> tuple[str, str] | None:
        """`(server, name)` of a public tool or prompt name, or None when no backend offers it."""
        cached = self._merged.get(kind.name)
        target = cached[1].table.resolve(public_name) if cached is not None and cached[1].table else None
        if target is None:  # not seen yet or renamed since: look again before saying no
            merged = await self.merge(kind)
            target = merged.table.resolve(public_name) if merged.table is not None else None
        return target

    async def resolve_uri(self, public_uri: str, *, template: bool = False) -> tuple[str, str] | None:
        """`(server, backend uri)` of a resource (or, with `template`, of a resource template)."""
        target = await self._locate_uri(public_uri, template=template)
        if target is not None and self.selections is not None:  # a virtual server reaches only what it selects
            selection = self.selections.get(target[0])
            if selection is None or not selection.allows_uri(target[1], template=template):
                return None
        return target

    async def _locate_uri(self, public_uri: str, *, template: bool) -> tuple[str, str] | None:
        if self.naming.prefix is not PrefixMode.NEVER:
            return split_uri(public_uri, self.backends)
        # URIs are the backends' own: a listed resource, else the first template that matches
        if not template:
            target = (await self.merge(RESOURCES)).uris.get(public_uri)
            if target is not None:
                return target
        templates = await self.merge(TEMPLATES)
        if template:
            return templates.uris.get(public_uri)
        return next(
            ((server, public_uri) for key, (server, _) in templates.uris.items() if template_matches(key, public_uri)),
            None,
        )

    def public_uri(self, server: str, uri: str) -> str:
        """The aggregate's URI for `server`'s curated `uri` (what its stack answers)."""
        return uri if self.naming.prefix is PrefixMode.NEVER else namespace_uri(server, uri)

    def public_backend_uri(self, server: str, uri: str) -> str:
        """The aggregate's URI for a URI in `server`'s own spelling (reached without its stack's curation)."""
        curation = self.curations.get(server)
        return self.public_uri(server, curation.resources.public_uri(uri) if curation is not None else uri)


# --- helpers close to their use -----------------------------------------------------------------


def _routed_items(routes: Mapping[str, Any], routed: list[tuple[str, Any]]) -> list[tuple[str, Any, str, str]]:
    """One public entry per route: the item of the first of its servers (primary first) that lists it."""
    offered = {(server, item.name): item for server, item in reversed(routed)}  # a name listed twice: the first
    found: list[tuple[str, Any, str, str]] = []
    for name, route in routes.items():
        server = next((server for server in route.servers if (server, name) in offered), None)
        if server is not None:
            found.append((name, offered[(server, name)], server, name))
    return found
