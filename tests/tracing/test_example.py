"""The example the docs point to serves MCP in both eras, and its metrics endpoint answers."""

from __future__ import annotations

import importlib
from typing import Any

import httpx2
import pytest

from tests.conftest import ERAS, Era, connect
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_the_tracing_example_serves_and_exposes_metrics(serve: Any, era: Era) -> None:
    example = importlib.reload(importlib.import_module("examples.tracing_server"))  # a fresh app per test
    try:
        served = serve(example.app)
        async with connect(served.mcp_url, era) as client:
            result = await client.call_tool("add", {"a": 20, "b": 22})
        assert result.content[0].text == "42"  # type: ignore[union-attr]
        await until(lambda: b'gen_ai_tool_name="add"' in example.metrics.render()[0])
        async with httpx2.AsyncClient() as http:
            scrape = await http.get(f"{served.base}/metrics")
        assert scrape.status_code == 200 and 'gen_ai_tool_name="add"' in scrape.text
    finally:
        example.tracer_provider.shutdown()
        example.metrics.shutdown()
