"""The few request headers the core reads, taken from the raw ASGI list in one pass."""

from __future__ import annotations

from mcp.shared.inbound import MCP_METHOD_HEADER, MCP_NAME_HEADER, MCP_PROTOCOL_VERSION_HEADER
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from .request import Era

__all__ = ["ROUTING_HEADERS", "RequestHeaders"]

HANDSHAKE_VERSIONS = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)
ROUTING_HEADERS = (MCP_PROTOCOL_VERSION_HEADER, MCP_METHOD_HEADER, MCP_NAME_HEADER)
"""The headers a 2026-07-28 request mirrors its body in (version, method, name)."""
_ROUTING_HEADER_BYTES = frozenset(name.encode() for name in ROUTING_HEADERS)
_HEADER_NAMES = (
    b"content-type",
    b"content-length",
    b"accept",
    b"mcp-protocol-version",
    b"mcp-method",
    b"mcp-name",
    b"mcp-session-id",
    b"authorization",
)
_AUTHORIZATION = b"authorization"
_KNOWN_TEXT: dict[bytes | None, str | None] = {
    None: None,
    **{
        text.encode(): text
        for text in (
            *HANDSHAKE_PROTOCOL_VERSIONS,
            *MODERN_PROTOCOL_VERSIONS,
            *("initialize", "ping", "tools/call", "tools/list", "prompts/get", "prompts/list", "resources/read"),
            *("resources/list", "resources/templates/list", "resources/subscribe", "resources/unsubscribe"),
            *("completion/complete", "logging/setLevel"),
        )
    },
}
_REMEMBERED_TEXTS = 4096
_REMEMBERED_TEXT_LENGTH = 128


class _Texts(dict[bytes | None, str | None]):
    """The routing headers' values as text (latin-1, as Starlette decodes them), each decoded once: a lookup a
    request and no new string. Absent (None) stays None. Values come from clients: only short ones are kept,
    in a table cleared back to the usual versions and methods when full."""

    def __missing__(self, value: bytes) -> str:
        text = value.decode("latin-1")
        if len(value) <= _REMEMBERED_TEXT_LENGTH:
            if len(self) >= _REMEMBERED_TEXTS:
                self.clear()
                self.update(_KNOWN_TEXT)
            self[value] = text
        return text


_TEXTS = _Texts(_KNOWN_TEXT)


class RequestHeaders:
    """The few request headers the core needs, read from the raw ASGI list.

    ASGI servers lower-case header names. Only the first copy of a header counts,
    as in Starlette; a second copy of a routing header is remembered in
    `duplicated` (the modern era refuses it). The routing headers are decoded at
    once; the others only when asked (`raw_content_type`, `raw_content_length` and
    `raw_accept` are what the kernel reads). `authorization` is the one `Authorization`
    value, `None` when there is none or more than one (found in the same pass, for auth).
    """

    __slots__ = (
        "_session_id",
        "authorization",
        "duplicated",
        "method",
        "name",
        "protocol_version",
        "raw_accept",
        "raw_content_length",
        "raw_content_type",
    )

    duplicated: str | None
    authorization: bytes | None

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        found = dict(raw)  # one C-level pass; a repeated name makes it shorter than `raw`
        if len(found) != len(raw):
            found = self._first_copies(raw)
        else:
            self.duplicated = None
        # One C-level pass for every lookup; the routing headers' text from `_TEXTS` (decoded once, no helper's frame).
        (
            self.raw_content_type,
            self.raw_content_length,
            self.raw_accept,
            version,
            method,
            name,
            self._session_id,
            self.authorization,
        ) = map(found.get, _HEADER_NAMES)
        self.protocol_version = _TEXTS[version]
        self.method = _TEXTS[method]
        self.name = _TEXTS[name]

    def _first_copies(self, raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        duplicated: str | None = None
        for key, value in raw:
            if key not in found:
                found[key] = value
            elif duplicated is None and key in _ROUTING_HEADER_BYTES:
                duplicated = key.decode("latin-1")
        self.duplicated = duplicated
        if sum(key == _AUTHORIZATION for key, _ in raw) > 1:
            del found[_AUTHORIZATION]  # (no one value: auth reads the list itself, and refuses it)
        return found

    @property
    def content_type(self) -> str | None:
        value = self.raw_content_type
        return value.decode("latin-1") if value is not None else None

    @property
    def content_length(self) -> str | None:
        value = self.raw_content_length
        return value.decode("latin-1") if value is not None else None

    @property
    def session_id(self) -> str | None:
        value = self._session_id
        return value.decode("latin-1") if value is not None else None

    @property
    def era(self) -> Era:
        """The era, decided as the SDK decides it: absent or handshake version → legacy."""
        pv = self.protocol_version
        return Era.LEGACY if pv is None or pv in HANDSHAKE_VERSIONS else Era.MODERN
