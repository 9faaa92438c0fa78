"""Each backend's middleware stack, built from the config: auth → policy → arguments → rate limit → cache → breaker.

Each mount has its own middlewares so that its resource URL (RFC 8707/9728), its rate-limit
buckets, cache entries and breaker belong to it; the aggregate has its own door (authentication
with its own audience) and its own budget for what it answers itself. Stores are shared: one
bucket store, one quota storage and one cache store per gateway, opened on first use and closed
when the gateway stops (:mod:`.store_closing`): a reload that replaces a server opens none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import limits.aio.storage
from mcp.server.auth.provider import TokenVerifier
from opentelemetry.metrics import MeterProvider
from starlette.types import ASGIApp, Scope

from mcp_middleware.approval import (
    ApprovalMiddleware,
    ApprovalStore,
    WebhookApprover,
    approval_store_from_url,
    policy_rule,
)
from mcp_middleware.auth import AuthMiddleware, IntrospectionTokenVerifier, JwksTokenVerifier, StaticTokenVerifier
from mcp_middleware.auth.jwks import JwksKeys
from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from mcp_middleware.breaker import (
    DEFAULT_TIMEOUTS,
    BreakerRegistry,
    CircuitBreakerMiddleware,
    StateChange,
    StateListener,
)
from mcp_middleware.cache import CacheStore, ResponseCacheMiddleware, cache_store_from_url
from mcp_middleware.core import McpRequest
from mcp_middleware.core.kernel import EVERY_PATH
from mcp_middleware.policy import ArgumentValidationMiddleware, CelPolicyEngine, PolicyMiddleware, ToolCatalog
from mcp_middleware.ratelimit import (
    BucketStore,
    Policy,
    QuotaPolicy,
    RateLimitMiddleware,
    bucket_store_from_url,
    quota_storage_from_url,
)

from .config import AuthSettings, GatewayConfig, ServerSettings
from .sealed_sessions import SessionOwnerGuard

__all__ = ["Assembly", "Layer"]

Layer = Callable[[ASGIApp], ASGIApp]
"""One middleware around an app, as the router applies it per mount."""


class Assembly:
    """The middlewares of every mount and of the aggregate, with the stores and breakers they share."""

    def __init__(self, config: GatewayConfig, base_url: str) -> None:
        self.config = config
        self.base_url = base_url
        self.breakers: list[tuple[str, BreakerRegistry]] = []
        """(mount, registry) of every backend with a breaker, for `/readyz`."""
        self.state_listeners: list[StateListener] = []
        """Told of every breaker state change (the tracing metrics subscribe once they exist)."""
        self.instruments: list[Callable[[MeterProvider], None]] = []
        """Given the meter provider once `[tracing]` builds one (each replica pool reports its state)."""
        self.bucket_store: BucketStore | None = None
        self.quota_storage: limits.aio.storage.Storage | None = None
        """`[ratelimit] store` as window quotas' `limits` storage: one for every limiter (their keys are namespaced)."""
        self.cache_store: CacheStore | None = None
        self.authorization_server = _authorization_server(config.auth, base_url) if config.auth.mode == "dev" else None
        self.policy_engine: CelPolicyEngine | None = None
        """The rules of `[policy] files`, compiled once and shared by every backend's stack."""
        self.jwks_keys: JwksKeys | None = None
        """`jwt` mode: the issuer's keys, one fetch and one cache for every endpoint (the serverless
        handler fetches them at cold start)."""
        self.approval_engine: CelPolicyEngine | None = None
        """`[approval] rules`, compiled once and shared by every backend's approval."""
        self.catalogs: dict[str, ToolCatalog] = {}
        """One per backend: its policy, its validator and its approval learn the same tools."""
        self.approval_store: ApprovalStore | None = None
        """`[approval] store`: spent nonces and callback answers, shared by every backend's approval."""
        self.approval_webhook: WebhookApprover | None = None
        """`[approval] approver`: one for every backend, so that one callback route serves them all."""

    def for_mount(self, server: ServerSettings) -> list[Layer]:
        """One backend's stack, in its own names: the global sections, with this server's overrides."""
        name = server.name
        resource = f"{self.base_url}{self.config.gateway.prefix}/{name}"
        layers = [
            *self._auth(resource, scopes=server.scopes),
            *self._session_guard(),
            *self._policy(name),
            *self._approval(name),
            *self._ratelimit(name, server.ratelimit_policies),
            *self._cache(name, ttl=server.cache_ttl, honor_ttl_ms=server.honor_ttl_ms),
        ]
        if self.config.breaker.enabled:
            layers.append(self._breaker(name, server.breaker_timeouts or {}))
        return layers

    def aggregate_door(self) -> list[Layer]:
        """Authentication at the aggregate (its own audience); each backend's stack authorizes."""
        return [*self._auth(f"{self.base_url}{self.config.gateway.prefix}", per_backend=False), *self._session_guard()]

    def virtual_door(self, path: str) -> list[Layer]:
        """Authentication at a virtual server: its own audience (`{base_url}{path}`) and RFC 9728 metadata."""
        return [*self._auth(f"{self.base_url}{path}", per_backend=False), *self._session_guard()]

    def _session_guard(self) -> list[Layer]:
        """With sealed session handles: after authentication, a handle serves its own principal only."""
        return [SessionOwnerGuard] if self.config.gateway.session_key else []

    def virtual_own(self, name: str) -> list[Layer]:
        """What a virtual server answers itself spends its own budget (namespace: its name)."""
        return [*self._ratelimit(name), *self._cache(name)]

    def aggregate_own(self) -> list[Layer]:
        """What the aggregate answers itself (lists, initialize) spends the aggregate's own budget."""
        return [*self._ratelimit("aggregate"), *self._cache("aggregate")]

    def _auth(
        self, resource: str, *, per_backend: bool = True, scopes: Mapping[str, tuple[str, ...]] | None = None
    ) -> list[Layer]:
        auth = self.config.auth
        if auth.mode == "none":
            return []
        audiences = [resource, *auth.audiences]
        verifier, servers = _VERIFIERS[auth.mode](self, audiences)
        rules = auth.scopes if scopes is None else scopes
        per_tool = {selector: list(needed) for selector, needed in rules.items()} if per_backend else {}

        def wrap(app: ASGIApp) -> ASGIApp:
            return AuthMiddleware(
                app,
                verifier=verifier,
                resource=resource,
                authorization_servers=servers,
                audiences=audiences,
                required_scopes=auth.required_scopes,
                scopes=per_tool,
                require_audience=auth.mode != "static",
                config=EVERY_PATH,
            )

        return [wrap]

    def _policy(self, name: str) -> list[Layer]:
        """Rules and roles (after authentication: they read the principal), then argument validation."""
        settings = self.config.policy
        layers: list[Layer] = []
        catalog = self.catalogs.setdefault(name, ToolCatalog())
        if settings.enabled:
            if settings.paths and self.policy_engine is None:
                self.policy_engine = CelPolicyEngine.from_files(settings.paths)
            engine = self.policy_engine

            def policy(app: ASGIApp) -> ASGIApp:
                return PolicyMiddleware(
                    app,
                    engine=engine,
                    roles=settings.roles,
                    role_claim=settings.role_claim,
                    claims=settings.claims,
                    default=settings.default,
                    backend=name,
                    filter_lists=settings.filter_lists,
                    catalog=catalog,
                    config=EVERY_PATH,
                )

            layers.append(policy)
        if settings.validates(name):
            layers.append(lambda app: ArgumentValidationMiddleware(app, catalog=catalog, config=EVERY_PATH))
        return layers

    def _approval(self, name: str) -> list[Layer]:
        """Approval after policy (a forbidden call is never asked about), before rate limit and breaker
        (a person's thinking time is neither a request's cost nor the backend's latency)."""
        settings = self.config.approval
        if not settings.applies_to(name):
            return []
        select, destructive = settings.selection(name)
        catalog = self.catalogs.setdefault(name, ToolCatalog())
        if self.approval_store is None:
            self.approval_store = approval_store_from_url(settings.store)
        store = self.approval_store
        approver: Literal["client"] | WebhookApprover = "client"
        if settings.webhook is not None:
            if self.approval_webhook is None:
                public_url = self.config.gateway.public_url
                self.approval_webhook = settings.webhook.approver(
                    public_url=public_url, secrets=settings.secrets, store=store
                )
            approver = self.approval_webhook
        rule = None
        if settings.rules:
            if self.approval_engine is None:
                self.approval_engine = CelPolicyEngine.from_files(settings.rules)
            rule = policy_rule(self.approval_engine, backend=name, claims=settings.claims)

        def wrap(app: ASGIApp) -> ASGIApp:
            return ApprovalMiddleware(
                app,
                require=select,
                destructive=destructive,
                rule=rule,
                approver=approver,
                timeout=settings.timeout,
                secrets=settings.secrets,
                state_ttl=settings.state_ttl,
                backend=name,
                catalog=catalog,
                store=store,
                config=EVERY_PATH,
            )

        return [wrap]

    def approval_callback(self, app: ASGIApp) -> ASGIApp:
        """`app` with the webhook's callback route beside it, when the approver calls back (outside MCP auth:
        the sealed token in its URL is the capability)."""
        hook = self.approval_webhook
        return hook.endpoint(app) if hook is not None and hook.callback else app

    def reload_policies(self) -> None:
        """Read and compile `[policy] files` again (the live registry calls this); a bad file keeps the old rules."""
        if self.policy_engine is not None:
            self.policy_engine.reload()
        if self.approval_engine is not None:
            self.approval_engine.reload()

    def _ratelimit(self, namespace: str, overrides: tuple[Policy, ...] | None = None) -> list[Layer]:
        settings = self.config.ratelimit
        chosen = settings.policies if overrides is None else overrides
        if not chosen or (overrides is None and not settings.enabled):  # a server's own policies always apply
            return []
        if self.bucket_store is None:
            self.bucket_store = _bucket_store(settings.store)
        policies = list(chosen)
        store = self.bucket_store
        if self.quota_storage is None and any(isinstance(policy, QuotaPolicy) for policy in policies):
            self.quota_storage = quota_storage_from_url(settings.store)
        quotas = settings.store if self.quota_storage is None else self.quota_storage

        def wrap(app: ASGIApp) -> ASGIApp:
            return RateLimitMiddleware(
                app,
                policies=policies,
                store=store,
                quota_storage=quotas,
                trusted_proxies=settings.trusted_proxies,
                ipv6_prefix=settings.ipv6_prefix,
                namespace=namespace,
                failure=settings.failure,
                headers=settings.headers,
                config=EVERY_PATH,
            )

        return [wrap]

    def _cache(self, mount: str, *, ttl: float | None = None, honor_ttl_ms: bool | None = None) -> list[Layer]:
        settings = self.config.cache
        if not settings.enabled:
            return []
        if self.cache_store is None:
            self.cache_store = _cache_store(self.config)
        store = self.cache_store

        def wrap(app: ASGIApp) -> ASGIApp:
            return ResponseCacheMiddleware(
                app,
                store=store,
                ttl=settings.ttl if ttl is None else ttl,
                honor_ttl_ms=settings.honor_ttl_ms if honor_ttl_ms is None else honor_ttl_ms,
                mount=lambda scope: mount,
                config=EVERY_PATH,
            )

        return [wrap]

    def _breaker(self, name: str, overrides: Mapping[str, float]) -> Layer:
        settings = self.config.breaker
        registry = BreakerRegistry()
        self.breakers.append((name, registry))
        policy = settings.policy
        timeouts: dict[str, float | None] = dict(DEFAULT_TIMEOUTS)  # the breaker's own defaults, then the config's
        timeouts.update(settings.timeouts)
        timeouts.update(overrides)
        listeners = self.state_listeners

        def key(scope: Scope, request: McpRequest) -> str:
            return name

        def on_state_change(change: StateChange) -> None:
            for listener in listeners:
                listener(change)

        # Once, on the registry: the router builds a mount's middlewares twice (the mount, and its
        # RFC 9728 metadata path), and both instances share this registry.
        registry.add_listener(on_state_change)

        def wrap(app: ASGIApp) -> ASGIApp:
            return CircuitBreakerMiddleware(
                app, policy=policy, timeouts=timeouts, registry=registry, key=key, config=EVERY_PATH
            )

        return wrap


# --- auth: one verifier factory per mode ----------------------------------------------------------

VerifierFactory = Callable[[Assembly, list[str]], tuple[TokenVerifier, list[str]]]
"""(assembly, audiences) → the verifier and the authorization servers the RFC 9728 metadata names."""


def _dev_verifier(assembly: Assembly, audiences: list[str]) -> tuple[TokenVerifier, list[str]]:
    assert assembly.authorization_server is not None  # built in `dev` mode
    return assembly.authorization_server.verifier(audience=audiences), [assembly.base_url]


def _static_verifier(assembly: Assembly, audiences: list[str]) -> tuple[TokenVerifier, list[str]]:
    tokens = assembly.config.auth.tokens
    return StaticTokenVerifier({token: entry.verifier_entry() for token, entry in tokens.items()}), []


def _jwt_verifier(assembly: Assembly, audiences: list[str]) -> tuple[TokenVerifier, list[str]]:
    auth = assembly.config.auth
    assert auth.issuer is not None and auth.jwks_url is not None  # the config requires them
    verifier = JwksTokenVerifier(issuer=auth.issuer, audience=audiences, jwks_uri=auth.jwks_url)
    if assembly.jwks_keys is None:
        assembly.jwks_keys = verifier.keys
    else:  # every endpoint's verifier has its own audience but the same issuer keys: fetched once
        verifier.keys = assembly.jwks_keys
    return verifier, [auth.issuer] if auth.issuer else []


def _introspection_verifier(assembly: Assembly, audiences: list[str]) -> tuple[TokenVerifier, list[str]]:
    auth = assembly.config.auth
    assert auth.introspection_url is not None  # the config requires it
    verifier = IntrospectionTokenVerifier(
        endpoint=auth.introspection_url,
        audience=audiences,
        client_id=auth.client_id,
        client_secret=auth.client_secret,
        issuer=auth.issuer,
    )
    return verifier, [auth.issuer] if auth.issuer else []


_VERIFIERS: Mapping[str, VerifierFactory] = {
    "dev": _dev_verifier,
    "static": _static_verifier,
    "jwt": _jwt_verifier,
    "introspection": _introspection_verifier,
}


def _authorization_server(auth: AuthSettings, base_url: str) -> EmbeddedAuthorizationServer:
    """`dev` mode's embedded authorization server, issuing every scope the config asks for."""
    scopes = sorted({scope for needed in auth.scopes.values() for scope in needed} | set(auth.required_scopes))
    return EmbeddedAuthorizationServer(
        issuer=base_url, scopes_supported=scopes, default_scopes=scopes, auto_approve=auth.auto_approve
    )


# --- rate limit and cache -------------------------------------------------------------------------


def _bucket_store(url: str) -> BucketStore:
    return bucket_store_from_url(url)


def _cache_store(config: GatewayConfig) -> CacheStore:
    settings = config.cache
    return cache_store_from_url(settings.store, max_entries=settings.max_entries, max_bytes=settings.max_bytes)
