"""Every example in examples/ (which the docs point to) serves MCP in both eras."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from mcp import MCPError

from mcp_middleware import ErrorCode
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
