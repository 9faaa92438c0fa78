"""An `MCPServer` under plain uvicorn whose every log record is one JSON line on stderr.

    uvicorn examples.json_logs:app --port 8000 2> server.log    # then: jq . server.log

`configure_logging` runs before the server is built, so the SDK installs no Rich handler; uvicorn's
own loggers, the SDK's (`mcp.*`, WARNING and above), warnings and the access log all go through one
JSON formatter (docs/observability.md, "Logs a shipper can parse").
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from mcp_middleware import TracingMiddleware, configure_logging

configure_logging(format="json", level="INFO")  # format=None: text on a terminal, JSON otherwise

server = MCPServer("json-logs demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


app = TracingMiddleware(server.streamable_http_app(), access_log=True)  # one JSON access line per request
