"""Selectors: one small grammar every middleware uses to pick requests.

    selector := "*" | method [ ":" target ]

`method` is a JSON-RPC method (`tools/call`, `resources/read`, `tools/list`) and
`target` is the tool/prompt name or resource URI; both may use `*` and `?` globs.
Only the first `:` separates, so URIs keep theirs: `resources/read:file://*`.

    tools/call:search_*    every tool whose name starts with search_
    resources/read:file://*
    tools/list
    tools/*                every tools/ method
    *                      everything

:class:`SelectorMap` resolves per-method/per-tool settings: the most specific
matching selector wins (a literal method beats a glob, a target beats none, a
longer literal part of the target beats a shorter one; ties go to the first
defined; `*` is the fallback).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import translate
from typing import Generic, TypeVar

from .request import McpRequest

__all__ = ["Selector", "SelectorMap"]

T = TypeVar("T")

_GLOB = re.compile(r"[*?\[]")


def _matcher(pattern: str) -> re.Pattern[str] | None:
    """A compiled glob, or `None` when the pattern is a literal."""
    return re.compile(translate(pattern), re.DOTALL) if _GLOB.search(pattern) else None


@dataclass(frozen=True, slots=True)
class Selector:
    """One parsed selector; see the module docstring for the grammar.

    >>> Selector.parse("tools/call:search_*").matches_parts("tools/call", "search_docs")
    True
    """

    text: str
    method: str | None
    target: str | None
    _method_re: re.Pattern[str] | None
    _target_re: re.Pattern[str] | None

    @classmethod
    def parse(cls, text: str) -> Selector:
        text = text.strip()
        if not text:
            raise ValueError("empty selector")
        if text == "*":
            return cls(text, None, None, None, None)
        method, sep, target = text.partition(":")
        if not method:
            raise ValueError(f"selector {text!r} has no method")
        if sep and not target:
            raise ValueError(f"selector {text!r} has an empty target")
        return cls(text, method, target or None, _matcher(method), _matcher(target) if target else None)

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        """(method rank, has target, target literal length, method literal length): larger is more specific."""
        if self.method is None:
            return (0, 0, 0, 0)
        method_rank = 2 if self._method_re is None else 1
        method_literal = len(_GLOB.split(self.method, maxsplit=1)[0])
        if self.target is None:
            return (method_rank, 0, 0, method_literal)
        target_literal = 1_000_000 if self._target_re is None else len(_GLOB.split(self.target, maxsplit=1)[0])
        return (method_rank, 1, target_literal, method_literal)

    def matches_parts(self, method: str | None, target: str | None) -> bool:
        if self.method is None:
            return True
        if method is None:
            return False
        if self._method_re is None:
            if method != self.method:
                return False
        elif self._method_re.match(method) is None:
            return False
        if self.target is None:
            return True
        if target is None:
            return False
        if self._target_re is None:
            return target == self.target
        return self._target_re.match(target) is not None

    def matches(self, request: McpRequest) -> bool:
        return self.matches_parts(request.method, request.target)

    def __str__(self) -> str:
        return self.text


class SelectorMap(Generic[T]):
    """Settings keyed by selectors; :meth:`lookup` returns the most specific match.

    >>> limits = SelectorMap({"*": "100/minute", "tools/call:search_*": "10/minute"})
    >>> limits.lookup_parts("tools/call", "search_docs"), limits.lookup_parts("tools/list", None)
    ('10/minute', '100/minute')
    """

    __slots__ = ("_by_method", "_globbed", "_rules")

    def __init__(self, rules: Mapping[str, T] | Iterable[tuple[str, T]] = ()) -> None:
        items = rules.items() if isinstance(rules, Mapping) else rules
        parsed = [(Selector.parse(text), value) for text, value in items]
        # Stable sort keeps definition order among equally specific selectors.
        ranked = sorted(enumerate(parsed), key=lambda item: (item[1][0].specificity, -item[0]), reverse=True)
        self._rules: list[tuple[Selector, T]] = [rule for _, rule in ranked]
        self._by_method: dict[str, list[tuple[Selector, T]]] = {}
        self._globbed: list[tuple[Selector, T]] = []
        for selector, value in self._rules:
            if selector.method is not None and selector._method_re is None:
                self._by_method.setdefault(selector.method, []).append((selector, value))
            else:
                self._globbed.append((selector, value))

    def __iter__(self) -> Iterator[tuple[Selector, T]]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def lookup_parts(self, method: str | None, target: str | None) -> T | None:
        # Literal-method rules outrank every glob-method rule, so they are tried first.
        for selector, value in self._by_method.get(method, ()) if method is not None else ():
            if selector.matches_parts(method, target):
                return value
        for selector, value in self._globbed:
            if selector.matches_parts(method, target):
                return value
        return None

    def lookup(self, request: McpRequest) -> T | None:
        return self.lookup_parts(request.method, request.target)
