"""Every Redis-backed store a library user builds from a URL closes its connections with `aclose()`.

Against a real `redis-server`: each store is used (so it has connections, a pub/sub one included where it
listens), then closed; `CLIENT LIST` must show nothing of it left, and while it ran, its connections
carried its role's name. A storage handed to a limiter stays its owner's to close.
"""

from __future__ import annotations

import asyncio
import logging
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


async def _deaf_to_one_cancel() -> None:
    """An answer channel that takes a while to stop: it outlives the first cancellation."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        await asyncio.sleep(30)


def _stores(url: str) -> dict[str, RedisApprovalStore | RedisCacheStore]:
    return {"approval": RedisApprovalStore(url), "cache": RedisCacheStore(url, l1=MemoryCacheStore(max_entries=10))}


@pytest.mark.parametrize("kind", ["approval", "cache"])
async def test_closing_a_store_never_swallows_its_callers_cancellation(redis_server: RedisServer, kind: str) -> None:
    store = _stores(redis_server.url)[kind]
    store._listener = asyncio.get_running_loop().create_task(_deaf_to_one_cancel())
    closing = asyncio.get_running_loop().create_task(store.aclose())
    await asyncio.sleep(0.2)  # it waits for the listener now
    closing.cancel()  # shutdown's own deadline, say
    done, _ = await asyncio.wait({closing}, timeout=10)
    assert done and closing.cancelled()  # the caller's cancellation reached it (it used to be swallowed)
    store._listener.cancel()
    await store.redis.aclose()


@pytest.mark.parametrize("kind", ["approval", "cache"])
async def test_closing_a_store_is_bounded_by_a_channel_that_does_not_stop(
    redis_server: RedisServer, watcher: redis.Redis, kind: str
) -> None:
    store = _stores(redis_server.url)[kind]
    await store.redis.ping()  # a connection of its own, to be closed
    store.close_patience = 0.5
    store._listener = asyncio.get_running_loop().create_task(_deaf_to_one_cancel())
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(store.aclose(), timeout=20)  # returns after its patience, the client closed
    assert asyncio.get_running_loop().time() - started < 8  # not the listener's 30 s (nor wait_for's 20)
    assert not store._listener.done()  # it did not wait for it to end
    await closed(watcher)
    store._listener.cancel()


async def test_the_answer_channel_stops_once_closing_began_even_without_its_cancellation(
    redis_server: RedisServer,
) -> None:
    # redis-py may swallow a cancellation that meets a read's own timeout (redis/redis-py#2551), which
    # cannot be provoked on purpose: here the listener is never cancelled at all, only told the store closes.
    store = RedisApprovalStore(redis_server.url)
    await store.hold("n1", 60)  # starts the answer channel
    await asyncio.wait_for(store._subscribed.wait(), timeout=10)
    listener = store._listener
    assert listener is not None and not listener.done()
    store._closing = True
    done, _ = await asyncio.wait({listener}, timeout=10)  # its read times out each second, then it looks
    assert done and not listener.cancelled() and listener.exception() is None
    await store.aclose()


async def test_a_channel_closed_under_it_while_closing_stops_without_a_warning(redis_server: RedisServer) -> None:
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]  # (a handler of its own: others may stop propagation)
    logger = logging.getLogger("mcp_middleware.approval")
    logger.addHandler(handler)
    try:
        store = RedisApprovalStore(redis_server.url)
        await store.hold("n1", 60)
        await asyncio.wait_for(store._subscribed.wait(), timeout=10)
        listener = store._listener
        assert listener is not None
        store._closing = True
        await store.redis.aclose()  # its connection goes away under its read
        done, _ = await asyncio.wait({listener}, timeout=10)
        assert done and listener.exception() is None
        assert not [r for r in seen if "answer channel failed" in r.getMessage()]
    finally:
        logger.removeHandler(handler)
