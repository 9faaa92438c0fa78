"""Curation: which of a backend's tools, prompts and resources exist, under which name and description.

A :class:`Curation` is written in the backend's own names (like every per-backend rule): allow and
deny globs, a rename table (backend name → public name), description and annotation overrides, and
for resources URI prefixes to allow, deny and rename. It is applied in one place per endpoint kind:

* the path mount: :class:`~mcp_middleware.router.curation_layer.CurationMiddleware`, the outermost
  layer of the backend's stack (lists rewritten as they stream, calls renamed back or refused);
* the aggregate and virtual servers: the catalog curates each backend's list before naming it, and
  routes calls in the curated names into that same layer.

List time and call time ask the same question (:meth:`ItemRules.decide`), so a listed item is callable
and a hidden one is refused. Globs match case- and compatibility-folded names (`Search_Docs`, fullwidth
letters) and only the exact public name of a renamed item is callable, so a backend that resolves names
loosely cannot be reached around a rule.

>>> curation = Curation(tools=ItemRules(allow=("search_*",), deny=("*_admin",), rename={"search_docs": "search"}))
>>> curation.tools.public("search_docs"), curation.tools.backend("search"), curation.tools.backend("search_docs")
('search', 'search_docs', None)
>>> curation.tools.decide("search_admin").rule
'tools.deny: *_admin'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal
from urllib.parse import unquote

from mcp_middleware.core import ErrorCode, JsonRpcCode

from .curation_terms import ANNOTATION_KEYS, VISIBLE, Decision, Override, fold

__all__ = [
    "unknown_error",
    "ANNOTATION_KEYS",
    "Curation",
    "Decision",
    "ItemRules",
    "Override",
    "ResourceRules",
    "Selection",
]

_PUBLIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""What a renamed tool or prompt may be called (the MCP tool-name rule)."""
_MAX_REMEMBERED = 4096
_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True, slots=True)
class ItemRules:
    """Rules for tools or prompts, in the backend's own names.

    `allow`: globs of names that exist (empty: all); `deny`: globs hidden even when allowed (globs
    compare case-insensitively, see :meth:`decide`);
    `rename`: backend name → public name (the backend name is then no longer callable);
    `override`: description/annotations by backend name (or by the public name it is renamed to).
    """

    noun: Literal["tools", "prompts"] = "tools"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    override: Mapping[str, Override] = field(default_factory=dict)
    _reverse: dict[str, str] = field(init=False, repr=False, compare=False)
    _allow: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _deny: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _reserved: frozenset[str] = field(init=False, repr=False, compare=False)
    _decided: dict[str, Decision] = field(init=False, repr=False, compare=False)
    _resolved: dict[str, str | None] = field(init=False, repr=False, compare=False)
    """Decisions by name, bounded (clients choose the names): a call asks a dict, not every glob."""

    def __post_init__(self) -> None:
        reverse: dict[str, str] = {}
        folded_publics: dict[str, str] = {}
        for backend, public in self.rename.items():
            if not _PUBLIC_NAME.fullmatch(public):
                raise ValueError(f"{self.noun}.rename: {public!r} must match [A-Za-z0-9_.-]{{1,128}}")
            if fold(public) in folded_publics:
                raise ValueError(
                    f"{self.noun}.rename: {folded_publics[fold(public)]!r} and {backend!r} are both renamed "
                    f"{public!r} (names are compared case-insensitively)"
                )
            folded_publics[fold(public)] = backend
            reverse[public] = backend
        object.__setattr__(self, "_reverse", reverse)
        object.__setattr__(self, "_allow", tuple(fold(pattern) for pattern in self.allow))
        object.__setattr__(self, "_deny", tuple(fold(pattern) for pattern in self.deny))
        # Every spelling of a renamed item's old name and of a public name is taken by the rename table:
        # only the exact public name is callable, so a backend that resolves names loosely cannot be
        # reached through `Search_Docs` when `search_docs` is renamed, nor `SEARCH` run another tool.
        reserved = {fold(backend) for backend in self.rename} | set(folded_publics)
        object.__setattr__(self, "_reserved", frozenset(reserved))
        object.__setattr__(self, "_decided", {})
        object.__setattr__(self, "_resolved", {})

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny or self.rename or self.override)

    def decide(self, backend_name: str) -> Decision:
        """Whether the backend's item `backend_name` may exist for clients (lists and calls alike).

        Globs match case- and compatibility-folded names (NFKC, casefold): whatever spelling a
        loose backend would resolve to an item gets the same answer as the item itself.
        """
        if not (self._allow or self._deny):
            return VISIBLE
        decided = self._decided.get(backend_name)
        if decided is None:
            if len(self._decided) >= _MAX_REMEMBERED:
                self._decided.clear()
            decided = self._decided[backend_name] = self._decide(backend_name)
        return decided

    def _decide(self, backend_name: str) -> Decision:
        folded = fold(backend_name)
        if self._allow and not any(fnmatchcase(folded, pattern) for pattern in self._allow):
            return Decision(False, f"{self.noun}.allow: not matched")
        for pattern, folded_pattern in zip(self.deny, self._deny, strict=True):
            if fnmatchcase(folded, folded_pattern):
                return Decision(False, f"{self.noun}.deny: {pattern}")
        return VISIBLE

    def own_name(self, name: str) -> str:
        """The backend's name that `name` stands for in these rules (itself unless it is a rename's public name)."""
        return self._reverse.get(name, name)

    def public(self, backend_name: str) -> str:
        """The name clients see for the backend's `backend_name`."""
        return self.rename.get(backend_name, backend_name)

    def backend(self, public_name: str) -> str | None:
        """The backend's name for a public name, or None when that name is not callable (hidden or renamed away)."""
        if public_name in self._resolved:
            return self._resolved[public_name]
        if len(self._resolved) >= _MAX_REMEMBERED:
            self._resolved.clear()
        resolved = self._resolved[public_name] = self._backend(public_name)
        return resolved

    def _backend(self, public_name: str) -> str | None:
        backend = self._reverse.get(public_name)
        if backend is None:
            if self._reserved and fold(public_name) in self._reserved:
                return None  # an old name of a renamed item, or another spelling of a public one
            backend = public_name
        return backend if self.decide(backend).visible else None

    def refusal_rule(self, public_name: str) -> str:
        """Why `public_name` is not callable (for the forbidden answer's data)."""
        backend = self._reverse.get(public_name)
        if backend is None and self._reserved and fold(public_name) in self._reserved:
            return f"{self.noun}.rename: renamed"
        return self.decide(backend or public_name).rule or f"{self.noun}: hidden"

    def shadowed(self, backend_name: str) -> bool:
        """An item not renamed whose name (in any spelling) the rename table holds: it cannot be called."""
        return backend_name not in self.rename and bool(self._reserved) and fold(backend_name) in self._reserved

    def override_for(self, backend_name: str) -> Override | None:
        return self.override.get(backend_name) or self.override.get(self.public(backend_name))

    def curate(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """A listed item (JSON) as clients see it, or None when hidden."""
        name = item.get("name")
        if not isinstance(name, str) or not self.decide(name).visible or self.shadowed(name):
            return None
        public = self.public(name)
        override = self.override_for(name)
        if public == name and override is None:
            return item
        item = {**item, "name": public}
        if override is not None:
            if override.description is not None:
                item["description"] = override.description
            if override.annotations:
                own = item.get("annotations")
                item["annotations"] = {**(own if isinstance(own, dict) else {}), **override.annotations}
        return item


@dataclass(frozen=True, slots=True)
class ResourceRules:
    """Resources and resource templates, by URI prefix: `allow` (empty: all), `deny`, and `rename`.

    `allow` and `deny` are written in the backend's URIs. `rename` maps a backend prefix to the prefix
    clients see (`{"file:///srv/docs/": "docs://"}`): listed URIs and templates under it are rewritten,
    reads are routed back, the old spelling is refused (like a renamed tool's old name), a URI outside
    every renamed prefix is untouched, and a backend URI that a renamed prefix would shadow is not listed.
    Each prefix starts with a scheme and ends at a boundary (`/` or `:`), no two overlap, none has a
    dot segment, an encoded separator or a template brace: a rename cannot be a way out of a prefix.
    `override` replaces the `description` of a resource or template, by its exact URI (the backend's
    spelling or the public one); resources have no annotations to override here.

    A URI with a dot segment (`/../`) or an encoded slash, dot or percent is refused whenever rules are
    set: a prefix is only a boundary if the backend cannot walk out of it.

    >>> rules = ResourceRules(rename={"file:///srv/docs/": "docs://"})
    >>> rules.public_uri("file:///srv/docs/a.md"), rules.backend_uri("docs://a.md"), rules.backend_uri("file:///srv/docs/a.md")
    ('docs://a.md', 'file:///srv/docs/a.md', None)
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    override: Mapping[str, Override] = field(default_factory=dict)
    _renames: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for backend, public in self.rename.items():
            for prefix in (backend, public):
                problem = _prefix_problem(prefix)
                if problem is not None:
                    raise ValueError(f"resources.rename: {prefix!r} {problem}")
        for side, prefixes in (("renamed", list(self.rename)), ("public", list(self.rename.values()))):
            for index, first in enumerate(prefixes):
                for second in prefixes[index + 1 :]:
                    if first.startswith(second) or second.startswith(first):
                        raise ValueError(f"resources.rename: the {side} prefixes {first!r} and {second!r} overlap")
        object.__setattr__(self, "_renames", tuple(self.rename.items()))
        for uri, override in self.override.items():
            if override.annotations:
                raise ValueError(f"resources.override: {uri!r}: only a description (tool annotations are for tools)")

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny or self.rename or self.override)

    def description_for(self, uri: str) -> str | None:
        """The description clients see for the backend's resource or template `uri`, if overridden."""
        override = self.override.get(uri) or self.override.get(self.public_uri(uri))
        return override.description if override is not None else None

    def public_uri(self, uri: str) -> str:
        """The URI (or template) clients see for the backend's `uri`."""
        for backend, public in self._renames:
            if uri.startswith(backend):
                return public + uri[len(backend) :]
        return uri

    def backend_uri(self, uri: str) -> str | None:
        """The backend's URI (or template) for a public one; None for a renamed prefix's old spelling."""
        for backend, public in self._renames:
            if uri.startswith(public):
                return backend + uri[len(public) :]
        for backend, _ in self._renames:
            if uri.startswith(backend):
                return None
        return uri

    def shadowed(self, uri: str) -> bool:
        """A backend URI clients cannot reach under its own spelling (a renamed prefix took it): not listed."""
        return bool(self._renames) and self.backend_uri(self.public_uri(uri)) != uri

    def decide_public(self, uri: str, *, template: bool = False) -> tuple[str | None, Decision]:
        """`(backend uri, decision)` for a URI a client named: renamed back, then judged in the backend's URIs."""
        backend = self.backend_uri(uri)
        if backend is None:
            return None, Decision(False, "resources.rename: renamed")
        return backend, self.decide_template(backend) if template else self.decide(backend)

    def decide(self, uri: str) -> Decision:
        if not self.active:
            return VISIBLE
        if _escapes(uri):
            return Decision(False, "resources: a dot segment or an encoded separator in the URI")
        if self.allow and not uri.startswith(self.allow):
            return Decision(False, "resources.allow: not matched")
        for prefix in self.deny:
            if uri.startswith(prefix):
                return Decision(False, f"resources.deny: {prefix}")
        return VISIBLE

    def decide_template(self, template: str) -> Decision:
        """A template is listed when some of its expansions may be allowed: judged by its literal head."""
        if not self.active:
            return VISIBLE
        head = template.split("{", 1)[0]
        if self.allow and not any(head.startswith(prefix) or prefix.startswith(head) for prefix in self.allow):
            return Decision(False, "resources.allow: not matched")
        for prefix in self.deny:
            if head.startswith(prefix):
                return Decision(False, f"resources.deny: {prefix}")
        return VISIBLE


def _prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot be renamed (from or to), or None."""
    if not isinstance(prefix, str) or not _SCHEME.match(prefix):
        return "must start with a URI scheme (`docs://`, `file:///srv/`)"
    if not prefix.endswith(("/", ":")):
        return "must end with '/' or ':' (else `docs` would rename `docs-private` too)"
    if _escapes(prefix) or any(char in prefix for char in "{}?#") or any(ord(char) < 0x21 for char in prefix):
        return "must not hold a dot segment, an encoded separator, a template brace, '?', '#' or a space"
    return None


def _escapes(uri: str) -> bool:
    lowered = uri.lower()
    if "%2f" in lowered or "%2e" in lowered or "%25" in lowered or "%5c" in lowered or "\\" in uri:
        return True
    path = unquote(uri.split("?", 1)[0].split("#", 1)[0])
    return _DOT_SEGMENT.search(path) is not None


@dataclass(frozen=True, slots=True)
class Curation:
    """One backend's curated surface: tools, prompts, resources, and how a hidden name is refused.

    `refusal="unknown"` answers a hidden or renamed-away name with `-32602` as if it did not exist;
    `"forbidden"` answers `-32013` (HTTP 403) with `data.rule` naming the rule.
    """

    tools: ItemRules = field(default_factory=lambda: ItemRules("tools"))
    prompts: ItemRules = field(default_factory=lambda: ItemRules("prompts"))
    resources: ResourceRules = field(default_factory=ResourceRules)
    refusal: Literal["unknown", "forbidden"] = "unknown"

    def __post_init__(self) -> None:
        if self.refusal not in ("unknown", "forbidden"):
            raise ValueError("refusal must be 'unknown' or 'forbidden'")
        if self.tools.noun != "tools":
            object.__setattr__(self, "tools", _renoun(self.tools, "tools"))
        if self.prompts.noun != "prompts":
            object.__setattr__(self, "prompts", _renoun(self.prompts, "prompts"))

    @property
    def active(self) -> bool:
        return self.tools.active or self.prompts.active or self.resources.active

    def rules(self, noun: str) -> ItemRules:
        return self.tools if noun == "tool" else self.prompts

    def refusal_error(self, noun: str, label: str, rule: str) -> tuple[int, int, str, dict[str, str] | None]:
        """(HTTP status, JSON-RPC code, message, data) for a refused name or URI.

        `"unknown"` is exactly what the router answers for a name no backend offers
        (:func:`unknown_error`), so a client cannot tell a hidden name from a made-up one.
        """
        if self.refusal == "forbidden":
            return 403, ErrorCode.FORBIDDEN, f"{noun.capitalize()} not allowed: {label[:200]}", {"rule": rule}
        return unknown_error(noun, label)


def unknown_error(noun: str, label: str) -> tuple[int, int, str, dict[str, str]]:
    """The router's answer for a tool, prompt or resource nobody offers: MCP's `-32602 Unknown tool: NAME`.

    The one home of that answer: the aggregate's unknown names and every curation's hidden ones use it.
    """
    clipped = label[:200]
    return (
        200,
        JsonRpcCode.INVALID_PARAMS,
        f"Unknown {noun}: {clipped}",
        {"uri" if noun == "resource" else "name": clipped},
    )


def _renoun(rules: ItemRules, noun: Literal["tools", "prompts"]) -> ItemRules:
    return ItemRules(noun, rules.allow, rules.deny, rules.rename, rules.override)


@dataclass(frozen=True, slots=True)
class Selection:
    """A virtual server's choice from one backend: globs over its (curated) public names, URI prefixes.

    >>> Selection(tools=("create_*",)).allows("tools", "create_ticket")
    True
    """

    tools: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def allows(self, noun: str, public_name: str) -> bool:
        """Whether a tool or prompt (by its curated public name at the backend) is selected."""
        patterns = self.tools if noun == "tools" else self.prompts
        return any(fnmatchcase(public_name, pattern) for pattern in patterns)

    def allows_uri(self, uri: str, *, template: bool = False) -> bool:
        if not self.resources:
            return False
        rules = ResourceRules(allow=self.resources)
        return (rules.decide_template(uri) if template else rules.decide(uri)).visible
