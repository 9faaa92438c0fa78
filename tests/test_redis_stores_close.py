"""Every Redis-backed store a library user builds from a URL closes its connections with `aclose()`.

Against a real `redis-server`: each store is used (so it has connections, a pub/sub one included where it
listens), then closed; `CLIENT LIST` must show nothing of it left, and while it ran, its connections
carried its role's name. A storage handed to a limiter stays its owner's to close.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from mcp_middleware.approval.store import CallbackAnswer, RedisApprovalStore
from mcp_middleware.cache import MemoryCacheStore, RedisCacheStore
from mcp_middleware.core import Era, McpRequest, RequestKind
from mcp_middleware.ratelimit import (
    BucketPolicy,
    QuotaPolicy,
    RateLimiter,
    RedisBucketStore,
    aclose_quota_storage,
    quota_storage_from_url,
)
from tests.conftest import RedisServer
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

CALL = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/call", id=1, params={"name": "echo"})
SCOPE: dict[str, Any] = {"type": "http", "client": ("192.0.2.1", 4000), "headers": []}


@pytest.fixture
def watcher(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as connection:
        yield connection


def others(watcher: redis.Redis) -> list[str]:
    """The names of every connection to the server but the watcher's own."""
    mine = watcher.client_id()
    return [str(entry["name"]) for entry in watcher.client_list() if int(entry["id"]) != mine]


async def closed(watcher: redis.Redis) -> None:
    await until(lambda: others(watcher) == [], patience=10)


async def test_the_bucket_store_closes_its_pool(redis_server: RedisServer, watcher: redis.Redis) -> None:
    store = RedisBucketStore.from_url(redis_server.url)
    limiter = RateLimiter([BucketPolicy("per-caller", rate=10, capacity=10)], store=store)
    assert (await limiter.check(SCOPE, CALL)).allowed
    assert others(watcher) == ["mcp-middleware:ratelimit"]
    await store.aclose()
    await closed(watcher)


async def test_a_limiter_closes_the_quota_storage_it_built_and_not_one_it_was_given(
    redis_server: RedisServer, watcher: redis.Redis
) -> None:
    policies = [QuotaPolicy("daily", limit="100/day")]
    built = RateLimiter(policies, quota_storage=redis_server.url)
    assert (await built.check(SCOPE, CALL)).allowed
    assert others(watcher) == ["mcp-middleware:quota"]
    await built.aclose()
    await closed(watcher)

    shared = quota_storage_from_url(redis_server.url)
    given = [RateLimiter(policies, quota_storage=shared, namespace=f"s{n}:") for n in range(2)]
    for limiter in given:
        assert (await limiter.check(SCOPE, CALL)).allowed
        await limiter.aclose()  # its owner closes it, once, after every limiter on it is done
    assert others(watcher) == ["mcp-middleware:quota"]
    await aclose_quota_storage(shared)
    await closed(watcher)


async def test_the_cache_store_closes_its_invalidation_channel_and_client(
    redis_server: RedisServer, watcher: redis.Redis
) -> None:
    store = RedisCacheStore(redis_server.url, l1=MemoryCacheStore(max_entries=10))
    await store.get(["k"])  # starts the L1's invalidation listener (a pub/sub connection)
    await until(lambda: len(others(watcher)) == 2, patience=10)
    assert set(others(watcher)) == {"mcp-middleware:cache"}
    await store.aclose()
    await closed(watcher)


async def test_the_approval_store_closes_its_answer_channel_and_pool(
    redis_server: RedisServer, watcher: redis.Redis
) -> None:
    store = RedisApprovalStore(redis_server.url)
    assert await store.spend("n1", 60)
    await store.hold("n2", 60)  # starts the answer channel (a pub/sub connection)
    await store.deliver("n2", CallbackAnswer(True))
    assert await store.release("n2") == CallbackAnswer(True)
    await until(lambda: len(others(watcher)) >= 2, patience=10)
    assert set(others(watcher)) == {"mcp-middleware:approval"}
    await store.aclose()
    await closed(watcher)


async def test_a_client_name_in_the_url_wins(redis_server: RedisServer, watcher: redis.Redis) -> None:
    store = RedisBucketStore.from_url(f"{redis_server.url}?client_name=edge-7")
    await store.check()
    assert others(watcher) == ["edge-7"]
    await store.aclose()
    await closed(watcher)
