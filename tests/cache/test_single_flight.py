"""Single flight: N concurrent identical misses make one backend call; different principals do not share one."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import types

from tests.cache.backends import connect_as
from tests.cache.helpers import cached_stack
from tests.conftest import ERAS, Era

pytestmark = pytest.mark.anyio

N = 8


@pytest.mark.parametrize("era", ERAS)
async def test_concurrent_identical_misses_make_one_backend_call(era: Era, serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:slow_lookup": 60})
    answers: list[str] = []
    async with connect_as(stack.url, era, "alice") as client:
        await client.list_tools()

        async def call() -> None:
            result = await client.call_tool("slow_lookup", {"key": "k"})
            assert isinstance(result.content[0], types.TextContent)
            answers.append(result.content[0].text)

        async with anyio.create_task_group() as tasks:
            for _ in range(N):
                tasks.start_soon(call)
    assert answers == ["k@1"] * N
    assert stack.calls["tools/call:slow_lookup"] == 1
    hits = [d for d in stack.log.decisions if d.outcome == "hit"]
    assert len(hits) == N - 1
    assert any(d.attributes.get("coalesced") for d in hits)  # those that came while the call ran waited for it


async def test_different_principals_do_not_share_a_flight(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:slow_lookup": 60})
    async with connect_as(stack.url, "modern", "alice") as alice, connect_as(stack.url, "modern", "bob") as bob:
        await alice.list_tools()
        async with anyio.create_task_group() as tasks:
            for client in (alice, bob, alice, bob):
                tasks.start_soon(client.call_tool, "slow_lookup", {"key": "k"})
    assert stack.calls["tools/call:slow_lookup"] == 2


async def test_without_single_flight_every_concurrent_miss_reaches_the_backend(serve: Any) -> None:
    stack = cached_stack(serve, rules={"tools/call:slow_lookup": 60}, single_flight=False)
    async with connect_as(stack.url, "modern", "alice") as client:
        await client.list_tools()
        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(client.call_tool, "slow_lookup", {"key": "k"})
    assert stack.calls["tools/call:slow_lookup"] == 3
