"""Bucket stores: the bounded memory store and the shared Redis store decide alike, atomically."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from mcp_middleware.ratelimit import (
    BucketStore,
    BucketTake,
    MemoryBucketStore,
    RedisBucketStore,
    StoreUnavailable,
    TokenBucket,
)
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0
"""Redis timeout for tests that are not about outages: a loaded CI machine must not turn into a failure."""


async def test_both_stores_satisfy_the_protocol(redis_server: RedisServer) -> None:
    redis_store = RedisBucketStore.from_url(redis_server.url, timeout=TIMEOUT)
    try:
        assert isinstance(MemoryBucketStore(), BucketStore)
        assert isinstance(redis_store, BucketStore)
    finally:
        await redis_store.aclose()


async def test_memory_store_is_bounded_least_recently_used_first() -> None:
    store = MemoryBucketStore(max_buckets=3)
    bucket = TokenBucket(capacity=1, rate=0.001)
    for name in ("a", "b", "c"):
        await store.take([BucketTake(name, bucket)], now=0.0)
    await store.take([BucketTake("a", bucket)], now=0.0)  # refused, but "a" is known; "b" is now oldest
    await store.take([BucketTake("d", bucket)], now=0.0)
    assert len(store) == 3
    # "b" was dropped (it comes back full); "a" is still empty.
    assert (await store.take([BucketTake("b", bucket)], now=0.0))[0].allowed
    assert not (await store.take([BucketTake("a", bucket)], now=0.0))[0].allowed


async def test_memory_store_stays_bounded_under_a_flood_of_distinct_keys() -> None:
    store = MemoryBucketStore(max_buckets=1000)
    bucket = TokenBucket(capacity=5, rate=0.001)
    for n in range(20_000):
        await store.take([BucketTake(f"caller-{n}", bucket)], now=0.0)
    assert len(store) == 1000


async def test_memory_store_forgets_idle_buckets_once_they_would_be_full() -> None:
    store = MemoryBucketStore()
    bucket = TokenBucket(capacity=2, rate=1)
    for n in range(100):
        await store.take([BucketTake(f"caller-{n}", bucket)], now=0.0)
    assert len(store) == 100
    # Each bucket is full again after 1 s (+1 s of slack); new traffic sweeps the idle ones out.
    for n in range(60):
        await store.take([BucketTake("live", bucket)], now=2.5 + n * 0.01)
    assert len(store) == 1


async def test_memory_store_uses_a_monotonic_clock_by_default() -> None:
    store = MemoryBucketStore()
    assert store.clock is time.monotonic


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_several_buckets_are_charged_all_or_nothing(kind: str, redis_server: RedisServer) -> None:
    store: BucketStore = (
        MemoryBucketStore() if kind == "memory" else RedisBucketStore.from_url(redis_server.url, timeout=TIMEOUT)
    )
    roomy, tight = TokenBucket(capacity=10, rate=0.001), TokenBucket(capacity=1, rate=0.001)
    prefix = uuid.uuid4().hex
    takes = [BucketTake(f"{prefix}:roomy", roomy), BucketTake(f"{prefix}:tight", tight)]
    try:
        first = await store.take(takes, now=1.0)
        assert [d.allowed for d in first] == [True, True]
        second = await store.take(takes, now=1.0)
        assert [d.allowed for d in second] == [True, False]  # roomy alone had room, but nothing was charged
        alone = await store.take(takes[:1], now=1.0)
        assert alone[0].remaining == pytest.approx(8.0)  # 10 - first - this one: the refused request took nothing
    finally:
        await store.aclose()


async def test_redis_store_uses_the_server_clock_and_expires_idle_keys(redis_server: RedisServer) -> None:
    store = RedisBucketStore.from_url(redis_server.url, prefix="t:", timeout=TIMEOUT)
    client = Redis.from_url(redis_server.url)
    try:
        bucket = TokenBucket(capacity=5, rate=10)
        started = time.perf_counter()
        decision = (await store.take([BucketTake("k", bucket)]))[0]
        assert decision.allowed and decision.remaining == pytest.approx(4.0, abs=0.01)
        server_seconds, micros = await client.time()
        updated = float(await client.hget("t:k", "u") or 0)
        assert abs(updated - (server_seconds + micros / 1e6)) < 1.0  # the Redis server's TIME, not ours
        ttl_ms = await client.pttl("t:k")
        elapsed_ms = (time.perf_counter() - started) * 1000  # a loaded machine may take a while to ask
        assert 1100 - elapsed_ms - 5 < ttl_ms <= 1100  # one token to refill at 10/s, plus a second of slack
    finally:
        await client.aclose()
        await store.aclose()


async def test_redis_store_is_atomic_under_concurrency(redis_server: RedisServer) -> None:
    store = RedisBucketStore.from_url(redis_server.url, max_connections=32, timeout=TIMEOUT)
    bucket = TokenBucket(capacity=50, rate=0.001)
    try:
        results = await asyncio.gather(*(store.take([BucketTake("shared", bucket)]) for _ in range(200)))
        assert sum(decisions[0].allowed for decisions in results) == 50
    finally:
        await store.aclose()


async def test_a_dead_redis_costs_milliseconds_and_the_store_says_so(redis_server: RedisServer) -> None:
    store = RedisBucketStore.from_url(redis_server.url, retry_interval=0.2)
    bucket = TokenBucket(capacity=5, rate=1)
    try:
        assert (await store.take([BucketTake("k", bucket)]))[0].allowed
        redis_server.stop()
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable):
            await store.take([BucketTake("k", bucket)])
        with pytest.raises(StoreUnavailable, match="not retrying yet"):
            await store.take([BucketTake("k", bucket)])
        assert time.perf_counter() - started < 0.3
        redis_server.start()
        await asyncio.sleep(0.25)
        assert (await store.take([BucketTake("k", bucket)]))[0].allowed  # reconnected by itself
    finally:
        await store.aclose()


async def test_give_back_returns_tokens_up_to_the_capacity(redis_server: RedisServer) -> None:
    for store in (MemoryBucketStore(), RedisBucketStore.from_url(redis_server.url, timeout=TIMEOUT)):
        take = BucketTake("g", TokenBucket(capacity=2, rate=0.001))
        try:
            await store.take([take], now=5.0)
            await store.give_back([take], now=5.0)
            await store.give_back([take], now=5.0)
            assert (await store.take([take], now=5.0))[0].remaining == pytest.approx(1.0)
        finally:
            await store.aclose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    capacity=st.integers(1, 20),
    rate=st.floats(0.05, 50, allow_nan=False),
    costs=st.lists(st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5]), min_size=1, max_size=60),
    gaps=st.lists(st.floats(0, 3, allow_nan=False), min_size=60, max_size=60),
    start=st.floats(0, 2e9, allow_nan=False),
)
async def test_memory_and_redis_admit_the_same_sequence(
    redis_server: RedisServer, capacity: int, rate: float, costs: list[float], gaps: list[float], start: float
) -> None:
    """Driven with the same explicit timestamps, the Lua script and the Python bucket agree on every
    decision, bit for bit (remaining tokens and delays included)."""
    bucket = TokenBucket(capacity=capacity, rate=rate)
    memory = MemoryBucketStore()
    redis_store = RedisBucketStore.from_url(redis_server.url, timeout=TIMEOUT)
    key = uuid.uuid4().hex
    now = start
    try:
        for cost, gap in zip(costs, gaps, strict=False):
            now += gap
            take = [BucketTake(key, bucket, min(cost, float(capacity)))]
            assert await redis_store.take(take, now=now) == await memory.take(take, now=now)
    finally:
        await redis_store.aclose()


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.sampled_from([1.0, 2.0, 3.0, 10.0, 1e9]),
    rate=st.sampled_from([0.001, 0.3, 1.0, 7.0, 1e9]),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.5, 1.0, 1.0 + 5e-10, 2.0, 3.0, 1e9]), st.floats(-2, 3, allow_nan=False)),
        min_size=1,
        max_size=40,
    ),
    start=st.floats(0, 2e9, allow_nan=False),
)
def test_the_memory_stores_inline_step_is_the_buckets_rule(
    capacity: float, rate: float, steps: list[tuple[float, float]], start: float
) -> None:
    """`MemoryBucketStore.decide_one` writes `TokenBucket.decide` out inline (the hot path): driven with the
    same costs and times (refusals, a clock going backwards, costs above the capacity), both give the same
    decisions bit for bit, and the store keeps the state the bucket says to keep."""
    bucket = TokenBucket(capacity=capacity, rate=rate)
    store = MemoryBucketStore()
    state = None
    now = start
    for cost, gap in steps:
        now += gap
        expected_state, expected = bucket.take(state, now, cost)
        decision = store.decide_one("k", bucket, cost, now)
        assert type(decision) is type(expected) and decision == expected
        assert [math_repr(x) for x in decision] == [math_repr(x) for x in expected]  # -0.0 and 0.0 told apart
        if expected.allowed:
            state = expected_state
        kept = store._buckets.get("k")
        if kept is None:  # forgotten once idle: it would be full by now, which is what `None` says
            assert state is None or bucket.decide(state.tokens, state.updated, now, 0.0).remaining == capacity
            state = None
        else:
            assert state is not None and (math_repr(kept[0]), kept[1]) == (math_repr(state.tokens), state.updated)


def math_repr(value: object) -> str:
    return repr(value)


def test_the_redis_store_is_still_importable_from_the_stores_module() -> None:
    from mcp_middleware.ratelimit import redis_store, stores

    assert stores.RedisBucketStore is redis_store.RedisBucketStore is RedisBucketStore
    assert stores.bucket_store_from_url is redis_store.bucket_store_from_url
    with pytest.raises(AttributeError):
        stores.NoSuchStore  # noqa: B018
