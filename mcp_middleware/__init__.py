"""mcp-middleware: production traffic control for any MCP server, as composable pure-ASGI middlewares."""

from .core import (
    ANONYMOUS,
    CoreConfig,
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
    get_mcp_request,
    get_principal,
)

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS",
    "CoreConfig",
    "Era",
    "ErrorCode",
    "McpCoreMiddleware",
    "McpRequest",
    "Principal",
    "RequestKind",
    "ResponseOutcome",
    "ResponseTap",
    "Selector",
    "SelectorMap",
    "__version__",
    "get_mcp_request",
    "get_principal",
]
