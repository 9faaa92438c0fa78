"""The request view: what an MCP request is, parsed once and shared through the ASGI scope.

`parse_post` turns a POST body into an :class:`McpRequest` or a :class:`Rejection`
(the JSON-RPC error the client gets). The era is decided as the `mcp` SDK decides
it: from the `MCP-Protocol-Version` header alone. Modern (2026-07-28) requests
run the SDK's own validation ladder, so `Mcp-Method`/`Mcp-Name` are verified
against the body before anyone may trust them.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    InboundLadderRejection,
    classify_inbound_request,
    unsupported_protocol_version_rejection,
)
from mcp.types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.requests import HTTPConnection
from starlette.types import Scope

from .errors import JsonRpcCode, RequestId

__all__ = [
    "DEFAULT_LEGACY_VERSION",
    "REQUEST_SCOPE_KEY",
    "Era",
    "McpRequest",
    "RequestHeaders",
    "RequestKind",
    "Rejection",
    "get_mcp_request",
    "parse_post",
]

REQUEST_SCOPE_KEY = "mcp_middleware.request"
"""Scope key holding the view: absent = not looked at yet, `None` = not an MCP request."""

DEFAULT_LEGACY_VERSION = "2025-03-26"
"""What a handshake-era server assumes when `MCP-Protocol-Version` is absent (spec and SDK)."""

_HANDSHAKE_VERSIONS = frozenset(HANDSHAKE_PROTOCOL_VERSIONS)
_MODERN_VERSIONS = frozenset(MODERN_PROTOCOL_VERSIONS)
_VERSION_KEY = PROTOCOL_VERSION_META_KEY
_CAPABILITIES_KEY = CLIENT_CAPABILITIES_META_KEY
_URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_NAME_METHODS = frozenset({"tools/call", "prompts/get"})
_ROUTING_HEADERS = (MCP_PROTOCOL_VERSION_HEADER, MCP_METHOD_HEADER, MCP_NAME_HEADER)
_ROUTING_HEADER_BYTES = frozenset(name.encode() for name in _ROUTING_HEADERS)
_HEADER_NAMES = (
    b"content-type",
    b"content-length",
    b"accept",
    b"mcp-protocol-version",
    b"mcp-method",
    b"mcp-name",
    b"mcp-session-id",
)
_INVALID_BODY = "Body must be a single JSON-RPC request or notification object"
_REPARSE_MAX = 1024 * 1024
"""Largest body the stdlib parser re-reads after orjson refused it, to find the id (see `_reparse`)."""


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


class RequestHeaders:
    """The few request headers the core needs, read from the raw ASGI list.

    ASGI servers lower-case header names. Only the first copy of a header counts,
    as in Starlette; a second copy of a routing header is remembered in
    `duplicated` (the modern era refuses it). The routing headers are decoded at
    once; the others only when asked (`raw_content_type`, `raw_content_length` and
    `raw_accept` are what the kernel reads).
    """

    __slots__ = (
        "_session_id",
        "duplicated",
        "method",
        "name",
        "protocol_version",
        "raw_accept",
        "raw_content_length",
        "raw_content_type",
    )

    duplicated: str | None

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        found = dict(raw)  # one C-level pass; a repeated name makes it shorter than `raw`
        if len(found) != len(raw):
            found = self._first_copies(raw)
        else:
            self.duplicated = None
        # One C-level pass for every lookup; decoding inline (a helper's calls would cost more than the rest).
        self.raw_content_type, self.raw_content_length, self.raw_accept, version, method, name, self._session_id = map(
            found.get, _HEADER_NAMES
        )
        self.protocol_version = version.decode("latin-1") if version is not None else None
        self.method = method.decode("latin-1") if method is not None else None
        self.name = name.decode("latin-1") if name is not None else None

    def _first_copies(self, raw: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        duplicated: str | None = None
        for key, value in raw:
            if key not in found:
                found[key] = value
            elif duplicated is None and key in _ROUTING_HEADER_BYTES:
                duplicated = key.decode("latin-1")
        self.duplicated = duplicated
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
        return Era.LEGACY if pv is None or pv in _HANDSHAKE_VERSIONS else Era.MODERN


class McpRequest(NamedTuple):
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
      saw the request (0.0 for a view built by hand).

    `name`, `uri`, `target`, `cursor`, `meta` and `progress_token` are read from
    `params` when asked.
    """

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

    def _text_param(self, methods: frozenset[str], key: str) -> str | None:
        if self.method not in methods or self.params is None:
            return None
        value = self.params.get(key)
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str | None:
        """Tool or prompt name (`tools/call`, `prompts/get`)."""
        return self._text_param(_NAME_METHODS, "name")

    @property
    def uri(self) -> str | None:
        """Resource URI (`resources/read`, `resources/subscribe`, `resources/unsubscribe`)."""
        return self._text_param(_URI_METHODS, "uri")

    @property
    def target(self) -> str | None:
        """The tool/prompt name or resource URI the request addresses, if any."""
        name = self.name
        return name if name is not None else self.uri

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


_NO_ID: Any = object()
_tuple_new = tuple.__new__  # builds a view without the Python-level `McpRequest.__new__`


def parse_post(
    body: bytes, headers: RequestHeaders, started: float | None = None, *, _decoded: Any = _NO_ID
) -> McpRequest | Rejection:
    """Parse and validate one POST body; never raises.

    Answers match the SDK where it is right (parse error 400/-32700, modern ladder
    -32602/-32020/-32022) and are clearer where it is not (a batch is -32600 in
    both eras, an invalid id is -32600 instead of a validation dump). A body orjson
    refuses is refused with the request's id whenever the JSON grammar still gives one
    (see `_reparse`).
    """
    # Hot path of every request: written for the interpreter (exact `type` checks, since orjson
    # only makes exact built-in types; no helper calls on the common path).
    if _decoded is _NO_ID:
        try:
            message = orjson.loads(body)
        except (orjson.JSONDecodeError, RecursionError):
            return _reparse(body, headers)
    else:
        message = _decoded
    if type(message) is not dict:
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, _INVALID_BODY)

    request_id = message.get("id", _NO_ID)
    has_id = request_id is not _NO_ID
    if not has_id:
        request_id = None
    elif type(request_id) is not str and type(request_id) is not int:  # null, fractional and bool ids refused
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, "Request id must be a string or an integer")
    if message.get("jsonrpc") != "2.0":
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, 'jsonrpc must be "2.0"', request_id)

    version = headers.protocol_version
    era = Era.LEGACY if version is None or version in _HANDSHAKE_VERSIONS else Era.MODERN
    method = message.get("method")
    if type(method) is not str or not method:
        if method is not None:
            return Rejection(400, JsonRpcCode.INVALID_REQUEST, "method must be a non-empty string", request_id)
        if has_id and ("result" in message or "error" in message) and era is Era.LEGACY:
            return _view(RequestKind.RESPONSE, era, headers, None, request_id, None, body, started)
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, _INVALID_BODY, request_id)
    params = message.get("params")
    if params is not None and type(params) is not dict:
        return Rejection(400, JsonRpcCode.INVALID_PARAMS, "params must be an object", request_id)

    if era is Era.LEGACY:
        return _view(
            RequestKind.REQUEST if has_id else RequestKind.NOTIFICATION,
            era,
            headers,
            params,
            request_id,
            method,
            body,
            started,
        )
    if not has_id:
        # The SDK only checks the version of an id-less POST, then drops it with 202.
        rejected = unsupported_protocol_version_rejection(version or "")
        if rejected is not None:
            return _from_ladder(rejected, None)
        return _view(RequestKind.NOTIFICATION, era, headers, params, None, method, body, started)
    if headers.duplicated is not None or not _agrees(params, method, headers):
        rejection = _modern_ladder(message, headers, request_id)
        if rejection is not None:
            return rejection
    return _view(RequestKind.REQUEST, era, headers, params, request_id, method, body, started, verified=True)


def _reparse(body: bytes, headers: RequestHeaders) -> Rejection:
    """The answer to a body orjson refused, with the request's id wherever the body still gives one.

    orjson refuses some texts the JSON grammar allows (a lone surrogate escape `"\\ud800"`, a
    number past a double `1e400`) and `NaN`, which the SDK's parsers take. The stdlib parser reads
    such a body again (only here, after orjson failed, and only up to `_REPARSE_MAX`: a bounded cost
    that bad input alone pays) and the usual checks run on what it found. In the modern era a
    request the SDK's ladder refuses gets that answer, id included. Every other such body is refused
    as a parse error (400, -32700) with its id: its strings cannot be encoded as UTF-8 and its
    numbers not written back as JSON, so no log line, label, cache key or rewritten body of the
    stack could carry it. (The legacy SDK refuses lone surrogates too, with `id: null`.)
    """
    parse_error = Rejection(400, JsonRpcCode.PARSE_ERROR, "Parse error")
    if len(body) > _REPARSE_MAX:
        return parse_error
    try:  # as the SDK's modern era reads it (also UTF-16/32, and surrogates encoded in UTF-8)
        message = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return parse_error
    checked = parse_post(body, headers, 0.0, _decoded=message)
    if isinstance(checked, Rejection):
        if headers.era is Era.MODERN:
            return checked  # the SDK's modern parser reads such a body: its answer, id included
        request_id = checked.request_id  # the legacy SDK calls it a parse error, as we do
    else:
        request_id = checked.id
    return Rejection(
        400,
        JsonRpcCode.PARSE_ERROR,
        "Parse error: a string is not valid Unicode (lone surrogate escape) or a number is out of range",
        request_id,
    )


def _modern_ladder(message: dict[str, Any], headers: RequestHeaders, request_id: RequestId | None) -> Rejection | None:
    """The SDK's 2026-07-28 validation ladder for a request, answered with its codes and statuses."""
    if headers.duplicated is not None:
        return Rejection(
            400, JsonRpcCode.HEADER_MISMATCH, f"{headers.duplicated} header appears more than once", request_id
        )
    routing = {
        name: value
        for name, value in zip(_ROUTING_HEADERS, (headers.protocol_version, headers.method, headers.name), strict=True)
        if value is not None
    }
    verdict = classify_inbound_request(message, headers=routing)
    return _from_ladder(verdict, request_id) if isinstance(verdict, InboundLadderRejection) else None


def _agrees(params: dict[str, Any] | None, method: str, headers: RequestHeaders) -> bool:
    """True only if the SDK's ladder would accept: envelope present, headers equal to the body, version served.

    A `False` is not a rejection: the SDK's own classifier then decides (and, for a
    base64-encoded `Mcp-Name`, may still accept).
    """
    if params is None:
        return False
    meta = params.get("_meta")
    if type(meta) is not dict or _CAPABILITIES_KEY not in meta:
        return False
    version = meta.get(_VERSION_KEY)
    if version != headers.protocol_version or version not in _MODERN_VERSIONS or headers.method != method:
        return False
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is None:
        return True
    value = params.get(name_key)
    return value is None or value == headers.name


def _from_ladder(rejected: InboundLadderRejection, request_id: RequestId | None) -> Rejection:
    return Rejection(400, rejected.code, rejected.message, request_id, rejected.data)


def _view(
    kind: RequestKind,
    era: Era,
    headers: RequestHeaders,
    params: dict[str, Any] | None,
    request_id: RequestId | None,
    method: str | None,
    body: bytes,
    started: float | None,
    verified: bool = False,
) -> McpRequest:
    version = headers.protocol_version
    if version is None:
        proposed = params.get("protocolVersion") if params is not None and method == "initialize" else None
        version = proposed if isinstance(proposed, str) else DEFAULT_LEGACY_VERSION
    return _tuple_new(
        McpRequest,
        (
            kind,
            era,
            version,
            "POST",
            method,
            request_id,
            params,
            headers.session_id if era is Era.LEGACY else None,
            verified,
            body,
            time.perf_counter() if started is None else started,
        ),
    )


def describe_exchange(http_method: str, headers: RequestHeaders, started: float | None = None) -> McpRequest:
    """The view of a non-POST exchange on the MCP endpoint (GET stream, DELETE, OPTIONS …)."""
    kind = {"GET": RequestKind.STREAM, "DELETE": RequestKind.TERMINATE}.get(http_method, RequestKind.OTHER)
    era = headers.era
    return McpRequest(
        kind=kind,
        era=era,
        protocol_version=headers.protocol_version or DEFAULT_LEGACY_VERSION,
        http_method=http_method,
        session_id=headers.session_id if era is Era.LEGACY else None,
        started=time.perf_counter() if started is None else started,
    )
