"""Which tools a mount's backend declared read-only: learned from its `tools/list` results."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cachetools import LRUCache

from ..core.selectors import Selector

__all__ = ["ReadOnlyTools"]

_MAX_TOOLS_PER_MOUNT = 10_000
_MAX_MOUNTS = 1024


class ReadOnlyTools:
    """The tools whose `tools/call` results may be cached (where a rule opts in).

    A tool qualifies when it matches `allow` (names or globs), or when its backend's last
    `tools/list` annotated it `readOnlyHint` and `trust_hint` is on. Bounded: at most 1024
    mounts and 10 000 tools per mount are remembered.

    >>> tools = ReadOnlyTools(allow=("get_*",))
    >>> tools.learn("/mcp", {"tools": [{"name": "search", "annotations": {"readOnlyHint": True}}]})
    >>> tools.trusted("/mcp", "search"), tools.trusted("/mcp", "get_user"), tools.trusted("/mcp", "delete")
    (True, True, False)
    """

    __slots__ = ("_allow", "_books", "trust_hint")

    def __init__(self, *, allow: Iterable[str] = (), trust_hint: bool = True) -> None:
        self._allow = tuple(Selector.parse(f"tools/call:{name}") for name in allow)
        self.trust_hint = trust_hint
        self._books: LRUCache[str, dict[str, bool]] = LRUCache(maxsize=_MAX_MOUNTS)

    def knows(self, mount: str) -> bool:
        """A `tools/list` result of this mount has been read (since the last time it was forgotten)."""
        return mount in self._books

    def learn(self, mount: str, result: dict[str, Any]) -> None:
        """Read the annotations of a `tools/list` result."""
        tools = result.get("tools")
        if not isinstance(tools, list):
            return
        book = self._books.get(mount)
        if book is None:
            book = self._books[mount] = {}
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(name := tool.get("name"), str):
                continue
            if name not in book and len(book) >= _MAX_TOOLS_PER_MOUNT:
                break
            annotations = tool.get("annotations")
            book[name] = isinstance(annotations, dict) and annotations.get("readOnlyHint") is True

    def trusted(self, mount: str, name: str | None) -> bool:
        """The tool's results may be cached: allow-listed, or declared read-only by its backend."""
        if name is None:
            return False
        if any(selector.matches_parts("tools/call", name) for selector in self._allow):
            return True
        if not self.trust_hint:
            return False
        book = self._books.get(mount)
        return book is not None and book.get(name, False)

    def forget(self, mount: str | None = None) -> None:
        """Forget what a mount's backend declared (every mount's with None): its tool list changed."""
        if mount is None:
            self._books.clear()
        else:
            self._books.pop(mount, None)
