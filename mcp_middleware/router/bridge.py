"""The SDK-client path to a backend: for backends with no HTTP side (stdio) and what the relay cannot route.

A stdio command speaks MCP over pipes, so its requests cross an `mcp` SDK session
(:class:`~mcp_middleware.router._links.BackendLink`). The aggregate's own server
answers them through this bridge: the call goes out on the backend session, its
progress comes back, and the backend's requests to its client (sampling,
elicitation, roots) and its log messages go to the client whose call is running.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

import anyio
import anyio.abc
import mcp_types as types
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from mcp_middleware.core import Component, ErrorCode, JsonRpcCode, Outcome, record_decision

from ._links import BackendLink, BackendUnavailable, ChangeHook, UpdateHook, short
from .backends import Backend

__all__ = ["ClientBridge", "down_alone", "session_id_of"]

logger = logging.getLogger("mcp_middleware.router")

_ENVELOPE_PREFIX = "io.modelcontextprotocol/"
_LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
_PER_HOP_META = frozenset({"progressToken"})


class ClientBridge:
    """Backend sessions (one shared per backend, one per legacy client where it matters) and calls over them."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        links: dict[str, BackendLink],
        *,
        on_change: ChangeHook,
        on_update: UpdateHook,
        max_client_links: int,
        max_log_levels: int,
    ) -> None:
        self.backends = backends
        self.links = links
        self.on_change = on_change
        self.on_update = on_update
        self.max_client_links = max_client_links
        self.max_log_levels = max_log_levels
        self.group: anyio.abc.TaskGroup | None = None
        self._legacy_links: OrderedDict[tuple[str, str], BackendLink] = OrderedDict()
        """(client session id, backend) → that client's own handshake-era session to the backend (LRU)."""
        self._inflight: dict[str, list[ServerRequestContext[Any]]] = {}
        self._log_levels: OrderedDict[str, str] = OrderedDict()

    def close(self) -> None:
        for link in self._legacy_links.values():
            link.close()
        self._legacy_links.clear()

    # --- calls ------------------------------------------------------------------------------

    async def call_tool(
        self, ctx: ServerRequestContext[Any], server: str, name: str, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        client = await self.client(server, ctx)

        async def relay(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        async with self.guard(ctx, server, "tools/call", params.name), self._in_flight(ctx, server):
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

    async def get_prompt(
        self, ctx: ServerRequestContext[Any], server: str, name: str, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        client = await self.client(server, ctx)
        async with self.guard(ctx, server, "prompts/get", params.name), self._in_flight(ctx, server):
            prompt: types.GetPromptResult | types.InputRequiredResult = await client.session.get_prompt(
                name,
                params.arguments,
                input_responses=params.input_responses,
                request_state=params.request_state,
                meta=self._meta_for(ctx, params.meta),
                allow_input_required=True,
            )
        return prompt

    async def read_resource(
        self, ctx: ServerRequestContext[Any], server: str, uri: str, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        client = await self.client(server, ctx)
        async with self.guard(ctx, server, "resources/read", params.uri), self._in_flight(ctx, server):
            result: types.ReadResourceResult | types.InputRequiredResult = await client.session.read_resource(
                uri,
                input_responses=params.input_responses,
                request_state=params.request_state,
                meta=self._meta_for(ctx, params.meta),
                allow_input_required=True,
            )
        return result

    async def complete(
        self,
        ctx: ServerRequestContext[Any],
        server: str,
        ref: types.PromptReference | types.ResourceTemplateReference,
        params: types.CompleteRequestParams,
        label: str,
    ) -> types.CompleteResult:
        client = await self.client(server, ctx)
        context = params.context.arguments if params.context is not None else None
        argument = {"name": params.argument.name, "value": params.argument.value}
        async with self.guard(ctx, server, "completion/complete", label):
            return await client.session.complete(ref, argument, context)

    async def subscribe(self, ctx: ServerRequestContext[Any], server: str, uri: str, label: str) -> None:
        client = await self.client(server, ctx)
        async with self.guard(ctx, server, "resources/subscribe", label):
            await client.session.subscribe_resource(uri)

    async def unsubscribe(self, ctx: ServerRequestContext[Any], server: str, uri: str, label: str) -> None:
        client = await self.client(server, ctx)
        async with self.guard(ctx, server, "resources/unsubscribe", label):
            await client.session.unsubscribe_resource(uri)

    def set_log_level(self, ctx: ServerRequestContext[Any], level: str) -> None:
        session_id = session_id_of(ctx)
        if session_id is not None:
            self._log_levels[session_id] = level
            self._log_levels.move_to_end(session_id)
            while len(self._log_levels) > self.max_log_levels:
                self._log_levels.popitem(last=False)

    # --- sessions ---------------------------------------------------------------------------

    def link_for(self, ctx: ServerRequestContext[Any] | None, server: str) -> BackendLink:
        """The session a call goes through. A handshake-era client gets a handshake-era session of its own to an
        HTTP or in-process backend, so the backend's server-to-client requests arrive on a session that belongs
        to that client; everything else shares the one (usually 2026-07-28) session. A stdio backend keeps one
        session, one process: its requests reach a client only while that client's call is the only one running."""
        backend = self.backends[server]
        if ctx is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or backend.supervised:
            return self.links[server]
        session_id = session_id_of(ctx) or ""
        key = (session_id, server)
        link = self._legacy_links.get(key)
        if link is not None:
            self._legacy_links.move_to_end(key)
            return link
        assert self.group is not None
        link = BackendLink(
            server,
            backend,
            group=self.group,
            on_change=self.on_change,
            client_options=lambda name: self.relay_callbacks(name, session_id or None),
            mode="legacy",
        )
        link.on_resource_updated(self.on_update)
        self._legacy_links[key] = link
        while len(self._legacy_links) > self.max_client_links:
            _, oldest = self._legacy_links.popitem(last=False)
            oldest.close()
        return link

    async def client(self, server: str, ctx: ServerRequestContext[Any] | None = None) -> Client:
        backend = self.backends[server]
        try:
            return await self.link_for(ctx, server).client(backend.timeout)
        except BackendUnavailable as exc:
            raise MCPError(
                ErrorCode.UNAVAILABLE,
                f"Backend {server} is unavailable: {exc.reason}",
                data={"server": server, "retryAfterMs": int(exc.retry_in * 1000)},
            ) from exc

    @contextlib.asynccontextmanager
    async def guard(self, ctx: ServerRequestContext[Any], server: str, method: str, target: str) -> AsyncIterator[None]:
        """One backend call: its timeout, and its failures as clear errors for this call only."""
        backend = self.backends[server]
        try:
            with anyio.fail_after(backend.timeout):
                yield
        except TimeoutError as exc:
            decide(ctx, Outcome.TIMEOUT, server=server, method=method)
            raise MCPError(
                ErrorCode.TIMEOUT, f"Backend {server} did not answer {method} in time", data={"server": server}
            ) from exc
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:  # the SDK's code for a transport failure, not the backend's
                if exc.message == "Connection closed":
                    self.link_for(ctx, server).mark_broken(exc.message)
                decide(ctx, Outcome.BACKEND_ERROR, server=server, method=method)
                raise MCPError(
                    ErrorCode.BAD_GATEWAY,
                    f"Backend {server} failed during {method}: {exc.message}",
                    data={"server": server},
                ) from exc
            raise
        except Exception as exc:  # garbage or a dead connection: a clear error for this call, others unaffected
            logger.warning("backend %s failed on %s %s: %s", server, method, target, exc)
            self.link_for(ctx, server).mark_broken(short(exc))
            decide(ctx, Outcome.BACKEND_ERROR, server=server, method=method)
            raise MCPError(
                ErrorCode.BAD_GATEWAY,
                f"Backend {server} failed during {method}: {short(exc)}",
                data={"server": server},
            ) from exc
        decide(ctx, Outcome.ROUTED, server=server, method=method)

    def _meta_for(self, ctx: ServerRequestContext[Any], meta: Any) -> types.RequestParamsMeta | None:
        forwarded = _forwarded_meta(meta)
        session_id = session_id_of(ctx)
        level = self._log_levels.get(session_id) if session_id is not None else None
        if level is not None and (forwarded is None or _LOG_LEVEL_KEY not in forwarded):
            forwarded = cast("types.RequestParamsMeta", {**(forwarded or {}), _LOG_LEVEL_KEY: level})
        return forwarded

    # --- server-to-client requests ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _in_flight(self, ctx: ServerRequestContext[Any], server: str) -> AsyncIterator[None]:
        """While a client's call runs on a backend, that backend's requests to its client go to this one."""
        calls = self._inflight.setdefault(server, [])
        calls.append(ctx)
        try:
            yield
        finally:
            calls.remove(ctx)

    def relay_callbacks(self, server: str, client_session: str | None = None) -> dict[str, Any]:
        """The backend session's sampling/elicitation/roots callbacks: relay to the client whose call is running.

        A session opened for one client (`client_session`) relays to that client's running call. The shared
        session cannot know which client a server request belongs to (the SDK does not say), so it relays only
        when exactly one call of a client that can answer is running on that backend; otherwise the backend
        gets an error.
        """

        def candidates() -> list[ServerRequestContext[Any]]:
            calls = [c for c in self._inflight.get(server, ()) if c.session.can_send_request]
            if client_session is not None:
                return [c for c in calls if session_id_of(c) == client_session][:1]
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
                return types.ErrorData(code=JsonRpcCode.INTERNAL_ERROR, message=short(exc))

        async def sampling(context: Any, params: types.CreateMessageRequestParams) -> Any:
            return await relay(types.CreateMessageRequest(params=params), types.CreateMessageResult)

        async def elicitation(context: Any, params: Any) -> Any:
            return await relay(types.ElicitRequest(params=params), types.ElicitResult)

        async def roots(context: Any) -> Any:
            return await relay(types.ListRootsRequest(), types.ListRootsResult)

        async def log(params: types.LoggingMessageNotificationParams) -> None:
            calls = candidates() if client_session is not None else self._inflight.get(server, ())
            if len(calls) != 1:  # not attributable to one client: the router's own log keeps it
                logger.info("backend %s log [%s]: %s", server, params.level, str(params.data)[:500])
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


def _forwarded_meta(meta: Any) -> types.RequestParamsMeta | None:
    """The client's `_meta` minus what the SDK sets per hop (protocol envelope, progress token)."""
    if meta is None:
        return None
    raw = meta if isinstance(meta, dict) else meta.model_dump(by_alias=True, exclude_none=True)
    kept = {k: v for k, v in raw.items() if k not in _PER_HOP_META and not k.startswith(_ENVELOPE_PREFIX)}
    if _LOG_LEVEL_KEY in raw:  # the client's log opt-in travels on, so the backend's logs come back to it
        kept[_LOG_LEVEL_KEY] = raw[_LOG_LEVEL_KEY]
    return cast("types.RequestParamsMeta", kept) if kept else None


def session_id_of(ctx: ServerRequestContext[Any]) -> str | None:
    """The legacy session a request belongs to (None in the stateless 2026-07-28 era)."""
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or ctx.request is None:
        return None
    headers = getattr(ctx.request, "headers", None)
    value = headers.get("mcp-session-id") if headers is not None else None
    return value if isinstance(value, str) else None


def decide(ctx: ServerRequestContext[Any], outcome: Outcome, **attributes: str | int) -> None:
    scope = getattr(ctx.request, "scope", None)
    if isinstance(scope, dict):
        record_decision(scope, Component.ROUTER, outcome, **attributes)


def down_alone(backends: Mapping[str, Backend], merged: Any) -> str | None:
    """The backend of a one-backend aggregate (a stdio mount's bridge) whose list could not be fetched, else None.

    A name such an aggregate cannot resolve may well be its backend's: it is answered `-32015` naming the
    server (nothing ran), not `Unknown tool`, so a route over it moves on (:mod:`.held`) as it would from a URL.
    """
    failures = getattr(merged, "failures", None)
    if len(backends) != 1 or not failures:
        return None
    return str(failures[0].server)
