"""Writing a middleware on the core: refuse tool calls a selector does not allow.

    python examples/custom_middleware.py    # serves on 127.0.0.1:$PORT (default 8000)

The pattern every middleware of this project follows: pass non-http scopes through,
let the core read the request once, decide on the view, refuse with a JSON-RPC error
or call the app, and observe the response through the shared tap.
"""

from __future__ import annotations

import logging
import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    CoreConfig,
    ErrorCode,
    ResponseTap,
    SelectorMap,
    read_request,
    send_error,
)

log = logging.getLogger("allowlist")


class ToolAllowListMiddleware:
    """Allow only the tool calls whose selector maps to True (most specific selector wins)."""

    def __init__(self, app: ASGIApp, *, rules: dict[str, bool], config: CoreConfig = DEFAULT_CONFIG) -> None:
        self.app = app
        self.rules = SelectorMap(rules)
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None or request.method != "tools/call":  # not ours (or, if ANSWERED, refused by the core)
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        if not self.rules.lookup(request):
            await send_error(
                send,
                status=403,
                code=ErrorCode.FORBIDDEN,
                message=f"Tool {request.name!r} is not allowed here",
                request_id=request.id,
            )
            return
        tap, send = ResponseTap.attach(scope, send, request)
        await self.app(scope, receive, send)
        outcome = tap.outcome()
        log.info("%s -> tool error: %s, %.1f ms", request.name, outcome.is_tool_error, outcome.duration * 1000)


server = MCPServer("allow-list demo")


@server.tool()
def read_file(path: str) -> str:
    """Pretend to read a file."""
    return f"contents of {path}"


@server.tool()
def delete_file(path: str) -> str:
    """Pretend to delete a file."""
    return f"deleted {path}"


app = ToolAllowListMiddleware(server.streamable_http_app(), rules={"tools/call": True, "tools/call:delete_*": False})

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
