"""The tool and prompt names a metric label may carry: the ones the server itself vouched for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from mcp_middleware.core import OTHER, BoundedValues, McpRequest, portable_name

__all__ = ["KnownNames"]

_OTHER: Final = OTHER
_LISTS: Final = {"tools/list": "tools", "prompts/list": "prompts"}
_CALLS: Final = frozenset({"tools/call", "prompts/get"})


class KnownNames:
    """The tool and prompt names the server itself vouched for: the ones a label may carry.

    A name becomes known when a `tools/list` or `prompts/list` result lists it, or when a call
    with it is answered with a result that is not a tool error (the SDK answers an unknown tool
    with an `isError` result, so that does not count). A refused call (401, 429, an unknown
    name) teaches nothing, so anonymous traffic cannot make names known. Only short portable
    names (`[A-Za-z0-9_.-]{1,64}`) are kept, at most `limit` of them, never evicted.

    Span names are less strict (they are not series): :meth:`for_span` also admits the first
    `limit` distinct portable names it is asked about, known or not.
    """

    __slots__ = ("_known", "_seen")

    def __init__(self, limit: int) -> None:
        self._known = BoundedValues(limit)
        self._seen = BoundedValues(limit)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __len__(self) -> int:
        return len(self._known)

    def label(self, name: str) -> str:
        """`name` if it is known, else `_OTHER`."""
        return name if name in self._known else _OTHER

    def for_span(self, name: str) -> bool:
        """Whether a span may be named after `name`."""
        return name in self._known or (portable_name(name) and self._seen(name) is name)

    def learn(self, request: McpRequest, result: Mapping[str, Any] | None, tool_error: bool = False) -> None:
        """Learn from the result (`None` when there was none) the server gave to `request`."""
        if result is None or self._known.full:
            return
        method = request.method
        if method in _CALLS:
            name = request.name
            if name is not None and not tool_error and name not in self._known and portable_name(name):
                self._known(name)
            return
        key = _LISTS.get(method or "")
        items = result.get(key) if key is not None else None
        if type(items) is not list:
            return
        known = self._known
        for item in items:
            name = item.get("name") if type(item) is dict else None
            if type(name) is str and name not in known and portable_name(name) and known(name) is _OTHER:
                return  # full
