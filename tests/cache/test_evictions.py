"""Capacity evictions: a store that drops entries to make room says so, as a decision and a metric."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from mcp_middleware.cache import CacheEntry, MemoryCacheStore, ResponseCacheMiddleware
from mcp_middleware.tracing import TracingMiddleware
from tests.cache.backends import CountingApp, PrincipalFromHeader, build_backend, connect_as
from tests.conftest import ERAS, Era
from tests.support.decisions import DecisionRecorder

pytestmark = pytest.mark.anyio

EVICTIONS = "mcp.middleware.cache.evictions"


def counter_total(reader: InMemoryMetricReader, name: str) -> float:
    data = reader.get_metrics_data()
    return sum(
        point.value
        for resource in (data.resource_metrics if data else ())
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    )


@pytest.mark.parametrize("era", ERAS)
async def test_a_full_store_records_each_eviction_and_the_metric_counts_them(era: Era, serve: Any) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # Two entries fit (each costs at least max_bytes / max_entries): the third distinct answer evicts one.
    store = MemoryCacheStore(max_entries=2, max_bytes=2 << 20)
    counter = CountingApp(build_backend().streamable_http_app())
    cache = ResponseCacheMiddleware(counter, store=store, legacy_scope="public")
    log = DecisionRecorder(cache)
    served = serve(TracingMiddleware(PrincipalFromHeader(log), meter_provider=provider))
    async with connect_as(served.mcp_url, era, "alice") as client:
        await client.list_tools()
        await client.list_prompts()
        await client.list_resources()
        await client.list_resource_templates()
        await client.read_resource("demo://counter")

    decisions = log.of("cache")
    stored = [a for outcome, a in decisions if outcome == "miss" and a.get("stored") is True]
    evicted = [a["count"] for outcome, a in decisions if outcome == "evict"]
    assert len(stored) >= 5  # every distinct answer was stored, each pushing out the least recently used
    assert evicted == [1] * (len(stored) - 2)
    assert len(store) == 2
    assert counter_total(reader, EVICTIONS) == sum(evicted)
    provider.shutdown()


async def test_nothing_is_recorded_while_everything_fits(serve: Any) -> None:
    counter = CountingApp(build_backend().streamable_http_app())
    cache = ResponseCacheMiddleware(counter, store=MemoryCacheStore(max_entries=100))
    log = DecisionRecorder(cache)
    served = serve(PrincipalFromHeader(log))
    async with connect_as(served.mcp_url, "modern", "alice") as client:
        await client.list_tools()
        await client.list_prompts()
        await client.list_tools()
    assert "evict" not in log.outcomes("cache")
    assert ("miss", True) in [(o, a.get("stored")) for o, a in log.of("cache")]


def test_the_memory_store_counts_capacity_evictions_only() -> None:
    store = MemoryCacheStore(max_entries=2, max_bytes=2 << 20)
    now = time.time()
    fresh = CacheEntry(b"{}", fresh_until=now + 60, stale_until=now + 60)
    assert store.put("a", fresh, ("t:a",)) and store.put("b", fresh, ("t:b",))
    assert store.put("a", fresh, ("t:a",))  # a replacement makes no room
    assert store.drop(["t:b"]) == 1  # an invalidation is not an eviction
    assert store.take_evictions() == 0
    assert store.put("c", fresh, ()) and store.put("d", fresh, ())
    assert store.put("e", fresh, ())
    assert store.take_evictions() == 2  # "a", then "c" made room
    assert store.take_evictions() == 0  # taken: counted once
    expired = CacheEntry(b"{}", fresh_until=now - 1, stale_until=now - 1)
    store.put("f", expired, ())
    assert store.take_evictions() == 1
    assert store.lookup(["f"]) is None  # dropped as expired: not an eviction
    store.clear()  # emptied (as a Redis store's L1 is on every invalidation): not evictions either
    assert store.take_evictions() == 0
