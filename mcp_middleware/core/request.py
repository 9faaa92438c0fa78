"""The request view: what an MCP exchange is, as every middleware of a stack sees it.

Built once per request (:mod:`.parsing` reads a POST body, :mod:`.headers` the headers) and
shared through the ASGI scope: read it with :func:`get_mcp_request`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from starlette.requests import HTTPConnection
from starlette.types import Scope

from .errors import RequestId

__all__ = [
    "DEFAULT_LEGACY_VERSION",
    "REQUEST_SCOPE_KEY",
    "KeyFunction",
    "Era",
    "McpRequest",
    "RequestKind",
    "Rejection",
    "get_mcp_request",
    "target_of",
]

REQUEST_SCOPE_KEY = "mcp_middleware.request"
"""Scope key holding the view: absent = not looked at yet, `None` = not an MCP request."""

DEFAULT_LEGACY_VERSION = "2025-03-26"
"""What a handshake-era server assumes when `MCP-Protocol-Version` is absent (spec and SDK)."""

_URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_NAME_METHODS = frozenset({"tools/call", "prompts/get"})
TARGET_KEYS: Mapping[str, str] = {
    **dict.fromkeys(_NAME_METHODS, "name"),
    **dict.fromkeys(_URI_METHODS, "uri"),
}
"""Method → the `params` key naming what it addresses (a tool or prompt name, a resource URI)."""


def target_of(method: str | None, params: Mapping[str, Any] | None) -> str | None:
    """The tool/prompt name or resource URI a request for `method` with `params` addresses, if any.

    >>> target_of("tools/call", {"name": "echo"}), target_of("resources/read", {"uri": 7}), target_of("ping", {})
    ('echo', None, None)
    """
    key = TARGET_KEYS.get(method) if params is not None and method is not None else None
    if key is None:
        return None
    value = params.get(key)  # type: ignore[union-attr]
    return value if isinstance(value, str) else None


class Era(enum.Enum):
    """The two protocol eras that share one endpoint."""

    LEGACY = "legacy"
    """2024-11-05 … 2025-11-25: initialize handshake, `Mcp-Session-Id`, GET stream, DELETE."""
    MODERN = "modern"
    """2026-07-28: stateless, `_meta` envelope, `Mcp-Method`/`Mcp-Name` headers."""


class RequestKind(enum.Enum):
    """What an HTTP exchange on the MCP endpoint carries."""

    REQUEST = "request"
    """A JSON-RPC request (has an id); it gets a response."""
    NOTIFICATION = "notification"
    """A JSON-RPC notification (no id); answered 202."""
    RESPONSE = "response"
    """A client's response to a server-initiated request (legacy era)."""
    STREAM = "stream"
    """GET: the legacy server-to-client stream (405 in the modern era)."""
    TERMINATE = "terminate"
    """DELETE: ends a legacy session."""
    OTHER = "other"
    """Any other HTTP method (OPTIONS preflight, …), passed through untouched."""


class _Fields(NamedTuple):
    kind: RequestKind
    era: Era
    protocol_version: str
    http_method: str = "POST"
    method: str | None = None
    id: RequestId | None = None
    params: Mapping[str, Any] | None = None
    session_id: str | None = None
    headers_verified: bool = False
    body: bytes = b""
    started: float = 0.0
    target: str | None = None


_GIVEN = _Fields._fields[:-1]
"""The fields a view is built from; `target` is derived from them."""


class McpRequest(_Fields):
    """One MCP exchange as every middleware of the stack sees it (immutable).

    Built once per request by the first middleware that needs it and stored in
    the scope (read it with :func:`get_mcp_request`). `params` is the decoded
    body's own object: treat it as read-only. Fields:

    - `kind`, `era`, `protocol_version`, `http_method`;
    - `method`, `id`: the JSON-RPC method and id;
    - `params`: the decoded `params` object;
    - `session_id`: `Mcp-Session-Id` (legacy era only);
    - `headers_verified`: `Mcp-Method`/`Mcp-Name` were checked against the body
      (modern requests only); never trust those headers otherwise;
    - `body`: the raw body; `started`: `time.perf_counter()` when the core first
      saw the request (0.0 for a view built by hand);
    - `target`: the tool/prompt name or resource URI the request addresses, if any
      (:func:`target_of` its method and params). Derived, never given: every way of
      building a view (the constructor, `_replace`, `_make`) computes it; the parser fills
      it in as it reads the body, so the middlewares that ask for it pay an attribute read.

    `name`, `uri`, `cursor`, `meta` and `progress_token` are read from `params` when asked.
    """

    __slots__ = ()

    def __new__(
        cls,
        kind: RequestKind,
        era: Era,
        protocol_version: str,
        http_method: str = "POST",
        method: str | None = None,
        id: RequestId | None = None,
        params: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        headers_verified: bool = False,
        body: bytes = b"",
        started: float = 0.0,
    ) -> McpRequest:
        fields = (kind, era, protocol_version, http_method, method, id, params, session_id, headers_verified, body)
        view: McpRequest = tuple.__new__(cls, (*fields, started, target_of(method, params)))
        return view

    def __getnewargs__(self) -> tuple[Any, ...]:  # (copy, pickle: the given fields; `target` follows)
        return tuple(self)[:-1]

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> McpRequest:  # type: ignore[override]  # (mypy: NamedTuple's is generic)
        """A view from its given fields, or from all of them (another view's): `target` is derived again."""
        fields = tuple(iterable)
        return cls(*fields[: len(_GIVEN)]) if len(fields) == len(_GIVEN) + 1 else cls(*fields)

    def _replace(self, **changes: Any) -> McpRequest:
        """A copy with some given fields changed (`target` follows `method` and `params`)."""
        unexpected = changes.keys() - _GIVEN
        if unexpected:
            raise ValueError(f"Got unexpected field names: {sorted(unexpected)!r}")
        return McpRequest(*map(changes.pop, _GIVEN, self))

    @property
    def name(self) -> str | None:
        """Tool or prompt name (`tools/call`, `prompts/get`): the `target` of those methods."""
        return self.target if self.method in _NAME_METHODS else None

    @property
    def uri(self) -> str | None:
        """Resource URI (`resources/read`, `resources/subscribe`, `resources/unsubscribe`): their `target`."""
        return self.target if self.method in _URI_METHODS else None

    @property
    def cursor(self) -> str | None:
        """The pagination cursor (`""` is a valid cursor)."""
        value = self.params.get("cursor") if self.params is not None else None
        return value if isinstance(value, str) else None

    @property
    def meta(self) -> Mapping[str, Any] | None:
        """`params._meta`."""
        value = self.params.get("_meta") if self.params is not None else None
        return value if isinstance(value, dict) else None

    @property
    def progress_token(self) -> str | int | None:
        meta = self.meta
        token = meta.get("progressToken") if meta is not None else None
        return token if isinstance(token, str | int) and not isinstance(token, bool) else None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a request cannot go on: the JSON-RPC error and HTTP status it is answered with."""

    status: int
    code: int
    message: str
    request_id: RequestId | None = None
    data: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (`Allow` on a 405)."""


def get_mcp_request(source: Scope | HTTPConnection) -> McpRequest | None:
    """The request view of an ASGI scope or a Starlette `Request`, or `None` if it is not MCP.

    >>> from starlette.requests import Request
    >>> async def endpoint(request: Request):
    ...     view = get_mcp_request(request)
    ...     return view.method if view else None
    """
    scope = source.scope if isinstance(source, HTTPConnection) else source
    view = scope.get(REQUEST_SCOPE_KEY)
    return view if isinstance(view, McpRequest) else None


KeyFunction = Callable[[Scope, McpRequest], str]
"""What a rate limiter or a breaker keys its state by: a function of the scope and the request view."""
