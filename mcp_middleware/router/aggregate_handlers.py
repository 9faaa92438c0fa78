"""What the aggregate's own SDK server answers: lists, and the calls the relay does not route (the bridge).

:class:`~mcp_middleware.router.aggregate.AggregateServer` registers these methods as its low-level
server's handlers: the merged, paged lists (each backend's list gate deciding what the caller sees),
the calls to backends reached through the bridge's SDK sessions (stdio, or a 2025-only backend called
by a 2026-07-28 client), resource subscriptions and listen streams, and the notifications it relays.
"""

from __future__ import annotations

import warnings
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.types import ASGIApp

from mcp_middleware.core import Outcome

from .backends import Backend
from .bridge import ClientBridge, decide, session_id_of
from .bridged_targets import bridged_name, bridged_uri, watchable_uri
from .catalog_kinds import PROMPTS, RESOURCES, TEMPLATES, TOOLS, Kind
from .listing import ListGate, page_of
from .notifier import Notifier
from .routed_resources import RoutedCatalog
from .stack_changes import tell_lists_changed
from .watches import ResourceWatches

__all__ = ["AggregateHandlers"]

# Handshake-era features (logging, resources/subscribe) are relayed for handshake-era clients on purpose.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning, module=__name__)


class AggregateHandlers:
    """The aggregate's SDK handlers, over the parts :class:`AggregateServer` builds."""

    backends: dict[str, Backend]
    catalog: RoutedCatalog
    bridge: ClientBridge
    notifier: Notifier
    watches: ResourceWatches
    gates: dict[str, ListGate]
    page_size: int
    _listen_handler: ListenHandler
    _stacks: dict[str, ASGIApp]

    # --- lists ---------------------------------------------------------------------------------

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        page, cursor, meta = await self._page(ctx, TOOLS, params)
        return types.ListToolsResult(tools=page, next_cursor=cursor, _meta=meta)

    async def _list_prompts(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        page, cursor, meta = await self._page(ctx, PROMPTS, params)
        return types.ListPromptsResult(prompts=page, next_cursor=cursor, _meta=meta)

    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        page, cursor, meta = await self._page(ctx, RESOURCES, params)
        return types.ListResourcesResult(resources=page, next_cursor=cursor, _meta=meta)

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        page, cursor, meta = await self._page(ctx, TEMPLATES, params)
        return types.ListResourceTemplatesResult(resource_templates=page, next_cursor=cursor, _meta=meta)

    async def _page(
        self, ctx: ServerRequestContext[Any], kind: Kind, params: types.PaginatedRequestParams | None
    ) -> tuple[list[Any], str | None, dict[str, Any] | None]:
        self._remember(ctx)
        scope = getattr(ctx.request, "scope", None)
        scope = scope if isinstance(scope, dict) else None
        cursor = params.cursor if params is not None else None
        page = await page_of(self.catalog, kind, cursor, self.page_size, scope, self.gates)
        if page.failed:
            decide(ctx, Outcome.PARTIAL, method=f"{kind.name}/list", failed=page.failed)
        return page.items, page.next_cursor, page.meta

    # --- what the relay does not route: the bridge's SDK sessions ------------------------------

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        self._remember(ctx)
        server, name = await bridged_name(self.catalog, self.backends, TOOLS, params.name, "tool")
        return await self.bridge.call_tool(ctx, server, name, params)

    async def _get_prompt(
        self, ctx: ServerRequestContext[Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        self._remember(ctx)
        server, name = await bridged_name(self.catalog, self.backends, PROMPTS, params.name, "prompt")
        return await self.bridge.get_prompt(ctx, server, name, params)

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        self._remember(ctx)
        server, uri = await bridged_uri(self.catalog, params.uri)
        result = await self.bridge.read_resource(ctx, server, uri, params)
        if isinstance(result, types.ReadResourceResult):
            contents = [
                content.model_copy(update={"uri": self.catalog.public_backend_uri(server, content.uri)})
                for content in result.contents
            ]
            result = result.model_copy(update={"contents": contents})
        return result

    async def _complete(
        self, ctx: ServerRequestContext[Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        self._remember(ctx)
        ref = params.ref
        if isinstance(ref, types.PromptReference):
            server, name = await bridged_name(self.catalog, self.backends, PROMPTS, ref.name, "prompt")
            backend_ref: types.PromptReference | types.ResourceTemplateReference = ref.model_copy(update={"name": name})
            label = ref.name
        else:
            server, uri = await bridged_uri(self.catalog, ref.uri, template=True)
            backend_ref = ref.model_copy(update={"uri": uri})
            label = ref.uri
        return await self.bridge.complete(ctx, server, backend_ref, params, label)

    async def _subscribe(
        self, ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """Legacy `resources/subscribe`: subscribe at the backend once, remember who wants the updates."""
        self._remember(ctx)
        server, uri = await bridged_uri(self.catalog, params.uri)
        if not self.notifier.subscribed(server, uri):
            await self.bridge.subscribe(ctx, server, uri, params.uri)
        self.notifier.subscribe(server, uri, session_id_of(ctx))
        return types.EmptyResult()

    async def _unsubscribe(
        self, ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        server, uri = await bridged_uri(self.catalog, params.uri)
        if self.notifier.unsubscribe(server, uri, session_id_of(ctx)):
            await self.bridge.unsubscribe(ctx, server, uri, params.uri)
        return types.EmptyResult()

    async def _listen(
        self, ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """A modern listen stream; the resources it names are watched at the backends that own them."""
        uris = params.notifications.resource_subscriptions or []
        scope = getattr(ctx.request, "scope", None)
        held = await self.watches.acquire(uris, lambda uri: watchable_uri(self.catalog, self.gates, uri, scope))
        try:
            return await self._listen_handler(ctx, params)
        finally:
            self.watches.release(held)

    async def _set_log_level(
        self, ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        self.bridge.set_log_level(ctx, params.level)
        return types.EmptyResult()

    # --- notifications -------------------------------------------------------------------------

    def _remember(self, ctx: ServerRequestContext[Any]) -> None:
        session_id = session_id_of(ctx)
        if session_id is not None:
            self.notifier.remember(session_id, ctx.session)

    def _backend_changed(self, server: str, kinds: frozenset[str]) -> None:
        self.catalog.forget(server, kinds)
        stack = self._stacks.get(server)
        if stack is not None:  # what its stack learned of the lists (tool schemas) is stale too
            tell_lists_changed(stack, kinds)
        self.notifier.changed(kinds)

    def _resource_updated(self, server: str, uri: str) -> None:
        self.notifier.resource_updated(server, uri, self.catalog.public_backend_uri)
