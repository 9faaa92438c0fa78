"""Changing a running router's servers: mount, unmount and replace backends without a restart.

:meth:`McpRouter.apply` takes a :class:`MountChanges` and, in this order:

1. builds the new mounts and starts them (an in-process app's lifespan, a stdio command's bridge)
   before anything can route to them; a backend that fails to start leaves the router unchanged;
2. swaps them in, in one step with no `await` in between (the event loop runs one task at a time,
   so no request ever sees half of the change): path mounts, RFC 9728 metadata, and the aggregate's
   members, whose catalog forgets every changed server;
3. tells connected clients `notifications/{tools,prompts,resources}/list_changed` for the families a
   changed server offers or offered (legacy sessions on their stream, modern `subscriptions/listen`);
4. retires what was replaced, in the background: a retired mount's requests in flight finish on
   the old backend, which is closed (its lifespan left, its session or process ended) once they
   have, or when `drain_timeout` runs out.

Each backend's lifespan is held open by a task of its own (:class:`HeldContexts`), so one backend
can be closed while the others run on.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.protocol import PROTECTED_RESOURCE_PREFIX

from ._links import BackendLink
from ._stacks import list_gate, not_found, wrap
from .aggregate import AggregateServer, ListGate
from .backends import Backend
from .catalog_kinds import KINDS, Kind, Listing
from .curation import Curation
from .held_contexts import HeldContexts, single

if TYPE_CHECKING:
    from .mounts import McpRouter, Mount, MountMiddleware

__all__ = ["Applied", "HeldContexts", "InFlight", "MountChanges", "MountSpec", "single"]

logger = logging.getLogger("mcp_middleware.router")

_FAMILIES = ("tools", "prompts", "resources")
_LIST_PATIENCE = 5.0
"""Seconds the router waits for a new server's lists before telling clients (unknown = changed)."""


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One server to mount: what :meth:`McpRouter.mount` takes, as a value."""

    name: str
    backend: Backend | ASGIApp
    middleware: Sequence[MountMiddleware] = ()
    aggregate: bool = True
    path_mount: bool = True
    curation: Curation | None = None


@dataclass(frozen=True, slots=True)
class MountChanges:
    """Servers to mount (a name already mounted is replaced) and names to unmount.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.router import InProcessBackend
    >>> changes = MountChanges(mount=[MountSpec("new", InProcessBackend(MCPServer("new").streamable_http_app()))],
    ...                        unmount=["old"])
    >>> # applied = await router.apply(changes)   # while the router runs
    """

    mount: Sequence[MountSpec] = ()
    unmount: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Applied:
    """What one :meth:`McpRouter.apply` changed, and the list_changed families clients were told."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    replaced: tuple[str, ...]
    notified: frozenset[str]


class InFlight:
    """A mount's stack, counting its POSTs in flight (what a retired mount waits for before it closes).

    Long-lived GET streams and DELETEs are not counted: they end when the backend closes.
    """

    __slots__ = ("_idle", "app", "both_eras", "count", "governed")

    def __init__(self, app: ASGIApp, *, governed: bool = True, both_eras: bool = False) -> None:
        self.app = app
        self.governed = governed
        """Whether the stack has middleware of its own that every request must pass (the era bridge would not)."""
        self.both_eras = both_eras
        """Whether the stack serves both eras whatever its backend speaks (a stdio backend's own aggregate)."""
        self.count = 0
        self._idle: anyio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if not self.count and self._idle is not None:
                self._idle.set()

    async def idle(self) -> None:
        """Return once nothing is in flight."""
        while self.count:
            self._idle = anyio.Event()
            await self._idle.wait()


# --- apply --------------------------------------------------------------------------------------


async def apply_changes(router: McpRouter, changes: MountChanges, drain_timeout: float) -> Applied:
    """:meth:`McpRouter.apply`'s work (see the module docstring)."""
    held = router._held
    if held is None:
        raise RuntimeError("apply() while the router runs (before it starts, use mount())")
    unknown = sorted(set(changes.unmount) - set(router.mounts))
    if unknown:
        raise ValueError(f"not mounted: {', '.join(unknown)}")
    names = [spec.name for spec in changes.mount]
    if len(set(names)) != len(names) or set(names) & set(changes.unmount):
        raise ValueError("each server may be named once in a change")
    built = [router._build_mount(spec) for spec in changes.mount]
    started: list[Hashable] = []
    try:  # start the new backends before anything can route to them
        for mount in built:
            await held.enter(mount.backend, mount.backend.lifespan())
            started.append(mount.backend)
            if mount.bridge is not None:
                await held.enter(mount.bridge, mount.bridge.lifespan())
                started.append(mount.bridge)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            for key in reversed(started):
                await held.exit(key)
        raise single(exc) from None
    replaced = tuple(sorted(name for name in names if name in router.mounts))
    retired = [router.mounts[name] for name in (*changes.unmount, *replaced)]
    affected = {mount.name for mount in retired} | {mount.name for mount in built}
    aggregate = router._aggregate if router.aggregate_path is not None else None
    offered = _offered(aggregate, affected) if aggregate is not None else {}
    swap(router, built, retired)  # synchronous: no request sees half of the change
    notified: frozenset[str] = frozenset()
    if aggregate is not None:
        new = [mount.name for mount in built if mount.aggregate]
        notified = frozenset(family for family in _FAMILIES if offered.get(family, True))
        notified |= await _offering(aggregate, new)
        if notified:
            aggregate.notifier.changed(notified)
    if retired:
        held_group = router._held_group
        assert held_group is not None
        held_group.start_soon(_retire, router, retired, drain_timeout)
    added = tuple(sorted(name for name in names if name not in replaced))
    return Applied(added, tuple(sorted(changes.unmount)), replaced, notified)


def _offered(aggregate: AggregateServer, affected: set[str]) -> dict[str, bool]:
    """Per family: whether an affected server offered items of it (True when the catalog does not know)."""
    members = [name for name in affected if name in aggregate.backends]
    found: dict[str, bool] = {}
    for kind in KINDS:
        merged = aggregate.catalog.current(kind)
        unknown = merged is None or any(failure.server in members for failure in merged.failures)
        offers = unknown or (merged is not None and any(server in members for server in merged.servers))
        found[kind.change] = found.get(kind.change, False) or bool(members and offers)
    return found


async def _offering(aggregate: AggregateServer, servers: Sequence[str]) -> frozenset[str]:
    """The families the new `servers` offer (fetched now, which also warms the catalog for the first calls)."""
    if not servers:
        return frozenset()
    families: set[str] = set()

    async def fetch(kind: Kind, server: str) -> None:
        outcome = await aggregate.catalog._fetch(kind, server)
        if not isinstance(outcome, Listing) or outcome.items:
            families.add(kind.change)  # it offers some, or could not say: tell clients to look

    with anyio.move_on_after(_LIST_PATIENCE) as waited:
        async with anyio.create_task_group() as group:
            for kind in KINDS:
                for server in servers:
                    group.start_soon(fetch, kind, server)
    if waited.cancelled_caught:
        return frozenset(_FAMILIES)
    return frozenset(families)


async def _retire(router: McpRouter, retired: list[Mount], drain_timeout: float) -> None:
    """Let the retired mounts' requests finish (bounded), then close their backends."""
    with anyio.move_on_after(drain_timeout):
        for mount in retired:
            await mount.in_flight.idle()
            await bridge_idle(router, mount.name)
    for mount in retired:
        left = mount.in_flight.count
        if left:
            logger.warning(
                "server %r removed: %d request%s still in flight after %g s, closed",
                mount.name,
                left,
                "s" if left != 1 else "",
                drain_timeout,
            )
        await close_retired(router, mount)


# --- the aggregate's side ------------------------------------------------------------------------

Member = tuple[Backend, ASGIApp, str, ListGate | None]
"""A server joining the aggregate while it runs: its backend, its stack, the stack's path, its list filter."""


def replace_members(aggregate: AggregateServer, added: Mapping[str, Member], removed: Collection[str]) -> None:
    """Take `removed` servers out of a running aggregate and put `added` in: synchronous (no request sees half).

    The catalog forgets every changed server; legacy client sessions forget their sessions at them
    (a replaced server opens new ones on next use). The sessions to removed backends stay open for
    the requests in flight until :func:`retire_member`.
    """
    changed = {*removed, *added}
    catalog = aggregate.catalog
    for server in changed:
        aggregate.backends.pop(server, None)
        aggregate.gates.pop(server, None)
        aggregate._stacks.pop(server, None)
        aggregate._paths.pop(server, None)
        link = aggregate._links.pop(server, None)
        if link is not None:
            aggregate._retired_links.append(link)
        catalog.forget(server, frozenset(_FAMILIES))
        catalog._cooling.pop(server, None)
    for server, (backend, stack, path, gate) in added.items():
        aggregate.backends[server] = backend
        aggregate._stacks[server] = stack
        aggregate._paths[server] = path
        if gate is not None:
            aggregate.gates[server] = gate
        if aggregate._group is not None:
            aggregate._links[server] = _member_link(aggregate, server, backend, aggregate._group)
    catalog._merged.clear()  # names are resolved anew: a removed server's names answer "Unknown tool"
    if aggregate.relay is not None:
        for session in aggregate.relay.sessions:
            for server in changed:
                session.backends.pop(server, None)


def retire_member(aggregate: AggregateServer, backend: Backend) -> None:
    """Close the aggregate's sessions to a removed or replaced `backend` (its requests in flight ended)."""
    kept = []
    for link in aggregate._retired_links:
        if link.backend is backend:
            link.close()
        else:
            kept.append(link)
    aggregate._retired_links = kept
    legacy = aggregate.bridge._legacy_links
    for key in [key for key, link in legacy.items() if link.backend is backend]:
        legacy.pop(key).close()


def _member_link(aggregate: AggregateServer, server: str, backend: Backend, group: anyio.abc.TaskGroup) -> BackendLink:
    """The session to a member added while running: the bridge's (stdio), else one of the aggregate's own."""
    link = aggregate._shared_links.get(server)
    if link is None or link.backend is not backend:
        link = BackendLink(
            server,
            backend,
            group=group,
            on_change=aggregate._backend_changed,
            client_options=aggregate.bridge.relay_callbacks,
        )
        aggregate._shared_links[server] = link
    else:
        link.subscribe(aggregate._backend_changed)
    link.on_resource_updated(aggregate._resource_updated)
    return link


def swap(router: McpRouter, added: Sequence[Mount], retired: Sequence[Mount]) -> None:
    """Take `retired` out and put `added` in: synchronous, so no request sees half of it."""
    for mount in retired:
        del router.mounts[mount.name]
        router._prm.pop(f"{PROTECTED_RESOURCE_PREFIX}{router.prefix}/{mount.name}", None)
        if mount.bridge is not None:
            router._bridges.remove(mount.bridge)
    for mount in added:
        router.mounts[mount.name] = mount
        if mount.has_middleware and mount.path_mount:
            router._prm[f"{PROTECTED_RESOURCE_PREFIX}{router.prefix}/{mount.name}"] = wrap(not_found, mount.middleware)
        if mount.bridge is not None:
            router._bridges.append(mount.bridge)
    if router._aggregate is not None and router.aggregate_path is not None:
        members = {
            mount.name: (mount.backend, mount.app, f"{router.prefix}/{mount.name}", list_gate(mount.app))
            for mount in added
            if mount.aggregate
        }
        replace_members(router._aggregate, members, [mount.name for mount in retired])


async def bridge_idle(router: McpRouter, name: str) -> None:
    """Wait until the aggregate's SDK-bridged calls to server `name` ended (they are not counted per mount)."""
    if router._aggregate is None or router.aggregate_path is None:
        return
    calls = router._aggregate.bridge._inflight
    while True:  # the bridge keeps a list per server, no event: look again shortly
        if not calls.get(name):
            return
        await anyio.sleep(0.05)


async def close_retired(router: McpRouter, mount: Mount) -> None:
    """Close a retired mount: the aggregate's sessions to it, its bridge, then its backend's lifespan."""
    if router._aggregate is not None and router.aggregate_path is not None:
        retire_member(router._aggregate, mount.backend)
    held = router._held
    if held is None:
        return  # the router stopped meanwhile: everything is closed already
    if mount.bridge is not None:
        await held.exit(mount.bridge)
    await held.exit(mount.backend)
