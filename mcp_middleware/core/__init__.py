"""The MCP-aware ASGI kernel every middleware of this project stands on.

Parse once (:func:`read_request` → :class:`McpRequest` in the scope), stream always
(:class:`ResponseTap` observes without holding back), refuse with JSON-RPC errors
(:func:`send_error`, :class:`ErrorCode`), and share who is calling (:class:`Principal`),
which requests a setting applies to (:class:`Selector`, :class:`SelectorMap`) and what each
middleware decided (:func:`record_decision`, :func:`observe_decisions`).
"""

from .decisions import (
    DECISIONS_SCOPE_KEY,
    Decision,
    DecisionObserver,
    get_decisions,
    observe_decisions,
    record_decision,
)
from .errors import ErrorCode, JsonRpcCode, RequestId, error_body, send_error
from .kernel import DEFAULT_CONFIG, DEFAULT_MAX_BODY_SIZE, CoreConfig, read_request, refuse, replay
from .middleware import McpCoreMiddleware, OutcomeHook
from .principal import ANONYMOUS, Principal, get_principal, set_principal
from .request import Era, McpRequest, Rejection, RequestKind, get_mcp_request
from .selectors import Selector, SelectorMap
from .tap import ResponseOutcome, ResponseTap, SseParser

__all__ = [
    "ANONYMOUS",
    "DECISIONS_SCOPE_KEY",
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_BODY_SIZE",
    "CoreConfig",
    "Decision",
    "DecisionObserver",
    "Era",
    "ErrorCode",
    "JsonRpcCode",
    "McpCoreMiddleware",
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
    "SseParser",
    "error_body",
    "get_decisions",
    "get_mcp_request",
    "get_principal",
    "observe_decisions",
    "read_request",
    "record_decision",
    "refuse",
    "replay",
    "send_error",
    "set_principal",
]
