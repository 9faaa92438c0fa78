"""The limiter's decision: every matching policy must admit, refusals charge nothing, stores may fail."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mcp_middleware.core import Era, McpRequest, RequestKind
from mcp_middleware.ratelimit import (
    BucketDecision,
    BucketPolicy,
    BucketTake,
    MemoryBucketStore,
    QuotaPolicy,
    RateLimiter,
    StoreUnavailable,
    global_key,
)

pytestmark = pytest.mark.anyio


def request(method: str, name: str | None = None) -> McpRequest:
    params = {"name": name} if name else {}
    return McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method=method, id=1, params=params)


def scope(peer: str = "192.0.2.1") -> dict[str, Any]:
    return {"type": "http", "client": (peer, 1234), "headers": []}


async def test_a_quota_refusal_takes_nothing_from_the_buckets() -> None:
    limiter = RateLimiter(
        [
            BucketPolicy("burst", selector="*", rate=0.001, capacity=10),
            QuotaPolicy("calls", selector="tools/call", limit="2/day"),
        ]
    )
    verdicts = [await limiter.check(scope(), request("tools/call", "echo")) for _ in range(5)]
    assert [v.allowed for v in verdicts] == [True, True, False, False, False]
    assert verdicts[2].policy == "calls"
    listed = await limiter.check(scope(), request("tools/list"))
    assert listed.states[0].policy == "burst" and listed.states[0].remaining == 7  # 10 - 2 calls - this one


async def test_policies_that_do_not_match_are_not_consulted() -> None:
    limiter = RateLimiter([BucketPolicy("search", selector="tools/call:search_*", rate=0.001, capacity=1)])
    for _ in range(3):
        verdict = await limiter.check(scope(), request("tools/call", "echo"))
        assert verdict.allowed and verdict.states == ()
    assert (await limiter.check(scope(), request("tools/call", "search_docs"))).allowed
    assert not (await limiter.check(scope(), request("tools/call", "search_web"))).allowed  # one bucket for search_*


async def test_a_global_policy_is_shared_by_every_caller() -> None:
    limiter = RateLimiter([BucketPolicy("server", rate=0.001, capacity=2, key=global_key)])
    peers = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [(await limiter.check(scope(p), request("ping"))).allowed for p in peers] == [True, True, False]


async def test_a_quota_that_loses_a_race_gives_the_bucket_tokens_back() -> None:
    class LosesTheRace(MemoryBucketStore):
        returned: ClassVar[list[BucketTake]] = []

        async def give_back(self, takes: Sequence[BucketTake], *, now: float | None = None) -> None:
            self.returned.extend(takes)
            await super().give_back(takes, now=now)

    store = LosesTheRace()
    limiter = RateLimiter([BucketPolicy("burst", rate=0.001, capacity=5), QuotaPolicy("q", limit="1/day")], store=store)
    strategy = limiter._strategies["fixed-window"]
    original_test = strategy.test

    async def always_passes(*args: Any, **kwargs: Any) -> bool:  # another instance counts in between
        return True

    strategy.test = always_passes  # type: ignore[method-assign]
    assert (await limiter.check(scope(), request("ping"))).allowed
    refused = await limiter.check(scope(), request("ping"))
    strategy.test = original_test  # type: ignore[method-assign]
    assert not refused.allowed and refused.policy == "q"
    assert len(store.returned) == 1
    (key,) = list(store)
    assert (await store.take([BucketTake(key, limiter._buckets[0].bucket)]))[0].remaining == pytest.approx(3.0)


class DeadStore:
    """A bucket store whose backend is down (the Redis outage itself is tested in test_redis.py)."""

    sync = None

    async def take(self, takes: Sequence[BucketTake], *, now: float | None = None) -> list[BucketDecision]:
        raise StoreUnavailable("down")

    async def give_back(self, takes: Sequence[BucketTake], *, now: float | None = None) -> None:
        raise StoreUnavailable("down")

    async def check(self) -> None:
        raise StoreUnavailable("down")

    async def aclose(self) -> None:
        return None


async def test_fail_open_admits_logs_once_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    errors: list[Exception] = []
    limiter = RateLimiter(
        [BucketPolicy("p", rate=1, capacity=1)],
        store=DeadStore(),
        on_store_error=errors.append,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    with caplog.at_level(logging.WARNING, logger="mcp_middleware.ratelimit"):
        verdicts = [await limiter.check(scope(), request("ping")) for _ in range(3)]
    assert all(v.allowed and v.degraded for v in verdicts)
    assert limiter.store_failures == 3 and len(errors) == 3
    assert [r.getMessage() for r in caplog.records].count(
        "rate-limit store unavailable for this server, admitting requests (fail-open): down"
    ) == 1
    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = [m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert metric.name == "mcp_middleware.ratelimit.store_errors"
    assert metric.data.data_points[0].value == 3  # type: ignore[union-attr]


class FlakyStore(MemoryBucketStore):
    """A memory store whose outage the test switches on and off."""

    down = False

    async def take(self, takes: Sequence[BucketTake], *, now: float | None = None) -> list[BucketDecision]:
        if self.down:
            raise StoreUnavailable("connection refused")
        return await super().take(takes, now=now)


@pytest.mark.parametrize("failure", ["open", "closed"])
async def test_an_outage_and_its_recovery_are_logged_once_each_naming_the_server(
    failure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore()
    limiter = RateLimiter(
        [BucketPolicy("p", rate=1000, capacity=1000)], store=store, namespace="github", failure=failure
    )
    with caplog.at_level(logging.DEBUG, logger="mcp_middleware.ratelimit"):
        for down in (False, True, True, True, False, False, False, True, False):
            store.down = down
            verdict = await limiter.check(scope(), request("ping"))
            assert verdict.degraded is down and verdict.allowed is (not down or failure == "open")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    action = "admitting requests (fail-open)" if failure == "open" else "refusing requests (fail-closed)"
    outage = (logging.WARNING, f"rate-limit store unavailable for 'github', {action}: connection refused")
    recovery = (logging.WARNING, "rate-limit store recovered for 'github': limits are enforced again")
    assert lines == [outage, recovery, outage, recovery]  # two outages of several requests each


async def test_fail_closed_refuses() -> None:
    limiter = RateLimiter([BucketPolicy("p", rate=1, capacity=1)], store=DeadStore(), failure="closed")
    verdict = await limiter.check(scope(), request("ping"))
    assert not verdict.allowed and verdict.degraded


def test_policy_names_must_be_unique_and_header_safe() -> None:
    with pytest.raises(ValueError, match="unique"):
        RateLimiter([BucketPolicy("p", rate=1), BucketPolicy("p", rate=2)])
    with pytest.raises(ValueError, match="policy name"):
        BucketPolicy('bad"name', rate=1)
    with pytest.raises(ValueError, match="failure"):
        RateLimiter([], failure="sometimes")  # type: ignore[arg-type]
