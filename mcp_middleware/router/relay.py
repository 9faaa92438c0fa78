"""The aggregate's relay: a request that only needs its name rewritten goes into its backend's own stack.

`tools/call`, `prompts/get`, `resources/read` and `completion/complete` name one
thing of one backend. The relay resolves the public name (the catalog's name
table), rewrites it in the body (and `Mcp-Name`) to the backend's own, and calls
the backend's stack (authorization → rate limit → cache → breaker → backend, the
same instance its path mount uses) with the caller's request otherwise untouched:
its id, `_meta` (protocol version, client capabilities and info, progress token,
trace context, request state) and its stream. Every policy therefore decides in
the backend's own names, whichever endpoint was called, and spends one budget.

Handshake-era clients: the relay keeps each client's own session at each backend
(:mod:`.sessions`); a backend's requests to the client get public ids and the
client's answers go back to that backend; `notifications/cancelled` goes to the
backend running the request.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import orjson
from mcp.shared.inbound import encode_header_value
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    Component,
    Era,
    ErrorCode,
    McpRequest,
    Outcome,
    RequestId,
    RequestKind,
    get_mcp_request,
    read_request,
    record_decision,
    replay,
)
from mcp_middleware.core.decisions import DecisionValue
from mcp_middleware.core.kernel import EVERY_PATH
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE
from mcp_middleware.core.request import REQUEST_SCOPE_KEY

from ._links import short
from .answer_ids import answer_target
from .catalog import Catalog
from .names import PrefixMode
from .relay_adopt import carry_ticket, continuable, resend_in_new_session, seal_backends, watch_lost
from .relay_sessions import BackendSessions, header
from .rewrite import EVENT_ID_SEPARATOR, AnswerRewriter
from .sessions import BackendSession, ClientSession, Running, SessionTable, exchange, owner_of, refuse_session
from .streams import serve_client_stream
from .targets import Refused, backend_target

__all__ = ["ROUTED_METHODS", "Relay"]

logger = logging.getLogger("mcp_middleware.router")

ROUTED_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "completion/complete"})
"""What the relay routes into a backend's stack (everything else the aggregate answers itself)."""

_SESSION_METHODS = frozenset({"resources/subscribe", "resources/unsubscribe"})
"""Routed for legacy sessions (the backend's updates then arrive on the client's own backend session)."""
_CHANGES = {
    "tools": b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}',
    "prompts": b'{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}',
    "resources": b'{"jsonrpc":"2.0","method":"notifications/resources/list_changed"}',
}
_REPLACED = frozenset({b"content-length", b"mcp-session-id", b"mcp-name", b"mcp-protocol-version"})


class Relay(BackendSessions):
    """Route rename-only requests into backends' stacks.

    >>> # relay = Relay(catalog, {"github": github_stack}, paths={"github": "/mcp/github"})
    >>> # handled = await relay.route(scope, receive, send, request)
    """

    def __init__(
        self,
        catalog: Catalog,
        stacks: Mapping[str, ASGIApp],
        *,
        paths: Mapping[str, str],
        speaks_modern: Callable[[str], Awaitable[bool]] | None = None,
        max_sessions: int = 10_000,
        max_inspect_bytes: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        self.catalog = catalog
        self.stacks = stacks
        self.paths = paths
        self.speaks_modern = speaks_modern or _always
        """Whether a backend serves 2026-07-28 requests (else modern clients reach it through the bridge)."""
        self.sessions = SessionTable(max_sessions)
        self.group: anyio.abc.TaskGroup | None = None
        self.on_closed: Callable[[str], None] = lambda session_id: None
        """Told when a legacy session ends (the notifier forgets it)."""
        """Where backend streams are pumped (set while the aggregate runs)."""
        self.max_inspect_bytes = max_inspect_bytes

    # --- entry ------------------------------------------------------------------------------

    async def route(self, scope: Scope, receive: Receive, send: Send, request: McpRequest) -> bool:
        """Handle `request` if it is the relay's; False leaves it to the aggregate's own server."""
        session: ClientSession | None = None
        if request.era is Era.LEGACY and request.session_id is not None:
            session = self.sessions.get(request.session_id)
            if session is not None and session.owner != owner_of(scope):
                await refuse_session(scope, send, request.id)
                return True
        kind = request.kind
        if kind is RequestKind.STREAM and session is not None:
            resumed = header(scope, b"last-event-id")
            server, _, event_id = (resumed or "").partition(EVENT_ID_SEPARATOR.decode())
            if resumed is not None and server in session.backends:  # a backend's stream, resumed where it broke
                await self._resume(scope, receive, send, session, server, event_id)
            else:
                await serve_client_stream(session, receive, send, request.id)
            return True
        if kind is RequestKind.REQUEST and (
            request.method in ROUTED_METHODS or (session is not None and request.method in _SESSION_METHODS)
        ):
            if request.era is Era.LEGACY and session is None:
                return False  # not a session the relay knows: the aggregate's server answers (404 or its own path)
            try:
                return await self._forward(scope, receive, send, request, session)
            except Refused as refused:
                await refused.answer(send, request.id)
            return True
        if session is None:
            return False
        if kind is RequestKind.RESPONSE and isinstance(request.id, str):
            target = session.server_requests.pop(request.id, None) or answer_target(request.id)
            if target is not None and self._answerable(session, target[0]):  # (minted here, or where the session was)
                await self._answer(scope, receive, send, request, session, target)
                return True
        if kind is RequestKind.NOTIFICATION and request.method == "notifications/cancelled":
            running = session.running.get(_cancelled_id(request))
            if running is not None and running.server in session.backends:
                await self._pass(scope, receive, send, running.server, session, request.body)
                return True
        return False

    def watch(self, scope: Scope, request: McpRequest, send: Send) -> Send:
        """Learn what the aggregate's own server decides about legacy sessions (opened, closed, log level)."""
        if request.method == "initialize":

            async def opened(message: Message) -> None:
                if message["type"] == "http.response.start" and message["status"] == 200:
                    for key, value in message.get("headers", ()):
                        if key.lower() == b"mcp-session-id":
                            session = self.opened(scope, value.decode("latin-1"), request)
                            # sealed handles: its remote backends' sessions, opened or continued (relay_adopt.py)
                            await seal_backends(self, scope, session, self.catalog.backends)
                await send(message)

            return opened
        if request.kind is RequestKind.TERMINATE and request.session_id is not None:
            session = self.sessions.pop(request.session_id)
            self.on_closed(request.session_id)
            if session is not None and self.group is not None:
                self.group.start_soon(self.close_backend_sessions, scope, session)
        if request.method == "logging/setLevel" and request.params is not None:
            level = request.params.get("level")
            if isinstance(level, str):
                self.set_level(request.session_id, level)
        return send

    def opened(self, scope: Scope, session_id: str, request: McpRequest) -> ClientSession:
        """The aggregate's server opened legacy session `session_id` for this `initialize`."""
        params = dict(request.params or {})
        opened_by = {key: value for key, value in scope.items() if key != "mcp_middleware.request"}
        session = ClientSession(session_id, owner_of(scope), params, opened_by)
        for evicted in self.sessions.add(session):
            self.on_closed(evicted.id)  # the least recently used session no longer fits: end it everywhere
            if self.group is not None:  # (but sealed ones: another instance may still serve that client)
                self.group.start_soon(self.close_backend_sessions, evicted.opened_by, evicted, True)
        return session

    def broadcast(self, kinds: frozenset[str]) -> None:
        """The aggregate's lists changed: tell every legacy session on its stream."""
        messages = [_CHANGES[kind] for kind in sorted(kinds) if kind in _CHANGES]
        for session in self.sessions:
            for message in messages:
                session.outbox.put(message)

    def set_level(self, session_id: str | None, level: str) -> None:
        session = self.sessions.get(session_id)
        if session is not None:
            session.log_level = level

    async def close_backend_sessions(self, scope: Scope, session: ClientSession, keep_sealed: bool = False) -> None:
        """The client ended its session: end its sessions at the backends too (`keep_sealed`: not those its
        sealed handle carries)."""
        for server, backend in list(session.backends.items()):
            if backend.id is None or (keep_sealed and backend.sealed):
                continue
            child = self._child(scope, server, b"", backend, None)
            child["method"] = "DELETE"
            try:
                await exchange(self._stack_entry(server), child, b"", None)
            except Exception as exc:  # the backend is gone already: nothing left to end
                logger.debug("closing %s's session at %s failed: %s", session.id[:8], server, exc)

    async def forward_to(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: McpRequest,
        target: tuple[str, Mapping[str, Any], str | None],
        report: Mapping[str, DecisionValue],
    ) -> bool:
        """Send `request` to the backend `target` names (a route's choice), as :meth:`route` would; `report`
        joins the routing decision. False: the aggregate's own server must answer (see :meth:`route`)."""
        session: ClientSession | None = None
        if request.era is Era.LEGACY:
            session = self.sessions.get(request.session_id) if request.session_id is not None else None
            if session is None:
                return False
            if session.owner != owner_of(scope):
                await refuse_session(scope, send, request.id)
                return True
        return await self._forward(scope, receive, send, request, session, target, report)

    # --- forwarding -------------------------------------------------------------------------

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: McpRequest,
        session: ClientSession | None,
        target: tuple[str, Mapping[str, Any], str | None] | None = None,
        report: Mapping[str, DecisionValue] | None = None,
    ) -> bool:
        server, params, header_name = target if target is not None else await backend_target(self.catalog, request)
        stack = self.stacks.get(server)
        if (
            request.era is Era.MODERN
            and not getattr(stack, "both_eras", False)
            and not await self.speaks_modern(server)
        ):
            if getattr(stack, "governed", True):
                # The era bridge calls the backend's session directly, past its stack: fail closed.
                record_decision(scope, Component.ROUTER, Outcome.DENY, server=server, rule="era_bridge")
                raise Refused(
                    403,
                    ErrorCode.FORBIDDEN,
                    f"Backend {server} speaks only 2025-11-25 and has middleware of its own, which the aggregate "
                    "cannot apply to a 2026-07-28 call: call it in a 2025-11-25 session, or at its path mount",
                    {"server": server, "reason": "era_bridge"},
                )
            return False  # a 2025-era backend with no middleware: the aggregate's own server bridges the eras
        backend: BackendSession | None = None
        if session is not None:
            backend = await self._backend_session(scope, session, server)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request.id, "method": request.method}
        if params is not None:
            message["params"] = params
        body = orjson.dumps(message) if params is not request.params else request.body
        lost = watch_lost(scope, backend, send)  # sealed handles: a backend that lost the session opens anew
        rewriter = AnswerRewriter(
            lost or send,
            server=server,
            session=session,
            public_uri=self._public_uri(server),
            max_bytes=self.max_inspect_bytes,
        )
        record_decision(
            scope, Component.ROUTER, Outcome.ROUTED, server=server, method=request.method or "", **(report or {})
        )
        running = Running(server)
        if session is not None and request.id is not None:
            session.running[request.id] = running
        # The backend's stack gets the request already read: the client's view, renamed (no second parse).
        version = request.protocol_version
        if backend is not None and header(scope, b"mcp-protocol-version") is None:
            version = backend.protocol_version  # the header `_child` sends it
        session_id = backend.id if backend is not None else None
        view = request._replace(params=params, body=body, session_id=session_id, protocol_version=version)
        try:
            await self._call(scope, receive, rewriter, server, body, backend, header_name, view)
            if lost is not None and lost.lost and session is not None and backend is not None:
                await resend_in_new_session(self, scope, receive, send, session, backend, (server, header_name), view)
        finally:
            if session is not None and request.id is not None and session.running.get(request.id) is running:
                del session.running[request.id]  # not a newer call's entry under the same id
        return True

    def _answerable(self, session: ClientSession, server: str) -> bool:
        """Into a session at `server` this instance holds, or may open in-process; never a new one at a remote
        server (the question came through a session not continued here: the name may mean another server now)."""
        if server not in self.stacks:
            return False
        return server in session.backends or not continuable(self.catalog.backends[server])

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: McpRequest,
        session: ClientSession,
        target: tuple[str, RequestId],
    ) -> None:
        """The client's answer to a backend's request: back to that backend, under the backend's own id."""
        server, backend_id = target
        message = orjson.loads(request.body)
        message["id"] = backend_id
        try:
            await self._backend_session(scope, session, server)
        except Refused as refused:
            await refused.answer(send)
            return
        await self._pass(scope, receive, send, server, session, orjson.dumps(message))

    async def _pass(
        self, scope: Scope, receive: Receive, send: Send, server: str, session: ClientSession, body: bytes
    ) -> None:
        backend = session.backends.get(server)
        await self._call(scope, receive, send, server, body, backend, None)

    async def _call(
        self,
        scope: Scope,
        receive: Receive,
        send: Send | AnswerRewriter,
        server: str,
        body: bytes,
        backend: BackendSession | None,
        header_name: str | None,
        view: McpRequest | None = None,
    ) -> None:
        child = self._child(scope, server, body, backend, header_name)
        watched = send if isinstance(send, AnswerRewriter) else AnswerRewriter(send, server=server)
        try:
            if view is not None:
                child[REQUEST_SCOPE_KEY] = view
                await self.stacks[server](child, replay(body, receive), watched)
            else:  # a client's answer or notification passed on as it came: read like any request
                _, receive = await read_request(child, replay(body, receive), watched, EVERY_PATH)
                if receive is not ANSWERED:
                    await self.stacks[server](child, receive, watched)
        except Exception as exc:  # a backend that crashed: this call fails clearly, the others go on
            view = get_mcp_request(child)
            logger.warning("backend %s failed: %s", server, short(exc))
            record_decision(scope, Component.ROUTER, Outcome.BACKEND_ERROR, server=server)
            await watched.fail(
                getattr(view, "id", None), f"Backend {server} failed during {getattr(view, 'method', '')}: {short(exc)}"
            )

    def _child(
        self, scope: Scope, server: str, body: bytes, backend: BackendSession | None, header_name: str | None
    ) -> Scope:
        """The request as the backend's stack sees it: the mount's path, the backend's names and session."""
        headers = [(k, v) for k, v in scope["headers"] if k not in _REPLACED]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        version = header(scope, b"mcp-protocol-version")  # the caller's, as it sent it
        if version is None and backend is not None:
            version = backend.protocol_version
        if version is not None:
            headers.append((b"mcp-protocol-version", version.encode("latin-1")))
        if backend is not None and backend.id is not None:
            headers.append((b"mcp-session-id", backend.id.encode("latin-1")))
        if header_name is not None and header(scope, b"mcp-name") is not None:
            headers.append((b"mcp-name", encode_header_value(header_name).encode("latin-1")))
        child = {key: value for key, value in scope.items() if key != REQUEST_SCOPE_KEY}
        path = scope.get("root_path", "") + self.paths.get(server, "")
        child["headers"] = headers
        child["path"] = path
        child["raw_path"] = path.encode("latin-1")
        carry_ticket(scope, child, backend)  # sealed handles: their word for this backend's session only
        return child

    def _public_uri(self, server: str) -> Callable[[str], str] | None:
        if self.catalog.naming.prefix is PrefixMode.NEVER:
            return None
        return lambda uri: self.catalog.public_uri(server, uri)


async def _always(server: str) -> bool:
    return True


def _cancelled_id(request: McpRequest) -> Any:
    params = request.params or {}
    return params.get("requestId")
