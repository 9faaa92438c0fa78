"""An MCPServer traced, measured and logged: OpenTelemetry spans, Prometheus `/metrics`, JSON access lines.

    PORT=8000 python examples/tracing_server.py

Then call it (`mcp.Client("http://127.0.0.1:8000/mcp")`) and watch: one span per request on stdout
(`tools/call add`, with the SDK server's own span as its child), one JSON line per request on
stderr, and `curl http://127.0.0.1:8000/metrics` for `mcp_server_operation_duration_seconds`.
Swap `ConsoleSpanExporter` for an OTLP exporter to send the spans to any OpenTelemetry backend.
"""

from __future__ import annotations

import logging
import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

from mcp_middleware.tracing import AccessLog, PrometheusMetrics, PrometheusMiddleware, TracingMiddleware

server = MCPServer("traced demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


resource = Resource.create({"service.name": "traced-demo"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
metrics = PrometheusMetrics(resource=resource)

app = PrometheusMiddleware(
    TracingMiddleware(
        server.streamable_http_app(),
        tracer_provider=tracer_provider,
        meter_provider=metrics.meter_provider,
        access_log=AccessLog(),  # argument values stay out unless log_arguments=True
        record_enduser=False,  # set True to put the caller's subject on spans as enduser.id
    ),
    registry=metrics.registry,
    path="/metrics",
)


def main() -> None:
    # The `mcp` SDK opens its own span per message with the *global* provider: set it too,
    # so those spans (children of ours) reach the same exporter.
    trace.set_tracer_provider(tracer_provider)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
