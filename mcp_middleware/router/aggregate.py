"""The aggregated endpoint: one real MCP server in front of many backends.

It is built with the `mcp` SDK's low-level `Server`, so it serves both protocol
eras to clients whatever era each backend speaks. Lists are fetched from every
backend concurrently (each with its own timeout, following each backend's own
pages), merged under namespaced names (:mod:`.names`) in a deterministic order
(by public name), and paged with opaque keyset cursors: a cursor remembers the
last name handed out, so a client walking the pages sees every item that exists
throughout the walk exactly once, even when a backend changes in between. A
backend that fails does not fail the list: the rest is returned and the failure
is reported in the result's `_meta`, the log and the request's decisions.
Calls are routed back by the name table; progress is relayed while the call runs;
an `input_required` (MRTR) result passes through and its retry is routed back
like any call. A backend's list_changed becomes one debounced list_changed to the
connected clients (legacy sessions and modern `subscriptions/listen` streams).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import logging
import re
import time
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import anyio.abc
import mcp_types as types
import orjson
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ServerEvent, ToolsListChanged
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ErrorCode, JsonRpcCode, record_decision

from .backends import Backend
from .links import BackendLink, BackendUnavailable
from .names import NameTable, NamingPolicy, PrefixMode, namespace_uri, split_uri

__all__ = ["ROUTER_META_KEY", "AggregateServer"]

logger = logging.getLogger("mcp_middleware.router")

# The aggregate relays handshake-era features (logging, resources/subscribe) for handshake-era clients on
# purpose; the SDK's deprecation warnings for those calls say nothing its users can act on.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module=__name__)

ROUTER_META_KEY = "io.github.mcp-middleware/router"
"""The `_meta` key under which the aggregate reports failed backends and name collisions."""

_MAX_BACKEND_PAGES = 1000
_ENVELOPE_PREFIX = "io.modelcontextprotocol/"
_LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
_PER_HOP_META = frozenset({"progressToken"})
_CURSOR_VERSION = 1


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str  # "tools", "prompts", "resources", "resource_templates"
    key: str  # the attribute that identifies an item: name, uri, uri_template
    change: str  # the list_changed family it belongs to


_TOOLS = _Kind("tools", "name", "tools")
_PROMPTS = _Kind("prompts", "name", "prompts")
_RESOURCES = _Kind("resources", "uri", "resources")
_TEMPLATES = _Kind("resource_templates", "uri_template", "resources")
_KINDS = (_TOOLS, _PROMPTS, _RESOURCES, _TEMPLATES)


_generations = itertools.count(1)


@dataclass(slots=True)
class _Listing:
    items: list[Any]
    fetched_at: float
    generation: int = field(default_factory=lambda: next(_generations))


@dataclass(slots=True)
class _Merged:
    """A merged, namespaced, sorted list of one kind, and how to route back."""

    items: list[Any]  # public copies, sorted by public key
    keys: list[str]  # their public keys, same order
    table: NameTable | None  # tools/prompts
    uris: dict[str, tuple[str, str]]  # resources (NEVER mode): public uri -> (server, uri)
    failures: list[dict[str, Any]]
    collisions: list[dict[str, str | None]]


@dataclass
class _Fetch:
    """A backend list fetch in flight, and what came of it (a listing or a failure report)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: _Listing | dict[str, Any] | None = None


@dataclass
class _Gathered:
    listings: dict[str, _Listing] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)


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


class AggregateServer:
    """An MCP server that merges and routes to many backends.

    Usually built by :class:`~mcp_middleware.router.McpRouter`; usable alone:

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
        page_size: int = 100,
        list_ttl: float = 30.0,
        failure_cooldown: float = 5.0,
        debounce: float = 0.2,
        transport_security: TransportSecuritySettings | None = None,
        max_listeners: int = 10_000,
        max_client_links: int = 1_000,
        path: str = "/mcp",
        shared_links: dict[str, BackendLink] | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.backends = dict(backends)
        self.naming = naming or NamingPolicy()
        self.page_size = page_size
        self.list_ttl = list_ttl
        self.failure_cooldown = failure_cooldown
        self.debounce = debounce
        self.path = path
        self._links: dict[str, BackendLink] = {}
        self._legacy_links: OrderedDict[tuple[str, str], BackendLink] = OrderedDict()
        """(client session id, backend) → that client's own handshake-era session to the backend (LRU)."""
        self.max_client_links = max_client_links
        self._shared_links = shared_links if shared_links is not None else {}
        self._group: anyio.abc.TaskGroup | None = None
        self._listings: dict[str, dict[str, _Listing]] = {kind.name: {} for kind in _KINDS}
        self._merged: dict[str, tuple[tuple[int, ...], _Merged]] = {}
        self._cooling: dict[str, tuple[float, str]] = {}
        self._fetching: dict[tuple[str, str], _Fetch] = {}
        self._pending_changes: set[str] = set()
        self._flush_scheduled = False
        self._legacy_sessions: OrderedDict[str, ServerSession] = OrderedDict()
        self._max_listeners = max_listeners
        self._bus = InMemorySubscriptionBus()
        self._inflight: dict[str, list[ServerRequestContext[Any]]] = {}
        self._resource_subscribers: dict[tuple[str, str], set[str]] = {}  # (server, uri) -> legacy sessions
        self.server = _RouterServer(
            name,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_prompts=self._list_prompts,
            on_get_prompt=self._get_prompt,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_subscriptions_listen=ListenHandler(self._bus),
            on_completion=self._complete,
            on_subscribe_resource=self._subscribe,
            on_unsubscribe_resource=self._unsubscribe,
        )
        # Legacy clients choose their log level per session (logging/setLevel); the router remembers it and
        # asks backends for logs at that level on each call (added this way: the SDK warns on the kwarg).
        self._log_levels: OrderedDict[str, str] = OrderedDict()
        self.server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self._set_log_level)
        self._app = self.server.streamable_http_app(streamable_http_path=path, transport_security=transport_security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        root: str = scope.get("root_path", "")
        child = dict(scope)  # answer at whatever path the router serves us
        child["path"] = root + self.path
        child["raw_path"] = (root + self.path).encode("latin-1")
        await self._app(child, receive, send)

    @property
    def app(self) -> ASGIApp:
        return self._app

    def backend_states(self) -> dict[str, tuple[str, str]]:
        """What the aggregate knows of each backend, for readiness checks: `(state, detail)` with state
        `"connected"` (its session is up), `"failing"` (it failed and is cooling down) or `"idle"`
        (no session yet: opened on first use)."""
        now = time.monotonic()
        states: dict[str, tuple[str, str]] = {}
        for server in self.backends:
            cooling = self._cooling.get(server)
            link = self._links.get(server)
            if cooling is not None and cooling[0] > now:
                states[server] = ("failing", cooling[1])
            elif link is not None and link.connected:
                states[server] = ("connected", f"{link.restarts} restarts" if link.restarts else "")
            else:
                states[server] = ("idle", "")
        return states

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the server's session manager and the backend sessions (opened on first use)."""
        async with anyio.create_task_group() as group, self.server.session_manager.run():
            self._group = group
            owned: list[BackendLink] = []
            for server, backend in self.backends.items():
                link = self._shared_links.get(server)
                if link is None or link.backend is not backend:
                    link = BackendLink(
                        server,
                        backend,
                        group=group,
                        on_change=self._backend_changed,
                        client_options=self._relay_callbacks,
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
                for link in [*owned, *self._legacy_links.values()]:
                    link.close()
                self._legacy_links.clear()
                self._group = None
                group.cancel_scope.cancel()

    # --- lists ---------------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        page, cursor, meta = await self._page(ctx, _TOOLS, params)
        return types.ListToolsResult(tools=page, next_cursor=cursor, _meta=meta)

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        page, cursor, meta = await self._page(ctx, _PROMPTS, params)
        return types.ListPromptsResult(prompts=page, next_cursor=cursor, _meta=meta)

    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        page, cursor, meta = await self._page(ctx, _RESOURCES, params)
        return types.ListResourcesResult(resources=page, next_cursor=cursor, _meta=meta)

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        page, cursor, meta = await self._page(ctx, _TEMPLATES, params)
        return types.ListResourceTemplatesResult(resource_templates=page, next_cursor=cursor, _meta=meta)

    async def _page(
        self, ctx: ServerRequestContext[Any], kind: _Kind, params: types.PaginatedRequestParams | None
    ) -> tuple[list[Any], str | None, dict[str, Any] | None]:
        self._remember(ctx)
        after = _decode_cursor(params.cursor if params is not None else None, kind)
        merged = await self._merge(kind)
        start = _bisect_after(merged.keys, after) if after is not None else 0
        end = start + self.page_size
        page = merged.items[start:end]
        next_cursor = _encode_cursor(kind, merged.keys[end - 1]) if end < len(merged.items) else None
        report: dict[str, Any] = {}
        if merged.failures:
            report["partial"] = True
            report["failed"] = merged.failures
            _decide(ctx, "partial", method=f"{kind.name}/list", failed=",".join(f["server"] for f in merged.failures))
        if merged.collisions:
            report["collisions"] = merged.collisions
        return page, next_cursor, ({ROUTER_META_KEY: report} if report else None)

    async def _merge(self, kind: _Kind) -> _Merged:
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

    def _build(self, kind: _Kind, gathered: _Gathered) -> _Merged:
        entries: list[tuple[str, Any]] = []
        for server in self.backends:  # mount order decides collisions
            listing = gathered.listings.get(server)
            if listing is not None:
                entries.extend((server, item) for item in listing.items)
        table: NameTable | None = None
        uris: dict[str, tuple[str, str]] = {}
        collisions: list[dict[str, str | None]] = []
        public: list[tuple[str, Any]] = []
        if kind.key == "name":
            table = NameTable.build(self.naming, ((server, item.name) for server, item in entries))
            collisions = [collision.describe() for collision in table.collisions]
            taken: set[str] = set()
            for server, item in entries:
                name = table.public_name(server, item.name)
                if name is not None and name not in taken:  # a backend listing a name twice: first one
                    taken.add(name)
                    public.append((name, item.model_copy(update={"name": name})))
        else:
            keep = self.naming.prefix is PrefixMode.NEVER
            for server, item in entries:
                original: str = getattr(item, kind.key)
                uri = original if keep else namespace_uri(server, original)
                if uri in uris:
                    collisions.append({"name": uri, "kept": uris[uri][0], "renamed": server, "as": None})
                    continue
                uris[uri] = (server, original)
                public.append((uri, item.model_copy(update={kind.key: uri})))
        public.sort(key=lambda pair: pair[0])
        if collisions:
            logger.info("aggregate %s: name collisions %s", kind.name, collisions)
        return _Merged(
            items=[item for _, item in public],
            keys=[key for key, _ in public],
            table=table,
            uris=uris,
            failures=gathered.failures,
            collisions=collisions,
        )

    async def _gather(self, kind: _Kind) -> _Gathered:
        gathered = _Gathered()
        listings = self._listings[kind.name]
        now = time.monotonic()
        stale = [server for server in self.backends if not _fresh(listings.get(server), now, self.list_ttl)]
        for server in self.backends:
            if server not in stale:
                gathered.listings[server] = listings[server]
        if stale:
            async with anyio.create_task_group() as group:
                for server in stale:
                    group.start_soon(self._fetch_into, kind, server, gathered)
        return gathered

    async def _fetch_into(self, kind: _Kind, server: str, gathered: _Gathered) -> None:
        """One backend's list for this request; concurrent requests share one fetch (no herd of fan-outs)."""
        key = (kind.name, server)
        fetch = self._fetching.get(key)
        if fetch is None:
            fetch = self._fetching[key] = _Fetch()
            try:
                fetch.outcome = await self._fetch(kind, server)
            finally:
                del self._fetching[key]
                fetch.done.set()
        else:
            await fetch.done.wait()
        if isinstance(fetch.outcome, _Listing):
            gathered.listings[server] = fetch.outcome
        elif fetch.outcome is not None:
            gathered.failures.append(fetch.outcome)

    async def _fetch(self, kind: _Kind, server: str) -> _Listing | dict[str, Any]:
        cooling = self._cooling.get(server)
        if cooling is not None and cooling[0] > time.monotonic():
            return {"server": server, "error": "unavailable", "message": f"cooling down after: {cooling[1]}"}
        backend = self.backends[server]
        link = self._links[server]
        started = time.monotonic()
        try:
            with anyio.fail_after(backend.timeout):
                client = await link.client(backend.timeout)
                items = await _fetch_all(client, kind)
        except TimeoutError:
            return self._fail(server, "timeout", f"no answer within {backend.timeout:g} s")
        except BackendUnavailable as exc:
            return self._fail(server, "unavailable", exc.reason)
        except MCPError as exc:
            if exc.code != JsonRpcCode.METHOD_NOT_FOUND:
                if _connection_lost(exc):
                    link.mark_broken(exc.message)
                return self._fail(server, "error", f"{exc.code}: {exc.message}")
            items = []  # the backend does not offer this kind at all
        except Exception as exc:  # garbage from the backend, a dead connection: this backend only
            link.mark_broken(_short(exc))
            return self._fail(server, "error", _short(exc))
        listing = _Listing(items, started)
        self._listings[kind.name][server] = listing
        self._cooling.pop(server, None)
        return listing

    def _fail(self, server: str, error: str, message: str) -> dict[str, Any]:
        logger.warning("aggregate: backend %s failed (%s): %s", server, error, message)
        if self.failure_cooldown > 0 and error in ("timeout", "unavailable"):
            self._cooling[server] = (time.monotonic() + self.failure_cooldown, message)
        for listings in self._listings.values():  # nothing stale is offered for a failed backend
            listings.pop(server, None)
        return {"server": server, "error": error, "message": message}

    # --- calls ---------------------------------------------------------------------------------

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        self._remember(ctx)
        server, name = await self._resolve(_TOOLS, params.name, "tool")
        client = await self._client(server, ctx)

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        async with self._guard(ctx, server, "tools/call", params.name), self._in_flight(ctx, server):
            result: types.CallToolResult | types.InputRequiredResult = await client.session.call_tool(
                name,
                params.arguments,
                progress_callback=relay,
                input_responses=params.input_responses,
                request_state=params.request_state,
                meta=self._meta_for(ctx, params.meta),
                allow_input_required=True,
            )
        return result

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        self._remember(ctx)
        server, name = await self._resolve(_PROMPTS, params.name, "prompt")
        client = await self._client(server, ctx)
        async with self._guard(ctx, server, "prompts/get", params.name), self._in_flight(ctx, server):
            prompt: types.GetPromptResult | types.InputRequiredResult = await client.session.get_prompt(
                name,
                params.arguments,
                input_responses=params.input_responses,
                request_state=params.request_state,
                meta=self._meta_for(ctx, params.meta),
                allow_input_required=True,
            )
        return prompt

    async def _resolve_uri(self, public_uri: str, *, template: bool = False) -> tuple[str, str]:
        """`(server, backend uri)` of a resource (or, with `template`, of a resource template)."""
        if self.naming.prefix is not PrefixMode.NEVER:
            target = split_uri(public_uri, self.backends)
        else:  # URIs are the backends' own: a listed resource, else the first template that matches
            target = None if template else (await self._merge(_RESOURCES)).uris.get(public_uri)
            if target is None:
                templates = await self._merge(_TEMPLATES)
                if template:
                    target = templates.uris.get(public_uri)
                else:
                    target = next(
                        (
                            (server, public_uri)
                            for key, (server, _) in templates.uris.items()
                            if _matches(key, public_uri)
                        ),
                        None,
                    )
        if target is None:
            raise MCPError(JsonRpcCode.INVALID_PARAMS, f"Unknown resource: {public_uri}", data={"uri": public_uri})
        return target

    async def _complete(
        self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        self._remember(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            label = ref.name
            server, name = await self._resolve(_PROMPTS, ref.name, "prompt")
            backend_ref: types.PromptReference | types.ResourceTemplateReference = ref.model_copy(update={"name": name})
        else:
            label = ref.uri
            server, uri = await self._resolve_uri(ref.uri, template=True)
            backend_ref = ref.model_copy(update={"uri": uri})
        client = await self._client(server, ctx)
        context = params.context.arguments if params.context is not None else None
        argument = {"name": params.argument.name, "value": params.argument.value}
        async with self._guard(ctx, server, "completion/complete", label):
            result = await client.session.complete(backend_ref, argument, context)
        return result

    async def _subscribe(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """Legacy `resources/subscribe`: subscribe at the backend once, remember who wants the updates."""
        self._remember(ctx)
        server, uri = await self._resolve_uri(params.uri)
        client = await self._client(server, ctx)
        subscribers = self._resource_subscribers.setdefault((server, uri), set())
        if not subscribers:
            async with self._guard(ctx, server, "resources/subscribe", params.uri):
                await client.session.subscribe_resource(uri)
        session_id = _session_id(ctx)
        if session_id is not None and len(subscribers) < self._max_listeners:
            subscribers.add(session_id)
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        server, uri = await self._resolve_uri(params.uri)
        subscribers = self._resource_subscribers.get((server, uri), set())
        subscribers.discard(_session_id(ctx) or "")
        if not subscribers:
            self._resource_subscribers.pop((server, uri), None)
            client = await self._client(server, ctx)
            async with self._guard(ctx, server, "resources/unsubscribe", params.uri):
                await client.session.unsubscribe_resource(uri)
        return types.EmptyResult()

    def _resource_updated(self, server: str, uri: str) -> None:
        public = uri if self.naming.prefix is PrefixMode.NEVER else namespace_uri(server, uri)
        sessions = [self._legacy_sessions.get(s) for s in self._resource_subscribers.get((server, uri), ())]
        if self._group is None:
            return

        async def tell() -> None:
            for session in sessions:
                if session is not None:
                    with contextlib.suppress(Exception):  # that client is gone
                        await session.send_resource_updated(public)

        self._group.start_soon(tell)

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        self._remember(ctx)
        public_uri = params.uri
        server, uri = await self._resolve_uri(public_uri)
        client = await self._client(server, ctx)
        async with self._guard(ctx, server, "resources/read", public_uri), self._in_flight(ctx, server):
            result: types.ReadResourceResult | types.InputRequiredResult = await client.session.read_resource(
                uri,
                input_responses=params.input_responses,
                request_state=params.request_state,
                meta=self._meta_for(ctx, params.meta),
                allow_input_required=True,
            )
        if isinstance(result, types.ReadResourceResult) and self.naming.prefix is not PrefixMode.NEVER:
            contents = [
                content.model_copy(update={"uri": namespace_uri(server, content.uri)}) for content in result.contents
            ]
            result = result.model_copy(update={"contents": contents})
        return result

    async def _resolve(self, kind: _Kind, public_name: str, noun: str) -> tuple[str, str]:
        cached = self._merged.get(kind.name)
        target = cached[1].table.resolve(public_name) if cached is not None and cached[1].table else None
        if target is None:  # not seen yet or renamed since: look again before saying no
            merged = await self._merge(kind)
            target = merged.table.resolve(public_name) if merged.table is not None else None
        if target is None:
            raise MCPError(JsonRpcCode.INVALID_PARAMS, f"Unknown {noun}: {public_name}", data={"name": public_name})
        return target

    def _link_for(self, ctx: ServerRequestContext[Any] | None, server: str) -> BackendLink:
        """The session a call goes through. A handshake-era client gets a handshake-era session of its own to an
        HTTP or in-process backend, so the backend's server-to-client requests (sampling, elicitation, roots)
        arrive on a session that belongs to that client and are relayed to it, whatever other clients are
        doing; everything else shares the one (usually 2026-07-28) session. Client sessions are opened on
        their first call and kept for the `max_client_links` most recently used clients.
        (A stdio backend keeps one session, one process: its requests reach a client only while that
        client's call is the only one running.)"""
        backend = self.backends[server]
        if ctx is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return self._links[server]
        if backend.supervised:  # a second session to a command would be a second process, with its own state
            return self._links[server]
        session_id = _session_id(ctx) or ""
        key = (session_id, server)
        link = self._legacy_links.get(key)
        if link is not None:
            self._legacy_links.move_to_end(key)
            return link
        assert self._group is not None
        link = BackendLink(
            server,
            backend,
            group=self._group,
            on_change=self._backend_changed,
            client_options=lambda name: self._relay_callbacks(name, session_id or None),
            mode="legacy",
        )
        link.on_resource_updated(self._resource_updated)
        self._legacy_links[key] = link
        while len(self._legacy_links) > self.max_client_links:
            _, oldest = self._legacy_links.popitem(last=False)
            oldest.close()
        return link

    async def _client(self, server: str, ctx: ServerRequestContext[Any] | None = None) -> Client:
        backend = self.backends[server]
        try:
            return await self._link_for(ctx, server).client(backend.timeout)
        except BackendUnavailable as exc:
            raise MCPError(
                ErrorCode.UNAVAILABLE,
                f"Backend {server} is unavailable: {exc.reason}",
                data={"server": server, "retryAfterMs": int(exc.retry_in * 1000)},
            ) from exc

    @contextlib.asynccontextmanager
    async def _guard(
        self, ctx: ServerRequestContext[Any], server: str, method: str, target: str
    ) -> AsyncIterator[None]:
        """One backend call: its timeout, and its failures as clear errors for this call only."""
        backend = self.backends[server]
        try:
            with anyio.fail_after(backend.timeout):
                yield
        except TimeoutError as exc:
            _decide(ctx, "timeout", server=server, method=method)
            raise MCPError(
                ErrorCode.TIMEOUT, f"Backend {server} did not answer {method} in time", data={"server": server}
            ) from exc
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:  # the SDK's code for a transport failure, not the backend's
                if _connection_lost(exc):
                    self._link_for(ctx, server).mark_broken(exc.message)
                _decide(ctx, "backend_error", server=server, method=method)
                raise MCPError(
                    ErrorCode.BAD_GATEWAY,
                    f"Backend {server} failed during {method}: {exc.message}",
                    data={"server": server},
                ) from exc
            raise
        except Exception as exc:  # garbage or a dead connection: a clear error for this call, others unaffected
            logger.warning("backend %s failed on %s %s: %s", server, method, target, exc)
            self._link_for(ctx, server).mark_broken(_short(exc))
            _decide(ctx, "backend_error", server=server, method=method)
            raise MCPError(
                ErrorCode.BAD_GATEWAY,
                f"Backend {server} failed during {method}: {_short(exc)}",
                data={"server": server},
            ) from exc
        _decide(ctx, "routed", server=server, method=method)

    async def _set_log_level(
        self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        session_id = _session_id(ctx)
        if session_id is not None:
            self._log_levels[session_id] = params.level
            self._log_levels.move_to_end(session_id)
            while len(self._log_levels) > self._max_listeners:
                self._log_levels.popitem(last=False)
        return types.EmptyResult()

    def _meta_for(self, ctx: ServerRequestContext[Any], meta: Any) -> types.RequestParamsMeta | None:
        forwarded = _forwarded_meta(meta)
        session_id = _session_id(ctx)
        level = self._log_levels.get(session_id) if session_id is not None else None
        if level is not None and (forwarded is None or _LOG_LEVEL_KEY not in forwarded):
            forwarded = cast("types.RequestParamsMeta", {**(forwarded or {}), _LOG_LEVEL_KEY: level})
        return forwarded

    # --- legacy server-to-client requests ------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _in_flight(self, ctx: ServerRequestContext[Any], server: str) -> AsyncIterator[None]:
        """While a client's call runs on a backend, that backend's requests to its client go to this one."""
        calls = self._inflight.setdefault(server, [])
        calls.append(ctx)
        try:
            yield
        finally:
            calls.remove(ctx)

    def _relay_callbacks(self, server: str, client_session: str | None = None) -> dict[str, Any]:
        """The backend session's sampling/elicitation/roots callbacks: relay to the client whose call is running.

        A session opened for one client (`client_session`) relays to that client's running call. The
        shared session cannot know which client a server request belongs to (the SDK does not say), so
        it relays only when exactly one call of a client that can answer is running on that backend;
        otherwise the backend gets an error.
        """

        def candidates() -> list[ServerRequestContext[Any]]:
            calls = [c for c in self._inflight.get(server, ()) if c.session.can_send_request]
            if client_session is not None:
                return [c for c in calls if _session_id(c) == client_session][:1]
            return calls

        async def relay(request: Any, result_type: type[Any]) -> Any:
            calls = candidates()
            if len(calls) != 1:
                reason = "no client call is running" if not calls else "several client calls are running"
                return types.ErrorData(
                    code=JsonRpcCode.INVALID_REQUEST,
                    message=f"mcp-router cannot relay {request.method} from {server}: {reason}",
                )
            ctx = calls[0]
            try:
                return await ctx.session.send_request(
                    request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
                )
            except MCPError as exc:
                return exc.error
            except Exception as exc:  # the client cannot answer (no back channel, went away)
                return types.ErrorData(code=JsonRpcCode.INTERNAL_ERROR, message=_short(exc))

        async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
            return await relay(types.CreateMessageRequest(params=params), types.CreateMessageResult)

        async def elicitation(context: Any, params: Any) -> Any:
            return await relay(types.ElicitRequest(params=params), types.ElicitResult)

        async def roots(context: Any) -> Any:
            return await relay(types.ListRootsRequest(), types.ListRootsResult)

        async def log(params: types.LoggingMessageNotificationParams) -> None:
            calls = candidates() if client_session is not None else self._inflight.get(server, ())
            if len(calls) != 1:  # not attributable to one client: the router's own log keeps it
                logger.info("backend %s log [%s]: %s", server, params.level, params.data)
                return
            ctx = calls[0]
            with contextlib.suppress(Exception):
                await ctx.session.send_log_message(
                    params.level, params.data, params.logger, related_request_id=ctx.request_id
                )

        return {
            "sampling_callback": sampling,
            "elicitation_callback": elicitation,
            "list_roots_callback": roots,
            "logging_callback": log,
        }

    # --- list_changed relay --------------------------------------------------------------------

    def _remember(self, ctx: ServerRequestContext[Any]) -> None:
        """Legacy sessions get list_changed on their standalone stream: keep one handle per session."""
        session_id = _session_id(ctx)
        if session_id is None:
            return
        sessions = self._legacy_sessions
        sessions[session_id] = ctx.session
        sessions.move_to_end(session_id)
        while len(sessions) > self._max_listeners:
            sessions.popitem(last=False)

    def _backend_changed(self, server: str, kinds: frozenset[str]) -> None:
        for kind in _KINDS:
            if kind.change in kinds:
                self._listings[kind.name].pop(server, None)
        self._pending_changes |= kinds
        if not self._flush_scheduled and self._group is not None:
            self._flush_scheduled = True
            self._group.start_soon(self._flush_changes)

    async def _flush_changes(self) -> None:
        await anyio.sleep(self.debounce)  # many backends changing at once: one notification per kind
        kinds, self._pending_changes = self._pending_changes, set()
        self._flush_scheduled = False
        events: list[ServerEvent] = []
        if "tools" in kinds:
            events.append(ToolsListChanged())
        if "prompts" in kinds:
            events.append(PromptsListChanged())
        if "resources" in kinds:
            events.append(ResourcesListChanged())
        for event in events:
            await self._bus.publish(event)
        for session_id, session in list(self._legacy_sessions.items()):
            try:
                if "tools" in kinds:
                    await session.send_tool_list_changed()
                if "prompts" in kinds:
                    await session.send_prompt_list_changed()
                if "resources" in kinds:
                    await session.send_resource_list_changed()
            except Exception:  # the session is gone
                self._legacy_sessions.pop(session_id, None)


# --- helpers close to their use ----------------------------------------------------------------


async def _fetch_all(client: Any, kind: _Kind) -> list[Any]:
    """Every item of one kind from one backend, following its own pages (an empty string is a cursor)."""
    session = client.session
    fetch: Callable[..., Any] = {
        "tools": session.list_tools,
        "prompts": session.list_prompts,
        "resources": session.list_resources,
        "resource_templates": session.list_resource_templates,
    }[kind.name]
    items: list[Any] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(_MAX_BACKEND_PAGES):
        result = await fetch(params=types.PaginatedRequestParams(cursor=cursor))
        items.extend(getattr(result, kind.name))
        cursor = result.next_cursor
        if cursor is None or cursor in seen:  # a cursor that does not advance would loop forever
            break
        seen.add(cursor)
    return items


def _matches(template: str, uri: str) -> bool:
    """Whether `uri` is an expansion of an RFC 6570 `template` (simple and reserved expressions)."""
    pattern = _TEMPLATE_PATTERNS.get(template)
    if pattern is None:
        parts = re.split(r"(\{[^}]*\})", template)
        regex = "".join(
            (".+" if part.startswith("{+") else "[^/]*") if part.startswith("{") else re.escape(part) for part in parts
        )
        pattern = _TEMPLATE_PATTERNS[template] = re.compile(regex)
    return pattern.fullmatch(uri) is not None


_TEMPLATE_PATTERNS: dict[str, re.Pattern[str]] = {}


def _fresh(listing: _Listing | None, now: float, ttl: float) -> bool:
    return listing is not None and now - listing.fetched_at < ttl


def _encode_cursor(kind: _Kind, after: str) -> str:
    raw = orjson.dumps({"v": _CURSOR_VERSION, "k": kind.name, "a": after})
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str | None, kind: _Kind) -> str | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
        if decoded["v"] == _CURSOR_VERSION and decoded["k"] == kind.name and isinstance(decoded["a"], str):
            return str(decoded["a"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        pass
    raise MCPError(JsonRpcCode.INVALID_PARAMS, "Invalid cursor", data={"cursor": cursor[:200]})


def _bisect_after(keys: Sequence[str], after: str) -> int:
    low, high = 0, len(keys)
    while low < high:
        middle = (low + high) // 2
        if keys[middle] <= after:
            low = middle + 1
        else:
            high = middle
    return low


def _forwarded_meta(meta: Any) -> types.RequestParamsMeta | None:
    """The client's `_meta` minus what the SDK sets per hop (protocol envelope, progress token)."""
    if meta is None:
        return None
    raw = meta if isinstance(meta, dict) else meta.model_dump(by_alias=True, exclude_none=True)
    kept = {k: v for k, v in raw.items() if k not in _PER_HOP_META and not k.startswith(_ENVELOPE_PREFIX)}
    if _LOG_LEVEL_KEY in raw:  # the client's log opt-in travels on, so the backend's logs come back to it
        kept[_LOG_LEVEL_KEY] = raw[_LOG_LEVEL_KEY]
    return cast("types.RequestParamsMeta", kept) if kept else None


def _connection_lost(exc: MCPError) -> bool:
    """The whole session is gone (not just this request's stream, which the SDK reports with the same code)."""
    return exc.code == types.CONNECTION_CLOSED and exc.message == "Connection closed"


def _short(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _short(exc.exceptions[0])
    return (str(exc) or type(exc).__name__)[:200]


def _session_id(ctx: ServerRequestContext[Any]) -> str | None:
    """The legacy session a request belongs to (None in the stateless 2026-07-28 era)."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or ctx.request is None:
        return None
    headers = getattr(ctx.request, "headers", None)
    value = headers.get("mcp-session-id") if headers is not None else None
    return value if isinstance(value, str) else None


def _decide(ctx: ServerRequestContext[Any], outcome: str, **attributes: str | int) -> None:
    scope = getattr(ctx.request, "scope", None)
    if isinstance(scope, dict):
        record_decision(scope, "router", outcome, **attributes)
