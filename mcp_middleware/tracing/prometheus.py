"""Prometheus exposition of the OpenTelemetry metrics, through the OpenTelemetry Prometheus exporter.

:class:`PrometheusMetrics` is an SDK meter provider whose reader is the exporter's
`PrometheusMetricReader`, registered in a `prometheus_client` registry of its own;
:class:`PrometheusMiddleware` serves that registry at a path of your choosing. OTel names
become Prometheus names (`mcp.server.operation.duration` in seconds →
`mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",…}`).

Needs `opentelemetry-sdk` and `opentelemetry-exporter-prometheus`; they are imported only
when these classes are used, so the rest of the package runs on the API alone.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.kernel import relative_path

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry

__all__ = ["PrometheusMetrics", "PrometheusMiddleware"]


class PrometheusMetrics:
    """A meter provider exposed in the Prometheus format; pass `meter_provider` to the middleware.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.tracing import TracingMiddleware
    >>> metrics = PrometheusMetrics()
    >>> app = TracingMiddleware(MCPServer("demo").streamable_http_app(), meter_provider=metrics.meter_provider)
    >>> app = PrometheusMiddleware(app, registry=metrics.registry, path="/metrics")
    >>> metrics.shutdown()
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, resource: Resource | None = None, prefix: str = ""
    ) -> None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
        from prometheus_client import CollectorRegistry

        self.registry = registry if registry is not None else CollectorRegistry()
        self.reader = PrometheusMetricReader(registry=self.registry, prefix=prefix)
        options: dict[str, Any] = {"resource": resource} if resource is not None else {}
        # The exposition carries no exemplars: sampling them would be work on every request for nothing.
        self.meter_provider: MeterProvider = MeterProvider(
            metric_readers=[self.reader], exemplar_filter=AlwaysOffExemplarFilter(), **options
        )

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition text (and its content type) as a scrape would get it."""
        return _render(self.registry, accept)

    def shutdown(self) -> None:
        """Stop the meter provider (its reader stops answering scrapes)."""
        self.meter_provider.shutdown()


def _render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


class PrometheusMiddleware:
    """Serve a `prometheus_client` registry at `path` (GET/HEAD); pass everything else through.

    `registry` defaults to `prometheus_client.REGISTRY`, where a `PrometheusMetricReader()`
    built without one registers. The path is matched below the ASGI `root_path`, exactly.
    The registry is rendered in a worker thread: a large scrape never stalls MCP traffic.

    >>> from starlette.applications import Starlette
    >>> app = PrometheusMiddleware(Starlette(), path="/internal/metrics")
    """

    def __init__(self, app: ASGIApp, *, path: str = "/metrics", registry: CollectorRegistry | None = None) -> None:
        if not path.startswith("/"):
            raise ValueError(f"metrics path {path!r} must start with '/'")
        if registry is None:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        self.app = app
        self.path = path
        self.registry = registry
        self._suffix = path != "/"  # (`/` below a `root_path` is the root path itself, which need not end in `/`)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.mcp_direct(scope, receive, send)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What awaiting the middleware does, as an awaitable: for every other path, the inner app's own
        (a layer in front may call this, so that no frame of this one stays in the request's await chain)."""
        # The path below `root_path` ends the request's path: most requests are told apart by a suffix test.
        if scope["type"] != "http" or (self._suffix and not scope["path"].endswith(self.path)):
            return self.app(scope, receive, send)
        if relative_path(scope) != self.path:
            return self.app(scope, receive, send)
        return self._serve(scope, send)

    async def _serve(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": b"Method Not Allowed"})
            return
        accept = ",".join(value.decode("latin-1") for key, value in scope["headers"] if key == b"accept")
        body, content_type = await anyio.to_thread.run_sync(_render, self.registry, accept)
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
