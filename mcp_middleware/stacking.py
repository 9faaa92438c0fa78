"""`stack()`: every middleware around an MCP app in the one order that is safe.

Outermost first: tracing → auth → policy → arguments → rate limit → cache → breaker → app. Tracing sees every
refusal; auth runs before anything that keys on the caller (a cache outside auth would file
everyone's answers under "anonymous", a rate limiter outside auth would count everyone by
address); the breaker sits next to the backend it protects, and cache hits never reach it.

Each layer takes the keyword options of its middleware's constructor as a mapping. They are
spelled out here as `TypedDict`s, so a type checker checks a literal
`auth={"verifier": v, "resource": url}` key by key and value by value, and the constructor
checks them again when `stack()` builds the layer (at start-up, not on the first request).
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, Required, TypedDict, TypeVar

import limits.aio.storage
from mcp.server.auth.provider import TokenVerifier
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import AuthMiddleware
from .breaker import BreakerPolicy, BreakerRegistry, CircuitBreakerMiddleware, RetryPolicy
from .breaker.classify import Classifier
from .breaker.state import StateListener
from .cache import CacheStore, ResponseCacheMiddleware
from .cache.middleware import RuleValue
from .core import CoreConfig
from .core.request import KeyFunction
from .policy import ArgumentValidationMiddleware, PolicyEngine, PolicyMiddleware, ToolCatalog
from .ratelimit import BucketStore, RateLimitMiddleware
from .ratelimit.policies import Policy
from .tracing import AccessLog, TracingMiddleware

__all__ = [
    "ArgumentsOptions",
    "AuthOptions",
    "BreakerOptions",
    "CacheOptions",
    "McpStack",
    "PolicyOptions",
    "RateLimitOptions",
    "TracingOptions",
    "stack",
]


class AuthOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.AuthMiddleware` (`verifier` and `resource` required)."""

    verifier: Required[TokenVerifier]
    resource: Required[str]
    authorization_servers: Sequence[str]
    audiences: Sequence[str] | None
    required_scopes: Iterable[str]
    scopes: Mapping[str, Iterable[str] | str] | None
    scopes_supported: Sequence[str] | None
    filter_lists: bool
    public_paths: Sequence[str]
    require_audience: bool
    serve_metadata: bool
    resource_name: str | None
    max_token_length: int
    cache_size: int
    cache_ttl: float
    unavailable_retry_after: float
    config: CoreConfig


class PolicyOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.policy.PolicyMiddleware` (all optional)."""

    engine: PolicyEngine | None
    roles: Mapping[str, Iterable[str]] | None
    role_claim: str | None
    claims: Iterable[str]
    default: Literal["deny", "allow"]
    backend: str
    filter_lists: bool
    catalog: ToolCatalog | None
    fetch_unknown: bool
    config: CoreConfig


class ArgumentsOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.policy.ArgumentValidationMiddleware` (all optional)."""

    catalog: ToolCatalog | None
    max_validators: int
    fetch_unknown: bool
    config: CoreConfig


class RateLimitOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.RateLimitMiddleware` (`policies` required)."""

    policies: Required[Sequence[Policy]]
    store: BucketStore | None
    quota_storage: str | limits.aio.storage.Storage
    quota_timeout: float
    key: KeyFunction | None
    trusted_proxies: Iterable[str]
    ipv6_prefix: int
    namespace: str
    failure: Literal["open", "closed"]
    headers: bool
    config: CoreConfig
    on_store_error: Callable[[Exception], None] | None
    meter_provider: MeterProvider | None


class CacheOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.ResponseCacheMiddleware` (all optional)."""

    store: CacheStore | None
    ttl: float
    rules: Mapping[str, RuleValue] | None
    allow_tools: Iterable[str]
    trust_read_only_hint: bool
    legacy_scope: Literal["public", "private"]
    honor_ttl_ms: bool
    stale_grace: float
    single_flight: bool
    max_wait: float
    key_meta_fields: Iterable[str]
    mount: Callable[[Scope], str] | None
    status_header: str | None
    session_check_interval: float
    config: CoreConfig
    clock: Callable[[], float]


class BreakerOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.CircuitBreakerMiddleware` (all optional)."""

    policy: BreakerPolicy | None
    per_target: Mapping[str, BreakerPolicy | None] | Iterable[str]
    timeouts: Mapping[str, float | None]
    classifier: Classifier | None
    retry: RetryPolicy | None
    registry: BreakerRegistry | None
    key: KeyFunction | None
    exclude: Iterable[str]
    on_state_change: StateListener | None
    random: Callable[[], float]
    config: CoreConfig


class TracingOptions(TypedDict, total=False):
    """The options of :class:`~mcp_middleware.TracingMiddleware` (all optional)."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    config: CoreConfig
    inject_trace_context: bool
    record_enduser: bool
    uri_in_span_name: bool
    access_log: AccessLog | bool
    http_metrics: bool
    max_metric_names: int
    server_name: Callable[[Scope], str | None] | None


_Defaults = Literal[True]
"""`True` for a layer whose options may all stay at their defaults: `cache=True`."""


class McpStack:
    """The app `stack()` built: an ASGI app, with each layer it made at hand (or `None`).

    `stack.cache.invalidate(...)`, `stack.breaker.registry`, `await stack.aclose()` (from your
    lifespan's shutdown: closes the rate limiter's and the cache's stores).
    """

    __slots__ = ("app", "arguments", "auth", "breaker", "cache", "inner", "policy", "ratelimit", "tracing")

    def __init__(
        self,
        inner: ASGIApp,
        app: ASGIApp,
        *,
        auth: AuthMiddleware | None,
        ratelimit: RateLimitMiddleware | None,
        cache: ResponseCacheMiddleware | None,
        breaker: CircuitBreakerMiddleware | None,
        tracing: TracingMiddleware | None,
        policy: PolicyMiddleware | None = None,
        arguments: ArgumentValidationMiddleware | None = None,
    ) -> None:
        self.inner = inner
        """The app that was wrapped."""
        self.app = app
        """The outermost layer."""
        self.auth, self.ratelimit, self.cache, self.breaker, self.tracing = auth, ratelimit, cache, breaker, tracing
        self.policy, self.arguments = policy, arguments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def aclose(self) -> None:
        if self.ratelimit is not None:
            await self.ratelimit.aclose()
        if self.cache is not None:
            await self.cache.store.aclose()

    def __repr__(self) -> str:
        order = ("tracing", "auth", "policy", "arguments", "ratelimit", "cache", "breaker")
        layers = [name for name in order if getattr(self, name)]
        return f"<McpStack {' → '.join([*layers, 'app'])}>"


def stack(
    app: ASGIApp,
    *,
    auth: AuthOptions | None = None,
    policy: PolicyOptions | None = None,
    arguments: ArgumentsOptions | _Defaults | None = None,
    ratelimit: RateLimitOptions | None = None,
    cache: CacheOptions | _Defaults | None = None,
    breaker: BreakerOptions | _Defaults | None = None,
    tracing: TracingOptions | _Defaults | None = None,
    config: CoreConfig | None = None,
) -> McpStack:
    """Wrap `app` in the middlewares given, in the recommended order, whatever order they are written in.

    A layer left `None` is left out. `config` (paths, body bound…) is given to every layer
    whose options do not name their own. `policy` and `arguments` share one tool catalog unless
    their options name their own.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware import BucketPolicy, StaticTokenVerifier
    >>> app = stack(
    ...     MCPServer("demo").streamable_http_app(),
    ...     auth={"verifier": StaticTokenVerifier({"dev-token": ["mcp"]}), "resource": "http://127.0.0.1:8000/mcp"},
    ...     ratelimit={"policies": [BucketPolicy("per-user", rate=10.0, capacity=20.0)]},
    ...     cache=True,
    ...     breaker=True,
    ...     tracing=True,
    ... )
    >>> app
    <McpStack tracing → auth → ratelimit → cache → breaker → app>
    """
    outer: ASGIApp = app
    # Built from the inside out; each constructor checks its own options here, at start-up.
    breaker_layer = cache_layer = ratelimit_layer = auth_layer = tracing_layer = None
    policy_layer: PolicyMiddleware | None = None
    arguments_layer: ArgumentValidationMiddleware | None = None
    catalog = ToolCatalog()  # what the policy and the validator learn of the tools, shared
    if breaker is not None:
        outer = breaker_layer = CircuitBreakerMiddleware(outer, **_configured(_given(breaker), config))
    if cache is not None:
        outer = cache_layer = ResponseCacheMiddleware(outer, **_configured(_given(cache), config))
    if ratelimit is not None:
        outer = ratelimit_layer = RateLimitMiddleware(outer, **_configured(ratelimit, config))
    if arguments is not None:
        arguments_options: ArgumentsOptions = {"catalog": catalog, **_given(arguments)}
        outer = arguments_layer = ArgumentValidationMiddleware(outer, **_configured(arguments_options, config))
    if policy is not None:
        policy_options: PolicyOptions = {"catalog": catalog, **policy}
        outer = policy_layer = PolicyMiddleware(outer, **_configured(policy_options, config))
    if auth is not None:
        outer = auth_layer = AuthMiddleware(outer, **_configured(auth, config))
    if tracing is not None:
        outer = tracing_layer = TracingMiddleware(outer, **_configured(_given(tracing), config))
    return McpStack(
        app,
        outer,
        auth=auth_layer,
        ratelimit=ratelimit_layer,
        cache=cache_layer,
        breaker=breaker_layer,
        tracing=tracing_layer,
        policy=policy_layer,
        arguments=arguments_layer,
    )


_Options = TypeVar(
    "_Options",
    AuthOptions,
    RateLimitOptions,
    CacheOptions,
    BreakerOptions,
    TracingOptions,
    PolicyOptions,
    ArgumentsOptions,
)


_AllOptional = TypeVar("_AllOptional", CacheOptions, BreakerOptions, TracingOptions, ArgumentsOptions)


def _given(value: _AllOptional | _Defaults) -> _AllOptional:
    return {} if value is True else value


def _configured(options: _Options, config: CoreConfig | None) -> _Options:
    if config is None or "config" in options:
        return options
    return {**options, "config": config}
