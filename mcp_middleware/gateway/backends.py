"""A configured server as a router backend: a remote URL, a stdio command or an in-process app."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp

from mcp_middleware.core.errors import McpMiddlewareError
from mcp_middleware.router import Backend, HttpBackend, InProcessBackend, PoolBackend, StdioBackend
from mcp_middleware.router.credentials import BackendCredentials

from .config import ServerSettings
from .validation import check_command, import_target

__all__ = ["BackendLoadError", "load_backend"]

_PYTHON = "{python}"
"""In a `command`: the interpreter running the gateway."""

FRONT_DOOR_CHECKS_HOST = TransportSecuritySettings(enable_dns_rebinding_protection=False)
"""For the SDK apps the gateway builds (in-process servers, the aggregate): the front door checks `Host` and
`Origin` against `[front_door]` for every request, so the SDK's own check, which allows loopback names only
unless told otherwise, would refuse (421) every public host name the operator allowed (a load balancer's,
API Gateway's)."""


class BackendLoadError(McpMiddlewareError):
    """A server that cannot become a backend: `key` is the setting at fault (`app`, `command`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def load_backend(server: ServerSettings, folder: Path) -> Backend:
    """The backend `server` describes; `folder` (the config file's) resolves imports and is a child's cwd.

    Raises :class:`BackendLoadError` when an `app` cannot be imported or is not an MCP app, or a
    `command`'s program does not exist (`serve` would otherwise start and report no tools).
    """
    if server.pool is not None and not server.command:
        own = _own_credentials(server)  # one TLS context for all replicas, one exchange (its cache) for the pool
        credentials = own.pop("credentials", None)
        replicas = [
            HttpBackend(url, headers=dict(server.headers), timeout=server.timeout, **own) for url in server.pool.urls
        ]
        return _pool_backend(server, replicas, credentials)
    if server.url:
        return HttpBackend(server.url, headers=dict(server.headers), timeout=server.timeout, **_own_credentials(server))
    if server.command:
        command = [sys.executable if part == _PYTHON else part for part in server.command]
        missing = check_command(command, folder, sys.executable)
        if missing is not None:
            raise BackendLoadError("command", f"cannot be started: {missing}")
        env = dict(server.env) if server.env else None
        if server.pool is not None:  # `replicas = N`: N processes, each's stderr named `name#index`
            processes = [
                StdioBackend(command[0], command[1:], env=env, cwd=str(folder), timeout=server.timeout)
                for _ in range(server.pool.replicas)
            ]
            return _pool_backend(server, processes)
        return StdioBackend(command[0], command[1:], env=env, cwd=str(folder), timeout=server.timeout, name=server.name)
    assert server.app is not None
    try:
        target = import_target(server.app, folder)
    except ImportError as exc:
        raise BackendLoadError("app", f"cannot be imported: {exc}") from exc
    except AttributeError as exc:
        raise BackendLoadError("app", f"cannot be found: {exc}") from exc
    except Exception as exc:  # the module's own code failed (SyntaxError, a missing setting, …)
        raise BackendLoadError("app", f"cannot be imported: {type(exc).__name__}: {exc}") from exc
    try:
        return InProcessBackend(_asgi_app(target), timeout=server.timeout)
    except TypeError as exc:
        raise BackendLoadError("app", str(exc)) from exc
    except Exception as exc:  # a factory function that failed
        raise BackendLoadError("app", f"cannot be built: {type(exc).__name__}: {exc}") from exc


def _pool_backend(
    server: ServerSettings,
    replicas: list[HttpBackend] | list[StdioBackend],
    credentials: BackendCredentials | None = None,
) -> PoolBackend:
    """A pool server: its replicas (URLs with the server's headers, or processes of its command) in a pool."""
    pool = server.pool
    assert pool is not None
    return PoolBackend(
        replicas,
        balance=pool.balance,
        probe_interval=pool.probe_interval,
        probe_timeout=pool.probe_timeout,
        probe_failures=pool.probe_failures,
        retry_tools=pool.retry_tools,
        on_replica_loss=pool.on_replica_loss,
        timeout=server.timeout,
        name=server.name,
        credentials=credentials,
    )


def _own_credentials(server: ServerSettings) -> dict[str, Any]:
    """A url backend's token exchange and TLS context (built once, here); `check-config` saw the files load."""
    own: dict[str, Any] = {}
    if server.exchange is not None:
        try:  # the token endpoint's own TLS files are loaded here
            own["credentials"] = BackendCredentials(server.exchange, backend=server.name)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise BackendLoadError("auth", f"cannot be loaded: {exc}") from exc
    if server.tls is not None:
        try:
            own["ssl_context"] = server.tls.context()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise BackendLoadError("tls", f"cannot be loaded: {exc}") from exc
    return own


def _asgi_app(value: Any) -> ASGIApp:
    """An ASGI app from what `module:attr` named: an `MCPServer`, a `fastmcp.FastMCP`, an ASGI app,
    or a function of no arguments returning one of those (a fresh server per gateway)."""
    if inspect.isfunction(value) and all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in inspect.signature(value).parameters.values()
    ):
        value = value()
    if hasattr(value, "streamable_http_app"):  # mcp SDK MCPServer
        return value.streamable_http_app(transport_security=FRONT_DOOR_CHECKS_HOST)  # type: ignore[no-any-return]
    if hasattr(value, "http_app"):  # fastmcp.FastMCP
        return value.http_app(path="/mcp")  # type: ignore[no-any-return]
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise TypeError(f"is not an MCPServer, a FastMCP server or an ASGI app ({type(value).__name__})")
