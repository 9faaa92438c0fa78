"""examples/breaker_server.py does what its docstring says, in both eras."""

from __future__ import annotations

import importlib
from typing import Any

import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode, JsonRpcCode
from tests.conftest import ERAS, Era, Served, connect
from tests.support.waiting import held_within

from .backends import settled

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_the_example_opens_its_circuit_and_reports_not_ready(era: Era, serve: Any) -> None:
    example = importlib.reload(importlib.import_module("examples.breaker_server"))  # a fresh app per test
    served: Served = serve(example.app)
    async with connect(served.mcp_url, era) as client, httpx2.AsyncClient(timeout=10) as http:
        await client.list_tools()
        assert (await client.call_tool("stock", {"item": "apple"})).content[0].text == "12"  # type: ignore[union-attr]
        assert (await http.get(f"{served.base}/readyz")).json() == {"ready": True, "open": []}
        await settled(example.registry, 3)  # handshake, list and the good call judged before the outage
        await client.call_tool("set_outage", {"on": True})
        for _ in range(3):
            with pytest.raises(MCPError) as failed:
                await client.call_tool("stock", {"item": "apple"})
            assert failed.value.code == JsonRpcCode.INTERNAL_ERROR
        assert await held_within(lambda: example.registry.open_keys() == ["/mcp"])
        with pytest.raises(MCPError) as refused:
            await client.call_tool("stock", {"item": "apple"})
        assert refused.value.code == ErrorCode.UNAVAILABLE
        ready = await http.get(f"{served.base}/readyz")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "open": ["/mcp"]}
        # The switch has its own breaker: it still works while the backend's circuit is open.
        assert (await client.call_tool("set_outage", {"on": False})).content[0].text == "outage off"  # type: ignore[union-attr]


async def test_the_example_times_out_a_slow_report(serve: Any) -> None:
    example = importlib.reload(importlib.import_module("examples.breaker_server"))
    served: Served = serve(example.app)
    async with connect(served.mcp_url, "modern") as client:
        with pytest.raises(MCPError) as timed_out:
            await client.call_tool("slow_report", {"seconds": 5})
    assert timed_out.value.code == ErrorCode.TIMEOUT
