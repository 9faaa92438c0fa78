"""Observability for MCP traffic: OpenTelemetry traces and metrics with the MCP semantic conventions,
Prometheus exposition and a structured access log.

>>> from mcp.server.mcpserver import MCPServer
>>> from mcp_middleware.tracing import TracingMiddleware
>>> app = TracingMiddleware(MCPServer("demo").streamable_http_app(), access_log=True)
"""

from .access_log import ACCESS_LOGGER, AccessLog
from .context import TRACE_KEYS
from .metrics import OPERATION_DURATION, KnownNames, McpMetrics
from .middleware import TracingMiddleware
from .prometheus import PrometheusMetrics, PrometheusMiddleware
from .semconv import DURATION_BUCKETS

__all__ = [
    "ACCESS_LOGGER",
    "DURATION_BUCKETS",
    "OPERATION_DURATION",
    "TRACE_KEYS",
    "AccessLog",
    "KnownNames",
    "McpMetrics",
    "PrometheusMetrics",
    "PrometheusMiddleware",
    "TracingMiddleware",
]
