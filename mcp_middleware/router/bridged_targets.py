"""Where the aggregate's own server sends what the relay does not route (the SDK bridge's calls).

These calls reach a backend through the aggregate's session to it, not through the backend's stack,
so the public name is resolved here, and the backend's curation judges and renames back here too.
"""

from __future__ import annotations

from collections.abc import Mapping

from mcp.shared.exceptions import MCPError
from starlette.types import Scope

from mcp_middleware.core import ErrorCode

from .backends import Backend
from .bridge import down_alone
from .catalog import Catalog
from .catalog_kinds import Kind
from .curation import unknown_error
from .listing import ListGate

__all__ = ["bridged_name", "bridged_uri", "watchable_uri"]


async def bridged_name(
    catalog: Catalog, backends: Mapping[str, Backend], kind: Kind, public_name: str, noun: str
) -> tuple[str, str]:
    """`(server, the backend's own name)` of a tool or prompt, or the error a client reads."""
    target = await catalog.resolve(kind, public_name)
    if target is None:
        refused = catalog.refusal(kind, public_name)
        if refused is not None:
            _, code, message, data = refused[0].refusal_error(noun, public_name, refused[1])
            raise MCPError(code, message, data=data)
        if (down := down_alone(backends, catalog.current(kind))) is not None:  # see bridge.py
            raise MCPError(ErrorCode.UNAVAILABLE, f"Backend {down} is unavailable", data={"server": down})
        _, code, message, data = unknown_error(noun, public_name)
        raise MCPError(code, message, data=data)
    return target[0], catalog.backend_name(kind, *target)


async def bridged_uri(catalog: Catalog, public_uri: str, *, template: bool = False) -> tuple[str, str]:
    """`(server, the backend's own URI)` of a resource (or template), or the error a client reads."""
    target = await catalog.resolve_uri(public_uri, template=template)
    if target is None:
        _, code, message, unknown = unknown_error("resource", public_uri)
        raise MCPError(code, message, data=unknown)
    curation = catalog.curations.get(target[0])
    if curation is not None:  # no stack on this path: its curation judges here, and renames back
        backend_uri, decision = curation.resources.decide_public(target[1], template=template)
        if not decision.visible or backend_uri is None:
            _, code, message, data = curation.refusal_error("resource", public_uri, decision.rule)
            raise MCPError(code, message, data=data)
        return target[0], backend_uri
    return target


async def watchable_uri(
    catalog: Catalog, gates: Mapping[str, ListGate], public_uri: str, scope: Scope | None = None
) -> tuple[str, str] | None:
    """A resource to watch (in its backend's spelling), unless its backend's curation hides it or its
    list gate would refuse the caller's `resources/subscribe` of it (then it is not watched at all)."""
    target = await catalog.resolve_uri(public_uri)
    curation = catalog.curations.get(target[0]) if target is not None else None
    if target is not None and curation is not None:
        backend_uri, decision = curation.resources.decide_public(target[1])
        target = (target[0], backend_uri) if decision.visible and backend_uri is not None else None
    gate = gates.get(target[0]) if target is not None else None
    if target is not None and gate is not None and isinstance(scope, dict):
        return target if gate(scope, "resources/subscribe", target[1]) else None
    return target
