"""Legacy sessions any gateway instance can serve: `Mcp-Session-Id` is a sealed handle, not a local key.

With `[gateway] session_key`, the session id a client receives from a legacy `initialize` is a
:mod:`sealed handle <mcp_middleware.gateway.session_handles>` carrying the session's owner, path,
`initialize` params and the id the stack below uses. On every request with a handle this layer
opens it (a dict lookup once this process has seen it), refuses a bad one as an unknown session
(HTTP 404 with a JSON-RPC error and the request's id: the client re-initializes), and forwards the
request with the inner id, the handle's word in the scope (:class:`SealedSession`) for the parts
that bind sessions to owners: :class:`SessionOwnerGuard` after authentication, the reverse proxy.

A session this process does not hold (the inner app answers 404 before any byte of a body) is
opened again here, transparently: the sealed `initialize`, then `notifications/initialized`,
then the client's request once more. A remote backend usually still holds its session: the proxy
continues it on the handle's word instead, if the name still points at the server that issued it (each
sealed id is bound to its issuer, :mod:`~mcp_middleware.router.origins`); if not, the handle is an unknown
session there (404, not re-opened: the client initializes again) and the old id reaches no other server.
Responses stream untouched; only the response-start headers are rewritten (the inner id never reaches
the client).

>>> from starlette.applications import Starlette
>>> from mcp_middleware.core.sealing import Sealer
>>> handles = SessionHandles(Sealer(["an operator's secret of at least 32 chars"], purpose="mcp-session"))
>>> app = SealedSessionMiddleware(Starlette(), handles=handles)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    Component,
    CoreConfig,
    Era,
    JsonRpcCode,
    McpRequest,
    Outcome,
    get_mcp_request,
    read_request,
    record_decision,
    replay,
    send_error,
)
from mcp_middleware.core.kernel import EVERY_PATH
from mcp_middleware.core.request import REQUEST_SCOPE_KEY
from mcp_middleware.core.sealing import SealError
from mcp_middleware.router.sessions import (
    SEALED_SESSION_SCOPE_KEY,
    SealedSession,
    owner_of,
    refuse_session,
    sealed_session,
)

from .session_handles import OpenedSession, SessionHandles, SessionState
from .session_reopen import reopen

__all__ = ["SealedSessionMiddleware", "SessionOwnerGuard"]

logger = logging.getLogger("mcp_middleware.gateway.sessions")

_HEADER = b"mcp-session-id"
_SESSION_FIELD = McpRequest._fields.index("session_id")
_MAX_HELD = 64 * 1024
"""Largest 404 answer held back while deciding whether to re-open the session (then sent as it was)."""


class SealedSessionMiddleware:
    """Hand out sealed handles for legacy sessions and resume them on any instance sharing the key."""

    def __init__(self, app: ASGIApp, *, handles: SessionHandles, config: CoreConfig | None = None) -> None:
        self.app = app
        self.handles = handles
        self.config = config or EVERY_PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        view, receive = await read_request(scope, receive, send, self.config)
        if receive is ANSWERED:
            return
        if view is None:
            await self.app(scope, receive, send)
            return
        handle = _session_header(scope["headers"])
        if view.era is Era.MODERN:  # stateless: a handle it carries means nothing, and goes no further
            if handle is not None:
                scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != _HEADER]}
            await self.app(scope, receive, send)
            return
        if handle is None:
            if view.method != "initialize":
                await self.app(scope, receive, send)
                return
            ticket = SealedSession(fingerprints=self.handles.fingerprints)
            child = {**scope, SEALED_SESSION_SCOPE_KEY: ticket}
            await self.app(child, receive, self._minting(scope, view, ticket, send))
            return
        opened = self._open(scope, handle)
        if opened is None:
            await send_error(
                send, status=404, code=JsonRpcCode.INVALID_REQUEST, message="Session not found", request_id=view.id
            )
            return
        await self._resume(scope, receive, send, view, handle, opened)

    def _open(self, scope: Scope, handle: bytes) -> OpenedSession | None:
        """The session `handle` names on this path, or None (a decision says why)."""
        try:
            opened = self.handles.open(handle.decode("latin-1"))
        except SealError as error:
            record_decision(scope, Component.SESSION, Outcome.REJECTED, reason=error.reason)
            return None
        if opened.state.path != scope["path"]:  # minted for another endpoint: it names nothing here
            record_decision(scope, Component.SESSION, Outcome.REJECTED, reason="path")
            return None
        return opened

    async def _resume(
        self, scope: Scope, receive: Receive, send: Send, view: McpRequest, handle: bytes, opened: OpenedSession
    ) -> None:
        state = opened.state
        used = opened.session_id
        fingerprints = self.handles.fingerprints
        ticket = SealedSession(used, state.owner, state.replica, origin=state.origin, fingerprints=fingerprints)
        deleting = scope["method"] == "DELETE"
        attempt = _Attempt(send, handle, may_hold=not deleting and not opened.ended)
        tracked = _Tracked(receive)
        await self.app(_inner_scope(scope, view, used, ticket), tracked, attempt)
        if deleting:
            opened.ended = True  # not re-opened here; elsewhere the handle lives until it expires
        if attempt.held is None:
            return
        if ticket.refused:  # another principal's, or another server's: answered as unknown, never re-created
            await attempt.release()
            return
        async with opened.lock:
            if opened.session_id == used:  # nobody re-opened it meanwhile
                fresh = await reopen(self.app, scope, state, fingerprints)
                if fresh is None:
                    await attempt.release()
                    return
                opened.session_id = fresh
                record_decision(scope, Component.SESSION, Outcome.REOPENED)
        ticket = SealedSession(
            opened.session_id, state.owner, state.replica, origin=state.origin, fingerprints=fingerprints
        )
        again = receive if not tracked.called else replay(view.body, receive)
        await self.app(_inner_scope(scope, view, opened.session_id, ticket), again, _Attempt(send, handle, False))

    def _minting(self, scope: Scope, view: McpRequest, ticket: SealedSession, send: Send) -> Send:
        """Replace the session id an `initialize` answer hands out with a sealed handle to it."""
        handles = self.handles
        path: str = scope["path"]
        params = _sealed_params(view.params)

        async def minting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                inner = next((value for name, value in headers if name.lower() == _HEADER), None)
                if inner is not None:
                    owner = ticket.caller if ticket.caller is not None else owner_of(scope)
                    state = SessionState(
                        owner,
                        path,
                        inner.decode("latin-1"),
                        params,
                        ticket.replica,
                        ticket.backends,  # the aggregate's remote backend sessions, opened for this initialize
                        replicas=ticket.replicas,
                        origin=ticket.origin,  # the server that issued it, as the stack noted (none in-process)
                        origins=ticket.origins,
                    )
                    try:
                        handle = handles.mint(state).encode("ascii")
                    except ValueError as error:  # never the inner id in the clear: no session id at all
                        logger.warning("a session opened at %s cannot be sealed: %s", path, error)
                        record_decision(scope, Component.SESSION, Outcome.REJECTED, reason="unsealable")
                        kept = [(name, value) for name, value in headers if name.lower() != _HEADER]
                        message = {**message, "headers": kept}
                    else:
                        message = {**message, "headers": _with_session(headers, handle)}
            await send(message)

        return minting_send


class SessionOwnerGuard:
    """After authentication: a sealed session is served to its owner only (another is told it does not exist).

    Also notes who the caller is, so that a handle minted for this request is bound to them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ticket = sealed_session(scope) if scope["type"] == "http" else None
        if ticket is not None:
            caller = owner_of(scope)
            ticket.caller = caller
            if ticket.owner is not None and ticket.owner != caller:
                ticket.refused = True
                view = get_mcp_request(scope)
                record_decision(scope, Component.SESSION, Outcome.SESSION_REFUSED)
                await refuse_session(scope, send, view.id if view is not None else None)
                return
        await self.app(scope, receive, send)


class _Attempt:
    """The response of one try: its session header rewritten to the handle; a 404 held back when `may_hold`."""

    __slots__ = ("handle", "held", "may_hold", "send", "size")

    def __init__(self, send: Send, handle: bytes, may_hold: bool) -> None:
        self.send = send
        self.handle = handle
        self.may_hold = may_hold
        self.held: list[Message] | None = None
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self.may_hold and message["status"] == 404:
                self.held = [message]
                return
            headers = message.get("headers", ())
            for name, _ in headers:
                if name.lower() == _HEADER:
                    message = {**message, "headers": _with_session(headers, self.handle)}
                    break
        elif self.held is not None:
            self.size += len(message.get("body", b""))
            if self.size <= _MAX_HELD:
                self.held.append(message)
            return
        await self.send(message)

    async def release(self) -> None:
        """Send the held 404 as the inner app wrote it (its end, whatever was cut)."""
        assert self.held is not None
        start, *body = self.held
        await self.send(start)
        for message in body:
            await self.send(message)
        if not body or body[-1].get("more_body", False):
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class _Tracked:
    """`receive`, noting whether the app asked for anything (a 404 may come before the body is read)."""

    __slots__ = ("called", "receive")

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.called = False

    async def __call__(self) -> Message:
        self.called = True
        return await self.receive()


def _sealed_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `initialize` params a handle carries: all of them but the client's icons (images for a UI, often
    data URIs, that would swell every handle and tell a backend nothing)."""
    sealed = dict(params or {})
    info = sealed.get("clientInfo")
    if isinstance(info, dict) and "icons" in info:
        sealed["clientInfo"] = {key: value for key, value in info.items() if key != "icons"}
    return sealed


def _session_header(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == _HEADER:
            return value
    return None


def _with_session(headers: object, value: bytes) -> list[tuple[bytes, bytes]]:
    """`headers` (a response's) with every `Mcp-Session-Id` set to `value`."""
    return [(name, value if name.lower() == _HEADER else old) for name, old in headers]  # type: ignore[attr-defined]


def _inner_scope(scope: Scope, view: McpRequest, session_id: str, ticket: SealedSession) -> Scope:
    """The scope the stack below sees: the inner session id in the header and the request view."""
    inner = session_id.encode("latin-1")
    headers = [(name, inner if name == _HEADER else value) for name, value in scope["headers"]]
    return {
        **scope,
        "headers": headers,
        # (a NamedTuple's `_replace` costs a microsecond: the tuple is rebuilt directly)
        REQUEST_SCOPE_KEY: tuple.__new__(McpRequest, (*view[:_SESSION_FIELD], session_id, *view[_SESSION_FIELD + 1 :])),
        SEALED_SESSION_SCOPE_KEY: ticket,
    }
