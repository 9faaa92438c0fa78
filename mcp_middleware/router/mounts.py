"""`McpRouter`: many MCP servers under one path.

Two ways in, side by side:

* **path mounts** `{prefix}/{name}` (default `/mcp/{name}`): the request goes to one
  backend, through that mount's own middleware stack. The mount is found with one
  dict lookup, so the cost does not grow with the number of mounts. In-process apps
  are called directly; remote URLs go through a streaming reverse proxy; stdio
  commands through a one-backend aggregate.
* **the aggregated endpoint** (default `/mcp`): one MCP server offering the tools,
  prompts and resources of all backends under namespaced names
  (:class:`~mcp_middleware.router.AggregateServer`).

The router runs the lifespans of in-process backends, the aggregate's sessions
and connection pools: as an ASGI app it answers the `lifespan` scope itself; inside
a FastAPI/Starlette host, run `router.lifespan()` from the host's lifespan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, read_request
from mcp_middleware.core.kernel import EVERY_PATH, relative_path
from mcp_middleware.core.lifespan import serve_lifespan
from mcp_middleware.core.protocol import PROTECTED_RESOURCE_PREFIX
from mcp_middleware.core.request import REQUEST_SCOPE_KEY

from ._links import BackendLink, BackendUnavailable
from ._stacks import MountMiddleware
from ._stacks import list_gate as _list_gate
from ._stacks import not_found as _not_found
from ._stacks import wrap as _wrap
from .aggregate import AggregateServer
from .backends import Backend, HttpBackend, InProcessBackend
from .curation import Curation
from .curation_layer import CurationMiddleware
from .names import NamingPolicy, PrefixMode, validate_server_name
from .pool import PoolBackend
from .registry import (
    Applied,
    HeldContexts,
    InFlight,
    MountChanges,
    MountSpec,
    apply_changes,
    single,
)
from .routes import Route
from .virtual import VirtualServer
from .virtual_mounts import VirtualMounts

__all__ = ["McpRouter", "Mount", "MountMiddleware"]

logger = logging.getLogger("mcp_middleware.router")
_REMEMBERED_PATHS = 4096


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class Mount:
    """One mounted backend: its name, the backend, and the app its requests go to (middleware included)."""

    name: str
    backend: Backend
    app: ASGIApp
    aggregate: bool
    has_middleware: bool
    path_mount: bool = True
    bridge: AggregateServer | None = None
    """A stdio backend's one-backend aggregate (its HTTP side), run and closed with it."""
    middleware: Sequence[MountMiddleware] = ()
    curation: Curation | None = None
    """What clients see of this backend (applied at its path mount and in every aggregate)."""

    @property
    def in_flight(self) -> InFlight:
        """The mount's stack, counting its requests in flight (a retired mount closes once they ended)."""
        assert isinstance(self.app, InFlight)
        return self.app


class McpRouter(VirtualMounts):
    """Mount MCP servers at `{prefix}/{name}` and aggregate them at `aggregate_path`.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.router import HttpBackend, InProcessBackend
    >>> router = McpRouter()
    >>> router.mount("github", InProcessBackend(MCPServer("github").streamable_http_app()))
    >>> router.mount("search", HttpBackend("http://127.0.0.1:9000/mcp", headers={"X-Api-Key": "k"}))
    >>> sorted(router.mounts)
    ['github', 'search']
    >>> # uvicorn.run(router)  ->  /mcp/github, /mcp/search, and both at /mcp
    """

    def __init__(
        self,
        *,
        prefix: str = "/mcp",
        aggregate_path: str | None = "/mcp",
        naming: NamingPolicy | None = None,
        name: str = "mcp-router",
        page_size: int = 100,
        list_ttl: float = 30.0,
        failure_cooldown: float = 5.0,
        debounce: float = 0.2,
        transport_security: TransportSecuritySettings | None = None,
        aggregate_middleware: Sequence[MountMiddleware] = (),
        aggregate_own_middleware: Sequence[MountMiddleware] = (),
        routes: Sequence[Route] = (),
    ) -> None:
        if not prefix.startswith("/") or (prefix.endswith("/") and prefix != "/"):
            raise ValueError("prefix must start with '/' and not end with '/'")
        if aggregate_path is not None and not aggregate_path.startswith("/"):
            raise ValueError("aggregate_path must start with '/'")
        self.prefix = "" if prefix == "/" else prefix
        self.aggregate_path = aggregate_path.rstrip("/") or "/" if aggregate_path is not None else None
        self.naming = naming or NamingPolicy()
        self.mounts: dict[str, Mount] = {}
        self.routes = tuple(routes)
        """Primary and fallback routes of the aggregate (:class:`~mcp_middleware.router.Route`)."""
        self._prm: dict[str, ASGIApp] = {}
        self._aggregate_options: dict[str, Any] = {
            "name": name,
            "page_size": page_size,
            "list_ttl": list_ttl,
            "failure_cooldown": failure_cooldown,
            "debounce": debounce,
            "transport_security": transport_security,
        }
        self._aggregate: AggregateServer | None = None
        self._aggregate_entry: ASGIApp | None = None
        self._aggregate_door = tuple(aggregate_middleware)
        self._aggregate_own = tuple(aggregate_own_middleware)
        if self._aggregate_door and self.aggregate_path is not None:
            self._prm[f"{PROTECTED_RESOURCE_PREFIX}{self.aggregate_path}"] = _wrap(_not_found, self._aggregate_door)
        self._bridges: list[AggregateServer] = []
        self._links: dict[str, BackendLink] = {}  # server -> the one BackendLink the bridges and the aggregate share
        self._running = False
        self._held: HeldContexts | None = None
        self._held_group: anyio.abc.TaskGroup | None = None
        self._applying: anyio.Lock | None = None
        self._virtual: dict[str, VirtualServer] = {}  # path -> what virtual_server() was told
        self._virtual_apps: dict[str, tuple[AggregateServer, ASGIApp, bool]] = {}  # path -> (server, entry, door)
        self._mounted: dict[str, Mount] = {}
        """Paths resolved to a path mount (`mcp_direct`: used while that mount is the one mounted under its name)."""

    def mount(
        self,
        name: str,
        backend: Backend | ASGIApp,
        *,
        middleware: Sequence[MountMiddleware] = (),
        aggregate: bool = True,
        path_mount: bool = True,
        curation: Curation | None = None,
    ) -> None:
        """Mount `backend` at `{prefix}/{name}` (unless `path_mount=False`: aggregate only) and in the
        aggregate (unless `aggregate=False`).

        `middleware` wraps this mount only, outermost first (as in Starlette). A bare ASGI
        app is taken as an :class:`InProcessBackend` serving MCP at `/mcp`. `curation` decides which
        of its tools, prompts and resources exist and under which names, at its mount and in every
        aggregate (see docs/governance.md).
        """
        if not (path_mount or aggregate):
            raise ValueError(f"{name!r} would be reachable nowhere: path_mount or aggregate must be true")
        if self._running:
            raise RuntimeError("mount() before the router starts (while it runs: apply())")
        validate_server_name(name)
        if name in self.mounts or any(v.name == name for v in self._virtual.values()):
            raise ValueError(f"a server named {name!r} is already mounted")
        mount = self._build_mount(MountSpec(name, backend, middleware, aggregate, path_mount, curation))
        if mount.bridge is not None:
            self._bridges.append(mount.bridge)
        self.mounts[name] = mount
        if mount.has_middleware and path_mount:
            # only a middleware (auth) can answer metadata; the backend never sees these requests
            self._prm[f"{PROTECTED_RESOURCE_PREFIX}{self.prefix}/{name}"] = _wrap(_not_found, middleware)
        self._aggregate = self._aggregate_entry = None  # rebuilt with the new member on first use

    def _build_mount(self, spec: MountSpec) -> Mount:
        """A mount for `spec`, registered nowhere yet (what `mount` and `apply` share)."""
        name, backend, middleware = spec.name, spec.backend, spec.middleware
        if not (spec.path_mount or spec.aggregate):
            raise ValueError(f"{name!r} would be reachable nowhere: path_mount or aggregate must be true")
        validate_server_name(name)
        if not isinstance(backend, Backend):
            backend = InProcessBackend(backend)
        if isinstance(backend, HttpBackend | PoolBackend) and backend.name is None:
            backend.name = name  # its log lines name the server the operator configured, not its URL
        target = backend.path_app()  # the backend's stack ends here; path mount or not, the aggregate routes to it
        bridge: AggregateServer | None = None
        if target is None:  # stdio: no HTTP side of its own; a one-backend aggregate speaks for it
            bridge = AggregateServer(
                {name: backend},
                naming=NamingPolicy(prefix=PrefixMode.NEVER),
                shared_links=self._links,
                **{**self._aggregate_options, "name": name},
            )
            target = bridge
        app = _wrap(target, middleware)
        curation = spec.curation
        if curation is not None and curation.active:  # outermost: the stack's policies see the backend's names
            app = CurationMiddleware(app, curation=curation)
        else:
            curation = None
        has_middleware = bool(middleware) or curation is not None
        return Mount(
            name,
            backend,
            InFlight(app, governed=bool(middleware), both_eras=bridge is not None),  # curation: applied on the bridge
            spec.aggregate,
            has_middleware,
            spec.path_mount,
            bridge,
            tuple(middleware),
            curation,
        )

    @property
    def aggregate(self) -> AggregateServer:
        """The aggregated endpoint's server (over every mount with `aggregate=True`)."""
        if self._aggregate is None:
            members = {name: mount for name, mount in self.mounts.items() if mount.aggregate}
            own = self._aggregate_own
            self._aggregate = AggregateServer(
                {name: mount.backend for name, mount in members.items()},
                naming=self.naming,
                shared_links=self._links,
                stacks={name: mount.app for name, mount in members.items()},
                stack_paths={name: f"{self.prefix}/{name}" for name in members},
                gates={name: gate for name, mount in members.items() if (gate := _list_gate(mount.app)) is not None},
                own_middleware=(lambda app: _wrap(app, own)) if own else None,
                routes=self.routes,
                curations={name: mount.curation for name, mount in members.items() if mount.curation is not None},
                **self._aggregate_options,
            )
        return self._aggregate

    @property
    def _aggregate_app(self) -> ASGIApp:
        """The aggregated endpoint as clients reach it: its door (authentication) around the aggregate."""
        if self._aggregate_entry is None:
            self._aggregate_entry = _wrap(self.aggregate, self._aggregate_door)
        return self._aggregate_entry

    async def session_failure(self, name: str, patience: float | None = None) -> str | None:
        """Why the router's session to the supervised backend `name` (a stdio command) is down, or None.

        Opens the session when none is open yet, waiting up to `patience` seconds (default: the
        backend's timeout; 0 starts it without waiting). Backends reached per request (in-process,
        URL) have no such session: None. Only while the router runs.
        """
        link = self._links.get(name)
        if link is None or not link.backend.supervised:
            return None
        try:
            await link.client(patience)
        except BackendUnavailable as exc:
            return exc.reason
        return None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Start in-process backends, the aggregate and the bridges; stop them on exit.

        Use it from a host app's lifespan when the router is mounted inside FastAPI/Starlette
        (a mounted app's own lifespan never runs there):

        >>> # @contextlib.asynccontextmanager
        >>> # async def lifespan(app):
        >>> #     async with router.lifespan():
        >>> #         yield
        """
        try:
            async with anyio.create_task_group() as group:
                # Each lifespan is held by a task of its own: `apply` may close one while the others run.
                held = self._held = HeldContexts(group)
                self._held_group = group
                try:
                    for mount in self.mounts.values():
                        await held.enter(mount.backend, mount.backend.lifespan())
                    for bridge in self._bridges:
                        await held.enter(bridge, bridge.lifespan())
                    for virtual in self.virtual_servers().values():
                        await held.enter(virtual, virtual.lifespan())
                    if self.aggregate_path is not None:
                        await held.enter(self.aggregate, self.aggregate.lifespan())
                    self._running = True
                    try:
                        yield
                    finally:
                        self._running = False
                finally:
                    self._held = self._held_group = None
                    await held.close()
                    group.cancel_scope.cancel()  # retirements still draining: their backends are closed already
        except BaseExceptionGroup as exc:  # one failure (a backend that cannot start): raised as itself
            raise single(exc) from None

    async def apply(self, changes: MountChanges, *, drain_timeout: float = 30.0) -> Applied:
        """Mount, unmount and replace servers while the router runs (see :mod:`.registry`).

        New backends start first (a failure raises and changes nothing); then every change takes
        effect at once; clients are told which lists changed; a removed or replaced backend is
        closed once its requests in flight finished, or after `drain_timeout` seconds.

        >>> # applied = await router.apply(MountChanges(mount=[MountSpec("new", backend)], unmount=["old"]))
        """
        if self._applying is None:
            self._applying = anyio.Lock()
        async with self._applying:  # one change at a time: each is computed against the set the last one left
            return await apply_changes(self, changes, drain_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.mcp_direct(scope, receive, send)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What awaiting the router does, as the awaitable of whatever serves the request.

        A layer in front (the gateway's) may call this instead of the router: a request that goes
        to a mount then leaves no frame of the router in the await chain, which every layer pays
        each time the backend wakes up.
        """
        kind = scope["type"]
        if kind == "http" and not self._virtual_apps and not scope.get("root_path"):
            # A path this router already resolved to a mount, still mounted as it was: straight in.
            mount = self._mounted.get(scope["path"])
            if mount is not None and self.mounts.get(mount.name) is mount:
                if mount.has_middleware and REQUEST_SCOPE_KEY not in scope:
                    return self._dispatch(mount, scope, receive, send)
                return mount.app(scope, receive, send)
        if kind == "lifespan":
            return serve_lifespan(self.lifespan(), receive, send, name="router")
        path = relative_path(scope)
        if kind != "http":
            if kind == "websocket":
                return send({"type": "websocket.close", "code": 1000})
            return _nothing()
        if path.endswith("/") and len(path) > 1:
            path = path[:-1]
        if path == self.aggregate_path:
            if self._aggregate_door:
                return self._serve_aggregate(scope, receive, send)
            return self._aggregate_app(scope, receive, send)
        if self._virtual_apps:
            found = self._virtual_apps.get(path)
            if found is not None:
                return self._serve_virtual(found, scope, receive, send)
        prefix = self.prefix
        if path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] == "/":
            mount = self.mounts.get(path[len(prefix) + 1 :])
            if mount is not None and mount.path_mount:
                if not scope.get("root_path"):  # kept: `{prefix}/{name}` with or without a slash, of a name mounted
                    if len(self._mounted) >= _REMEMBERED_PATHS:
                        self._mounted.clear()
                    self._mounted[scope["path"]] = mount
                if mount.has_middleware and REQUEST_SCOPE_KEY not in scope:
                    return self._dispatch(mount, scope, receive, send)
                # Read already (an outer layer parsed it; its receive replays the body): straight in.
                return mount.app(scope, receive, send)
        elif path.startswith(PROTECTED_RESOURCE_PREFIX):
            metadata = self._prm.get(path)
            if metadata is not None:  # RFC 9728 metadata of a protected mount: its own middleware answers
                return metadata(scope, receive, send)
        return _not_found(scope, receive, send)

    async def _serve_aggregate(self, scope: Scope, receive: Receive, send: Send) -> None:
        _, receive = await read_request(scope, receive, send, EVERY_PATH)
        if receive is ANSWERED:
            return
        await self._aggregate_app(scope, receive, send)

    async def _dispatch(self, mount: Mount, scope: Scope, receive: Receive, send: Send) -> None:
        if mount.has_middleware:
            # Parse once here, whatever paths the mount's middlewares were configured for:
            # they all find the request view in the scope and none lets the request through unread.
            _, receive = await read_request(scope, receive, send, EVERY_PATH)
            if receive is ANSWERED:
                return
        await mount.app(scope, receive, send)
