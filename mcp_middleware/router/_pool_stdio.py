"""A pool's stdio replica: one supervised process, given the HTTP side the pool dispatches to.

A stdio command has no HTTP side; the router gives a stdio mount one (a one-backend aggregate
over its SDK session, names kept), and a pool gives each of its stdio replicas the same:
:class:`StdioReplica` runs that aggregate and the process's session (restarted with backoff
when the process dies, as any stdio backend). The pool then balances, probes, ejects and
fails over across them as across URLs.

Through the aggregate a dead process does not look like a dead URL: the aggregate answers
HTTP 200 with a JSON-RPC error of its bridge, `-32015` when the session is down (nothing ran)
or `-32017` when it broke during the call (it may have run). :class:`_StdioTransport` holds a
POST's answer until its first JSON-RPC message shows which (a JSON body until complete, an
event stream until its first message event, both bounded): an outage of this replica's
process becomes the pool's :class:`~mcp_middleware.router._pool_forward.Failure`, so the
pool's one rule (:mod:`.safety`) decides whether another replica may serve it; any other
answer passes on as it came. A probe asks the replica's session itself (is the process up?)
before the aggregate.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from mcp import Client
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import ErrorCode
from mcp_middleware.core.errors import request_id_in
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE, is_event_stream, is_json

from ._links import BackendLink, BackendUnavailable
from ._pool_credentials import CallerToken
from ._pool_forward import Failure, ReplicaTransport, StartHook, _AppTransport
from .aggregate import AggregateServer
from .backends import StdioBackend
from .names import NamingPolicy, PrefixMode

__all__ = ["StdioReplica", "stdio_transport"]

_OUTAGES = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.BAD_GATEWAY})
_EVENT_ENDS = (b"\r\n\r\n", b"\n\n", b"\r\r")


class StdioReplica:
    """One stdio process of pool `pool` (replica `index`): its session, and a one-backend aggregate over it."""

    def __init__(self, pool: str, index: int, backend: StdioBackend) -> None:
        if backend.name is None:
            backend.name = f"{pool}#{index}"  # its stderr lines say which replica wrote them
        self.pool = pool
        self.backend = backend
        self.timeout = backend.timeout
        self.links: dict[str, BackendLink] = {}
        self.bridge = AggregateServer(
            {pool: backend}, naming=NamingPolicy(prefix=PrefixMode.NEVER), shared_links=self.links, name=pool
        )

    def path_app(self) -> AggregateServer:
        return self.bridge

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.bridge.lifespan():
            await self.failure(0)  # start the process now (a pool is ready when its replicas are)
            yield

    async def failure(self, patience: float) -> str | None:
        """Why the process's session is down (waiting up to `patience` s for it to open), or None."""
        link = self.links.get(self.pool)
        if link is None:
            return "not started"
        try:
            await link.client(patience)
        except BackendUnavailable as exc:
            return exc.reason
        return None

    @contextlib.asynccontextmanager
    async def open_client(self, **options: Any) -> AsyncIterator[Client]:
        """The replica's own session (shared: one process; the pool's aggregate session does not own it)."""
        link = self.links.get(self.pool)
        if link is None:
            raise BackendUnavailable(self.pool, "the pool is not running")
        yield await link.client(self.timeout)

    def describe(self) -> str:
        return self.backend.describe()


def stdio_transport(replica: StdioReplica) -> ReplicaTransport:
    return _StdioTransport(replica)


class _StdioTransport(ReplicaTransport):
    def __init__(self, replica: StdioReplica) -> None:
        self.replica = replica
        self.app = _AppTransport(replica.bridge)

    async def forward(
        self,
        scope: Scope,
        body: bytes,
        receive: Receive,
        send: Send,
        hook: StartHook | None,
        auth: CallerToken | None = None,
    ) -> Failure | int:
        if scope["method"] != "POST":  # a legacy GET stream or DELETE: nothing to fail over
            return await self.app.forward(scope, body, receive, send, hook)
        request_id = request_id_in(body)
        if request_id is None:  # a notification or a response: no answer of the backend to wait for
            return await self.app.forward(scope, body, receive, send, hook)
        watch = _OutageWatch(send, request_id, self.replica.pool, hook, DEFAULT_MAX_BODY_SIZE)
        answered = await self.app.forward(scope, body, receive, watch, None)
        if watch.failure is not None:
            return watch.failure
        await watch.flush()
        return answered

    async def ask(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any] | None]:
        reason = await self.replica.failure(self.replica.timeout)
        if reason is not None:
            raise ConnectionError(f"process down: {reason}")
        return await self.app.ask(body, headers)


class _OutageWatch:
    """The `send` of one POST to a stdio replica: its answer held until its first JSON-RPC message
    says whether this replica's process served it (bounded: past `max_bytes` it passes as it is)."""

    def __init__(self, send: Send, request_id: Any, server: str, hook: StartHook | None, max_bytes: int) -> None:
        self.send = send
        self.request_id = request_id
        self.server = server
        self.hook = hook
        self.max_bytes = max_bytes
        self.start: Message | None = None
        self.held: list[bytes] = []
        self.size = 0
        self.mode = ""
        self.failure: Failure | None = None

    async def __call__(self, message: Message) -> None:
        if self.failure is not None:
            return
        if message["type"] == "http.response.start":
            content_type = next((v for k, v in message.get("headers", ()) if k == b"content-type"), b"")
            sse = is_event_stream(content_type)
            if message["status"] == 200 and (sse or is_json(content_type)):
                self.start, self.mode = message, "sse" if sse else "json"
                return
            self.mode = "pass"
            await self.send(self.hook(message) if self.hook is not None else message)
            return
        if self.mode == "pass" or message["type"] != "http.response.body":
            await self.send(message)
            return
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        self.held.append(chunk)
        self.size += len(chunk)
        if self.mode == "json":
            if more and self.size <= self.max_bytes:
                return
            decided = _message(b"".join(self.held)) if not more else None
        else:
            decided = self._first_event()
            if decided is None and more and self.size <= self.max_bytes:
                return
        if decided is not None and self._outage(decided):
            return
        await self.flush(more)

    async def flush(self, more: bool = False) -> None:
        """Pass on what is held (the answer is this replica's: the client gets it as it came)."""
        if self.start is not None:
            start, self.start = self.start, None
            await self.send(self.hook(start) if self.hook is not None else start)
        if self.mode != "pass" and (self.held or not more):
            held, self.held = b"".join(self.held), []
            self.mode = "pass"
            await self.send({"type": "http.response.body", "body": held, "more_body": more})

    def _first_event(self) -> dict[str, Any] | None:
        """The first message of the events held so far (None while none is complete)."""
        data = b"".join(self.held)
        while data:
            ends = [index for marker in _EVENT_ENDS if (index := data.find(marker)) >= 0]
            if not ends:
                return None
            event, data = data[: min(ends)], data[min(ends) :].lstrip(b"\r\n")
            lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
            if lines:
                return _message(lines[0]) or {}
        return None

    def _outage(self, message: dict[str, Any]) -> bool:
        """Whether `message` is this replica's bridge saying its process did not serve the request."""
        if message.get("id") != self.request_id or "error" not in message:
            return False
        error = message["error"]
        if not isinstance(error, dict) or error.get("code") not in _OUTAGES:
            return False
        data = error.get("data")
        if not isinstance(data, dict) or data.get("server") != self.server:
            return False  # a tool's own error that happens to use one of these codes: the backend's answer
        nothing_ran = error.get("code") == ErrorCode.UNAVAILABLE
        self.failure = Failure(not nothing_ran, str(error.get("message", "process failed"))[:200])
        return True


def _message(data: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None
