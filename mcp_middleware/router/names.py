"""Namespacing for the aggregated endpoint: names that survive real clients, and a way back.

Every tool and prompt of every backend gets one public name within
`[A-Za-z0-9_-]{1,64}` (the budget the strictest clients enforce). The public name
is `{server}{separator}{name}`, or the bare name, depending on the
:class:`PrefixMode`. Where a name would be too long or carries characters outside
the alphabet, it is cut and ends in a stable 8-hex hash of what it stands for, so
it never changes between runs and never depends on the other backends. The
:class:`NameTable` maps every public name back to `(server, name)`; collisions are
resolved deterministically (mount order, then the backend's own order) and reported.

Resource URIs are rewritten reversibly as `{server}+{uri}` (server names never
contain `+`), which keeps URI templates valid templates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, NamedTuple

__all__ = [
    "MAX_NAME_LENGTH",
    "SERVER_NAME_PATTERN",
    "Collision",
    "NameTable",
    "NamingPolicy",
    "PrefixMode",
    "split_uri",
    "template_matches",
    "validate_server_name",
]

MAX_NAME_LENGTH = 64
SERVER_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,48}")
"""Server (mount) names: URL path segments and name prefixes at once."""
_PORTABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_PORTABLE = re.compile(r"[^A-Za-z0-9_-]")
_HASH_LENGTH = 8


class PrefixMode(StrEnum):
    """When a backend's name gets its server prefix."""

    ALWAYS = "always"
    """Every name is `{server}{separator}{name}` (stable when backends come and go)."""
    ON_COLLISION = "on_collision"
    """Bare names; every backend offering a name that another backend offers too gets prefixed."""
    NEVER = "never"
    """Bare names; a name offered by two backends follows `NamingPolicy.on_conflict`."""


def validate_server_name(name: str) -> str:
    """A server name must be usable as a path segment and a name prefix: `[A-Za-z0-9_-]{1,48}`."""
    if not SERVER_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"server name {name!r} must match [A-Za-z0-9_-]{{1,48}}")
    return name


@dataclass(frozen=True, slots=True)
class NamingPolicy:
    """How the aggregate names what it merges.

    >>> policy = NamingPolicy(separator="__", prefix=PrefixMode.ALWAYS)
    >>> table = NameTable.build(policy, [("github", "search"), ("jira", "search")])
    >>> table.names
    ('github__search', 'jira__search')
    >>> table.resolve("jira__search")
    ('jira', 'search')
    """

    separator: str = "__"
    prefix: PrefixMode = PrefixMode.ALWAYS
    on_conflict: Literal["first", "prefix"] = "prefix"
    """With `PrefixMode.NEVER`: `"first"` keeps the name for the first backend (mount order) and
    hides the others' item; `"prefix"` gives every conflicting backend its prefixed name."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,4}", self.separator):
            raise ValueError("separator must be 1-4 characters of [A-Za-z0-9_-] (names must stay portable)")
        object.__setattr__(self, "prefix", PrefixMode(self.prefix))
        if self.on_conflict not in ("first", "prefix"):
            raise ValueError("on_conflict must be 'first' or 'prefix'")

    def prefixed(self, server: str, name: str) -> str:
        return portable(f"{server}{self.separator}{name}")


def portable(candidate: str) -> str:
    """`candidate` if it is within `[A-Za-z0-9_-]{1,64}`, else a cut, cleaned form ending in a stable hash."""
    if _PORTABLE.fullmatch(candidate):
        return candidate
    return _hashed(candidate)


def _hashed(identity: str) -> str:
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    head = _NOT_PORTABLE.sub("_", identity)[: MAX_NAME_LENGTH - _HASH_LENGTH - 1]
    return f"{head}_{digest}" if head else digest


class Collision(NamedTuple):
    """Two backends wanted the same public name; `winner` kept it, `loser` got `assigned` (None = hidden)."""

    name: str
    winner: tuple[str, str]
    loser: tuple[str, str]
    assigned: str | None

    def describe(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "kept": f"{self.winner[0]}:{self.winner[1]}",
            "renamed": f"{self.loser[0]}:{self.loser[1]}",
            "as": self.assigned,
        }


@dataclass(slots=True)
class NameTable:
    """The public names of one kind (tools or prompts), in order, and the way back to each backend.

    Built from `(server, name)` pairs in mount order and each backend's own order;
    the same input always gives the same table.
    """

    names: tuple[str, ...]
    _targets: dict[str, tuple[str, str]]
    _public: dict[tuple[str, str], str]
    collisions: tuple[Collision, ...] = field(default=())

    @classmethod
    def build(
        cls,
        policy: NamingPolicy,
        entries: Iterable[tuple[str, str]],
        *,
        reserved: Mapping[str, tuple[str, str]] | None = None,
    ) -> NameTable:
        """`reserved`: public names taken before any entry (a route's name → its primary's item);
        an entry that wants one of them gets its prefixed or hashed form, as in a collision."""
        pairs = list(dict.fromkeys(entries))  # a backend listing a name twice: first one counts
        counts: dict[str, int] = {}
        for _, name in pairs:
            counts[name] = counts.get(name, 0) + 1
        targets: dict[str, tuple[str, str]] = dict(reserved or {})
        public: dict[tuple[str, str], str] = {}
        collisions: list[Collision] = []
        for server, name in pairs:
            wanted = _wanted(policy, server, name, counts[name] > 1)
            if wanted is None:
                continue
            holder = targets.get(wanted)
            if holder is None:
                assigned: str | None = wanted
            else:
                hide = policy.prefix is PrefixMode.NEVER and policy.on_conflict == "first"
                assigned = None if hide else _free(policy, server, name, targets)
                collisions.append(Collision(wanted, holder, (server, name), assigned))
            if assigned is not None:
                targets[assigned] = (server, name)
                public[(server, name)] = assigned
        return cls(tuple(targets), targets, public, tuple(collisions))

    def resolve(self, public_name: str) -> tuple[str, str] | None:
        """`(server, backend name)` for a public name, or None when no backend offers it."""
        return self._targets.get(public_name)

    def public_name(self, server: str, name: str) -> str | None:
        """The public name of a backend's item, or None when it is hidden by a conflict rule."""
        return self._public.get((server, name))

    def __len__(self) -> int:
        return len(self.names)


def _wanted(policy: NamingPolicy, server: str, name: str, shared: bool) -> str | None:
    mode = policy.prefix
    if mode is PrefixMode.ALWAYS or (shared and mode is PrefixMode.ON_COLLISION):
        return policy.prefixed(server, name)
    if shared and policy.on_conflict == "prefix":  # NEVER with the prefix rule
        return policy.prefixed(server, name)
    return portable(name)


def _free(policy: NamingPolicy, server: str, name: str, taken: dict[str, tuple[str, str]]) -> str:
    """A name for a loser of a collision: the prefixed form, else a hash of its identity (deterministic)."""
    prefixed = policy.prefixed(server, name)
    if prefixed not in taken:
        return prefixed
    identity = f"{server}{policy.separator}{name}"
    salt = 0
    while True:
        candidate = _hashed(identity if salt == 0 else f"{identity}#{salt}")
        if candidate not in taken:
            return candidate
        salt += 1


# --- resource URIs -----------------------------------------------------------------------------


def namespace_uri(server: str, uri: str) -> str:
    """`{server}+{uri}`: reversible, and a URI template stays a template."""
    return f"{server}+{uri}"


def split_uri(public_uri: str, servers: Sequence[str] | set[str] | Mapping[str, object]) -> tuple[str, str] | None:
    """`(server, backend uri)` for a namespaced URI, or None when it names no known server."""
    server, plus, uri = public_uri.partition("+")
    if not plus or server not in servers:
        return None
    return server, uri


def template_matches(template: str, uri: str) -> bool:
    """Whether `uri` is an expansion of an RFC 6570 `template` (simple and reserved expressions)."""
    pattern = _TEMPLATE_PATTERNS.get(template)
    if pattern is None:
        parts = re.split(r"(\{[^}]*\})", template)
        regex = "".join(
            (".+" if part.startswith("{+") else "[^/]*") if part.startswith("{") else re.escape(part) for part in parts
        )
        pattern = _TEMPLATE_PATTERNS[template] = re.compile(regex)
    return pattern.fullmatch(uri) is not None


_TEMPLATE_PATTERNS: dict[str, re.Pattern[str]] = {}
