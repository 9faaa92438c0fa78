"""Virtual servers: one MCP endpoint assembled from chosen tools, prompts and resources of several backends.

A virtual server is an :class:`~mcp_middleware.router.AggregateServer` restricted to a selection
(`"crm:*"`, `"tickets:create"`): the same catalog, names, pages and relay, over the backends it names
only, and only what it selects of each (matched against the backend's curated public names, so a
curated-away tool can never be selected). Its calls go into each backend's own stack (curation,
authorization, rate limits, breaker), exactly as from the aggregate; it has its own door (its own
audience and RFC 9728 metadata) and its own path.

>>> parse_selection(["crm:*", "tickets:create"], "tools")
{'crm': ('*',), 'tickets': ('create',)}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .curation import Selection
from .names import NamingPolicy

__all__ = ["VirtualServer", "parse_selection", "selections_of"]


def parse_selection(patterns: Iterable[str], what: str) -> dict[str, tuple[str, ...]]:
    """`["server:glob", ...]` → `{server: (glob, ...)}`; a pattern without `server:` is an error."""
    chosen: dict[str, list[str]] = {}
    for pattern in patterns:
        server, colon, glob = pattern.partition(":")
        if not colon or not server or not glob:
            raise ValueError(f"{what}: {pattern!r} must be 'server:{'uri-prefix' if what == 'resources' else 'glob'}'")
        chosen.setdefault(server, []).append(glob)
    return {server: tuple(globs) for server, globs in chosen.items()}


def selections_of(
    tools: Sequence[str] = (), prompts: Sequence[str] = (), resources: Sequence[str] = ()
) -> dict[str, Selection]:
    """Each named backend's :class:`Selection` (a backend named by no pattern is not part of the server)."""
    by_kind = {
        "tools": parse_selection(tools, "tools"),
        "prompts": parse_selection(prompts, "prompts"),
        "resources": parse_selection(resources, "resources"),
    }
    servers = dict.fromkeys(server for chosen in by_kind.values() for server in chosen)
    return {
        server: Selection(
            tools=by_kind["tools"].get(server, ()),
            prompts=by_kind["prompts"].get(server, ()),
            resources=by_kind["resources"].get(server, ()),
        )
        for server in servers
    }


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """What `McpRouter.virtual_server()` was told: a name, a path, each backend's selection, its middlewares."""

    name: str
    path: str
    selections: Mapping[str, Selection]
    door: tuple[Any, ...] = ()
    """Around the whole endpoint (authentication with its own audience), outermost first."""
    own: tuple[Any, ...] = ()
    """Around what it answers itself (lists, initialize): its own rate-limit namespace and cache."""
    naming: NamingPolicy | None = None
