"""Primary and fallback routes: one tool (or prompt, or resources under a URI prefix) of the aggregate,
served by the first backend that can.

A :class:`Route` names a tool or a prompt and the backends that offer it, in order: the
primary, then the fallbacks. Every backend of a route offers it under the **same name**
(the route's name, which is also its public name in the aggregate: listed once, never
namespaced; the members' own entries `vendor_a__search` are not listed and not callable
at the aggregate). A `resource_prefix` route does the same for every resource whose URI
starts with the prefix: listed once under its own URI (from the first backend of the route
that lists it), and read from the primary, else from each fallback. A call goes into the
primary's own stack; the route moves on to the next backend only when the call did not get
an answer from the one it tried
(:mod:`.fallback`), and only when that is safe (:func:`~mcp_middleware.router.safety.retry_safe`).

>>> route = Route(tool="search", primary="vendor_a", fallback=("vendor_b",))
>>> route.servers, route.kind, route.name
(('vendor_a', 'vendor_b'), 'tools', 'search')
>>> table = RouteTable([route], servers=["vendor_a", "vendor_b"])
>>> table.find("tools/call", {"name": "search"}) is route
True
>>> docs = Route(resource_prefix="docs://", primary="vendor_a", fallback=("vendor_b",))
>>> RouteTable([docs], servers=["vendor_a", "vendor_b"]).find("resources/read", {"uri": "docs://guide"}) is docs
True
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .names import SERVER_NAME_PATTERN

__all__ = ["Route", "RouteTable", "check_route", "route_problems"]

RouteKind = Literal["tools", "prompts", "resources"]

_PORTABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""The route's name is its public name: within the alphabet the aggregate keeps every name in."""

_METHOD_KIND: dict[str, RouteKind] = {"tools/call": "tools", "prompts/get": "prompts"}
_MAX_PREFIX = 200
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]*")
"""A URI prefix: a scheme, its colon, then anything printable without spaces (`docs://`, `file:///srv/`)."""


@dataclass(frozen=True, slots=True)
class Route:
    """A tool, a prompt or the resources under a URI prefix, served by `primary`, else by each of `fallback`.

    Give exactly one of `tool`, `prompt` or `resource_prefix`: the name every backend of the route
    offers it under (the URIs it starts, for resources), and the name the aggregate lists it under
    (resources keep their own URIs). `allow_retry=True` is the operator's
    promise that running the tool twice is harmless: a call that timed out or failed after
    it was sent then moves to the next backend even when the tool is not marked
    `readOnlyHint`/`idempotentHint` (reads and prompts always may).
    """

    primary: str
    fallback: tuple[str, ...] = ()
    tool: str | None = None
    prompt: str | None = None
    allow_retry: bool = False
    resource_prefix: str | None = None
    servers: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fallback", tuple(self.fallback))
        problems = route_problems(self)
        if problems:
            raise ValueError(f"route {self.name!r}: {'; '.join(message for _, message in problems)}")
        object.__setattr__(self, "servers", (self.primary, *self.fallback))

    @property
    def kind(self) -> RouteKind:
        return "tools" if self.tool is not None else "prompts" if self.prompt is not None else "resources"

    @property
    def name(self) -> str:
        return self.tool if self.tool is not None else self.prompt or self.resource_prefix or ""

    def describe(self) -> str:
        return f"resources {self.name!r}*" if self.kind == "resources" else f"{self.kind[:-1]} {self.name!r}"

    def covers(self, uri: str) -> bool:
        """Whether a resource `uri` is this route's (a resource-prefix route only)."""
        return self.resource_prefix is not None and uri.startswith(self.resource_prefix)

    def among(self, servers: Collection[str]) -> Route | None:
        """This route with only the backends in `servers` (in order), or None when none is left."""
        kept = [server for server in self.servers if server in servers]
        if not kept:
            return None
        return Route(kept[0], tuple(kept[1:]), self.tool, self.prompt, self.allow_retry, self.resource_prefix)


def route_problems(route: Route, servers: Collection[str] | None = None) -> list[tuple[str, str]]:
    """`(key, message)` for everything wrong with `route` (given the known `servers`, when given)."""
    return check_route(route.tool, route.prompt, route.primary, route.fallback, servers, route.resource_prefix)


def check_route(
    tool: object,
    prompt: object,
    primary: object,
    fallback: Sequence[object],
    servers: Collection[str] | None,
    resource_prefix: object = None,
) -> list[tuple[str, str]]:
    """The rule of :class:`Route` on raw values (the gateway's config reader says it with key and line)."""
    problems: list[tuple[str, str]] = []
    named = (("tool", tool), ("prompt", prompt), ("resource_prefix", resource_prefix))
    given = [key for key, value in named if value is not None]
    if len(given) != 1:
        problems.append(
            (
                "tool",
                "a route needs exactly one of tool, prompt or resource_prefix" + (f", not {given}" if given else ""),
            )
        )
    for key, value in (("tool", tool), ("prompt", prompt)):
        if value is not None and (not isinstance(value, str) or not _PORTABLE.fullmatch(value)):
            problems.append((key, f"must match [A-Za-z0-9_-]{{1,64}} (it is the public name too), not {value!r}"))
    if resource_prefix is not None and (
        not isinstance(resource_prefix, str)
        or len(resource_prefix) > _MAX_PREFIX
        or not _PREFIX.fullmatch(resource_prefix)
    ):
        shown = repr(resource_prefix)[:80]
        problems.append(("resource_prefix", f"must be a URI prefix with its scheme, such as 'docs://', not {shown}"))
    elif isinstance(resource_prefix, str) and servers is not None and resource_prefix.partition("+")[0] in servers:
        problems.append(("resource_prefix", f"{resource_prefix!r} reads as a namespaced URI of a server"))
    for key, name in (("primary", primary), *(("fallback", name) for name in fallback)):
        if not isinstance(name, str) or not SERVER_NAME_PATTERN.fullmatch(name):
            problems.append((key, f"{name!r} is not a server name"))
        elif servers is not None and name not in servers:
            problems.append((key, f"{name!r} is not a server of the aggregate{did_you_mean(name, servers)}"))
    if primary in fallback:
        problems.append(("fallback", f"{primary!r} is the primary: a server cannot be its own fallback"))
    repeated = sorted({str(name) for name in fallback if list(fallback).count(name) > 1})
    if repeated:
        problems.append(("fallback", f"names {', '.join(map(repr, repeated))} more than once"))
    return problems


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {found[0]!r}?" if found else ""


class RouteTable:
    """The routes of one aggregate, found by the request that names them (one dict lookup)."""

    def __init__(self, routes: Iterable[Route], *, servers: Collection[str]) -> None:
        self.routes = tuple(routes)
        self._by_name: dict[RouteKind, dict[str, Route]] = {"tools": {}, "prompts": {}, "resources": {}}
        for route in self.routes:
            problems = route_problems(route, servers)
            if problems:
                raise ValueError(f"route {route.name!r}: {'; '.join(message for _, message in problems)}")
            names = self._by_name[route.kind]
            if route.name in names:
                raise ValueError(f"two routes for {route.describe()}")
            names[route.name] = route
        # The longest prefix decides a URI two prefixes cover (`docs://` and `docs://internal/`).
        self._prefixes = sorted(self._by_name["resources"].values(), key=lambda route: -len(route.name))

    def __bool__(self) -> bool:
        return bool(self.routes)

    def named(self, kind: str) -> Mapping[str, Route]:
        """The routes of one kind of list (`"tools"`, `"prompts"`, `"resources"`: by prefix), by name."""
        if kind == "tools":
            return self._by_name["tools"]
        if kind == "resources":
            return self._by_name["resources"]
        return self._by_name["prompts"] if kind == "prompts" else {}

    def covering(self, uri: str) -> Route | None:
        """The resource route whose prefix `uri` starts with (the longest), or None."""
        return next((route for route in self._prefixes if uri.startswith(route.name)), None)

    def find(self, method: str | None, params: Mapping[str, Any] | None) -> Route | None:
        """The route a `tools/call` or `prompts/get` names, or the one a `resources/read`'s URI is under; None."""
        if method == "resources/read" and self._prefixes and params is not None:
            uri = params.get("uri")
            return self.covering(uri) if isinstance(uri, str) else None
        kind = _METHOD_KIND.get(method or "")
        if kind is None or params is None:
            return None
        name = params.get("name")
        return self._by_name[kind].get(name) if isinstance(name, str) else None

    def members(self, kind: str) -> dict[tuple[str, str], Route]:
        """(server, name) → route, for every backend item a tool or prompt route stands for."""
        if kind == "resources":
            return {}  # resources are matched by prefix (:meth:`covering`), not by name
        return {(server, name): route for name, route in self.named(kind).items() for server in route.servers}
