"""Which responses count against a backend: the failure classifier.

The breaker sees every response through the core's response tap, in both eras
and for JSON and SSE alike, so it can tell a JSON-RPC internal error inside a
`200 text/event-stream` from a tool that politely reported `isError`. A
classifier maps what was observed to a :class:`~mcp_middleware.breaker.state.Classification`;
:class:`FailureClassifier` is the default and any callable with the same
signature replaces it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from mcp_middleware.core import ErrorCode, JsonRpcCode, McpRequest, ResponseOutcome

from .state import Classification

__all__ = ["NEUTRAL_SERVER_CODES", "Classifier", "Fault", "FailureClassifier"]


class Fault(enum.Enum):
    """How the inner app failed, when it did not just answer."""

    TIMEOUT = "timeout"
    """The call outlived its timeout and was cancelled."""
    EXCEPTION = "exception"
    """The inner app raised."""
    DROPPED = "dropped"
    """The inner app returned without finishing its response (a dropped connection)."""


Classifier = Callable[[McpRequest, ResponseOutcome, "Fault | None"], Classification]
"""`(request, outcome, fault) -> Classification`; `fault` is `None` when the app answered normally."""

NEUTRAL_SERVER_CODES: frozenset[int] = frozenset(
    {
        -32002,  # resource not found (MCP revisions before 2026-07-28)
        int(ErrorCode.PAYLOAD_TOO_LARGE),
        int(ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        int(ErrorCode.UNAUTHORIZED),
        int(ErrorCode.FORBIDDEN),
        int(ErrorCode.RATE_LIMITED),
        int(JsonRpcCode.HEADER_MISMATCH),
        int(JsonRpcCode.MISSING_REQUIRED_CLIENT_CAPABILITY),
        int(JsonRpcCode.UNSUPPORTED_PROTOCOL_VERSION),
        -32042,  # URL elicitation required: the server wants the user, it is not failing
    }
)
"""Codes in the JSON-RPC server-error range (-32099 … -32000) that describe the client, not the server."""


@dataclass(frozen=True, slots=True)
class FailureClassifier:
    """The default classification.

    Failures: timeouts, exceptions and dropped responses from the inner app; HTTP
    5xx; JSON-RPC internal errors (-32603) and server errors (-32099 … -32000)
    except those in `neutral_codes`; a successful-looking response that ended
    without the JSON-RPC response to the request (an SSE stream that broke off);
    tool results with `isError: true` only if `count_tool_errors`.

    Neutral (neither success nor failure): HTTP 4xx (bad requests, auth refusals,
    rate limits), JSON-RPC client errors (-32700, -32600, -32601, -32602, …) and
    the codes in `neutral_codes`. Everything else is a success.

    >>> from mcp_middleware.core import Era, RequestKind
    >>> request = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1)
    >>> outcome = ResponseOutcome(200, "text/event-stream", 80, 0.1, True, error={"code": -32603, "message": "x"})
    >>> FailureClassifier()(request, outcome, None)
    <Classification.FAILURE: 'failure'>
    """

    count_tool_errors: bool = False
    neutral_codes: Collection[int] = NEUTRAL_SERVER_CODES
    extra_failure_codes: Collection[int] = ()
    """Application codes (outside the server-error range) that also count as failures."""

    def __call__(self, request: McpRequest, outcome: ResponseOutcome, fault: Fault | None) -> Classification:
        if fault is not None:
            return Classification.FAILURE
        return self.judge(outcome.status, outcome.content_type, outcome.truncated, outcome.result, outcome.error)

    def judge(
        self,
        status: int | None,
        content_type: str | None,
        truncated: bool,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
    ) -> Classification:
        """The verdict on a response the app answered (no fault), from the parts of the outcome it reads."""
        if status is None:
            return Classification.FAILURE
        if status >= 500:
            return Classification.FAILURE
        if status >= 400:
            return Classification.NEUTRAL
        if error is not None:
            code = error.get("code")
            if not isinstance(code, int):
                return Classification.FAILURE  # a malformed error object is the server's fault
            if code == JsonRpcCode.INTERNAL_ERROR or code in self.extra_failure_codes:
                return Classification.FAILURE
            if -32099 <= code <= -32000 and code not in self.neutral_codes:
                return Classification.FAILURE
            return Classification.NEUTRAL
        if result is None:
            if truncated or status != 200 or content_type is None:
                return Classification.SUCCESS  # nothing to look at (202, a body too large to inspect): trust the status
            return Classification.FAILURE  # a 200 that ended without the response: the stream broke off
        if self.count_tool_errors and result.get("isError") is True:
            return Classification.FAILURE
        return Classification.SUCCESS
