"""What a backend's tools look like, learned from the `tools/list` answers that pass through its stack.

The policy middleware reads a tool's `annotations` here at call time (rules on `destructiveHint`),
argument validation its `inputSchema`. Each entry is replaced by the next list that names the tool.
The backend's `notifications/tools/list_changed` empties the table (:meth:`ToolCatalog.forget`, told by
the stack's notification streams and by the router's own session to the backend: `changes.py`), so the
next call is held to the new schema. An entry older than `max_age` (or than the `ttlMs` the backend's
last 2026-07-28 list gave, if shorter) is *stale*: the next call to it lists the backend's tools again
(`fetch.py`), so a change nobody was told of is seen within that time. The table is bounded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

__all__ = ["KnownTool", "ToolCatalog"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class KnownTool(NamedTuple):
    annotations: Mapping[str, Any]
    input_schema: Mapping[str, Any] | None
    schema_digest: str | None
    """Names the schema's version: validators are compiled once per digest."""
    learned: float = 0.0
    """`time.monotonic()` when a list last named the tool."""


class ToolCatalog:
    """Tool name → what the backend last said of it (bounded: a full table starts over).

    >>> catalog = ToolCatalog()
    >>> catalog.learn([{"name": "rm", "annotations": {"destructiveHint": True}, "inputSchema": {"type": "object"}}])
    >>> catalog.get("rm").annotations["destructiveHint"], catalog.get("ls")
    (True, None)
    """

    def __init__(self, *, max_tools: int = 10_000, max_age: float = 300.0) -> None:
        self.max_tools = max_tools
        self.max_age = max_age
        self._tools: dict[str, KnownTool] = {}
        self.fetcher: Any = None
        """Set by `fetch.fetcher_of`: how this catalog asks the backend for tools it has not seen."""
        self.generation = 0
        """Grows at every :meth:`forget`: a list read before a change is not learned after it."""
        self.advertised_ttl: float | None = None
        """The `ttlMs` (in seconds) of the backend's last 2026-07-28 `tools/list`, if it gave one above 0."""

    @property
    def fresh_for(self) -> float:
        """Seconds an entry is trusted: `max_age`, or less when the backend's list said so (`ttlMs`)."""
        ttl = self.advertised_ttl
        return self.max_age if ttl is None else min(self.max_age, ttl)

    def get(self, name: str) -> KnownTool | None:
        return self._tools.get(name)

    def needs_list(self, name: str) -> bool:
        """Whether a call to `name` should have the backend's tools listed first: never seen, or stale."""
        known = self._tools.get(name)
        return known is None or time.monotonic() - known.learned > self.fresh_for

    def annotations(self, name: str | None) -> Mapping[str, Any]:
        known = self._tools.get(name) if name is not None else None
        return known.annotations if known is not None else _EMPTY

    def learn(self, tools: Iterable[Any], *, generation: int | None = None) -> None:
        for item in tools:
            if isinstance(item, Mapping):
                self.learn_one(item, generation=generation)

    def learn_one(self, item: Mapping[str, Any], *, generation: int | None = None) -> None:
        """Remember `item` (a listed tool); ignored if `generation` is given and a change came since."""
        name = item.get("name")
        if not isinstance(name, str) or (generation is not None and generation != self.generation):
            return
        annotations = item.get("annotations")
        schema = item.get("inputSchema")
        if not isinstance(schema, Mapping):
            schema = None
        known = self._tools.get(name)
        now = time.monotonic()
        if known is not None and known.input_schema == schema and known.annotations == (annotations or _EMPTY):
            self._tools[name] = known._replace(learned=now)  # the common case: the same list again
            return
        digest = None
        if schema is not None:
            digest = hashlib.blake2b(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()
        if known is None and len(self._tools) >= self.max_tools:
            self._tools.clear()
        self._tools[name] = KnownTool(
            MappingProxyType(dict(annotations)) if isinstance(annotations, Mapping) else _EMPTY, schema, digest, now
        )

    def forget(self) -> None:
        """Drop everything (the backend said its tools changed): the next call lists them again, at once."""
        self._tools.clear()
        self.generation += 1
        if self.fetcher is not None:
            self.fetcher.changed()

    def __len__(self) -> int:
        return len(self._tools)
