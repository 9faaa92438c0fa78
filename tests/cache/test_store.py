"""Stores: the memory L1 is bounded by entries, bytes and entry size; the Redis L2 is shared by instances."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_middleware.cache import CacheEntry, MemoryCacheStore, RedisCacheStore
from mcp_middleware.cache.keys import entry_tags, invalidation_tag
from tests.cache.backends import CountingApp, PrincipalFromHeader, build_backend, connect_as
from tests.cache.helpers import modern_post
from tests.conftest import ERAS, Era, require

pytestmark = pytest.mark.anyio


def entry(size: int = 10, ttl: float = 60) -> CacheEntry:
    now = time.time()
    return CacheEntry(b"{" + b" " * max(0, size - 2) + b"}", now + ttl, now + ttl, stored_at=now)


def tags(method: str = "tools/list", partition: str = "*") -> tuple[str, ...]:
    return entry_tags("/mcp", method, partition)


def test_memory_store_is_bounded_by_entries() -> None:
    store = MemoryCacheStore(max_entries=3, max_bytes=1 << 20)
    for i in range(5):
        assert store.put(f"k{i}", entry(), tags())
    assert len(store) == 3
    assert store.lookup(["k0"]) is None and store.lookup(["k4"]) is not None  # least recently used went first


def test_memory_store_is_bounded_by_bytes_and_refuses_oversized_entries() -> None:
    store = MemoryCacheStore(max_entries=1000, max_bytes=10_000, max_entry_bytes=4_000)
    assert not store.put("huge", entry(5_000), tags())
    for i in range(10):
        assert store.put(f"k{i}", entry(2_000), tags())
    assert store.bytes <= 10_000 and len(store) == 4  # 2 000 bytes + overhead each


def test_memory_store_drops_expired_entries() -> None:
    store = MemoryCacheStore()
    store.put("old", entry(ttl=-1), tags())
    assert store.lookup(["old"]) is None and len(store) == 0


def test_memory_store_invalidates_by_tag() -> None:
    store = MemoryCacheStore()
    store.put("a", entry(), tags("tools/list", "p1"))
    store.put("b", entry(), tags("tools/list", "p2"))
    store.put("c", entry(), tags("prompts/list", "p1"))
    assert store.drop([invalidation_tag(partition="p1")]) == 2
    assert store.lookup(["b"]) is not None
    assert store.drop([invalidation_tag("/mcp", "tools/list")]) == 1 and len(store) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "drop"]), st.integers(0, 12), st.sampled_from(["p1", "p2", "*"])),
        max_size=60,
    )
)
def test_tag_index_never_outlives_its_entries(operations: list[tuple[str, int, str]]) -> None:
    """Under any mix of writes, evictions and invalidations, the index names only live entries, within bounds."""
    store = MemoryCacheStore(max_entries=5, max_bytes=5 * 512)
    for op, n, partition in operations:
        if op == "put":
            store.put(f"k{n}", entry(n * 40), tags("tools/list" if n % 2 else "prompts/list", partition))
        else:
            store.drop([invalidation_tag(partition=partition)])
        indexed = set().union(*store._index.values()) if store._index else set()
        assert indexed == set(store._entries)
        assert len(store) <= 5 and store.bytes <= 5 * 512


def test_entries_round_trip_through_their_redis_encoding() -> None:
    original = CacheEntry(b'{"tools":[]}', 1.5, 2.5, True, True, True, 1.0)
    assert CacheEntry.decode(original.encode()) == original


async def test_redis_store_shares_and_invalidates(redis_server: Any) -> None:
    require("redis", "the Redis store")
    first = RedisCacheStore(redis_server.url, prefix="t1")
    second = RedisCacheStore(redis_server.url, prefix="t1")
    try:
        assert await first.set("a", entry(), tags("tools/list", "p1"))
        assert await first.set("b", entry(), tags("prompts/list", "p1"))
        found = await second.get(["missing", "a"])
        assert found is not None and found[0] == "a"
        assert await second.invalidate([invalidation_tag("/mcp", "tools/list")]) == 1
        assert await first.get(["a"]) is None and await first.get(["b"]) is not None
        assert not await first.set("big", entry(2 << 20), tags())  # over the entry size cap
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize("era", ERAS)
async def test_instances_share_entries_through_redis(era: Era, redis_server: Any, serve: Any) -> None:
    """Two cache instances in front of two replicas of a backend: the second answers from what the first stored."""
    require("redis", "the Redis store")
    from mcp_middleware.cache import ResponseCacheMiddleware

    counters = []
    urls = []
    for _ in range(2):
        counter = CountingApp(build_backend().streamable_http_app())
        store = RedisCacheStore(redis_server.url, l1=MemoryCacheStore(), l1_ttl=0.5)
        counters.append(counter)
        urls.append(serve(PrincipalFromHeader(ResponseCacheMiddleware(counter, store=store))).mcp_url)
    async with connect_as(urls[0], era, "alice") as client:
        await client.list_resources()
    async with connect_as(urls[1], era, "alice") as client:
        await client.list_resources()
        await client.list_resources()
    assert counters[0].calls["resources/list"] == 1
    assert counters[1].calls["resources/list"] == 0  # a hit from the shared store (then from its L1)


async def test_a_redis_outage_is_a_miss_not_a_failure(redis_server: Any, serve: Any) -> None:
    require("redis", "the Redis store")
    from mcp_middleware.cache import ResponseCacheMiddleware

    counter = CountingApp(build_backend().streamable_http_app())
    store = RedisCacheStore(redis_server.url)
    served = serve(ResponseCacheMiddleware(counter, store=store))
    async with httpx2.AsyncClient() as http:
        assert (await modern_post(http, served.mcp_url, "tools/list", 1)).status_code == 200
        assert (await modern_post(http, served.mcp_url, "tools/list", 2)).headers["x-mcp-cache"] == "hit"
        redis_server.stop()
        down = [await modern_post(http, served.mcp_url, "tools/list", i) for i in (3, 4)]
        redis_server.start()
        back = [await modern_post(http, served.mcp_url, "tools/list", i) for i in (5, 6)]
    assert [r.status_code for r in down] == [200, 200] and [r.json()["id"] for r in down] == [3, 4]
    assert [r.headers["x-mcp-cache"] for r in down] == ["miss", "miss"]
    assert [r.headers["x-mcp-cache"] for r in back] == ["miss", "hit"]  # the restarted Redis is empty
    assert counter.calls["tools/list"] == 4


async def test_an_invalidation_on_one_instance_reaches_the_other_through_redis(redis_server: Any, serve: Any) -> None:
    """A list_changed seen by instance A drops the entry instance B would answer from (no L1: nothing to go stale)."""
    require("redis", "the Redis store")
    from mcp_middleware.cache import ResponseCacheMiddleware
    from tests.cache.helpers import CachedStack
    from tests.support.decisions import DecisionRecorder

    stacks = []
    for _ in range(2):
        counter = CountingApp(build_backend().streamable_http_app())
        cache = ResponseCacheMiddleware(counter, store=RedisCacheStore(redis_server.url))
        log = DecisionRecorder(cache)
        stacks.append(CachedStack(serve(PrincipalFromHeader(log)), cache, counter, log, None))
    first, second = stacks
    async with connect_as(first.url, "modern", "alice") as a, connect_as(second.url, "modern", "alice") as b:
        await a.list_tools()
        await b.list_tools()
        assert second.calls["tools/list"] == 0
        async with a.listen(tools_list_changed=True) as subscription:
            await a.call_tool("add_tool", {"name": "shared_tool"})
            await subscription.__anext__()
        await b.list_tools()
    assert second.calls["tools/list"] == 1  # B asked its backend again


async def test_an_invalidation_empties_the_other_instances_l1_at_once(redis_server: Any, serve: Any) -> None:
    """With an L1 in front of Redis, a published invalidation purges every instance's L1 (not after l1_ttl)."""
    require("redis", "the Redis store")
    from mcp_middleware.cache import ResponseCacheMiddleware
    from tests.cache.helpers import CachedStack
    from tests.support.decisions import DecisionRecorder
    from tests.support.waiting import until

    stacks = []
    for _ in range(2):
        counter = CountingApp(build_backend().streamable_http_app())
        store = RedisCacheStore(redis_server.url, l1=MemoryCacheStore(), l1_ttl=60)
        cache = ResponseCacheMiddleware(counter, store=store)
        log = DecisionRecorder(cache)
        stacks.append(CachedStack(serve(PrincipalFromHeader(log)), cache, counter, log, None))
    first, second = stacks
    second_store: RedisCacheStore = second.cache.store  # type: ignore[assignment]
    import redis.asyncio as aioredis

    async with httpx2.AsyncClient() as http, aioredis.from_url(redis_server.url) as probe:
        await modern_post(http, first.url, "tools/list", 1)
        for _ in range(250):  # the first instance's write lands after its answer (a loaded machine: later)
            if await probe.dbsize():
                break
            await anyio.sleep(0.02)
        await modern_post(http, second.url, "tools/list", 2)  # from Redis; starts the listener
        await until(lambda: second_store._l1_live)
        await modern_post(http, second.url, "tools/list", 3)  # from Redis, now copied into the L1
        assert second_store.l1 is not None and len(second_store.l1) == 1
        epoch = second_store._l1_epoch
        assert await first.invalidate(method="tools/list") >= 1
        await until(lambda: second_store._l1_epoch != epoch)
        after = await modern_post(http, second.url, "tools/list", 4)
    assert after.headers["x-mcp-cache"] == "miss"
    assert second.calls["tools/list"] == 1


async def test_a_redis_outage_and_its_recovery_are_logged_once_each(redis_server: Any, caplog: Any) -> None:
    """However many lookups and writes meet a dead Redis: one WARNING when it goes, one when it is back,
    naming the store by its URL without the password."""
    import logging

    require("redis", "the Redis store")
    from mcp_middleware.cache.redis_store import _without_password

    assert _without_password(redis_server.url.replace("redis://", "redis://user:s3cret@")) == redis_server.url
    store = RedisCacheStore(redis_server.url)
    try:
        assert await store.set("k", entry(), tags())
        with caplog.at_level(logging.DEBUG, logger="mcp_middleware.cache"):
            redis_server.stop()
            for _ in range(3):
                assert await store.get(["k"]) is None
                assert not await store.set("k", entry(), tags())
                assert await store.invalidate(tags()) == 0
            redis_server.start()
            for _ in range(3):
                assert await store.set("k", entry(), tags())
                assert await store.get(["k"]) is not None
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        assert len(lines) == 2, lines
        assert lines[0][0] == lines[1][0] == logging.WARNING
        assert lines[0][1].startswith(f"cache store {redis_server.url} unavailable (lookup: ")
        assert lines[1][1] == f"cache store {redis_server.url} recovered: caching again"
    finally:
        await store.aclose()


async def test_the_redis_store_reports_its_l1_evictions(redis_server: Any) -> None:
    require("redis", "the Redis store")
    store = RedisCacheStore(redis_server.url, prefix="evict", l1=MemoryCacheStore(max_entries=1, max_bytes=1 << 20))
    try:
        for key in ("a", "b", "c"):
            assert await store.set(key, entry(), tags())
        evicted = 0

        async def read_all() -> bool:
            nonlocal evicted
            for key in ("a", "b", "c"):  # each Redis read is copied into the one-entry L1 once it listens
                await store.get([key])
            evicted += store.take_evictions()
            return evicted >= 2

        for _ in range(100):
            if await read_all():
                break
            await anyio.sleep(0.02)
        assert evicted >= 2  # three reads through a one-entry L1 push out two
        assert store.take_evictions() == 0
    finally:
        await store.aclose()
