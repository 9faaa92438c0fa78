"""The aggregated endpoint: one MCP endpoint for many backends, a router through their own stacks.

Three parts (see docs/router.md for one request's path):

* the **relay** (:mod:`.relay`): a request that names one thing of one backend
  (`tools/call`, `prompts/get`, `resources/read`, `completion/complete`) is
  renamed and sent into that backend's own stack, the same one its path mount
  uses, so every policy decides in the backend's names; the answer streams back;
* the **catalog** (:mod:`.catalog`): lists fan out to every backend, merge under
  public names, page with keyset cursors and report failures honestly; each
  backend's list filter decides what the caller sees of that backend;
* the **notifier** (:mod:`.notifier`): backends' list_changed and resource updates,
  relayed to legacy sessions and modern `subscriptions/listen` streams;
* **routes** (:mod:`.routes`, :mod:`.fallback`): a tool or prompt served by a primary backend and
  its fallbacks, listed once under its own name, each attempt through the relay.

What the aggregate answers itself (initialize, lists, ping, discover, logging level,
subscriptions) is served by an `mcp` SDK low-level server, and so are requests for
backends with no HTTP side (stdio) through the :mod:`.bridge`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import ListenHandler
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, Era, McpRequest, read_request
from mcp_middleware.core.kernel import EVERY_PATH

from ._links import BackendLink, BackendUnavailable
from .aggregate_handlers import AggregateHandlers
from .backends import Backend
from .bridge import ClientBridge
from .curation import Curation, Selection
from .fallback import RouteRunner
from .listing import ROUTER_META_KEY, ListAnswers, ListGate
from .names import NamingPolicy
from .notifier import Notifier
from .relay import Relay
from .routed_resources import RoutedCatalog
from .routes import Route, RouteTable
from .watches import ResourceWatches

__all__ = ["ROUTER_META_KEY", "AggregateServer", "ListGate"]

logger = logging.getLogger("mcp_middleware.router")

# The aggregate relays handshake-era features (logging, resources/subscribe) for handshake-era clients on
# purpose; the SDK's deprecation warnings for those calls say nothing its users can act on.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module=__name__)
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module="mcp_middleware.router.bridge")


class _RouterServer(Server[Any]):
    """The low-level server, declaring list_changed for legacy clients too (we relay them)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(True, True, True), experimental_capabilities, extensions
        )


class AggregateServer(AggregateHandlers):
    """An MCP endpoint that merges and routes to many backends.

    Usually built by :class:`~mcp_middleware.router.McpRouter`, which hands it every
    backend's stack (`stacks`): routed requests go there. Usable alone:

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.router import InProcessBackend
    >>> github, jira = MCPServer("github"), MCPServer("jira")
    >>> aggregate = AggregateServer({
    ...     "github": InProcessBackend(github.streamable_http_app()),
    ...     "jira": InProcessBackend(jira.streamable_http_app()),
    ... })
    >>> # serve `aggregate` (an ASGI app answering at /mcp) inside `async with aggregate.lifespan():`
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        naming: NamingPolicy | None = None,
        name: str = "mcp-router",
        version: str | None = None,
        page_size: int = 100,
        list_ttl: float = 30.0,
        failure_cooldown: float = 5.0,
        debounce: float = 0.2,
        transport_security: TransportSecuritySettings | None = None,
        max_listeners: int = 10_000,
        max_client_links: int = 1_000,
        path: str = "/mcp",
        shared_links: dict[str, BackendLink] | None = None,
        stacks: Mapping[str, ASGIApp] | None = None,
        stack_paths: Mapping[str, str] | None = None,
        gates: Mapping[str, ListGate] | None = None,
        own_middleware: Callable[[ASGIApp], ASGIApp] | None = None,
        routes: Sequence[Route] = (),
        curations: Mapping[str, Curation] | None = None,
        selections: Mapping[str, Selection] | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.backends = dict(backends)
        self.naming = naming or NamingPolicy()
        self.page_size = page_size
        self.path = path
        self.gates = dict(gates or {})
        self._links: dict[str, BackendLink] = {}
        self._shared_links = shared_links if shared_links is not None else {}
        self._group: anyio.abc.TaskGroup | None = None
        self.routes = RouteTable(routes, servers=self.backends)
        self.catalog = RoutedCatalog(  # a Catalog that lists resource-prefix routes once (routed_resources.py)
            self.backends,
            self._links,
            naming=self.naming,
            list_ttl=list_ttl,
            failure_cooldown=failure_cooldown,
            routes=self.routes,
            curations=curations,
            selections=selections,
        )
        self.notifier = Notifier(debounce=debounce, max_listeners=max_listeners)
        self._listen_handler = ListenHandler(self.notifier.bus)
        self.watches = ResourceWatches(self._links, self.notifier.bus)
        self.bridge = ClientBridge(
            self.backends,
            self._links,
            on_change=self._backend_changed,
            on_update=self._resource_updated,
            max_client_links=max_client_links,
            max_log_levels=max_listeners,
        )
        routable = {server: app for server, app in (stacks or {}).items() if server in self.backends}
        self._stacks, self._paths = routable, dict(stack_paths or {})  # the relay's; a reload changes them
        self._retired_links: list[BackendLink] = []
        """Sessions to removed or replaced backends, closed once their requests ended (see `registry.py`)."""
        self.relay = (
            Relay(self.catalog, routable, paths=self._paths, speaks_modern=self._speaks_modern) if routable else None
        )
        if self.relay is not None:
            self.notifier.listeners.append(self.relay.broadcast)
            self.relay.on_closed = self.notifier.forget_session
        self.route_runner = (
            RouteRunner(self.routes, self.relay, self.catalog) if self.relay is not None and self.routes else None
        )
        from mcp_middleware import __version__

        self.server = _RouterServer(
            name,
            version=version or __version__,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_subscriptions_listen=self._listen,
            on_completion=self._complete,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
        )
        # Legacy clients choose their log level per session (added this way: the SDK warns on the kwarg).
        self.server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_log_level)
        self._app = self.server.streamable_http_app(streamable_http_path=path, transport_security=transport_security)
        answers = ListAnswers(self._app, self.catalog, per_principal=bool(self.gates), answerable=self._answerable)
        self._own = own_middleware(answers) if own_middleware is not None else answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        root: str = scope.get("root_path", "")
        child = dict(scope)  # answer at whatever path the router serves us
        child["path"] = root + self.path
        child["raw_path"] = (root + self.path).encode("latin-1")
        relay = self.relay
        if relay is None:
            await self._own(child, receive, send)
            return
        request, receive = await read_request(child, receive, send, EVERY_PATH)
        if receive is ANSWERED:
            return
        if request is not None:
            route = self.routes.find(request.method, request.params) if self.route_runner is not None else None
            if route is not None and self.route_runner is not None:
                if await self.route_runner.serve(route, scope, receive, send, request):
                    return
            elif await relay.route(scope, receive, send, request):
                return
            if request.era is Era.LEGACY:
                send = relay.watch(child, request, send)
        await self._own(child, receive, send)

    def _answerable(self, request: McpRequest) -> bool:
        """Whether a list may be answered from a kept answer: modern, or of a legacy session the relay holds."""
        if request.era is Era.MODERN:
            return True
        return self.relay is not None and self.relay.sessions.get(request.session_id) is not None

    async def _speaks_modern(self, server: str) -> bool:
        """Whether `server` negotiated 2026-07-28 with the aggregate's shared session (connected on first use)."""
        try:
            client = await self._links[server].client(self.backends[server].timeout)
        except BackendUnavailable:
            return True  # the backend's own stack answers for it (502, 503) as at its mount
        return client.protocol_version in MODERN_PROTOCOL_VERSIONS

    @property
    def app(self) -> ASGIApp:
        return self._app

    def backend_states(self) -> dict[str, tuple[str, str]]:
        """What the aggregate knows of each backend, for readiness checks: `(state, detail)` with state
        `"connected"` (its session is up), `"failing"` (it failed and is cooling down) or `"idle"`
        (no session yet: opened on first use)."""
        states: dict[str, tuple[str, str]] = {}
        for server in self.backends:
            cooling = self.catalog.cooling(server)
            link = self._links.get(server)
            if cooling is not None:
                states[server] = ("failing", cooling)
            elif link is not None and link.connected:
                states[server] = ("connected", f"{link.restarts} restarts" if link.restarts else "")
            else:
                states[server] = ("idle", "")
        return states

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the server's session manager and the backend sessions (opened on first use)."""
        async with anyio.create_task_group() as group, self.server.session_manager.run():
            self._group = self.notifier.group = self.bridge.group = self.watches.group = group
            if self.relay is not None:
                self.relay.group = group
            owned: list[BackendLink] = []
            for server, backend in self.backends.items():
                link = self._shared_links.get(server)
                if link is None or link.backend is not backend:
                    link = BackendLink(
                        server,
                        backend,
                        group=group,
                        on_change=self._backend_changed,
                        client_options=self.bridge.relay_callbacks,
                    )
                    self._shared_links[server] = link
                    owned.append(link)
                else:  # one session (one process, for stdio) serves the bridge and the aggregate
                    link.subscribe(self._backend_changed)
                link.on_resource_updated(self._resource_updated)
                self._links[server] = link
            try:
                yield
            finally:
                for link in owned:
                    link.close()
                self.bridge.close()
                self._group = self.notifier.group = self.bridge.group = self.watches.group = None
                if self.relay is not None:
                    self.relay.group = None
                group.cancel_scope.cancel()
