"""examples/router_hub.py serves both a path mount and the aggregate, in both eras."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_router_hub_example(era: Era, serve: Any) -> None:
    app = importlib.reload(importlib.import_module("examples.router_hub")).app  # fresh apps: lifespans run once
    served = serve(app)
    async with connect(f"{served.base}/mcp/notes", era) as client:
        first = await client.call_tool("add", {"text": "one"})
    async with connect(served.mcp_url, era) as client:
        second = await client.call_tool("notes__add", {"text": "two"})
        notes = await client.read_resource("notes+notes://all")
    assert first.structured_content == {"result": 1}
    assert second.structured_content == {"result": 2}  # the same backend behind both entrances
    assert notes.contents[0].text == "one\ntwo"  # type: ignore[union-attr]
