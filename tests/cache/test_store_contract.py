"""The cache store contract, run against every store kind: memory and a real `redis-server`.

Each store is built by :func:`cache_store_from_url` from its URL, as the gateway builds it; the same
assertions hold for all of them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from mcp_middleware.cache import (
    CacheEntry,
    CacheStore,
    CacheStoreUnavailable,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCacheMiddleware,
    cache_store_from_url,
)
from mcp_middleware.cache.keys import entry_tags, invalidation_tag
from tests.conftest import free_port, require, require_binary
from tests.support.redis_unix import redis_on_unix_socket

pytestmark = pytest.mark.anyio

KINDS = ["memory", "redis"]


@pytest.fixture(params=KINDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    if request.param == "memory":
        made = cache_store_from_url("memory://", max_entries=100, max_bytes=1 << 20, max_entry_bytes=64 << 10)
    else:
        require("redis", "the Redis cache store")
        url = request.getfixturevalue("redis_server").url  # fails in CI without redis-server
        made = cache_store_from_url(url, max_entry_bytes=64 << 10)
    try:
        yield made
    finally:
        await made.aclose()


def entry(body: bytes = b'{"tools":[]}', ttl: float = 60, stale: float = 0) -> CacheEntry:
    now = time.time()
    return CacheEntry(body, now + ttl, now + ttl + stale, ttl_field=True, public=True, stored_at=now)


def tags(method: str = "tools/list", partition: str = "p1", uri: str | None = None) -> tuple[str, ...]:
    return entry_tags("/mcp", method, partition, uri)


async def test_a_reachable_store_passes_its_check(store: CacheStore) -> None:
    assert await store.check() is None


async def test_evictions_count_only_room_made(store: CacheStore) -> None:
    """A store with room evicts nothing: replacing, expiring and invalidating entries are not evictions."""
    assert await store.set("a", entry(), tags())
    assert await store.set("a", entry(b'{"tools":[1]}'), tags())
    assert await store.set("gone", entry(ttl=0.01), tags("prompts/list"))
    assert await store.invalidate([invalidation_tag("/mcp", "tools/list")]) >= 1
    await anyio.sleep(0.05)
    assert await store.get(["gone"]) is None
    assert store.take_evictions() == 0


async def test_get_returns_the_first_present_key_with_its_entry_intact(store: CacheStore) -> None:
    stored = entry(b'{"tools":[{"name":"\xc3\xa9"}]}')
    assert await store.set("b", stored, tags())
    assert await store.set("c", entry(b"{}"), tags())
    found = await store.get(["a", "b", "c"])
    assert found is not None and found[0] == "b"
    assert found[1].result == stored.result and found[1].fresh_until == pytest.approx(stored.fresh_until)
    assert (found[1].ttl_field, found[1].sse, found[1].public) == (True, False, True)
    assert await store.get(["missing"]) is None and await store.get([]) is None


async def test_an_entry_past_its_stale_time_is_never_served(store: CacheStore) -> None:
    assert await store.set("short", entry(ttl=0.05), tags())
    assert await store.get(["short"]) is not None
    await anyio.sleep(0.15)
    assert await store.get(["short"]) is None


async def test_an_expired_entry_is_not_kept(store: CacheStore) -> None:
    kept = await store.set("dead", entry(ttl=-1), tags())
    assert await store.get(["dead"]) is None
    assert kept in (True, False)  # a store may refuse it outright or drop it at once; it never serves it


async def test_an_oversized_entry_is_not_kept(store: CacheStore) -> None:
    assert not await store.set("big", entry(b"x" * (128 << 10)), tags())
    assert await store.get(["big"]) is None


async def test_a_set_replaces_the_entry_and_its_tags(store: CacheStore) -> None:
    assert await store.set("k", entry(b'{"v":1}'), tags("tools/list"))
    assert await store.set("k", entry(b'{"v":2}'), tags("prompts/list"))
    found = await store.get(["k"])
    assert found is not None and found[1].result == b'{"v":2}'
    assert await store.invalidate([invalidation_tag("/mcp", "prompts/list")]) == 1
    assert await store.get(["k"]) is None


async def test_invalidate_drops_by_method_partition_mount_and_uri(store: CacheStore) -> None:
    assert await store.set("tools-p1", entry(), tags("tools/list", "p1"))
    assert await store.set("tools-p2", entry(), tags("tools/list", "p2"))
    assert await store.set("prompts-p1", entry(), tags("prompts/list", "p1"))
    assert await store.set("file", entry(), tags("resources/read", "p1", uri="file:///a b?c#d"))
    assert await store.invalidate([invalidation_tag("/mcp", "tools/list", "p2")]) == 1
    assert await store.get(["tools-p1"]) is not None and await store.get(["tools-p2"]) is None
    assert await store.invalidate([invalidation_tag("/mcp", uri="file:///a b?c#d")]) == 1
    assert await store.get(["file"]) is None
    assert await store.invalidate([invalidation_tag("/other")]) == 0  # another mount's tag drops nothing
    assert await store.invalidate([invalidation_tag("/mcp")]) == 2
    assert await store.get(["tools-p1", "prompts-p1"]) is None
    assert await store.invalidate([invalidation_tag("/mcp")]) == 0


async def test_hostile_keys_never_share_an_entry(store: CacheStore) -> None:
    keys = ["a", "a:", ":a", "a\x00b", "a\nb", "é", "e\u0301", "{mcp-cache}:e:a", "*", "x" * 10_000]
    for i, key in enumerate(keys):
        assert await store.set(key, entry(b'{"i":%d}' % i), tags())
    for i, key in enumerate(keys):
        found = await store.get([key])
        assert found is not None and found[1].result == b'{"i":%d}' % i


async def test_the_sync_view_shares_the_store_s_entries(store: CacheStore) -> None:
    sync = store.sync
    if isinstance(store, RedisCacheStore):
        assert sync is None  # a lookup may be a round trip
        return
    assert sync is not None
    assert sync.put("s", entry(), tags())
    found = await store.get(["s"])
    assert found is not None and found[0] == "s"
    assert await store.set("t", entry(), tags("prompts/list"))
    assert sync.lookup(["t"]) is not None
    assert sync.drop([invalidation_tag("/mcp", "prompts/list")]) == 1
    assert await store.get(["t"]) is None


async def test_the_middleware_uses_the_sync_view_only_of_a_store_that_has_one() -> None:
    class Counting(MemoryCacheStore):
        gets = 0

        async def get(self, keys: Any) -> Any:
            Counting.gets += 1
            return await super().get(keys)

    assert Counting().sync is None and MemoryCacheStore().sync is not None

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached: the test reads the wiring
        raise AssertionError

    assert ResponseCacheMiddleware(app, store=Counting())._sync is None
    plain = MemoryCacheStore()
    assert ResponseCacheMiddleware(app, store=plain)._sync is plain


async def test_check_raises_once_redis_is_gone_and_passes_when_it_is_back(redis_server: Any) -> None:
    require("redis", "the Redis cache store")
    store = cache_store_from_url(redis_server.url, timeout=0.5)
    try:
        await store.check()
        redis_server.stop()
        started = time.perf_counter()
        with pytest.raises(CacheStoreUnavailable, match="Redis cache store unreachable"):
            await store.check()
        assert time.perf_counter() - started < 2.0
        assert await store.get(["k"]) is None  # requests still pass: a lookup misses
        redis_server.start()
        await store.check()
    finally:
        await store.aclose()


async def test_check_raises_for_a_port_nobody_listens_on() -> None:
    require("redis", "the Redis cache store")
    store = cache_store_from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(CacheStoreUnavailable):
            await store.check()
    finally:
        await store.aclose()


async def test_a_redis_unix_socket_url_reaches_a_real_server() -> None:
    require("redis", "the Redis cache store")
    with redis_on_unix_socket(require_binary("redis-server", "Redis store tests")) as path:
        store = cache_store_from_url(f"redis+unix://{path}?db=0")
        try:
            assert isinstance(store, RedisCacheStore)
            await store.check()
            assert await store.set("u", entry(), tags())
            assert await store.get(["u"]) is not None
        finally:
            await store.aclose()


def test_the_factory_builds_the_store_its_url_names() -> None:
    require("redis", "the Redis cache store")
    memory = cache_store_from_url("memory://", max_entries=7, max_bytes=1 << 20)
    assert isinstance(memory, MemoryCacheStore) and (memory.max_entries, memory.max_bytes) == (7, 1 << 20)
    tls = cache_store_from_url("rediss://:secret@127.0.0.1:6380/2", prefix="p")
    assert isinstance(tls, RedisCacheStore) and tls.prefix == "{p}:"
    assert "secret" not in tls.shown
    pool = tls.redis.connection_pool
    assert pool.connection_class.__name__ == "SSLConnection" and pool.connection_kwargs["db"] == 2


@pytest.mark.parametrize(
    "url",
    ["", "memory", "memory://somewhere", "memcached://127.0.0.1", "http://127.0.0.1:6379", "127.0.0.1:6379"],
)
def test_the_factory_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="cache store URL must be"):
        cache_store_from_url(url)
