"""A circuit breaker, timeouts and safe retries in front of an MCP server, with a readiness check.

    python examples/breaker_server.py    # serves on 127.0.0.1:$PORT (default 8000)

`inventory` is a backend with a bad day: while `outage` is on, every call fails with a
JSON-RPC internal error (inside a 200 response, where an HTTP-level breaker sees nothing).
After three failures in a row the circuit opens: calls are refused at once with HTTP 503,
`Retry-After` and a JSON-RPC error (-32015) until a probe finds the backend healthy again.
`slow_report` is cut off after 2 s with a JSON-RPC timeout error (-32016). `/readyz`
answers 503 while a circuit is open; every state change is logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

import anyio
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from mcp_middleware.breaker import BreakerPolicy, BreakerRegistry, CircuitBreakerMiddleware, RetryPolicy, StateChange
from mcp_middleware.core import JsonRpcCode

log = logging.getLogger("breaker-demo")

server = MCPServer("inventory")
outage = {"on": False}


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def stock(item: str) -> int:
    """How many of `item` are in stock (read-only: safe to retry)."""
    if outage["on"]:
        raise MCPError(code=JsonRpcCode.INTERNAL_ERROR, message="inventory database unreachable")
    return {"apple": 12, "pear": 0}.get(item, 0)


@server.tool()
def set_outage(on: bool) -> str:
    """Switch the simulated outage on or off."""
    outage["on"] = on
    return f"outage {'on' if on else 'off'}"


@server.tool()
async def slow_report(seconds: float) -> str:
    """Take `seconds` to answer (more than 2 s is cut off by the timeout)."""
    await anyio.sleep(seconds)
    return f"report after {seconds:g} s"


def log_change(change: StateChange) -> None:
    log.warning("circuit %s: %s -> %s (%s)", change.key, change.previous.value, change.state.value, change.reason)


registry = BreakerRegistry(
    policy=BreakerPolicy(consecutive_failures=3, failure_rate=0.5, minimum_calls=20, open_for=5.0, max_open_for=60.0),
    listeners=[log_change],
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with server.session_manager.run():
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/readyz")
async def ready() -> JSONResponse:
    """Not ready while any circuit is open: a load balancer sends traffic elsewhere."""
    open_circuits = registry.open_keys()
    return JSONResponse({"ready": not open_circuits, "open": open_circuits}, status_code=503 if open_circuits else 200)


app.mount("/", server.streamable_http_app())
app.add_middleware(
    CircuitBreakerMiddleware,
    registry=registry,
    per_target=["tools/call:set_outage"],  # the switch keeps its own breaker, so it works during the outage
    timeouts={"*": 10.0, "tools/call": 30.0, "tools/call:slow_report": 2.0, "tools/list": 5.0},
    retry=RetryPolicy(attempts=2),
)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
