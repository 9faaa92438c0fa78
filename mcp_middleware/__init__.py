"""mcp-middleware: production traffic control for any MCP server, as composable pure-ASGI middlewares.

The top level holds what a user constructs: the middlewares, `stack()` and its options, the
policies, the token verifiers, the stores, the router and its backends. Everything a middleware
author needs lives in :mod:`mcp_middleware.core`; each package (`auth`, `ratelimit`, `breaker`,
`cache`, `tracing`, `router`) exports its own details.

The core is imported eagerly; each middleware package is imported when one of its names is
first used, so `import mcp_middleware` stays cheap and optional parts stay optional.

>>> from mcp_middleware import McpCoreMiddleware, RateLimitMiddleware, BucketPolicy, stack
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from .core import CoreConfig, McpCoreMiddleware, McpMiddlewareError, get_mcp_request, get_principal

if TYPE_CHECKING:
    from .approval import ApprovalMiddleware, WebhookApprover
    from .auth import AuthMiddleware, IntrospectionTokenVerifier, JwksTokenVerifier, StaticTokenVerifier
    from .auth.server import EmbeddedAuthorizationServer
    from .breaker import BreakerPolicy, CircuitBreakerMiddleware, RetryPolicy
    from .cache import CachePolicy, MemoryCacheStore, RedisCacheStore, ResponseCacheMiddleware
    from .logs import configure_logging
    from .ratelimit import BucketPolicy, MemoryBucketStore, QuotaPolicy, RateLimitMiddleware, RedisBucketStore
    from .router import HttpBackend, InProcessBackend, McpRouter, NamingPolicy, StdioBackend
    from .stacking import AuthOptions, BreakerOptions, CacheOptions, McpStack, RateLimitOptions, TracingOptions, stack
    from .tracing import AccessLog, PrometheusMetrics, PrometheusMiddleware, TracingMiddleware

__version__ = "0.1.0"

_LAZY = {
    "approval": ("ApprovalMiddleware", "WebhookApprover"),
    "auth": ("AuthMiddleware", "IntrospectionTokenVerifier", "JwksTokenVerifier", "StaticTokenVerifier"),
    "auth.server": ("EmbeddedAuthorizationServer",),
    "breaker": ("BreakerPolicy", "CircuitBreakerMiddleware", "RetryPolicy"),
    "cache": ("CachePolicy", "MemoryCacheStore", "RedisCacheStore", "ResponseCacheMiddleware"),
    "logs": ("configure_logging",),
    "ratelimit": ("BucketPolicy", "MemoryBucketStore", "QuotaPolicy", "RateLimitMiddleware", "RedisBucketStore"),
    "router": ("HttpBackend", "InProcessBackend", "McpRouter", "NamingPolicy", "StdioBackend"),
    "stacking": (
        "AuthOptions",
        "BreakerOptions",
        "CacheOptions",
        "McpStack",
        "RateLimitOptions",
        "TracingOptions",
        "stack",
    ),
    "tracing": ("AccessLog", "PrometheusMetrics", "PrometheusMiddleware", "TracingMiddleware"),
}
_HOME = {name: package for package, names in _LAZY.items() for name in names}

# Names the top level exported before 0.2, now only in their package: still resolved, with a
# DeprecationWarning naming the new import, until the release after next (see CHANGELOG.md).
_MOVED = {
    "core": (
        "ANONYMOUS",
        "Decision",
        "Era",
        "ErrorCode",
        "McpRequest",
        "Principal",
        "RequestKind",
        "ResponseOutcome",
        "ResponseTap",
        "Selector",
        "SelectorMap",
        "get_decisions",
        "observe_decisions",
        "record_decision",
    ),
    "auth": ("ProtectedResourceMetadataApp", "TokenRejected", "VerificationUnavailable"),
    "breaker": (
        "BreakerRegistry",
        "BreakerSnapshot",
        "BreakerState",
        "CircuitBreaker",
        "FailureClassifier",
        "StateChange",
    ),
    "cache": ("CacheStore",),
    "ratelimit": ("BucketStore", "CallerKey", "RateLimiter", "StoreUnavailable", "TokenBucket", "global_key"),
    "router": ("AggregateServer", "PrefixMode", "StreamingProxy"),
    "tracing": ("McpMetrics",),
}
_MOVED_HOME = {name: package for package, names in _MOVED.items() for name in names}


def __getattr__(name: str) -> Any:
    package = _HOME.get(name)
    if package is None:
        package = _MOVED_HOME.get(name)
        if package is None:
            raise AttributeError(f"module 'mcp_middleware' has no attribute {name!r}")
        warnings.warn(
            f"`mcp_middleware.{name}` is deprecated; import it from `mcp_middleware.{package}`",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(f".{package}", __name__), name)
    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AccessLog",
    "ApprovalMiddleware",
    "AuthMiddleware",
    "AuthOptions",
    "BreakerOptions",
    "BreakerPolicy",
    "BucketPolicy",
    "CacheOptions",
    "CachePolicy",
    "CircuitBreakerMiddleware",
    "CoreConfig",
    "EmbeddedAuthorizationServer",
    "HttpBackend",
    "InProcessBackend",
    "IntrospectionTokenVerifier",
    "JwksTokenVerifier",
    "McpCoreMiddleware",
    "McpMiddlewareError",
    "McpRouter",
    "McpStack",
    "MemoryBucketStore",
    "MemoryCacheStore",
    "NamingPolicy",
    "PrometheusMetrics",
    "PrometheusMiddleware",
    "QuotaPolicy",
    "RateLimitMiddleware",
    "RateLimitOptions",
    "RedisBucketStore",
    "RedisCacheStore",
    "ResponseCacheMiddleware",
    "RetryPolicy",
    "StaticTokenVerifier",
    "StdioBackend",
    "TracingMiddleware",
    "TracingOptions",
    "WebhookApprover",
    "__version__",
    "configure_logging",
    "get_mcp_request",
    "get_principal",
    "stack",
]
