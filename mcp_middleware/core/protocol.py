"""Facts of the protocols this project speaks, each written once (here), used everywhere.

>>> is_event_stream(b"Text/Event-Stream; charset=utf-8"), is_event_stream(b"text/event-streams")
(True, False)
>>> media_type(b"application/json; charset=utf-8")
b'application/json'
>>> f"{PROTECTED_RESOURCE_PREFIX}/mcp"
'/.well-known/oauth-protected-resource/mcp'
>>> f"{META_NAMESPACE}/cache"
'io.github.mcp-middleware/cache'
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "EVENT_STREAM",
    "JSON",
    "META_NAMESPACE",
    "PROTECTED_RESOURCE_PREFIX",
    "is_event_stream",
    "is_json",
    "media_type",
]

DEFAULT_MAX_BODY_SIZE: Final = 4 * 1024 * 1024
"""4 MiB: the `mcp` SDK transport's bound on a request body, and ours on any one body or SSE event we read."""

PROTECTED_RESOURCE_PREFIX: Final = "/.well-known/oauth-protected-resource"
"""RFC 9728 §3.1: a resource's metadata lives at this prefix followed by the resource's path."""

META_NAMESPACE: Final = "io.github.mcp-middleware"
"""The reverse-DNS prefix of this project's own `_meta` keys (`{META_NAMESPACE}/cache`, `…/router`).

The MCP specification reserves prefixes whose second label is `modelcontextprotocol` or `mcp`;
this one is ours."""

JSON: Final = b"application/json"
EVENT_STREAM: Final = b"text/event-stream"


def media_type(content_type: bytes) -> bytes:
    """The media type of a `Content-Type` value: parameters dropped, lowercased (RFC 9110 §8.3.1)."""
    return content_type.split(b";", 1)[0].strip().lower()


def is_event_stream(content_type: bytes) -> bool:
    """Whether a `Content-Type` value names a server-sent event stream, whatever its case and parameters."""
    return content_type == EVENT_STREAM or media_type(content_type) == EVENT_STREAM


def is_json(content_type: bytes) -> bool:
    """Whether a `Content-Type` value names JSON (`application/json`), whatever its case and parameters."""
    return content_type == JSON or media_type(content_type) == JSON
