"""What the aggregate's catalog is made of: the kinds of list, one backend's listing, and fetching it.

:class:`~mcp_middleware.router.catalog.Catalog` merges these; this module holds the values it passes
around and the one function that walks a backend's own pages.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import mcp_types as types

from .names import NameTable

__all__ = [
    "KINDS",
    "KIND_OF_LIST",
    "PROMPTS",
    "RESOURCES",
    "TEMPLATES",
    "TOOLS",
    "BackendFailure",
    "Gathered",
    "Kind",
    "Listing",
    "Merged",
    "SharedFetch",
    "fetch_all",
    "is_fresh",
]

_MAX_BACKEND_PAGES = 1000


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of list the aggregate merges."""

    name: str  # "tools", "prompts", "resources", "resource_templates"
    key: str  # the attribute that identifies an item: name, uri, uri_template
    change: str  # the list_changed family it belongs to
    call: str  # the method that uses an item (what list filtering asks about)


TOOLS = Kind("tools", "name", "tools", "tools/call")
PROMPTS = Kind("prompts", "name", "prompts", "prompts/get")
RESOURCES = Kind("resources", "uri", "resources", "resources/read")
TEMPLATES = Kind("resource_templates", "uri_template", "resources", "resources/read")
KINDS = (TOOLS, PROMPTS, RESOURCES, TEMPLATES)
KIND_OF_LIST = {
    "tools/list": TOOLS,
    "prompts/list": PROMPTS,
    "resources/list": RESOURCES,
    "resources/templates/list": TEMPLATES,
}


@dataclass(frozen=True, slots=True)
class BackendFailure:
    """Why one backend is missing from a merged list."""

    server: str
    error: Literal["timeout", "unavailable", "error"]
    message: str

    def describe(self) -> dict[str, str]:
        return {"server": self.server, "error": self.error, "message": self.message}


_generations = itertools.count(1)
_serials = itertools.count(1)


@dataclass(slots=True)
class Listing:
    items: list[Any]
    fetched_at: float
    generation: int = field(default_factory=lambda: next(_generations))


@dataclass(slots=True)
class Merged:
    """A merged, namespaced, sorted list of one kind, and how to route back."""

    kind: str  # the Kind's name
    items: list[Any]  # public copies, sorted by public key
    keys: list[str]  # their public keys, same order
    servers: list[str]  # the backend of each item, same order
    originals: list[str]  # each item's key at its backend, same order
    table: NameTable | None  # tools/prompts
    uris: dict[str, tuple[str, str]]  # resources (NEVER mode): public uri -> (server, uri)
    failures: list[BackendFailure]
    collisions: list[dict[str, str | None]]
    hidden: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Tools/prompts: the public name a curated-away item would have -> (server, the rule that hides it)."""
    serial: int = field(default_factory=lambda: next(_serials))
    """Unique per merge: answers built from this list can be reused while it is the current one."""


@dataclass
class SharedFetch:
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: Listing | BackendFailure | None = None


@dataclass
class Gathered:
    listings: dict[str, Listing] = field(default_factory=dict)
    failures: list[BackendFailure] = field(default_factory=list)


async def fetch_all(client: Any, kind: Kind) -> list[Any]:
    """Every item of one kind from one backend, following its own pages (an empty string is a cursor)."""
    session = client.session
    fetch: Callable[..., Any] = {
        "tools": session.list_tools,
        "prompts": session.list_prompts,
        "resources": session.list_resources,
        "resource_templates": session.list_resource_templates,
    }[kind.name]
    items: list[Any] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(_MAX_BACKEND_PAGES):
        result = await fetch(params=types.PaginatedRequestParams(cursor=cursor))
        items.extend(getattr(result, kind.name))
        cursor = result.next_cursor
        if cursor is None or cursor in seen:  # a cursor that does not advance would loop forever
            break
        seen.add(cursor)
    return items


def is_fresh(listing: Listing | None, now: float, ttl: float) -> bool:
    return listing is not None and now - listing.fetched_at < ttl
