"""The MCP-aware ASGI kernel every middleware of this project stands on.

Parse once (:func:`read_request` → :class:`McpRequest` in the scope), stream always
(:class:`ResponseTap` observes without holding back), refuse with JSON-RPC errors
(:func:`send_error`, :class:`ErrorCode`), and share who is calling (:class:`Principal`),
which requests a setting applies to (:class:`Selector`, :class:`SelectorMap`), what each
middleware decided (:func:`record_decision`, :func:`observe_decisions`), and what of a client's
input may be recorded (:func:`clip`, :func:`session_digest`, :class:`BoundedValues`, known sets).
"""

from .decisions import (
    DECISIONS_SCOPE_KEY,
    Component,
    Decision,
    DecisionObserver,
    Outcome,
    add_decision,
    get_decisions,
    observe_decisions,
    record_decision,
)
from .errors import ErrorCode, JsonRpcCode, McpMiddlewareError, RequestId, error_body, send_error
from .kernel import ANSWERED, DEFAULT_CONFIG, CoreConfig, read_request, refuse, replay
from .middleware import McpCoreMiddleware, OutcomeHook
from .principal import ANONYMOUS, Principal, get_principal, set_principal
from .protocol import DEFAULT_MAX_BODY_SIZE
from .recording import (
    KNOWN_METHODS,
    KNOWN_PROTOCOL_VERSIONS,
    MAX_RECORDED_CHARS,
    OTHER,
    BoundedValues,
    SessionIdRedaction,
    clip,
    known_method,
    known_version,
    portable_name,
    session_digest,
)
from .request import Era, KeyFunction, McpRequest, Rejection, RequestKind, get_mcp_request
from .selectors import Selector, SelectorMap
from .tap import ResponseOutcome, ResponseTap, SseParser

__all__ = [
    "ANSWERED",
    "ANONYMOUS",
    "DECISIONS_SCOPE_KEY",
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_BODY_SIZE",
    "KNOWN_METHODS",
    "KNOWN_PROTOCOL_VERSIONS",
    "MAX_RECORDED_CHARS",
    "OTHER",
    "Outcome",
    "BoundedValues",
    "Component",
    "CoreConfig",
    "Decision",
    "DecisionObserver",
    "Era",
    "ErrorCode",
    "JsonRpcCode",
    "KeyFunction",
    "McpCoreMiddleware",
    "McpMiddlewareError",
    "McpRequest",
    "OutcomeHook",
    "Principal",
    "Rejection",
    "RequestId",
    "RequestKind",
    "ResponseOutcome",
    "ResponseTap",
    "Selector",
    "SelectorMap",
    "SessionIdRedaction",
    "SseParser",
    "clip",
    "error_body",
    "get_decisions",
    "get_mcp_request",
    "get_principal",
    "known_method",
    "known_version",
    "observe_decisions",
    "portable_name",
    "read_request",
    "add_decision",
    "record_decision",
    "refuse",
    "replay",
    "send_error",
    "session_digest",
    "set_principal",
]
