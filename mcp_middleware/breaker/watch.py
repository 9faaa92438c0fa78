"""What the breaker needs to know about a response, learned on the way through without a tap.

The default classifier asks only: the status, whether the body was too large to look at, and
the JSON-RPC `result` or `error` that answers the request. For the usual response (a status
below 400, exactly `application/json` or `text/event-stream`, not compressed) the breaker's own
`send` keeps what the core's :class:`~mcp_middleware.core.ResponseTap` would keep, bounded the
same way, and :func:`find_response` picks the answer by the tap's rules; every other response
is handed to a tap from its start. A custom classifier, which is given a whole
:class:`~mcp_middleware.core.ResponseOutcome`, always gets a tap.
"""

from __future__ import annotations

from typing import Any, Final

from orjson import JSONDecodeError, loads
from starlette.types import Message

from mcp_middleware.core.protocol import EVENT_STREAM, JSON

__all__ = ["CONTENT_TYPES", "JSON_BODY", "NOT_WATCHED", "SSE_BODY", "answer_in", "find_response", "watchable"]

NOT_WATCHED: Final = 0
JSON_BODY: Final = 1
SSE_BODY: Final = 2
MAX_CANDIDATES: Final = 4
"""SSE events kept as possible responses (as the tap keeps them: the response ends its stream)."""
CONTENT_TYPES: Final[tuple[str | None, str, str]] = (None, "application/json", "text/event-stream")
"""The content type the tap would report, by watch mode."""


def watchable(start: Message) -> int:
    """How the breaker can watch a response from its start: `JSON_BODY`, `SSE_BODY` or `NOT_WATCHED` (use a tap)."""
    if start["status"] >= 400:  # an error answer: the tap completes its id (`ErrorHold`)
        return NOT_WATCHED
    headers = dict(start.get("headers", ()))  # (the last of repeated headers wins, as in the tap)
    if b"content-encoding" in headers:
        return NOT_WATCHED
    content_type = headers.get(b"content-type")
    return JSON_BODY if content_type == JSON else SSE_BODY if content_type == EVENT_STREAM else NOT_WATCHED


def find_response(candidates: list[bytes], request_id: object) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """`(result, error)` of the JSON-RPC response to `request_id` among `candidates`, the last first.

    The tap's rules exactly: a JSON object without `method`; a `result` object answers the
    request with its id, an `error` object the request with its id or a null one.
    """
    for data in reversed(candidates):
        found = answer_in(data, request_id)
        if found is not None:
            return found
    return None, None


def answer_in(data: bytes, request_id: object) -> tuple[dict[str, Any] | None, dict[str, Any] | None] | None:
    """`(result, error)` if `data` is the JSON-RPC response to `request_id` (the rules above), else None."""
    try:
        message = loads(data)
    except JSONDecodeError:
        return None
    if not isinstance(message, dict) or "method" in message:
        return None
    result = message.get("result")
    if isinstance(result, dict) and message.get("id") == request_id:
        return result, None
    error = message.get("error")
    if isinstance(error, dict):
        rid = message.get("id")
        if rid == request_id or rid is None:
            return None, error
    return None
