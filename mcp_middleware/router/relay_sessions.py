"""The relay's legacy sessions at the backends: each client's own, opened on first use with its `initialize`.

A handshake-era client has one session with the aggregate and, through the relay, one at each
backend it reaches: opened with the client's own `initialize` params (so the backend sees the
caller's capabilities), told `notifications/initialized`, given the client's log level, and its
standalone stream pumped to the client's (the backend may ask the client from its first call on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import anyio
import anyio.abc
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, ErrorCode, read_request
from mcp_middleware.core.kernel import EVERY_PATH

from .rewrite import AnswerRewriter
from .sessions import BackendSession, ClientSession, exchange, sealed_session
from .streams import pump_backend_stream
from .targets import Refused

__all__ = ["BackendSessions", "header"]

_STREAM_PATIENCE = 2.0
"""Seconds a new backend session waits for its standalone stream before the client's request goes on."""


class BackendSessions:
    """What :class:`~mcp_middleware.router.relay.Relay` does to open and tend a client's backend sessions."""

    stacks: Mapping[str, ASGIApp]
    group: anyio.abc.TaskGroup | None
    max_inspect_bytes: int

    def _child(
        self, scope: Scope, server: str, body: bytes, backend: BackendSession | None, header_name: str | None
    ) -> Scope:
        raise NotImplementedError

    def _public_uri(self, server: str) -> Callable[[str], str] | None:
        raise NotImplementedError

    async def _backend_session(
        self, scope: Scope, session: ClientSession, server: str, *, stream: bool = True
    ) -> BackendSession:
        """This client's session at `server`, opened on first use with the client's own `initialize`
        (`stream`: with its standalone stream pumped to the client's; else that waits for the first use)."""
        while True:
            backend = session.backends.get(server)
            if backend is not None:
                if backend.stream_pending and stream:  # opened ahead of use (sealed handles): its stream now
                    backend.stream_pending = False
                    await self._stream(scope, session, server, backend)
                if backend.log_level != session.log_level and session.log_level is not None:
                    await self._set_level(scope, session, server, backend)
                return backend
            opening = session.opening.get(server)
            if opening is None:
                break
            await opening.wait()
            if server not in session.backends:
                raise Refused(502, ErrorCode.BAD_GATEWAY, f"Backend {server} did not open a session")
        event = session.opening[server] = anyio.Event()
        try:
            backend = await self._open(scope, session, server, stream)
            session.backends[server] = backend
        finally:
            del session.opening[server]
            event.set()
        if session.log_level is not None:
            await self._set_level(scope, session, server, backend)
        return backend

    async def _open(self, scope: Scope, session: ClientSession, server: str, stream: bool) -> BackendSession:
        body = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": session.initialize})
        child = self._child(scope, server, body, None, None)
        child["headers"] = [(k, v) for k, v in child["headers"] if k != b"mcp-protocol-version"]
        child["method"] = "POST"
        answer = await exchange(self._stack_entry(server), child, body, 0)
        result = answer.message.get("result") if answer.message is not None else None
        backend_id = answer.headers.get(b"mcp-session-id")
        if answer.status != 200 or not isinstance(result, dict):
            error = answer.message.get("error") if answer.message is not None else None
            if isinstance(error, dict) and isinstance(error.get("code"), int):
                status = answer.status if answer.status >= 400 else 502
                raise Refused(status, error["code"], str(error.get("message", ""))[:500], error.get("data"))
            raise Refused(502, ErrorCode.BAD_GATEWAY, f"Backend {server} refused to open a session ({answer.status})")
        version = str(result.get("protocolVersion", session.initialize.get("protocolVersion", "")))
        ticket = sealed_session(child)  # with sealed handles: the stack noted on it who took the session (a replica)
        backend = BackendSession(
            backend_id.decode("latin-1") if backend_id is not None else None,
            version,
            replica=ticket.replica if ticket is not None else None,
            origin=ticket.origin if ticket is not None else None,
        )
        notice = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        await exchange(self._stack_entry(server), self._child(scope, server, notice, backend, None), notice, None)
        if stream:
            await self._stream(scope, session, server, backend)
        else:
            backend.stream_pending = True
        return backend

    async def _stream(self, scope: Scope, session: ClientSession, server: str, backend: BackendSession) -> None:
        """Pump the backend session's standalone stream to the client's (a task of the relay's group)."""
        if self.group is not None and backend.id is not None:
            child = self._child(scope, server, b"", backend, None)
            child["method"] = "GET"
            public_uri = self._public_uri(server)
            ready = anyio.Event()
            entry = self._stack_entry(server)
            self.group.start_soon(pump_backend_stream, entry, child, session, server, public_uri, ready)
            with anyio.move_on_after(_STREAM_PATIENCE):  # the backend may ask the client from the first call on
                await ready.wait()

    async def _set_level(self, scope: Scope, session: ClientSession, server: str, backend: BackendSession) -> None:
        level = session.log_level
        backend.log_level = level
        body = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "logging/setLevel", "params": {"level": level}})
        await exchange(self._stack_entry(server), self._child(scope, server, body, backend, None), body, 0)

    async def _resume(
        self, scope: Scope, receive: Receive, send: Send, session: ClientSession, server: str, event_id: str
    ) -> None:
        """`Last-Event-ID` names a backend's event: that backend replays its stream from there."""
        backend = session.backends[server]
        child = self._child(scope, server, b"", backend, None)
        child["headers"] = [(k, v) for k, v in child["headers"] if k != b"last-event-id"]
        child["headers"].append((b"last-event-id", event_id.encode("latin-1")))
        rewriter = AnswerRewriter(
            send, server=server, session=session, public_uri=self._public_uri(server), max_bytes=self.max_inspect_bytes
        )
        _, receive = await read_request(child, receive, rewriter, EVERY_PATH)
        if receive is not ANSWERED:
            await self.stacks[server](child, receive, rewriter)

    def _stack_entry(self, server: str) -> ASGIApp:
        stack = self.stacks[server]

        async def parsed(scope: Scope, receive: Receive, send: Send) -> None:
            _, receive = await read_request(scope, receive, send, EVERY_PATH)
            if receive is not ANSWERED:
                await stack(scope, receive, send)

        return parsed


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
