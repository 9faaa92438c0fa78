"""Circuit breaking, timeouts and safe retries that understand MCP responses.

>>> from mcp.server.mcpserver import MCPServer
>>> app = CircuitBreakerMiddleware(MCPServer("demo").streamable_http_app(), timeouts={"*": 10.0})
"""

from .classify import NEUTRAL_SERVER_CODES, Classifier, FailureClassifier, Fault
from .middleware import CircuitBreakerMiddleware
from .registry import BreakerRegistry
from .retry import SAFE_METHODS, RetryPolicy
from .state import (
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    Classification,
    Permit,
    StateChange,
    StateListener,
)
from .timeouts import DEFAULT_EXCLUDE, DEFAULT_TIMEOUTS

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_TIMEOUTS",
    "NEUTRAL_SERVER_CODES",
    "SAFE_METHODS",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerMiddleware",
    "Classifier",
    "FailureClassifier",
    "Fault",
    "Permit",
    "RetryPolicy",
    "StateChange",
    "StateListener",
    "Classification",
]
