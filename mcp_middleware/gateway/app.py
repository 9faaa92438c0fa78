"""Assemble the reference gateway from a validated config: a thin wiring of the router and the middlewares.

The stack, outermost first (requests travel down, responses up):

    operations      /healthz, /readyz (never traced, never refused by Host: load balancers use IPs)
    prometheus      /metrics
    tracing         one span per MCP request, metrics, the access log; sees every refusal below
    audit           one hash-chained record per MCP operation (`[audit]`), with every decision below
    front door      Host/Origin allow-lists, CORS, body limit
    approval        /approval/callback/<token>: a webhook approver's later answer (no MCP auth: the token is)
    sessions        sealed session handles (`session_key`), or the instance tag in session ids (`instance`)
    dev auth server /authorize, /token, /register, /jwks, /.well-known/oauth-authorization-server
    router          /mcp/{name}: auth → rate limit → cache → breaker → backend, per mount
                    /mcp (aggregate): auth → rate limit → cache → the aggregated server

Each backend's stack is built in `assembly.py`, the backends themselves in `backends.py`,
the `/readyz` checks in `readiness.py`; this module puts the layers in order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from limits.errors import ConfigurationError
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.auth.server import EmbeddedAuthorizationServer
from mcp_middleware.breaker import BreakerRegistry
from mcp_middleware.core import CoreConfig
from mcp_middleware.router import HttpBackend, McpRouter, NamingPolicy, PoolBackend, PrefixMode, StdioBackend

from . import worker_metrics
from .assembly import Assembly
from .backend_gate import gate_layer
from .backends import FRONT_DOOR_CHECKS_HOST, BackendLoadError, load_backend
from .config import ConfigError, GatewayConfig, GatewaySettings, Problem, dev_mode_problem
from .config_curation import add_virtual_server
from .config_routes import live_routes
from .frontdoor import FrontDoorMiddleware
from .lifespan import Closer, GatewayLifespan
from .operations import OperationsMiddleware
from .readiness import readiness_checks
from .reload import Reloader
from .session_config import session_layer
from .store_closing import close_stores
from .telemetry import Telemetry, TelemetrySettings, backend_label

if TYPE_CHECKING:
    import uvicorn

    from mcp_middleware.audit import AuditTrail

__all__ = ["Gateway", "build_gateway"]

logger = logging.getLogger("mcp_middleware.gateway")


@dataclass
class Gateway:
    """The assembled gateway: `app` is the ASGI app to serve (its lifespan runs the router)."""

    config: GatewayConfig
    app: ASGIApp
    router: McpRouter
    operations: OperationsMiddleware
    base_url: str
    host: str
    port: int
    authorization_server: EmbeddedAuthorizationServer | None = None
    breakers: list[tuple[str, BreakerRegistry]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Optional servers left out (and why)."""
    telemetry: Telemetry | None = None
    """The OpenTelemetry SDK pieces of `[tracing]` (resource, OTLP export); `serve` installs them globally."""
    assembly: Assembly | None = None
    """Every backend's stack as built; `assembly.reload_policies()` recompiles `[policy] files`."""
    reloader: Reloader | None = None
    """Reloads the servers from the config file (SIGHUP, `watch_config`); None for a config not read from a file."""
    _closers: list[Closer] = field(default_factory=list)

    def uvicorn_config(self) -> uvicorn.Config:
        """A `uvicorn.Config` for this gateway (one worker; TLS and graceful shutdown from the config)."""
        import uvicorn

        settings = self.config.gateway
        return uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            lifespan="on",
            log_level=settings.log_level,
            log_config=None,  # uvicorn's records go through the handler `configure_logging` installed
            access_log=False,  # the tracing middleware writes one structured line per MCP request
            proxy_headers=False,  # X-Forwarded-* are trusted per middleware (trusted_proxies), never globally
            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout)),
            ssl_certfile=settings.tls_certfile,
            ssl_keyfile=settings.tls_keyfile,
        )


def build_gateway(
    config: GatewayConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Gateway:
    """Build the gateway; raises :class:`ConfigError` when a server cannot be loaded."""
    settings = config.gateway
    problem = dev_mode_problem(config, host)
    if problem is not None:  # `host` may differ from the file's: placed at the [auth] table's line
        raise ConfigError([config.problem(problem.path, problem.message)], str(config.source or "config"))
    host = host or settings.host
    port = settings.port if port is None else port
    base_url = _base_url(settings, host, port)
    assembly, router, skipped = _assembled(config, base_url)
    closers: list[Closer] = []
    inner = _front(router, config, assembly)
    trail = None
    if config.audit.enabled:
        inner, trail = _audited(inner, config, closers)
    telemetry = None
    if config.tracing.enabled:
        tracing = config.tracing
        telemetry = Telemetry(TelemetrySettings(tracing.otlp_endpoint, tracing.otlp_protocol, tracing.service_name))
        inner = _traced(inner, config, router, assembly, closers, telemetry, tracer_provider, meter_provider, trail)
    operations = OperationsMiddleware(inner, checks=readiness_checks(router, assembly))
    gateway = Gateway(
        config=config,
        app=(lifespan := GatewayLifespan(operations.mcp_direct, router, closers, freeze_gc=settings.gc_freeze)),
        router=router,
        operations=operations,
        base_url=base_url,
        host=host,
        port=port,
        authorization_server=assembly.authorization_server,
        breakers=assembly.breakers,
        skipped=skipped,
        telemetry=telemetry,
        assembly=assembly,
        _closers=closers,
    )
    lifespan.bypass(*_answered_in_front(operations, traced=config.tracing.enabled))
    lifespan.async_closers.append(partial(close_stores, assembly))  # their connections end with the gateway
    if config.source is not None:
        gateway.reloader = lifespan.reloader = Reloader(gateway, assembly, config.source)
    return gateway


def _answered_in_front(operations: OperationsMiddleware, *, traced: bool) -> tuple[set[str], ASGIApp]:
    """The paths the outermost layers answer themselves (operations, `/metrics`), and the layer inside them: the
    gateway's outermost call hands a request for any other path straight to it (`GatewayLifespan.bypass`)."""
    answered = {operations.health_path, operations.ready_path}
    inside = operations.app
    if traced:
        from mcp_middleware.tracing import PrometheusMiddleware

        door = getattr(inside, "__self__", None)  # (`_traced` returns the door's `mcp_direct`)
        if isinstance(door, PrometheusMiddleware):
            answered.add(door.path)
            inside = door.app
    return answered, inside


def _assembled(config: GatewayConfig, base_url: str) -> tuple[Assembly, McpRouter, list[str]]:
    """Every backend's stack and the router over them; a value a middleware refuses is a config problem."""
    try:
        assembly = Assembly(config, base_url)
        router, skipped = _router(config, assembly)
    except ConfigError:
        raise
    except (ValueError, ConfigurationError) as exc:  # a value a middleware refused that the config let through
        raise ConfigError(
            [config.problem("(config)", f"cannot be assembled: {exc}")], str(config.source or "config")
        ) from exc
    return assembly, router, skipped


def _base_url(settings: GatewaySettings, host: str, port: int) -> str:
    """The URL clients use: `public_url`, else the bound address (a URL to print, not a bind)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    authority = f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"
    return f"{'https' if settings.tls_certfile else 'http'}://{authority}"


def _router(config: GatewayConfig, assembly: Assembly) -> tuple[McpRouter, list[str]]:
    """The router with every server mounted, and the optional servers skipped (with why)."""
    aggregate = config.aggregate
    router = McpRouter(
        prefix=config.gateway.prefix,
        aggregate_path=config.gateway.prefix if aggregate.enabled else None,
        naming=NamingPolicy(
            separator=aggregate.separator, prefix=PrefixMode(aggregate.prefix), on_conflict=aggregate.on_conflict
        ),
        aggregate_middleware=assembly.aggregate_door(),
        aggregate_own_middleware=assembly.aggregate_own(),
        transport_security=FRONT_DOOR_CHECKS_HOST,
    )
    folder = config.source.parent if config.source else Path.cwd()
    skipped: list[str] = []
    problems: list[Problem] = []
    for server in config.servers:
        try:
            backend = load_backend(server, folder)
        except BackendLoadError as exc:
            if server.optional:
                skipped.append(f"{server.name}: {exc.message}")
                logger.warning("optional server %s skipped: %s", server.name, exc.message)
            else:
                problems.append(config.problem(f"servers[{server.index}].{exc.key}", exc.message))
            continue
        if not server.mount and not (server.aggregate and aggregate.enabled):
            continue
        layers = assembly.for_mount(server)  # the backend's stack: its mount and the aggregate share it
        if isinstance(backend, StdioBackend | HttpBackend | PoolBackend):
            layers.append(gate_layer(server.name, lambda: router, server.timeout))
        if isinstance(backend, PoolBackend):  # (the gate has the router read the request: the pool judges answers)
            assembly.instruments.append(backend.instrument)
        router.mount(
            server.name,
            backend,
            middleware=layers,
            aggregate=server.aggregate and aggregate.enabled,
            path_mount=server.mount,
            curation=server.curation,
        )
    if problems:
        raise ConfigError(problems, str(config.source or "config"))
    router.routes = live_routes(config.routes, [name for name, mount in router.mounts.items() if mount.aggregate])
    for virtual in config.virtual_servers:
        add_virtual_server(router, virtual, assembly)
    return router, skipped


def _front(router: McpRouter, config: GatewayConfig, assembly: Assembly) -> ASGIApp:
    """The router with the dev authorization server beside it, affinity and the front door around it."""
    inner: ASGIApp = router.mcp_direct  # `mcp_direct` (core.direct): a layer passing a request on leaves no frame
    if assembly.authorization_server is not None:
        inner = _Beside(assembly.authorization_server, inner, assembly.authorization_server.paths)
    inner = session_layer(inner, config)  # sealed handles (`session_key`) or the instance tag (`instance`)
    inner = assembly.approval_callback(inner)  # /approval/callback/<token>: an approver's answer, no MCP token
    door = config.front_door
    return FrontDoorMiddleware(
        inner,
        allowed_hosts=door.allowed_hosts,
        allowed_origins=door.allowed_origins,
        cors=door.cors,
        max_body_size=door.max_body_size,
        exempt_paths=(),
    ).mcp_direct


def _traced(
    inner: ASGIApp,
    config: GatewayConfig,
    router: McpRouter,
    assembly: Assembly,
    closers: list[Closer],
    telemetry: Telemetry,
    tracer_provider: TracerProvider | None,
    meter_provider: MeterProvider | None,
    trail: AuditTrail | None = None,
) -> ASGIApp:
    """Tracing around `inner`, and Prometheus `/metrics` around that unless a meter provider was given.

    Spans go to `tracer_provider` if given, else to the OTLP exporter `[tracing]` or `OTEL_*` configure
    (see `telemetry.py`), else to the global provider; `/metrics` is labelled with the service's resource.
    """
    from mcp_middleware.tracing import AccessLog, PrometheusMetrics, PrometheusMiddleware, TracingMiddleware

    metrics = None
    if meter_provider is None:
        metrics = PrometheusMetrics(resource=telemetry.resource)
        meter_provider = metrics.meter_provider
        closers.append(metrics.shutdown)
    if trail is not None:
        trail.measure(meter_provider)  # mcp.middleware.audit.dropped beside the other metrics
    if tracer_provider is None:
        tracer_provider = telemetry.tracer_provider
    closers.append(telemetry.shutdown)  # flushes the batched spans
    prefix = config.gateway.prefix
    tracing = TracingMiddleware(
        inner,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        config=CoreConfig(paths=(prefix, f"{prefix}/*"), max_body_size=config.front_door.max_body_size),
        record_enduser=config.tracing.record_enduser,
        access_log=AccessLog() if config.tracing.access_log else False,
        server_name=backend_label(prefix, router.mounts),  # live: a reload's new servers are labelled too
    )
    if tracing.metrics is not None:
        assembly.state_listeners.append(tracing.metrics.record_breaker_change)
    for instrument in assembly.instruments:
        instrument(meter_provider)
    if metrics is None:
        return tracing.mcp_direct
    registry = metrics.registry
    if (shared := worker_metrics.from_environment(registry)) is not None:  # --workers N: every worker's series
        closers.append(shared.close)
        registry = shared.registry
    return PrometheusMiddleware(tracing.mcp_direct, path=config.tracing.metrics_path, registry=registry).mcp_direct


def _audited(inner: ASGIApp, config: GatewayConfig, closers: list[Closer]) -> tuple[ASGIApp, AuditTrail]:
    """The audit trail around the front door and the router: it sees every refusal and every backend's answer,
    once per operation (the aggregate's calls into a backend's stack are the same operation)."""
    from mcp_middleware.audit import AuditMiddleware

    from .config_audit import audit_trail

    try:
        trail = audit_trail(config)
    except ValueError as exc:
        raise ConfigError([config.problem("audit.file", str(exc))], str(config.source or "config")) from exc
    closers.append(trail.close)  # before the telemetry's: the last records are written, then exported
    prefix = config.gateway.prefix
    audited = AuditMiddleware(
        inner,
        trail=trail,
        config=CoreConfig(paths=(prefix, f"{prefix}/*"), max_body_size=config.front_door.max_body_size),
        server_name=backend_label(prefix, (server.name for server in config.servers)),
    )
    return audited, trail


# --- routing glue -------------------------------------------------------------------------------


class _Beside:
    """Serve `side` for its exact paths, `main` for everything else (the dev AS beside the router)."""

    def __init__(self, side: ASGIApp, main: ASGIApp, paths: tuple[str, ...]) -> None:
        self.side = side
        self.main = main
        self.paths = frozenset(paths)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http" and scope["path"] in self.paths:  # the chosen app's awaitable: no frame of ours
            return self.side(scope, receive, send)
        return self.main(scope, receive, send)
