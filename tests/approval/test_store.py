"""The approval store's contract, in memory and in a real Redis: spent nonces, and the callback record
`waiting → answered | closed → spent` where exactly one of the callback and the timeout decides."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from mcp_middleware.approval import (
    ApprovalStoreUnavailable,
    MemoryApprovalStore,
    RedisApprovalStore,
    approval_store_from_url,
)
from mcp_middleware.approval.store import CallbackAnswer, Delivery
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio

YES = CallbackAnswer(True, "ok")


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryApprovalStore()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis = RedisApprovalStore(server.url, poll=0.2)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_a_nonce_is_spent_once(store: Any) -> None:
    assert await store.spend("n1", 30)
    assert not await store.spend("n1", 30)
    assert await store.spend("n2", 30)


async def test_the_callback_decides_once(store: Any) -> None:
    await store.hold("a", 30)
    assert await store.deliver("a", YES) is Delivery.ACCEPTED
    assert await store.deliver("a", CallbackAnswer(False)) is Delivery.UNKNOWN  # answered: the second is nobody's
    with anyio.fail_after(10):
        await store.wait("a", 10)
    assert await store.release("a") == YES
    assert await store.deliver("a", YES) is Delivery.UNKNOWN  # spent
    assert await store.release("a") is None


async def test_after_the_timeout_one_late_answer_is_told_409(store: Any) -> None:
    await store.hold("b", 30)
    assert await store.release("b") is None  # timed out: closed
    assert await store.deliver("b", YES) is Delivery.DECIDED
    assert await store.deliver("b", YES) is Delivery.UNKNOWN
    assert await store.deliver("never-held", YES) is Delivery.UNKNOWN
    assert store.waiting() == 0


async def test_a_waiting_call_is_woken(store: Any) -> None:
    await store.hold("c", 30)
    woken = anyio.Event()

    async def waiter() -> None:
        await store.wait("c", 20)
        woken.set()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.sleep(0.1)
        assert not woken.is_set()
        assert await store.deliver("c", CallbackAnswer(False, "no")) is Delivery.ACCEPTED
        with anyio.fail_after(10):
            await woken.wait()
    assert await store.release("c") == CallbackAnswer(False, "no")


async def test_another_instance_wakes_the_call_even_without_its_message(redis_server: RedisServer) -> None:
    holding = RedisApprovalStore(redis_server.url, poll=0.3)
    answering = RedisApprovalStore(redis_server.url)
    try:
        await holding.hold("d", 30)
        holding._events["d"] = anyio.Event()
        holding._listener.cancel()  # type: ignore[union-attr]
        assert await answering.deliver("d", YES) is Delivery.ACCEPTED
        with anyio.fail_after(10):
            await holding.wait("d", 20)
        assert await holding.release("d") == YES
    finally:
        await holding.aclose()
        await answering.aclose()


async def test_redis_down_is_unavailable_never_an_answer(redis_server: RedisServer) -> None:
    store = RedisApprovalStore(redis_server.url, timeout=1.0, poll=0.2)
    try:
        await store.hold("e", 30)
        redis_server.stop()
        with anyio.fail_after(20):
            await store.wait("e", 1.0)  # looks fail quietly; the wait ends at its patience
        with pytest.raises(ApprovalStoreUnavailable):
            await store.release("e")
        with pytest.raises(ApprovalStoreUnavailable):
            await store.spend("f", 30)
        with pytest.raises(ApprovalStoreUnavailable):
            await store.deliver("e", YES)
    finally:
        await store.aclose()


def test_store_urls() -> None:
    assert isinstance(approval_store_from_url("memory://"), MemoryApprovalStore)
    assert isinstance(approval_store_from_url("redis+unix:///tmp/r.sock"), RedisApprovalStore)
    with pytest.raises(ValueError, match="approval store"):
        approval_store_from_url("memcached://x")
