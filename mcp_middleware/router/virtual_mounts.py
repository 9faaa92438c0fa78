"""`McpRouter.virtual_server`: chosen items of mounted backends served at a path of their own.

A virtual server is an aggregate over some mounts, limited to the tools, prompts and resources it
selects; its door (authentication with its own audience) wraps it, and its calls still pass each
backend's own stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import ANSWERED, read_request
from mcp_middleware.core.kernel import EVERY_PATH
from mcp_middleware.core.protocol import PROTECTED_RESOURCE_PREFIX

from ._links import BackendLink
from ._stacks import MountMiddleware
from ._stacks import list_gate as _list_gate
from ._stacks import not_found as _not_found
from ._stacks import wrap as _wrap
from .aggregate import AggregateServer
from .names import NamingPolicy, validate_server_name
from .virtual import VirtualServer, selections_of

if TYPE_CHECKING:
    from .mounts import Mount

__all__ = ["VirtualMounts"]


class VirtualMounts:
    """The virtual servers of :class:`~mcp_middleware.router.McpRouter` (a mixin over its mounts)."""

    prefix: str
    aggregate_path: str | None
    naming: NamingPolicy
    mounts: dict[str, Mount]
    _running: bool
    _prm: dict[str, ASGIApp]
    _links: dict[str, BackendLink]
    _aggregate_options: dict[str, Any]
    _virtual: dict[str, VirtualServer]
    _virtual_apps: dict[str, tuple[AggregateServer, ASGIApp, bool]]

    def virtual_server(
        self,
        name: str,
        *,
        tools: Sequence[str] = (),
        prompts: Sequence[str] = (),
        resources: Sequence[str] = (),
        path: str | None = None,
        middleware: Sequence[MountMiddleware] = (),
        own_middleware: Sequence[MountMiddleware] = (),
        naming: NamingPolicy | None = None,
    ) -> None:
        """Serve a virtual server at `path` (default `{prefix}/{name}`): chosen items of mounted backends.

        `tools`/`prompts` are `"server:glob"` over each backend's curated public names, `resources`
        `"server:uri-prefix"`. `middleware` is its door (authentication with its own audience and
        metadata); `own_middleware` wraps what it answers itself (lists, initialize); calls still pass
        each backend's own stack. `naming` defaults to the router's.

        >>> # router.virtual_server("support", tools=["crm:*", "tickets:create"])
        """
        if self._running:
            raise RuntimeError("virtual_server() before the router starts")
        validate_server_name(name)
        selections = selections_of(tools, prompts, resources)
        unknown = sorted(set(selections) - set(self.mounts))
        if unknown:
            raise ValueError(f"virtual server {name!r} selects from {unknown}, which are not mounted")
        if not selections:
            raise ValueError(f"virtual server {name!r} selects nothing")
        path = (path or f"{self.prefix}/{name}").rstrip("/") or "/"
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        taken = {self.aggregate_path, *(f"{self.prefix}/{m}" for m in self.mounts), *self._virtual}
        if name in self.mounts or path in taken:
            raise ValueError(f"virtual server {name!r}: {path} is already served")
        self._virtual[path] = VirtualServer(name, path, selections, tuple(middleware), tuple(own_middleware), naming)
        if middleware:
            self._prm[f"{PROTECTED_RESOURCE_PREFIX}{path}"] = _wrap(_not_found, middleware)
        self._virtual_apps.clear()

    def virtual_servers(self) -> dict[str, AggregateServer]:
        """Each virtual server's aggregate by path (built on first use, over the mounts as they are)."""
        if len(self._virtual_apps) != len(self._virtual):
            self._virtual_apps = {path: self._build_virtual(virtual) for path, virtual in self._virtual.items()}
        return {path: entry[0] for path, entry in self._virtual_apps.items()}

    def _build_virtual(self, virtual: VirtualServer) -> tuple[AggregateServer, ASGIApp, bool]:
        members = {name: self.mounts[name] for name in virtual.selections}
        server = AggregateServer(
            {name: mount.backend for name, mount in members.items()},
            naming=virtual.naming or self.naming,
            shared_links=self._links,
            stacks={name: mount.app for name, mount in members.items()},
            stack_paths={name: f"{self.prefix}/{name}" for name in members},
            gates={name: gate for name, mount in members.items() if (gate := _list_gate(mount.app)) is not None},
            curations={name: mount.curation for name, mount in members.items() if mount.curation is not None},
            selections=virtual.selections,
            own_middleware=(lambda app: _wrap(app, virtual.own)) if virtual.own else None,
            **{**self._aggregate_options, "name": virtual.name},
        )
        return server, _wrap(server, virtual.door), bool(virtual.door)

    async def _serve_virtual(
        self, found: tuple[AggregateServer, ASGIApp, bool], scope: Scope, receive: Receive, send: Send
    ) -> None:
        _, entry, door = found
        if door:
            _, receive = await read_request(scope, receive, send, EVERY_PATH)
            if receive is ANSWERED:
                return
        await entry(scope, receive, send)
