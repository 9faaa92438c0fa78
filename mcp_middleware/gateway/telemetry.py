"""The gateway's OpenTelemetry SDK: the service's resource, and OTLP span export when configured.

Export is on when `[tracing] otlp_endpoint` is set, or when the standard variables name an
endpoint (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`). The config wins
over the environment for what it sets; everything it does not set (headers, timeout, compression,
certificates, the sampler) is the exporter's and the SDK's own reading of `OTEL_*`:

- endpoint: `[tracing] otlp_endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as is), else
  `OTEL_EXPORTER_OTLP_ENDPOINT`; a base URL gets `/v1/traces` appended for `http/protobuf`, as the
  specification says for the generic variable;
- protocol: `[tracing] otlp_protocol`, else `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
  `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (`grpc` needs `opentelemetry-exporter-otlp-proto-grpc`);
- `service.name`: `[tracing] service_name`, else `OTEL_SERVICE_NAME`, else `service.name` in
  `OTEL_RESOURCE_ATTRIBUTES`, else `mcp-gateway`; the other resource attributes come from
  `OTEL_RESOURCE_ATTRIBUTES`. The same resource labels `/metrics` (`target_info`).

`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn the environment's export off (a
configured `otlp_endpoint` still exports). Spans leave through a `BatchSpanProcessor` (a worker
thread: nothing on the request path waits for the collector); the gateway's shutdown flushes it.

>>> settings = TelemetrySettings(otlp_endpoint="http://127.0.0.1:4318")
>>> export_target(settings, environ={})
('http/protobuf', 'http://127.0.0.1:4318/v1/traces')
>>> export_target(TelemetrySettings(), environ={}) is None
True
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Final

from starlette.types import Scope

from mcp_middleware.core import DECISIONS_SCOPE_KEY

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "PROTOCOLS",
    "Telemetry",
    "TelemetrySettings",
    "backend_label",
    "export_target",
    "service_name",
]

DEFAULT_SERVICE_NAME: Final = "mcp-gateway"
SHUTDOWN_PATIENCE: Final = 3.0
"""Seconds the gateway's shutdown waits for the last spans to reach the collector."""
PROTOCOLS: Final = ("http/protobuf", "grpc")
_TRACES_PATH: Final = "/v1/traces"


@dataclass(frozen=True)
class TelemetrySettings:
    """What `[tracing]` says about export; `None` leaves the choice to the environment."""

    otlp_endpoint: str | None = None
    otlp_protocol: str | None = None
    service_name: str | None = None


def service_name(settings: TelemetrySettings, environ: Mapping[str, str] | None = None) -> str:
    """The `service.name` of the gateway's spans and metrics (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    if settings.service_name:
        return settings.service_name
    if name := env.get("OTEL_SERVICE_NAME", "").strip():
        return name
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return DEFAULT_SERVICE_NAME


def export_target(settings: TelemetrySettings, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """`(protocol, endpoint)` spans are exported to, or `None` when nothing asks for export."""
    env = os.environ if environ is None else environ
    endpoint = settings.otlp_endpoint
    signal_specific = False
    if not endpoint:
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            return None
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        signal_specific = bool(endpoint)
        endpoint = endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if not endpoint:
            return None
    protocol = (
        settings.otlp_protocol
        or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        or "http/protobuf"
    )
    if protocol == "http/protobuf" and not signal_specific and not endpoint.rstrip("/").endswith(_TRACES_PATH):
        endpoint = endpoint.rstrip("/") + _TRACES_PATH
    return protocol, endpoint


class Telemetry:
    """The SDK pieces one gateway built: its resource, and its tracer provider when spans are exported."""

    def __init__(self, settings: TelemetrySettings, environ: Mapping[str, str] | None = None) -> None:
        from opentelemetry.sdk.resources import Resource

        self.service_name = service_name(settings, environ)
        self.resource: Resource = Resource.create({"service.name": self.service_name})
        self.target = export_target(settings, environ)
        self.tracer_provider: TracerProvider | None = None
        if self.target is not None:
            self.tracer_provider = _exporting_provider(self.resource, *self.target)

    def install_global(self) -> None:
        """Make the exporting provider the process's global one (once, in `serve`), so that the `mcp`
        SDK's own server spans, which use the global provider, are exported beside the gateway's."""
        from opentelemetry import trace

        if self.tracer_provider is not None and type(trace.get_tracer_provider()) is trace.ProxyTracerProvider:
            trace.set_tracer_provider(self.tracer_provider)

    def shutdown(self, patience: float = SHUTDOWN_PATIENCE) -> None:
        """Flush the spans still batched and stop the exporter (the gateway's lifespan calls it last).

        Waits at most `patience` seconds: a collector that is down would otherwise hold the exit
        for the exporter's retries (up to its timeout, 10 s by default). The flush goes on in a daemon
        thread, and is dropped if the process exits first.
        """
        provider = self.tracer_provider
        if provider is None:
            return
        flushing = threading.Thread(target=provider.shutdown, name="otlp-shutdown", daemon=True)
        flushing.start()
        flushing.join(patience)


def _exporting_provider(resource: Resource, protocol: str, endpoint: str) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    exporter: SpanExporter
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise ImportError(
                "[tracing] otlp_protocol = 'grpc' needs opentelemetry-exporter-otlp-proto-grpc; "
                "install it or use 'http/protobuf' (pip install 'mcp-middleware[otlp]')"
            ) from exc
        exporter = GrpcExporter(endpoint=endpoint)
    elif protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError(
                "OTLP export needs opentelemetry-exporter-otlp-proto-http: pip install 'mcp-middleware[otlp]'"
            ) from exc
        exporter = OTLPSpanExporter(endpoint=endpoint)
    else:
        raise ValueError(f"OTLP protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER, as the SDK reads it
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


_OUTCOME: Final = itemgetter(1)  # a decision's outcome


def backend_label(prefix: str, names: Iterable[str]) -> Callable[[Scope], str | None]:
    """The `server_name` hook of the gateway's `TracingMiddleware`: which configured server a request reached.

    A path mount is named by its path (`{prefix}/{name}`); a request the aggregate routed, by the
    router's `routed` decision. Only configured names come out (anything else is `None`, no label):
    a client choosing the path or the tool name cannot mint label values.
    """
    known: Container[str] = names if isinstance(names, Mapping) else frozenset(names)  # a Mapping: live (reloads)
    mount_prefix = prefix.rstrip("/") + "/"
    cut = len(mount_prefix)

    def label(scope: Scope) -> str | None:
        decisions = scope.get(DECISIONS_SCOPE_KEY) or ()
        if "routed" in map(_OUTCOME, decisions):  # a C-level look first: a path mount's request has no `routed`
            for component, outcome, attributes in reversed(decisions):  # the list, uncopied
                if outcome == "routed" and component == "router":
                    server = attributes.get("server")
                    return server if isinstance(server, str) and server in known else None
        path: str = scope["path"]
        if path.startswith(mount_prefix):
            name = path[cut:]
            if name not in known:  # (the usual path has no trailing slash to strip)
                name = name.rstrip("/")
            return name if name in known else None
        return None

    return label
