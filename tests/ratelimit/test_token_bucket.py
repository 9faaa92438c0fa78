"""The token bucket is exact: capacity, continuous refill at `rate`, cost per request, never more."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.ratelimit import BucketPolicy, BucketTake, MemoryBucketStore, TokenBucket


def admitted(bucket: TokenBucket, times: list[float], cost: float = 1.0) -> list[bool]:
    """Drive the bucket as the memory store does (idle eviction included) at the given times."""
    store = MemoryBucketStore()
    return [store.decide([BucketTake("k", bucket, cost)], now)[0].allowed for now in times]


def test_a_full_bucket_admits_its_capacity_at_once_then_refuses() -> None:
    assert admitted(TokenBucket(capacity=3, rate=1), [0.0] * 5) == [True, True, True, False, False]


def test_refill_is_continuous_and_keeps_fractions() -> None:
    # 30/minute with a burst of 10, one request a second for 30 s: 10 from the burst, then one every
    # two seconds. A bucket that refills in whole seconds (or drops the fraction on each admit) gets 20.
    outcomes = admitted(TokenBucket(capacity=10, rate=0.5), [float(t) for t in range(30)])
    assert sum(outcomes) == 24
    assert outcomes[:10] == [True] * 10


def test_refusal_says_how_long_until_the_cost_is_there() -> None:
    bucket = TokenBucket(capacity=2, rate=4)
    state, _ = bucket.take(None, 0.0)
    state, _ = bucket.take(state, 0.0)
    _, refused = bucket.take(state, 0.1)
    assert not refused.allowed
    assert refused.remaining == pytest.approx(0.4)
    assert refused.retry_after == pytest.approx(0.15)  # 0.6 tokens short at 4/s
    assert refused.reset_after == pytest.approx(0.4)  # 1.6 tokens to full at 4/s


def test_cost_takes_that_many_tokens() -> None:
    bucket = TokenBucket(capacity=10, rate=1)
    assert admitted(bucket, [0.0] * 4, cost=3) == [True, True, True, False]


def test_steady_rate_at_exactly_the_refill_rate_is_always_admitted() -> None:
    # 0.1 s x 10/s is not exactly 1.0 in floating point; the epsilon keeps this from flapping.
    times = [round(0.1 * n, 10) for n in range(1, 200)]
    assert all(admitted(TokenBucket(capacity=1, rate=10), [0.0, *times])[1:])


def test_a_clock_that_goes_backwards_refills_nothing() -> None:
    bucket = TokenBucket(capacity=1, rate=1)
    state, _ = bucket.take(None, 100.0)
    assert not bucket.take(state, 50.0)[1].allowed


def test_rate_strings_parse_through_limits() -> None:
    assert TokenBucket.parse("5/second", burst=10) == TokenBucket(capacity=10, rate=5)
    per_minute = TokenBucket.parse("120 per minute")
    assert per_minute.capacity == 120 and per_minute.rate == pytest.approx(2.0)


@pytest.mark.parametrize(("capacity", "rate"), [(0, 1), (1, 0), (-1, 1), (math.inf, 1), (1, math.nan)])
def test_nonsense_shapes_are_refused(capacity: float, rate: float) -> None:
    with pytest.raises(ValueError, match="must be a positive"):
        TokenBucket(capacity=capacity, rate=rate)


def test_a_policy_cost_above_the_capacity_could_never_pass_so_it_is_refused() -> None:
    with pytest.raises(ValueError, match="at most the capacity"):
        BucketPolicy("p", rate=1, capacity=2, cost=3)


@given(
    capacity=st.integers(1, 50),
    rate=st.floats(0.01, 100, allow_nan=False),
    cost=st.sampled_from([1.0, 1.0, 2.0, 0.5]),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200),
)
def test_admitted_never_exceeds_capacity_plus_rate_times_elapsed(
    capacity: int, rate: float, cost: float, gaps: list[float]
) -> None:
    """For ANY sequence of request times, over every interval [t_i, t_j] the admitted cost is at most
    capacity + rate x (t_j - t_i) (plus the per-request epsilon)."""
    if cost > capacity:
        cost = 1.0
    bucket = TokenBucket(capacity=capacity, rate=rate)
    times = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
    outcomes = admitted(bucket, times, cost)
    admitted_times = [t for t, ok in zip(times, outcomes, strict=True) if ok]
    for i, start in enumerate(admitted_times):
        for j in range(i, len(admitted_times)):
            taken = (j - i + 1) * cost
            assert taken <= capacity + rate * (admitted_times[j] - start) + 1e-6 * (j - i + 1)
