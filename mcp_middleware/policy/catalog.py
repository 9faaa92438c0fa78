"""What a backend's tools look like, learned from the `tools/list` answers that pass through its stack.

The policy middleware reads a tool's `annotations` here at call time (rules on `destructiveHint`),
argument validation its `inputSchema`. Each entry is replaced by the next list that names the tool,
so a changed tool is seen at the next `tools/list` (clients list again on `list_changed`); an entry
older than `max_age` is *stale*: the next call to it lists the backend's tools again (`fetch.py`),
so a tool changed behind an endpoint no list passes through (the aggregate) is seen within that
time. The table is bounded.
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

    def get(self, name: str) -> KnownTool | None:
        return self._tools.get(name)

    def needs_list(self, name: str) -> bool:
        """Whether a call to `name` should have the backend's tools listed first: never seen, or stale."""
        known = self._tools.get(name)
        return known is None or time.monotonic() - known.learned > self.max_age

    def annotations(self, name: str | None) -> Mapping[str, Any]:
        known = self._tools.get(name) if name is not None else None
        return known.annotations if known is not None else _EMPTY

    def learn(self, tools: Iterable[Any]) -> None:
        for item in tools:
            if isinstance(item, Mapping):
                self.learn_one(item)

    def learn_one(self, item: Mapping[str, Any]) -> None:
        name = item.get("name")
        if not isinstance(name, str):
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
        """Drop everything (the backend said its tools changed)."""
        self._tools.clear()

    def __len__(self) -> int:
        return len(self._tools)
