"""mcp-middleware: production traffic control for any MCP server, as composable pure-ASGI middlewares.

The core is imported eagerly; each middleware package is imported when one of its names is
first used, so `import mcp_middleware` stays cheap and optional parts stay optional.

>>> from mcp_middleware import McpCoreMiddleware, RateLimitMiddleware, BucketPolicy, stack
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import (
    ANONYMOUS,
    CoreConfig,
    Decision,
    Era,
    ErrorCode,
    McpCoreMiddleware,
    McpRequest,
    Principal,
    RequestKind,
    ResponseOutcome,
    ResponseTap,
    Selector,
    SelectorMap,
    get_decisions,
    get_mcp_request,
    get_principal,
    observe_decisions,
    record_decision,
)

if TYPE_CHECKING:
    from .auth import (
        AuthMiddleware,
        BearerAuthMiddleware,
        IntrospectionTokenVerifier,
        JwksTokenVerifier,
        ProtectedResourceMetadataApp,
        StaticTokenVerifier,
        TokenRejected,
        VerificationUnavailable,
    )
    from .breaker import (
        BreakerPolicy,
        BreakerRegistry,
        BreakerSnapshot,
        BreakerState,
        CircuitBreaker,
        CircuitBreakerMiddleware,
        FailureClassifier,
        RetryPolicy,
        StateChange,
    )
    from .cache import CachePolicy, CacheStore, MemoryCacheStore, RedisCacheStore, ResponseCacheMiddleware
    from .logs import JsonLogFormatter, configure_logging
    from .ratelimit import (
        BucketPolicy,
        BucketStore,
        CallerKey,
        MemoryBucketStore,
        QuotaPolicy,
        RateLimiter,
        RateLimitMiddleware,
        RedisBucketStore,
        StoreUnavailable,
        TokenBucket,
        global_key,
    )
    from .router import (
        AggregateServer,
        HttpBackend,
        InProcessBackend,
        McpRouter,
        NamingPolicy,
        PrefixMode,
        StdioBackend,
        StreamingProxy,
    )
    from .stacking import (
        AuthOptions,
        BreakerOptions,
        CacheOptions,
        McpStack,
        RateLimitOptions,
        TracingOptions,
        stack,
    )
    from .tracing import AccessLog, McpMetrics, PrometheusMetrics, PrometheusMiddleware, TracingMiddleware

__version__ = "0.1.0"

_LAZY = {
    "auth": (
        "AuthMiddleware",
        "BearerAuthMiddleware",
        "IntrospectionTokenVerifier",
        "JwksTokenVerifier",
        "ProtectedResourceMetadataApp",
        "StaticTokenVerifier",
        "TokenRejected",
        "VerificationUnavailable",
    ),
    "breaker": (
        "BreakerPolicy",
        "BreakerRegistry",
        "BreakerSnapshot",
        "BreakerState",
        "CircuitBreaker",
        "CircuitBreakerMiddleware",
        "FailureClassifier",
        "RetryPolicy",
        "StateChange",
    ),
    "logs": ("JsonLogFormatter", "configure_logging"),
    "cache": ("CachePolicy", "CacheStore", "MemoryCacheStore", "RedisCacheStore", "ResponseCacheMiddleware"),
    "ratelimit": (
        "BucketPolicy",
        "BucketStore",
        "CallerKey",
        "MemoryBucketStore",
        "QuotaPolicy",
        "RateLimitMiddleware",
        "RateLimiter",
        "RedisBucketStore",
        "StoreUnavailable",
        "TokenBucket",
        "global_key",
    ),
    "router": (
        "AggregateServer",
        "HttpBackend",
        "InProcessBackend",
        "McpRouter",
        "NamingPolicy",
        "PrefixMode",
        "StdioBackend",
        "StreamingProxy",
    ),
    "tracing": ("AccessLog", "McpMetrics", "PrometheusMetrics", "PrometheusMiddleware", "TracingMiddleware"),
    "stacking": (
        "AuthOptions",
        "BreakerOptions",
        "CacheOptions",
        "McpStack",
        "RateLimitOptions",
        "TracingOptions",
        "stack",
    ),
}
_HOME = {name: package for package, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    package = _HOME.get(name)
    if package is None:
        raise AttributeError(f"module 'mcp_middleware' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ANONYMOUS",
    "AccessLog",
    "AggregateServer",
    "AuthMiddleware",
    "AuthOptions",
    "BearerAuthMiddleware",
    "BreakerOptions",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "BucketPolicy",
    "BucketStore",
    "CacheOptions",
    "CachePolicy",
    "CacheStore",
    "CallerKey",
    "CircuitBreaker",
    "CircuitBreakerMiddleware",
    "CoreConfig",
    "Decision",
    "Era",
    "ErrorCode",
    "FailureClassifier",
    "HttpBackend",
    "InProcessBackend",
    "IntrospectionTokenVerifier",
    "JsonLogFormatter",
    "JwksTokenVerifier",
    "McpCoreMiddleware",
    "McpMetrics",
    "McpRequest",
    "McpRouter",
    "McpStack",
    "MemoryBucketStore",
    "MemoryCacheStore",
    "NamingPolicy",
    "PrefixMode",
    "Principal",
    "PrometheusMetrics",
    "PrometheusMiddleware",
    "ProtectedResourceMetadataApp",
    "QuotaPolicy",
    "RateLimitMiddleware",
    "RateLimitOptions",
    "RateLimiter",
    "RedisBucketStore",
    "RedisCacheStore",
    "RequestKind",
    "ResponseCacheMiddleware",
    "ResponseOutcome",
    "ResponseTap",
    "RetryPolicy",
    "Selector",
    "SelectorMap",
    "StateChange",
    "StaticTokenVerifier",
    "StdioBackend",
    "StoreUnavailable",
    "StreamingProxy",
    "TokenBucket",
    "TokenRejected",
    "TracingMiddleware",
    "TracingOptions",
    "VerificationUnavailable",
    "__version__",
    "configure_logging",
    "get_decisions",
    "get_mcp_request",
    "get_principal",
    "global_key",
    "observe_decisions",
    "record_decision",
    "stack",
]
