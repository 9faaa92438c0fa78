"""The gateway config's typed settings: what a validated file becomes.

Every middleware option keeps the name and the default of the middleware's own API (one
vocabulary, one source of defaults): the breaker section *is* a :class:`BreakerPolicy`, rate-limit
policies *are* :class:`BucketPolicy`/:class:`QuotaPolicy` objects, and the other defaults are read
from the middlewares' signatures (:func:`option_default`) rather than written again here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.cache import ResponseCacheMiddleware, cache_store_from_url
from mcp_middleware.core import DEFAULT_MAX_BODY_SIZE
from mcp_middleware.ratelimit import Policy, RateLimitMiddleware
from mcp_middleware.router import HttpBackend, NamingPolicy, PoolBackend, Route
from mcp_middleware.router.credentials import TokenExchange
from mcp_middleware.router.curation import Curation

from .config_approval import ApprovalSettings
from .config_audit import AuditSettings
from .config_backend_auth import BackendTls
from .config_curation import VirtualServerSettings
from .config_policy import PolicySettings
from .session_handles import DEFAULT_SESSION_TTL
from .toml_reader import Lines, Problem

__all__ = [
    "AggregateSettings",
    "AuditSettings",
    "AuthSettings",
    "BreakerSettings",
    "CacheSettings",
    "FrontDoorSettings",
    "GatewayConfig",
    "GatewaySettings",
    "PoolSettings",
    "RateLimitSettings",
    "ServerSettings",
    "StaticTokenSettings",
    "TracingSettings",
    "VirtualServerSettings",
    "option_default",
]


def option_default(owner: Callable[..., Any] | type, name: str) -> Any:
    """The default of keyword `name` of `owner` (a function, a class's `__init__` or a dataclass field).

    >>> option_default(HttpBackend, "timeout")
    30.0
    """
    if isinstance(owner, type) and hasattr(owner, "__dataclass_fields__"):
        for found in fields(owner):
            if found.name == name and found.default is not MISSING:
                return found.default
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise LookupError(f"{getattr(owner, '__name__', owner)} has no default for {name}")
    return default


@dataclass(frozen=True)
class PoolSettings:
    """A server whose `url` is a list (or a `command` with `replicas = N`): its replicas and `PoolBackend`'s
    options (its defaults)."""

    urls: tuple[str, ...]
    replicas: int = 0
    """A `command`'s pool: how many processes of it (`replicas = N`); 0 for a pool of `url`s."""
    balance: Literal["least_in_flight", "round_robin"] = option_default(PoolBackend, "balance")
    probe_interval: float = option_default(PoolBackend, "probe_interval")
    probe_timeout: float = option_default(PoolBackend, "probe_timeout")
    probe_failures: int = option_default(PoolBackend, "probe_failures")
    retry_tools: tuple[str, ...] = ()
    """Selectors of tools that may be sent to another replica after one failed (`"tools/call:search_*"`)."""
    on_replica_loss: Literal["not_found", "reinitialize"] = option_default(PoolBackend, "on_replica_loss")


@dataclass(frozen=True)
class ServerSettings:
    """One backend MCP server: exactly one of `app` (in-process `module:attr`), `url` or `command`."""

    name: str
    app: str | None = None
    url: str | None = None
    command: tuple[str, ...] = ()
    """The program and its arguments (a string in the file is split as a POSIX shell would, without a shell)."""
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers sent to a `url` backend (its own credentials; the client's token is never forwarded)."""
    mount: bool = True
    """Serve it at `{prefix}/{name}`."""
    aggregate: bool = True
    """Include it in the aggregated endpoint."""
    timeout: float = option_default(HttpBackend, "timeout")
    """Seconds a call to this backend may take (list fan-out and calls)."""
    optional: bool = False
    """A backend that may be missing (not importable) or down: skipped with a warning, and `/readyz`
    does not wait for it."""
    scopes: Mapping[str, tuple[str, ...]] | None = None
    """This backend's per-method/per-tool scopes, in its own names (replaces `[auth.scopes]` for it)."""
    ratelimit_policies: tuple[Policy, ...] | None = None
    """This backend's rate-limit policies (replace `[[ratelimit.policies]]` for it)."""
    breaker_timeouts: Mapping[str, float] | None = None
    """Timeouts by selector for this backend, over `[breaker.timeouts]`."""
    cache_ttl: float | None = None
    """This backend's cache TTL (over `[cache] ttl`)."""
    honor_ttl_ms: bool | None = None
    """Whether this backend's `ttlMs` hints bound caching (over `[cache] honor_ttl_ms`)."""
    curation: Curation | None = None
    """`[servers.tools]`, `[servers.prompts]`, `[servers.resources]`, `hidden_refusal`: what clients see of it."""
    index: int = field(default=0, compare=False)
    """Its place in the file (`servers[index]`), for problems found after parsing."""
    pool: PoolSettings | None = None
    """Set when `url` is a list of replicas (`url` is then the first of them)."""
    exchange: TokenExchange | None = None
    """`auth = { exchange = {…} }`: each caller's requests carry a token exchanged for this backend (RFC 8693)."""
    tls: BackendTls | None = None
    """`tls = {…}`: the client certificate (mTLS) and CA bundle the gateway reaches this backend with."""

    @property
    def kind(self) -> Literal["app", "url", "command"]:
        return "app" if self.app else "url" if self.url else "command"


@dataclass(frozen=True)
class AggregateSettings:
    """`NamingPolicy`'s fields (its defaults), and whether the aggregate is served."""

    enabled: bool = True
    separator: str = option_default(NamingPolicy, "separator")
    prefix: Literal["always", "on_collision", "never"] = option_default(NamingPolicy, "prefix").value
    on_conflict: Literal["first", "prefix"] = option_default(NamingPolicy, "on_conflict")


@dataclass(frozen=True)
class FrontDoorSettings:
    """What every request meets first; safe by default (loopback hosts, no foreign origins)."""

    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*")
    allowed_origins: tuple[str, ...] = ("http://127.0.0.1:*", "http://localhost:*")
    """Origins allowed to call the gateway from a browser (requests without `Origin` are not browsers)."""
    cors: bool = True
    """Answer CORS preflights and add CORS headers for the allowed origins."""
    max_body_size: int = DEFAULT_MAX_BODY_SIZE


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8000
    prefix: str = "/mcp"
    """Path mounts at `{prefix}/{name}`, the aggregate at `{prefix}`."""
    public_url: str | None = None
    """The URL clients use (behind a proxy); default `http://{host}:{port}`."""
    shutdown_timeout: float = 10.0
    """Seconds in-flight requests get to finish on shutdown."""
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    log_level: str = "info"
    log_format: Literal["json", "text"] | None = None
    """`json` or `text` for every log record; `None`: text on a terminal, JSON otherwise."""
    log_levels: dict[str, str] = field(default_factory=dict)
    """Per-logger levels (`{"mcp" = "info"}`); the SDK's `mcp` and `httpx2` default to WARNING."""
    instance: str | None = None
    """This instance's tag in legacy session ids, for affinity behind a load balancer
    (`MCP_GATEWAY_INSTANCE` overrides; dots become dashes, so a pod IP works)."""
    workers: int = 1
    """Processes serving the one port (`serve --workers` wins); see `gateway/workers.py`."""
    per_worker_state: bool = False
    """With `workers` > 1, accept `memory://` stores: each worker keeps its own buckets and cache, so
    rate limits become `workers` times looser and a cached answer helps one worker only."""
    gc_freeze: bool = True
    """Once started, move every object that exists (the SDK, pydantic's schemas, the servers) out of
    the garbage collector's sight with `gc.freeze()`, so full collections under load scan only what
    requests leave behind (on the bare test server: p99 87 → 27 ms, ≈ 20 % less CPU per request)."""
    watch_config: bool = False
    """Reload the servers when the config file changes (as on SIGHUP; see `gateway/reload.py`)."""
    session_key: tuple[str, ...] = ()
    """Secrets (newest first) sealing legacy session ids into handles any instance can resume
    (`gateway/sealed_sessions.py`); empty: sessions live in the instance that opened them."""
    session_ttl: float = DEFAULT_SESSION_TTL
    """Seconds a sealed session handle stays valid (24 h: see `session_handles.DEFAULT_SESSION_TTL`)."""


@dataclass(frozen=True)
class StaticTokenSettings:
    """One `static` mode token: who it stands for. `None` subject = derived from a digest of the token."""

    scopes: tuple[str, ...] = ()
    subject: str | None = None
    client_id: str | None = None

    def verifier_entry(self) -> tuple[str, ...] | dict[str, Any]:
        """What `StaticTokenVerifier` takes for this token (a bare scope list when no identity is given)."""
        if self.subject is None and self.client_id is None:
            return self.scopes
        entry: dict[str, Any] = {"scopes": list(self.scopes)}
        if self.subject is not None:
            entry["subject"] = self.subject
        if self.client_id is not None:
            entry["client_id"] = self.client_id
        return entry


@dataclass(frozen=True)
class AuthSettings:
    mode: Literal["none", "dev", "static", "jwt", "introspection"] = "none"
    issuer: str | None = None
    jwks_url: str | None = None
    introspection_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    audiences: tuple[str, ...] = ()
    """Audiences accepted besides each endpoint's own resource URL (`AuthMiddleware(audiences=…)`)."""
    tokens: Mapping[str, StaticTokenSettings] = field(default_factory=dict)
    """`static` mode: token → its principal; in the file `"<token>" = ["scope", …]` (the subject is a
    digest of the token) or `"<token>" = { subject = "ci", scopes = [...], client_id = "…" }`
    (tokens by `${env:…}` reference)."""
    required_scopes: tuple[str, ...] = ()
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Selector → scopes needed (`"tools/call:delete_*" = ["admin"]`)."""
    public_paths: tuple[str, ...] = ("/healthz", "/readyz", "/metrics")
    auto_approve: bool = False
    """`dev` mode: the embedded authorization server approves without the login page."""
    allow_dev_on_public_host: bool = False
    """`dev` mode on a host or public URL that is not loopback: its login page takes any user name,
    so this must be said explicitly (and a warning is logged at start)."""


@dataclass(frozen=True)
class RateLimitSettings:
    enabled: bool = False
    store: str = "memory://"
    failure: Literal["open", "closed"] = option_default(RateLimitMiddleware, "failure")
    trusted_proxies: tuple[str, ...] = ()
    ipv6_prefix: int = option_default(RateLimitMiddleware, "ipv6_prefix")
    """Anonymous IPv6 callers share a bucket per network of this prefix (128 = per address)."""
    headers: bool = option_default(RateLimitMiddleware, "headers")
    """Admitted answers carry the `RateLimit`/`RateLimit-Policy` fields too (refusals always do)."""
    policies: tuple[Policy, ...] = ()


@dataclass(frozen=True)
class BreakerSettings:
    enabled: bool = False
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    """`[breaker]`'s keys are this policy's fields (`consecutive_failures`, `open_for`, …)."""
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Selector → seconds, over the breaker's own `DEFAULT_TIMEOUTS`."""


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = False
    store: str = "memory://"
    ttl: float = option_default(ResponseCacheMiddleware, "ttl")
    max_entries: int = option_default(cache_store_from_url, "max_entries")
    max_bytes: int = option_default(cache_store_from_url, "max_bytes")
    honor_ttl_ms: bool = option_default(ResponseCacheMiddleware, "honor_ttl_ms")
    """Let a backend's `ttlMs` shorten `ttl` (`ttlMs: 0` = never cached, the SDK's default)."""


@dataclass(frozen=True)
class TracingSettings:
    enabled: bool = False
    metrics_path: str = "/metrics"
    access_log: bool = True
    record_enduser: bool = False
    """`TracingMiddleware(record_enduser=…)` (the tracing extra is not imported to read its default)."""
    otlp_endpoint: str | None = None
    """OTLP collector to export spans to (else `OTEL_EXPORTER_OTLP_*`; see `gateway/telemetry.py`)."""
    otlp_protocol: str | None = None
    """`http/protobuf` (the default) or `grpc`."""
    service_name: str | None = None
    """`service.name` of spans and `/metrics` (else `OTEL_SERVICE_NAME`, else `mcp-gateway`)."""


@dataclass(frozen=True)
class GatewayConfig:
    """The whole validated file; every section has safe defaults."""

    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    front_door: FrontDoorSettings = field(default_factory=FrontDoorSettings)
    servers: tuple[ServerSettings, ...] = ()
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    routes: tuple[Route, ...] = ()
    """`[[routes]]`: primary and fallback servers of a tool or prompt of the aggregate."""
    virtual_servers: tuple[VirtualServerSettings, ...] = ()
    """`[[virtual_servers]]`: endpoints assembled from chosen tools of several servers."""
    policy: PolicySettings = field(default_factory=PolicySettings)
    """`[policy]`: rule files, roles, argument validation (`config_policy.py`)."""
    audit: AuditSettings = field(default_factory=AuditSettings)
    """`[audit]` (see `config_audit.py`): off unless the section names a file or `otel = true`."""
    approval: ApprovalSettings = field(default_factory=ApprovalSettings)
    """`[approval]` (see `config_approval.py`): which tool calls wait for a person's yes; off when absent."""
    source: Path | None = None
    """The file it came from (relative paths in it are relative to its folder)."""
    warnings: tuple[Problem, ...] = ()
    """What the file should change but may keep for now (deprecated names), each with key and line."""
    lines: Lines | None = field(default=None, compare=False, repr=False)

    def problem(self, path: str, message: str) -> Problem:
        """A problem found after parsing (loading a backend, assembling), placed at its key's line."""
        return Problem(path, message, self.lines.find(path) if self.lines is not None else None)
