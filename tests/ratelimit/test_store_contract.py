"""The bucket store contract, run against every store kind: memory and a real `redis-server`.

Each store is built by :func:`bucket_store_from_url` from its URL, as the gateway builds it; the
same assertions hold for both (the clock is injected through `now`, which both honour).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from mcp_middleware.ratelimit import (
    BucketStore,
    BucketTake,
    MemoryBucketStore,
    RateLimiter,
    RedisBucketStore,
    StoreUnavailable,
    TokenBucket,
    bucket_store_from_url,
)
from mcp_middleware.ratelimit.policies import BucketPolicy
from tests.conftest import free_port, require, require_binary
from tests.ratelimit.test_limiter import request, scope
from tests.support.redis_unix import redis_on_unix_socket

pytestmark = pytest.mark.anyio

KINDS = ["memory", "redis"]
BUCKET = TokenBucket(capacity=3, rate=1)


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BucketStore]:
    if request.param == "memory":
        url = "memory://"
    else:
        require("redis", "the Redis bucket store")
        url = request.getfixturevalue("redis_server").url  # fails in CI without redis-server
    made = bucket_store_from_url(url, timeout=5.0)  # a loaded CI machine: bound the test, not each reply
    try:
        yield made
    finally:
        await made.aclose()


def allowed(decisions: Any) -> list[bool]:
    return [d.allowed for d in decisions]


async def test_a_reachable_store_passes_its_check(store: BucketStore) -> None:
    assert await store.check() is None


async def test_a_bucket_admits_its_capacity_then_says_how_long_to_wait(store: BucketStore) -> None:
    take = BucketTake("alice", BUCKET)
    results = [(await store.take([take], now=100.0))[0] for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results[:3]] == pytest.approx([2.0, 1.0, 0.0])
    assert results[3].retry_after == pytest.approx(1.0) and results[3].reset_after == pytest.approx(3.0)
    assert (await store.take([take], now=101.0))[0].allowed  # refilled at `rate` on the injected clock


async def test_a_refused_set_charges_no_bucket(store: BucketStore) -> None:
    wide, narrow = BucketTake("wide", TokenBucket(capacity=10, rate=1)), BucketTake("narrow", BUCKET, cost=3)
    assert allowed(await store.take([wide, narrow], now=0.0)) == [True, True]
    assert allowed(await store.take([wide, narrow], now=0.0)) == [True, False]  # narrow is empty: none charged
    decision = (await store.take([wide], now=0.0))[0]
    assert decision.remaining == pytest.approx(8.0)  # 10 - 1 - 1: the refused set took nothing from wide


async def test_give_back_returns_tokens_up_to_capacity_and_ignores_unknown_buckets(store: BucketStore) -> None:
    take = BucketTake("bob", BUCKET, cost=2)
    await store.take([take], now=0.0)
    await store.give_back([take], now=0.0)
    await store.give_back([take], now=0.0)  # never above capacity
    assert (await store.take([BucketTake("bob", BUCKET, cost=3)], now=0.0))[0].allowed
    await store.give_back([BucketTake("nobody", BUCKET)], now=0.0)
    assert (await store.take([BucketTake("nobody", BUCKET, cost=3)], now=0.0))[0].allowed  # still full


async def test_a_cost_beyond_capacity_is_refused_and_charges_nothing(store: BucketStore) -> None:
    assert allowed(await store.take([BucketTake("carol", BUCKET, cost=1e9)], now=0.0)) == [False]
    assert (await store.take([BucketTake("carol", BUCKET)], now=0.0))[0].remaining == pytest.approx(2.0)


async def test_hostile_keys_never_share_a_bucket(store: BucketStore) -> None:
    keys = ["a", "a:", ":a", "a\x00b", "a\nb", "é", "e\u0301", "{tag}", "*", "x" * 10_000]
    for key in keys:
        assert allowed(await store.take([BucketTake(key, BUCKET, cost=3)], now=0.0)) == [True]
    for key in keys:
        assert allowed(await store.take([BucketTake(key, BUCKET)], now=0.0)) == [False]  # each emptied its own


async def test_concurrent_takes_admit_exactly_the_capacity(store: BucketStore) -> None:
    bucket, results = TokenBucket(capacity=10, rate=0.001), []

    async def one() -> None:
        results.extend(allowed(await store.take([BucketTake("crowd", bucket)], now=0.0)))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(one)
    assert results.count(True) == 10


async def test_the_sync_path_decides_on_the_same_state_as_take(store: BucketStore) -> None:
    sync = store.sync
    if isinstance(store, RedisBucketStore):
        assert sync is None  # every decision is a round trip
        return
    assert sync is not None
    take = BucketTake("dave", BUCKET)
    assert allowed(sync.decide([take], 0.0)) == [True]
    assert (await store.take([take], now=0.0))[0].remaining == pytest.approx(1.0)
    assert sync.decide([take], 0.0)[0].remaining == pytest.approx(0.0)
    assert allowed(await store.take([take], now=0.0)) == [False]


async def test_the_limiter_decides_alike_through_either_path(store: BucketStore) -> None:
    limiter = RateLimiter([BucketPolicy("p", rate=0.001, capacity=2)], store=store, namespace="contract:")
    verdicts = [await limiter.check(scope(), request("ping")) for _ in range(3)]
    assert [v.allowed for v in verdicts] == [True, True, False]


async def test_a_subclass_that_wraps_take_is_awaited_through_it() -> None:
    class Counting(MemoryBucketStore):
        calls = 0

        async def take(self, takes: Any, *, now: float | None = None) -> Any:
            Counting.calls += 1
            return await super().take(takes, now=now)

    store = Counting()
    assert store.sync is None and MemoryBucketStore().sync is not None
    await RateLimiter([BucketPolicy("p", rate=1, capacity=2)], store=store).check(scope(), request("ping"))
    assert Counting.calls == 1


async def test_check_raises_once_redis_is_gone_and_passes_when_it_is_back(redis_server: Any) -> None:
    require("redis", "the Redis bucket store")
    store = bucket_store_from_url(redis_server.url, timeout=0.5)
    try:
        await store.check()
        redis_server.stop()
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="Redis bucket store unreachable"):
            await store.check()
        assert time.perf_counter() - started < 2.0
        redis_server.start()
        await store.check()
    finally:
        await store.aclose()


async def test_check_raises_for_a_port_nobody_listens_on() -> None:
    require("redis", "the Redis bucket store")
    store = bucket_store_from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await store.check()
    finally:
        await store.aclose()


async def test_a_redis_unix_socket_url_reaches_a_real_server() -> None:
    require("redis", "the Redis bucket store")
    with redis_on_unix_socket(require_binary("redis-server", "Redis store tests")) as path:
        store = bucket_store_from_url(f"redis+unix://{path}?db=0")
        try:
            assert isinstance(store, RedisBucketStore)
            await store.check()
            assert allowed(await store.take([BucketTake("u", BUCKET, cost=3)], now=0.0)) == [True]
            assert allowed(await store.take([BucketTake("u", BUCKET)], now=0.0)) == [False]
        finally:
            await store.aclose()


def test_the_factory_builds_the_store_its_url_names() -> None:
    require("redis", "the Redis bucket store")
    memory = bucket_store_from_url("memory://", max_buckets=7)
    assert isinstance(memory, MemoryBucketStore) and memory.max_buckets == 7
    tls = bucket_store_from_url("rediss://:secret@127.0.0.1:6380/2", prefix="p:")
    assert isinstance(tls, RedisBucketStore) and tls.prefix == "p:"
    pool = tls.client.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection" and pool.connection_kwargs["db"] == 2
    assert isinstance(bucket_store_from_url("REDIS://127.0.0.1:6379"), RedisBucketStore)


@pytest.mark.parametrize(
    "url",
    ["", "memory", "memory://somewhere", "memcached://127.0.0.1", "http://127.0.0.1:6379", "127.0.0.1:6379"],
)
def test_the_factory_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="bucket store URL must be"):
        bucket_store_from_url(url)


def test_redis_options_for_a_memory_store_are_refused() -> None:
    with pytest.raises(ValueError, match="Redis store only"):
        bucket_store_from_url("memory://", health_check_interval=5)
