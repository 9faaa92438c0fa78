"""The three kinds of backend a router mounts, and how each is reached.

A backend is reached in one of two ways. A **path mount** hands the raw HTTP
exchange to it: an in-process ASGI app is called directly (no HTTP), a remote
URL goes through the :class:`~mcp_middleware.router.proxy.StreamingProxy`; a
stdio command has no HTTP side, so its path mount is a one-backend aggregate.
The **aggregate** talks to every backend as an MCP client (the `mcp` SDK's
`Client`), through :meth:`Backend.open_client`, and keeps that session open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import get_mcp_request
from mcp_middleware.core.lifespan import run_lifespan

from ._asgi_transport import AsgiStreamTransport
from .credentials import BackendCredentials
from .process_group import ServerGroup
from .proxy import StreamingProxy, pooled_client
from .sessions import SEALED_SESSION_SCOPE_KEY, SealedSession, refuse_session
from .stderr import logged_stderr

__all__ = ["Backend", "HttpBackend", "InProcessBackend", "StdioBackend", "run_lifespan"]

logger = logging.getLogger("mcp_middleware.router")

_INPROCESS_ORIGIN = "http://127.0.0.1:1"
"""The origin the aggregate uses for in-process apps: no socket is ever opened to it (the SDK's Host check
wants a loopback host with a port; port 1 is one nobody serves HTTP on)."""


class _NoInProcessRequestLog(logging.Filter):
    """`httpx2` logs every request at INFO; the aggregate's in-process calls are not HTTP requests anyone
    made, and logging each one (through a rich handler, say) cost more than the call itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 1 and str(args[1]).startswith(_INPROCESS_ORIGIN))


logging.getLogger("httpx2").addFilter(_NoInProcessRequestLog())


class Backend:
    """What the router needs from any backend. Subclasses: in-process, HTTP, stdio.

    `timeout` bounds each aggregate call to this backend (list fan-out and calls).
    """

    timeout: float
    mode: Literal["auto", "legacy"]
    """How the aggregate's session negotiates: "auto" (2026-07-28 when the backend speaks it) or "legacy"."""

    def path_app(self) -> ASGIApp | None:
        """The ASGI app a path mount dispatches to, or None when the router must bridge (stdio)."""
        raise NotImplementedError

    def open_client(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Client]:
        """A connected `mcp.Client` to this backend (options: the SDK `Client` callbacks; `mode` overrides)."""
        raise NotImplementedError

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        """What must run while the router runs (an app's lifespan, a connection pool)."""
        return contextlib.nullcontext()

    @property
    def supervised(self) -> bool:
        """Whether a dead session to it should be restarted with backoff and watched by health checks."""
        return False

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(eq=False)
class InProcessBackend(Backend):
    """An ASGI app in this process: `MCPServer.streamable_http_app()`, a `fastmcp` `http_app()`, any MCP app.

    The router runs the app's lifespan (or hand it to a host app: `McpRouter.lifespan()`).
    `path` is where the app serves MCP (`/mcp` for both SDKs' defaults).

    >>> from mcp.server.mcpserver import MCPServer
    >>> backend = InProcessBackend(MCPServer("github").streamable_http_app())
    """

    app: ASGIApp
    path: str = "/mcp"
    timeout: float = 30.0
    mode: Literal["auto", "legacy"] = "auto"
    run_lifespan: bool = True
    """False when something else (a host app) already runs the app's lifespan."""

    def path_app(self) -> ASGIApp:
        return _AtPath(self.app, self.path)

    @contextlib.asynccontextmanager
    async def open_client(self, **options: Any) -> AsyncIterator[Client]:
        transport = AsgiStreamTransport(self.app)
        async with httpx2.AsyncClient(transport=transport, base_url=_INPROCESS_ORIGIN, timeout=None) as http:
            streams = streamable_http_client(f"{_INPROCESS_ORIGIN}{self.path}", http_client=http)
            async with Client(streams, mode=options.pop("mode", None) or self.mode, cache=None, **options) as client:
                yield client

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        return run_lifespan(self.app) if self.run_lifespan else contextlib.nullcontext()

    def describe(self) -> str:
        return f"in-process app at {self.path}"


@dataclass(eq=False)
class HttpBackend(Backend):
    """A remote Streamable HTTP MCP endpoint.

    `headers` are this backend's own credentials and settings (`Authorization`, API
    keys); the client's token is never passed on unless `forward_authorization`.
    The path mount's proxy and the aggregate's session each keep their pool of
    keep-alive connections to it (none is opened per request).
    `credentials` give each caller's requests a token exchanged for this backend (RFC 8693) and the
    aggregate's shared session a client-credentials token; `ssl_context` carries a client
    certificate and CA bundle (mTLS), built once.

    >>> backend = HttpBackend("https://tools.internal/mcp", headers={"Authorization": "Bearer s3cret"})
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    forward_authorization: bool = False
    timeout: float = 30.0
    mode: Literal["auto", "legacy"] = "auto"
    connect_timeout: float = 10.0
    max_connections: int = 200
    verify: bool = True
    name: str | None = None
    """How the logs name it (the router sets the mount's name when left unset; else its URL)."""
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    credentials: BackendCredentials | None = field(default=None, repr=False)
    _client: httpx2.AsyncClient | None = field(default=None, init=False, repr=False)
    _proxy: StreamingProxy | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = pooled_client(
                headers=self.headers,
                connect_timeout=self.connect_timeout,
                max_connections=self.max_connections,
                max_keepalive=self.max_connections,
                verify=self.ssl_context if self.ssl_context is not None else self.verify,
                auth=self.credentials.service_auth() if self.credentials is not None else None,
            )
        return self._client

    def path_app(self) -> ASGIApp:
        if self._proxy is None:
            self._proxy = StreamingProxy(
                self.url,
                name=self.name,
                headers=self.headers,
                forward_authorization=self.forward_authorization,
                connect_timeout=self.connect_timeout,
                max_idle=self.max_connections,
                verify=self.verify,
                ssl_context=self.ssl_context,
                credentials=self.credentials,
            )
        return self._proxy

    @contextlib.asynccontextmanager
    async def open_client(self, **options: Any) -> AsyncIterator[Client]:
        streams = streamable_http_client(self.url, http_client=self.client)
        async with Client(streams, mode=options.pop("mode", None) or self.mode, cache=None, **options) as client:
            yield client

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()
            if self._proxy is not None:
                await self._proxy.aclose()
            if self.credentials is not None:
                await self.credentials.aclose()

    def describe(self) -> str:
        return self.url


@dataclass(eq=False)
class StdioBackend(Backend):
    """A local command speaking MCP over stdin/stdout, supervised.

    The aggregate keeps one session (one process) open; when the process dies it is
    started again with exponential backoff (`restart_delay` doubling up to
    `max_restart_delay`), its lists are fetched anew and clients are told the lists
    changed. `health_interval` seconds between pings notice a death while idle. When a session
    ends (shutdown, crash, restart), whatever is left of the command's process group is ended with it
    (SIGTERM, then SIGKILL after 2 s), so a wrapper such as `npx` or `sh -c` leaves nothing behind.
    The command's stderr is logged line by line as `[name] …` on `mcp_middleware.router.stdio`
    (`name`: the server's mount name unless set here).

    >>> backend = StdioBackend("npx", ["-y", "@modelcontextprotocol/server-everything"])
    """

    command: str
    args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    timeout: float = 30.0
    mode: Literal["auto", "legacy"] = "auto"
    restart_delay: float = 0.5
    max_restart_delay: float = 30.0
    health_interval: float = 5.0
    name: str | None = None
    """The prefix of its stderr lines in the log (the router sets the mount's name when left unset)."""

    def path_app(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def open_client(self, **options: Any) -> AsyncIterator[Client]:
        group = ServerGroup(self.command, self.args)
        params = StdioServerParameters(
            command=group.command, args=group.args, env=dict(self.env) if self.env else None, cwd=self.cwd
        )
        mode = options.pop("mode", None) or self.mode
        async with logged_stderr(self.name or os.path.basename(self.command)) as errlog:
            try:
                async with Client(stdio_client(params, errlog=errlog.file), mode=mode, cache=None, **options) as client:
                    errlog.spawned()
                    group.learn()
                    yield client
            finally:
                await group.end()

    @property
    def supervised(self) -> bool:
        return True

    def describe(self) -> str:
        return " ".join([self.command, *self.args])


class _AtPath:
    """Present a mount's request to an in-process app at the path the app serves."""

    __slots__ = ("app", "path", "raw_path")

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path
        self.raw_path = path.encode("latin-1")

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain call returning the app's awaitable: no frame of ours stays in the await chain.
        ticket: SealedSession | None = scope.get(SEALED_SESSION_SCOPE_KEY)
        if ticket is not None and ticket.origin is not None and _carries(scope, ticket.session_id):
            return _not_issued_here(scope, send, ticket)  # a remote server's session: the name moved here since
        root: str = scope.get("root_path", "")
        if root:
            path, raw_path = root + self.path, root.encode("latin-1") + self.raw_path
            return self.app({**scope, "path": path, "raw_path": raw_path}, receive, send)
        return self.app({**scope, "path": self.path, "raw_path": self.raw_path}, receive, send)


def _carries(scope: Scope, session_id: str | None) -> bool:
    """Whether the request carries the handle's own session id (a pool re-created elsewhere sends its own)."""
    wanted = session_id.encode("latin-1") if session_id is not None else None
    return any(name == b"mcp-session-id" and value == wanted for name, value in scope["headers"])


def _not_issued_here(scope: Scope, send: Send, ticket: SealedSession) -> Awaitable[None]:
    """A sealed handle's session issued by a remote server reaches no in-process app: unknown (origins.py)."""
    ticket.refused = True  # not re-opened either: the client initializes again
    view = get_mcp_request(scope)
    return refuse_session(scope, send, view.id if view is not None else None, moved=True)
