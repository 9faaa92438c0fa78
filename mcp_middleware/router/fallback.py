"""Serving a route: the primary's stack first, each fallback's in turn, moving on only when it is safe.

Each attempt goes into one backend's own stack through the relay (authorization, rate limit,
cache, breaker: the same instance its path mount uses), so a fallback never bypasses a
backend's policy: a caller the fallback's stack refuses is refused there. The answer is held
only until it shows whether the backend served the call (:mod:`.held`). The route moves on:

* when the backend's breaker is open (`-32015`) or it could not be reached (`mayHaveRun: false`):
  nothing ran there, so moving on is always safe;
* when it timed out (`-32016`) or failed after the call was sent (`-32017`): only when
  :func:`~mcp_middleware.router.safety.retry_safe` says running it again cannot hurt (a read,
  a prompt, a tool its backend marks `readOnlyHint`/`idempotentHint`, or `Route.allow_retry`).

Otherwise the caller gets a JSON-RPC error with its id, the failure's code and
`data = failure_data(...)` (`backend`, `mayHaveRun`) plus the `route` and the backends `tried`.
Each switch is a decision (`router`/`fallback`) and a WARNING; so is the way back to the primary.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.types import Receive, Scope, Send

from mcp_middleware.core import Component, McpRequest, Outcome, error_body, record_decision, send_error
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE

from .catalog import Catalog
from .held import OUTAGE_CODES, Failure, HeldAnswer, OpenStream, sse_event
from .relay import Relay
from .routes import Route, RouteTable
from .safety import failure_data, retry_safe
from .targets import Refused

__all__ = ["RouteRunner"]

logger = logging.getLogger("mcp_middleware.router")


class RouteRunner:
    """Serves the calls that name a route, through the relay, one backend after another."""

    def __init__(self, table: RouteTable, relay: Relay, catalog: Catalog, *, max_bytes: int = DEFAULT_MAX_BODY_SIZE):
        self.table = table
        self.relay = relay
        self.catalog = catalog
        self.max_bytes = max_bytes
        self.serving: dict[tuple[str, str], str] = {}
        """(kind, route name) → the backend that served its last call (how switches and recoveries are seen)."""

    async def serve(self, route: Route, scope: Scope, receive: Receive, send: Send, request: McpRequest) -> bool:
        """Answer `request` through `route`; False leaves it to the aggregate's own server (the SDK bridge)."""
        tried: list[dict[str, str]] = []
        may_have_run = False
        stream = OpenStream(send)
        key = (route.kind, route.name)
        for index, server in enumerate(route.servers):
            meta: dict[str, Any] = {"route": route.name, "server": server, "fallback": index > 0}
            if tried:
                meta["tried"] = list(tried)
            report: dict[str, str | bool | int] = {"route": route.name, "attempt": index + 1, "fallback": index > 0}
            if index == 0 and self.serving.get(key, server) != server:
                report["recovered"] = True  # the primary answers again after a fallback served
            held = HeldAnswer(stream, request.id, meta, max_bytes=self.max_bytes)
            params = request.params or {}
            # The name the backend's stack is told (`Mcp-Name`): a route's own name, or the URI read.
            header = route.name if route.kind != "resources" else str(params.get("uri", ""))
            target = (server, params, header)
            try:
                handled = await self.relay.forward_to(scope, receive, held, request, target, report)
            except Refused as refused:  # a legacy session could not be opened there
                if refused.code not in OUTAGE_CODES:
                    await _answer_error(stream, refused.status, refused.code, refused.message, request, refused.data)
                    return True
                failure: Failure | None = Failure(
                    refused.status, refused.code, refused.message, refused.data, (), True, "unavailable"
                )
            else:
                if not handled:
                    if index == 0:
                        return False  # a backend reached through the SDK bridge: its primary serves
                    failure = Failure(
                        502, -32017, f"Backend {server} cannot serve this client", None, (), True, "bridge"
                    )
                else:
                    failure = held.failure
            if failure is None:
                self._served(route, key, server)
                return True
            if not failure.nothing_ran:
                may_have_run = True
            safe = failure.nothing_ran or retry_safe(
                request.method or "",
                annotations=self.catalog.tool_annotations(server, route.name) if route.tool is not None else None,
                allowed=route.allow_retry,
            )
            tried.append({"server": server, "reason": failure.reason})
            following = route.servers[index + 1] if index + 1 < len(route.servers) else None
            if safe and following is not None:
                record_decision(
                    scope,
                    Component.ROUTER,
                    Outcome.FALLBACK,
                    route=route.name,
                    server=server,
                    to=following,
                    reason=failure.reason,
                )
                continue
            record_decision(
                scope,
                Component.ROUTER,
                Outcome.BACKEND_ERROR,
                route=route.name,
                server=server,
                reason=failure.reason,
                may_have_run=may_have_run,
            )
            await _fail(stream, request, route, server, failure, may_have_run, [entry["server"] for entry in tried])
            return True
        return True  # unreachable: the last backend either served or failed above

    def _served(self, route: Route, key: tuple[str, str], server: str) -> None:
        previous = self.serving.get(key)
        if previous == server:
            return
        self.serving[key] = server
        if server != route.primary:
            logger.warning(
                "route %s is served by fallback %r, not its primary %r", route.describe(), server, route.primary
            )
        elif previous is not None:
            logger.warning("route %s is back on its primary %r", route.describe(), server)


async def _fail(
    stream: OpenStream,
    request: McpRequest,
    route: Route,
    server: str,
    failure: Failure,
    may_have_run: bool,
    tried: list[str],
) -> None:
    data: dict[str, Any] = (
        {key: value for key, value in (failure.data or {}).items() if key != "backend" and isinstance(key, str)}
        if isinstance(failure.data, dict)
        else {}
    )
    data.update(failure_data(server, may_have_run=may_have_run))
    data["route"] = route.name
    data["tried"] = tried
    await _answer_error(stream, failure.status, failure.code, failure.message, request, data, failure.headers)


async def _answer_error(
    stream: OpenStream,
    status: int,
    code: int,
    message: str,
    request: McpRequest,
    data: Any,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    """The call's error: a JSON-RPC error answer, or the last event of the stream an attempt opened."""
    if not stream.opened:
        await send_error(
            stream.send, status=status, code=code, message=message, request_id=request.id, data=data, headers=headers
        )
        return
    event = sse_event(error_body(code, message, request.id, data))
    await stream.send({"type": "http.response.body", "body": event, "more_body": False})
