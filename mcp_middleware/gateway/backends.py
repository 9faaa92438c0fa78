"""A configured server as a router backend: a remote URL, a stdio command or an in-process app."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from mcp_middleware.router import Backend, HttpBackend, InProcessBackend, StdioBackend

from .config import ServerSettings

__all__ = ["load_backend"]

_PYTHON = "{python}"
"""In a `command`: the interpreter running the gateway."""


def load_backend(server: ServerSettings, folder: Path) -> Backend:
    """The backend `server` describes; `folder` (the config file's) resolves imports and is a child's cwd.

    Raises `ImportError`, `AttributeError` or `TypeError` when an `app` cannot be loaded.
    """
    if server.url:
        return HttpBackend(server.url, headers=dict(server.headers), timeout=server.timeout)
    if server.command:
        command = [sys.executable if part == _PYTHON else part for part in server.command]
        env = dict(server.env) if server.env else None
        return StdioBackend(command[0], command[1:], env=env, cwd=str(folder), timeout=server.timeout, name=server.name)
    assert server.app is not None
    return InProcessBackend(_asgi_app(_import(server.app, folder)), timeout=server.timeout)


def _import(target: str, folder: Path) -> Any:
    module_name, _, attribute = target.partition(":")
    for path in (str(folder), str(Path.cwd())):
        if path not in sys.path:
            sys.path.append(path)
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def _asgi_app(value: Any) -> ASGIApp:
    """An ASGI app from what `module:attr` named: an `MCPServer`, a `fastmcp.FastMCP`, an ASGI app,
    or a function of no arguments returning one of those (a fresh server per gateway)."""
    if inspect.isfunction(value) and all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in inspect.signature(value).parameters.values()
    ):
        value = value()
    if hasattr(value, "streamable_http_app"):  # mcp SDK MCPServer
        return value.streamable_http_app()  # type: ignore[no-any-return]
    if hasattr(value, "http_app"):  # fastmcp.FastMCP
        return value.http_app(path="/mcp")  # type: ignore[no-any-return]
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise TypeError(f"{type(value).__name__} is not an MCPServer, a FastMCP server or an ASGI app")
