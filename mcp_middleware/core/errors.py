"""JSON-RPC error codes and the one way this project refuses a request.

Every refusal is a JSON-RPC error object carrying the request's id, sent as
`application/json` with a meaningful HTTP status. The `mcp` SDK client surfaces
such a body verbatim as `MCPError(code, message, data)` in both protocol eras,
so an agent can read why it was refused and when to retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Any

import orjson
from starlette.types import Send

__all__ = [
    "ErrorCode",
    "McpMiddlewareError",
    "JsonRpcCode",
    "RequestId",
    "error_body",
    "request_id_in",
    "send_error",
    "send_json",
]

RequestId = str | int


def request_id_in(body: bytes) -> RequestId | None:
    """The id of the JSON-RPC request in `body`, or None: for an error answering a request no layer parsed.

    >>> request_id_in(b'{"jsonrpc":"2.0","id":7,"method":"ping"}'), request_id_in(b"[]"), request_id_in(b"{")
    (7, None, None)
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = decoded.get("id") if isinstance(decoded, dict) else None
    return found if isinstance(found, str | int) and not isinstance(found, bool) else None


class McpMiddlewareError(Exception):
    """The base of every exception this package raises on purpose.

    Catch it to handle any of them (a store that is down, a token that was rejected,
    an unusable config, a backend that cannot be reached) without catching bugs.

    >>> from mcp_middleware.ratelimit import StoreUnavailable
    >>> issubclass(StoreUnavailable, McpMiddlewareError)
    True
    """


class JsonRpcCode(IntEnum):
    """Codes defined by JSON-RPC 2.0 and the MCP specification (not ours)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    HEADER_MISMATCH = -32020
    MISSING_REQUIRED_CLIENT_CAPABILITY = -32021
    UNSUPPORTED_PROTOCOL_VERSION = -32022


class ErrorCode(IntEnum):
    """The project's own error codes: the one registry (documented in docs/errors.md).

    They live in the range MCP leaves to implementations (-32000 … -32019).
    -32000 … -32002 are avoided because the SDK (connection closed, request
    timeout) and older MCP revisions (resource not found) already use them.
    """

    PAYLOAD_TOO_LARGE = -32010
    """The request body is larger than the configured bound (HTTP 413)."""
    UNSUPPORTED_MEDIA_TYPE = -32011
    """The POST body is not declared as `application/json` (HTTP 415)."""
    UNAUTHORIZED = -32012
    """No valid credentials were presented (HTTP 401)."""
    FORBIDDEN = -32013
    """The credentials do not grant this operation (HTTP 403)."""
    RATE_LIMITED = -32014
    """A rate limit refused the request; `data.retryAfterMs` says when to retry (HTTP 429)."""
    UNAVAILABLE = -32015
    """The backend is unavailable, e.g. its circuit is open (HTTP 503)."""
    TIMEOUT = -32016
    """The backend did not answer in time (HTTP 504)."""
    BAD_GATEWAY = -32017
    """The backend answered with something that is not a valid MCP response (HTTP 502)."""


def error_body(
    code: int,
    message: str,
    request_id: RequestId | None = None,
    data: Any = None,
) -> bytes:
    """Serialise a JSON-RPC error response; `id` is `null` when the request's id is unknown."""
    error: dict[str, Any] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    answer = {"jsonrpc": "2.0", "id": request_id, "error": error}
    try:
        return orjson.dumps(answer)
    except orjson.JSONEncodeError:  # an id orjson cannot write (a lone surrogate): escaped, as the SDK echoes it
        return json.dumps(answer, separators=(",", ":")).encode()


async def send_error(
    send: Send,
    *,
    status: int,
    code: int,
    message: str,
    request_id: RequestId | None = None,
    data: Any = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
) -> None:
    """Answer the request with a JSON-RPC error and HTTP `status`.

    Sends exactly one `http.response.start` and one final body message; the
    caller must not call the inner app afterwards. Extra `headers`
    (`WWW-Authenticate`, `Retry-After`, `RateLimit`, …) are added as given.

    >>> # inside a pure-ASGI middleware:
    >>> # await send_error(send, status=429, code=ErrorCode.RATE_LIMITED,
    >>> #                  message="Rate limit exceeded", request_id=request.id,
    >>> #                  data={"retryAfterMs": 2000}, headers={"Retry-After": "2"})
    """
    body = error_body(code, message, request_id, data)
    items = headers.items() if isinstance(headers, Mapping) else headers
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("latin-1")),
    ]
    raw_headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_json(send: Send, status: int, payload: object, *, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer with a plain JSON document (an operational endpoint's, not a JSON-RPC message), never cached.

    >>> # await send_json(send, 503, {"status": "not ready"})
    """
    body = orjson.dumps(payload)
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
