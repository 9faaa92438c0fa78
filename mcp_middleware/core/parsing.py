"""Reading a POST body: one JSON-RPC message into an :class:`McpRequest`, or the :class:`Rejection` it gets.

The era is decided as the `mcp` SDK decides it: from the `MCP-Protocol-Version` header alone.
Modern (2026-07-28) requests run the SDK's own validation ladder, so `Mcp-Method`/`Mcp-Name`
are verified against the body before anyone may trust them.
"""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
from mcp.shared.inbound import (
    NAME_BEARING_METHODS,
    InboundLadderRejection,
    classify_inbound_request,
    unsupported_protocol_version_rejection,
)
from mcp.types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from .errors import JsonRpcCode, RequestId
from .headers import HANDSHAKE_VERSIONS, ROUTING_HEADERS, RequestHeaders
from .request import DEFAULT_LEGACY_VERSION, TARGET_KEYS, Era, McpRequest, Rejection, RequestKind, target_of

__all__ = ["describe_exchange", "parse_post"]

_MODERN_VERSIONS = frozenset(MODERN_PROTOCOL_VERSIONS)
_VERSION_KEY = PROTOCOL_VERSION_META_KEY
_CAPABILITIES_KEY = CLIENT_CAPABILITIES_META_KEY
_INVALID_BODY = "Body must be a single JSON-RPC request or notification object"
_REPARSE_MAX = 1024 * 1024
"""Largest body the stdlib parser re-reads after orjson refused it, to find the id (see `_reparse`)."""


_NO_ID: Any = object()
_ID_TYPES = frozenset({str, int})
"""The exact types of a valid id (orjson makes exact built-in types; `bool`, a subclass of `int`, is not one)."""
_LEGACY, _MODERN, _REQUEST = Era.LEGACY, Era.MODERN, RequestKind.REQUEST  # (one global load each, hot path)
_tuple_new = tuple.__new__  # builds a view without the Python-level `McpRequest.__new__`
_loads = orjson.loads


def parse_post(
    body: bytes, headers: RequestHeaders, started: float | None = None, *, _decoded: Any = None
) -> McpRequest | Rejection:
    """Parse and validate one POST body; never raises.

    Answers match the SDK where it is right (parse error 400/-32700, modern ladder
    -32602/-32020/-32022) and are clearer where it is not (a batch is -32600 in
    both eras, an invalid id is -32600 instead of a validation dump). A body orjson
    refuses is refused with the request's id whenever the JSON grammar still gives one
    (see `_reparse`).
    """
    # Hot path of every request: written for the interpreter (exact type checks by `x.__class__`, a bytecode
    # fewer than `type(x)`: the decoders make exact built-in types only; no helper calls on the common path).
    if _decoded is None:  # (`_reparse` passes what the stdlib parser made of the body, never a bare `null`)
        try:
            message = _loads(body)
        except (orjson.JSONDecodeError, RecursionError):
            return _reparse(body, headers)
    else:
        message = _decoded
    if message.__class__ is not dict:
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, _INVALID_BODY)

    request_id = message.get("id", _NO_ID)
    if request_id.__class__ not in _ID_TYPES:  # (one test for the usual request: a str or int id)
        if request_id is not _NO_ID:  # null, fractional and bool ids refused
            return Rejection(400, JsonRpcCode.INVALID_REQUEST, "Request id must be a string or an integer")
        request_id = None  # (from here on, None: no id; a valid id is never None)
    if message.get("jsonrpc") != "2.0":
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, 'jsonrpc must be "2.0"', request_id)

    version = headers.protocol_version
    method = message.get("method")
    if method.__class__ is not str or not method:
        if method is not None:
            return Rejection(400, JsonRpcCode.INVALID_REQUEST, "method must be a non-empty string", request_id)
        if request_id is not None and ("result" in message or "error" in message) and headers.era is Era.LEGACY:
            return _view(RequestKind.RESPONSE, Era.LEGACY, headers, None, request_id, None, body, started)
        return Rejection(400, JsonRpcCode.INVALID_REQUEST, _INVALID_BODY, request_id)
    params = message.get("params")
    if params.__class__ is not dict and params is not None:
        return Rejection(400, JsonRpcCode.INVALID_PARAMS, "params must be an object", request_id)

    if version is None or version in HANDSHAKE_VERSIONS:  # the legacy era (as the SDK decides it)
        return _view(
            RequestKind.REQUEST if request_id is not None else RequestKind.NOTIFICATION,
            _LEGACY,
            headers,
            params,
            request_id,
            method,
            body,
            started,
        )
    if request_id is None:
        # The SDK only checks the version of an id-less POST, then drops it with 202.
        rejected = unsupported_protocol_version_rejection(version)
        if rejected is not None:
            return _from_ladder(rejected, None)
        return _view(RequestKind.NOTIFICATION, _MODERN, headers, params, None, method, body, started)
    # Trusted without the SDK's ladder only if the ladder would accept: the envelope present, the headers
    # equal to the body, the version served. Anything else is the ladder's to decide (a base64-encoded
    # `Mcp-Name`, say, it may still accept). Inline, as the view below: every modern request runs it.
    # The view's `target` is read here too, by the key `Mcp-Name` mirrors where the SDK checks one.
    if params is not None and headers.duplicated is None:
        meta = params.get("_meta")
        if (
            meta.__class__ is dict
            and _CAPABILITIES_KEY in meta
            and meta.get(_VERSION_KEY) == version
            and version in _MODERN_VERSIONS
            and headers.method == method
        ):
            # (`Mcp-Name` is checked for the methods the SDK names, with their key: it is the target's; a method
            # without one asks `params` for the key None, which JSON cannot spell)
            target = params.get(TARGET_KEYS.get(method))
            if target is None or target == headers.name:  # (then a str, as the header's value is)
                # (`_view` for a verified modern request: its version is the header's, it has no session)
                if started is None:
                    started = time.perf_counter()
                return _tuple_new(
                    McpRequest,
                    (_REQUEST, _MODERN, version, "POST", method, request_id, params, None, True, body, started, target),
                )
            if method not in NAME_BEARING_METHODS:
                return _verified(version, method, request_id, params, body, started)
    rejection = _modern_ladder(message, headers, request_id)
    if rejection is not None:
        return rejection
    return _verified(version, method, request_id, params, body, started)


def _verified(
    version: str, method: str, request_id: RequestId, params: dict[str, Any] | None, body: bytes, started: float | None
) -> McpRequest:
    """The view of a modern request the ladder accepts (its version is the header's, it has no session)."""
    fields = (_REQUEST, _MODERN, version, "POST", method, request_id, params, None, True, body)
    return _tuple_new(
        McpRequest, (*fields, time.perf_counter() if started is None else started, target_of(method, params))
    )


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
    # (a bare `null`, in an encoding orjson does not read, is no object: refused as `parse_post` refuses one)
    checked = (
        parse_post(body, headers, 0.0, _decoded=message)
        if message is not None
        else Rejection(400, JsonRpcCode.INVALID_REQUEST, _INVALID_BODY)
    )
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
        for name, value in zip(ROUTING_HEADERS, (headers.protocol_version, headers.method, headers.name), strict=True)
        if value is not None
    }
    verdict = classify_inbound_request(message, headers=routing)
    return _from_ladder(verdict, request_id) if isinstance(verdict, InboundLadderRejection) else None


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
            target_of(method, params),
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
