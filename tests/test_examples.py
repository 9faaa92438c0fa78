"""Every example in examples/ (which the docs point to) serves MCP in both eras."""

from __future__ import annotations

import importlib
import re
from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from mcp.client.streamable_http import streamable_http_client

from mcp_middleware.core import ErrorCode
from tests.conftest import ERAS, Era, connect, require

pytestmark = pytest.mark.anyio

EXAMPLES = {
    "examples.core_server": ("add", {"a": 1, "b": 2}, "3"),
    "examples.fastapi_app": ("add", {"a": 20, "b": 22}, "42"),
    "examples.fastmcp_app": ("multiply", {"a": 6, "b": 7}, "42.0"),
    "examples.custom_middleware": ("read_file", {"path": "a.txt"}, "contents of a.txt"),
}


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("module", EXAMPLES)
async def test_example_serves(module: str, era: Era, serve: Any) -> None:
    if module == "examples.fastmcp_app":
        require("fastmcp", "the fastmcp extra is tested in CI")
    # A fresh import per test: an SDK app's lifespan can start only once.
    app = importlib.reload(importlib.import_module(module)).app
    served = serve(app)
    tool, arguments, text = EXAMPLES[module]
    async with connect(served.mcp_url, era) as client:
        result = await client.call_tool(tool, arguments)
    assert result.content[0].text == text  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_custom_middleware_refuses_with_a_readable_error(era: Era, serve: Any) -> None:
    app = importlib.reload(importlib.import_module("examples.custom_middleware")).app
    served = serve(app)
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool("delete_file", {"path": "a.txt"})
        assert refused.value.code == ErrorCode.FORBIDDEN
        assert refused.value.message == "Tool 'delete_file' is not allowed here"
        # The refusal leaves the connection usable.
        assert (await client.call_tool("read_file", {"path": "b"})).content[0].text == "contents of b"  # type: ignore[union-attr]


STACKED = ("examples.stack_server", "examples.fastapi_stack")
"""The whole stack in the safe order: built by `stack()`, and by `add_middleware` innermost first."""


def _list_tools(request_id: int) -> bytes:
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {"_meta": meta}})


_MODERN_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/list",
}


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("module", STACKED)
async def test_stacked_example_serves_each_caller_as_themselves(module: str, era: Era, serve: Any) -> None:
    app = importlib.reload(importlib.import_module(module)).app
    served = serve(app)
    for token, subject, tools in (
        ("alice-token", "alice", ["whoami", "admin_reset"]),
        ("bob-token", "bob", ["whoami"]),
    ):
        async with (
            httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as http,
            connect(streamable_http_client(served.mcp_url, http_client=http), era) as client,  # type: ignore[arg-type]
        ):
            assert [tool.name for tool in (await client.list_tools()).tools] == tools
            assert (await client.call_tool("whoami", {})).content[0].text == subject  # type: ignore[union-attr]


@pytest.mark.parametrize("module", STACKED)
async def test_stacked_example_caches_inside_auth(module: str, serve: Any) -> None:
    app = importlib.reload(importlib.import_module(module)).app
    served = serve(app)
    async with httpx2.AsyncClient(timeout=10) as http:
        alice = {**_MODERN_HEADERS, "authorization": "Bearer alice-token"}
        answers = [await http.post(served.mcp_url, content=_list_tools(i), headers=alice) for i in (1, 2)]
        assert [a.headers["x-mcp-cache"] for a in answers] == ["miss", "hit"]
        assert answers[1].json()["id"] == 2
        nobody = await http.post(served.mcp_url, content=_list_tools(3), headers=_MODERN_HEADERS)
        assert nobody.status_code == 401, "the cache never answers before auth has"
        assert nobody.json()["id"] == 3
        bob = {**_MODERN_HEADERS, "authorization": "Bearer bob-token"}
        theirs = await http.post(served.mcp_url, content=_list_tools(4), headers=bob)
        assert [tool["name"] for tool in theirs.json()["result"]["tools"]] == ["whoami"]
        if module == "examples.fastapi_stack":
            assert (await http.get(f"{served.base}/health")).json() == {"status": "ok"}


_SAFE_ORDER = (
    "TracingMiddleware",
    "AuthMiddleware",
    "RateLimitMiddleware",
    "ResponseCacheMiddleware",
    "CircuitBreakerMiddleware",
)
"""Outermost first."""


def _stack_snippets() -> list[tuple[str, str]]:
    """Every Python block of the README and docs/ that stacks middlewares, with `add_middleware` or `stack()`."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
        for number, block in enumerate(blocks):
            layers = sum(block.count(f"add_middleware({name}") for name in _SAFE_ORDER)
            if layers >= 2 or "stack(" in block:
                found.append((f"{page.name}#{number}", block))
    return found


@pytest.mark.parametrize(("where", "block"), _stack_snippets(), ids=[w for w, _ in _stack_snippets()])
def test_docs_stack_in_the_safe_order(where: str, block: str) -> None:
    """Run the snippet on a fresh Starlette app: the layers must come out tracing → auth → … → breaker."""
    from mcp.server.mcpserver import MCPServer
    from starlette.applications import Starlette

    import mcp_middleware

    namespace: dict[str, Any] = {name: getattr(mcp_middleware, name) for name in mcp_middleware.__all__}
    namespace |= {
        "app": Starlette(),
        "server": MCPServer("docs"),
        "verifier": mcp_middleware.StaticTokenVerifier({}),
        "RESOURCE": "https://mcp.example.com/mcp",
    }
    exec(compile(block, where, "exec"), namespace)
    app = namespace["app"]
    if isinstance(app, mcp_middleware.McpStack):
        layers = [
            type(layer).__name__ for layer in (app.tracing, app.auth, app.ratelimit, app.cache, app.breaker) if layer
        ]
        chain, layer = [], app.app
        while type(layer).__name__ in _SAFE_ORDER:
            chain.append(type(layer).__name__)
            layer = layer.app
        assert chain == layers
    else:
        chain = [m.cls.__name__ for m in app.user_middleware if m.cls.__name__ in _SAFE_ORDER]  # outermost first
    assert len(chain) >= 2
    assert chain == sorted(chain, key=_SAFE_ORDER.index), f"{where}: {chain}"
