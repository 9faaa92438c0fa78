"""What may be recorded about a request: client input is bounded before it reaches telemetry.

Anyone can send any bytes to an MCP endpoint, and tracing and logging run before (outside)
authentication. A value the client chose must not become a metric label, a span name or a
log field as it came: each distinct label value is a new time series kept until restart, and a
1 MiB value is 1 MiB per series, per scrape, per log line. So:

- labels take values from known sets (:data:`KNOWN_METHODS`, :data:`KNOWN_PROTOCOL_VERSIONS`,
  names the server itself answered for) or :data:`OTHER`; :class:`BoundedValues` caps the
  number and length of any other set a label draws from;
- logged and attributed text is :func:`clip`-ped (256 characters, then an ellipsis);
- session ids are never written out: :func:`session_digest` names them instead.

>>> known_method("tools/call"), known_method("x" * 10_000)
('tools/call', '_OTHER')
>>> clip("a" * 300)[-3:], len(clip("a" * 300))
('aa…', 256)
>>> session_digest("2f6b3c0e9d8a47b1a5c4e3d2f1a0b9c8")
'sha256:e0086c1a76fc8fc1'
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Final

from mcp.types.methods import SPEC_CLIENT_METHODS, SPEC_CLIENT_NOTIFICATION_METHODS
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

__all__ = [
    "KNOWN_METHODS",
    "KNOWN_PROTOCOL_VERSIONS",
    "MAX_RECORDED_CHARS",
    "OTHER",
    "BoundedValues",
    "SessionIdRedaction",
    "clip",
    "known_method",
    "known_version",
    "portable_name",
    "session_digest",
]

OTHER: Final = "_OTHER"
"""The label value of everything outside a known set (the OpenTelemetry conventions' spelling)."""

KNOWN_METHODS: Final[frozenset[str]] = frozenset(SPEC_CLIENT_METHODS | SPEC_CLIENT_NOTIFICATION_METHODS)
"""Every method a client may send in any protocol revision the SDK knows (requests and notifications)."""

KNOWN_PROTOCOL_VERSIONS: Final[frozenset[str]] = frozenset(HANDSHAKE_PROTOCOL_VERSIONS + MODERN_PROTOCOL_VERSIONS)
"""Every protocol revision the SDK knows, both eras."""

MAX_RECORDED_CHARS: Final = 256
"""Longest client-chosen text written to a log line or a span attribute (then clipped with `…`)."""

_PORTABLE_NAME: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def known_method(method: str | None) -> str:
    """`method` if the MCP specification defines it, else :data:`OTHER`."""
    return method if method in KNOWN_METHODS else OTHER


def known_version(version: str | None) -> str:
    """`version` if it is a protocol revision the SDK knows, else :data:`OTHER`."""
    return version if version in KNOWN_PROTOCOL_VERSIONS else OTHER


def portable_name(name: str) -> bool:
    """Whether `name` is a short portable name (`[A-Za-z0-9_.-]{1,64}`): fit for a label or a span name."""
    return _PORTABLE_NAME.fullmatch(name) is not None


def clip(text: str, limit: int = MAX_RECORDED_CHARS) -> str:
    """`text` cut to `limit` characters, the last one an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def session_digest(session_id: str) -> str:
    """A stable short name for a session id that does not reveal it (64 bits of its SHA-256).

    Equal ids give equal digests, so log lines and spans of one session still correlate; the id
    itself (a bearer capability in the legacy era) is never written out.
    """
    return "sha256:" + hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class BoundedValues:
    """The values a label may take: each one up to `max_length` characters, at most `limit` distinct.

    A value seen before keeps its label; a newcomer past the limit, or a longer one, becomes
    :data:`OTHER`. Nothing is ever evicted (an LRU would let a flood of newcomers rename the
    established series), so the set of series a label can make is fixed once it is full.
    """

    __slots__ = ("_limit", "_max_length", "_seen")

    def __init__(self, limit: int, *, max_length: int = 64) -> None:
        if limit < 0 or max_length <= 0:
            raise ValueError("BoundedValues needs limit >= 0 and max_length > 0")
        self._limit = limit
        self._max_length = max_length
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or len(value) > self._max_length:
            return OTHER
        self._seen.add(value)
        return value

    def __contains__(self, value: object) -> bool:
        return value in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def full(self) -> bool:
        return len(self._seen) >= self._limit


_SESSION_LIKE = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])")
"""A session id as the SDK mints them (`uuid4().hex`), also inside a gateway's tagged id (`g1.<hex>`)."""


class SessionIdRedaction(logging.Filter):
    """A logging filter that writes session ids as their :func:`session_digest` in the records it passes.

    The `mcp` SDK logs session ids in full (`Created new transport with session ID: …`, and a
    warning naming the session someone else's credential tried); attach this to its loggers:

    >>> for name in ("mcp.server.streamable_http_manager", "mcp.server.streamable_http"):
    ...     logging.getLogger(name).addFilter(SessionIdRedaction())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SESSION_LIKE.sub(lambda found: session_digest(found.group()), message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
