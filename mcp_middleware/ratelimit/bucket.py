"""The token bucket: capacity, refill rate, and the exact arithmetic of one decision.

A bucket holds up to `capacity` tokens and refills continuously at `rate` tokens per
second; a request costing `cost` tokens is admitted when that many are there. Over any
interval of length `T` a bucket therefore admits at most `capacity + rate * T` tokens'
worth of requests, and never drops fractional refill (times are floats, not whole seconds).

The decision is a pure function of `(state, now, cost)`: the memory store calls it on a
monotonic clock, and the Redis store runs the same arithmetic, operation for operation, in
Lua on the Redis server's clock, so both admit the same sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import limits

__all__ = ["EPSILON", "BucketDecision", "BucketState", "TokenBucket"]

EPSILON = 1e-9
"""Tokens a request may fall short by and still pass: absorbs float rounding of `elapsed * rate`
(0.1 s * 10/s may come out a hair under one token). The Redis script uses the same value."""
_new: Any = tuple.__new__


class BucketState(NamedTuple):
    """Tokens left after the last decision, and when it was taken (seconds on the store's clock)."""

    tokens: float
    updated: float


class BucketDecision(NamedTuple):
    """The outcome of one take.

    `remaining` is the tokens left (after this request, if admitted); `retry_after` the
    seconds until `cost` tokens will be there (0 when admitted); `reset_after` the
    seconds until the bucket is full again.
    """

    allowed: bool
    remaining: float
    retry_after: float
    reset_after: float


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A bucket's shape: at most `capacity` tokens, refilled at `rate` tokens per second.

    >>> bucket = TokenBucket(capacity=2, rate=1)
    >>> state, first = bucket.take(None, now=10.0)
    >>> state, second = bucket.take(state, now=10.0)
    >>> state, third = bucket.take(state, now=10.0)
    >>> [first.allowed, second.allowed, third.allowed], third.retry_after
    ([True, True, False], 1.0)
    >>> bucket.take(state, now=11.0)[1].allowed     # one token refilled a second later
    True
    >>> TokenBucket.parse("5/second", burst=10)
    TokenBucket(capacity=10.0, rate=5.0)
    """

    capacity: float
    rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity", float(self.capacity))
        object.__setattr__(self, "rate", float(self.rate))
        if not (math.isfinite(self.capacity) and self.capacity > 0):
            raise ValueError(f"capacity must be a positive number, not {self.capacity!r}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number of tokens per second, not {self.rate!r}")

    @classmethod
    def parse(cls, rate: str, *, burst: float | None = None) -> TokenBucket:
        """A bucket from a `limits` rate string (`"5/second"`, `"300 per minute"`, `"1000/day"`).

        The capacity is `burst`, or the rate's amount when no burst is given.
        """
        item = limits.parse(rate)
        per_second = item.amount / item.get_expiry()
        return cls(capacity=float(item.amount) if burst is None else burst, rate=per_second)

    @property
    def window(self) -> float:
        """Seconds an empty bucket takes to fill: the `w` of the `RateLimit-Policy` field."""
        return self.capacity / self.rate

    def take(self, state: BucketState | None, now: float, cost: float = 1.0) -> tuple[BucketState, BucketDecision]:
        """Refill to `now`, then try to take `cost` tokens; `None` is a full bucket.

        Returns the state to keep if the request is admitted, and the decision. A clock that
        went backwards refills nothing (it never un-refills either).
        """
        decision = (
            self.decide(state[0], state[1], now, cost) if state is not None else self.decide(None, 0.0, now, cost)
        )
        return BucketState(decision.remaining, now), decision

    def decide(self, tokens: float | None, updated: float, now: float, cost: float) -> BucketDecision:
        """:meth:`take` on bare numbers (`tokens=None`: a full bucket), for stores on the hot path.

        The rule: `MemoryBucketStore.decide_one` and `LoneLimit.admit` write it out inline and the Redis script
        in Lua, all operation for operation (tests compare them with this one)."""
        capacity, rate = self.capacity, self.rate
        if tokens is None:
            tokens = capacity
        else:
            elapsed = now - updated
            if elapsed > 0:
                tokens = min(capacity, tokens + elapsed * rate)
        if tokens + EPSILON >= cost:
            tokens = max(0.0, tokens - cost)
            # tuple.__new__ builds the NamedTuple in C (its own __new__ is a Python frame): hot path.
            decision: BucketDecision = _new(BucketDecision, (True, tokens, 0.0, (capacity - tokens) / rate))
            return decision
        decision = _new(BucketDecision, (False, tokens, (cost - tokens) / rate, (capacity - tokens) / rate))
        return decision

    def give_back(self, state: BucketState | None, now: float, cost: float) -> BucketState | None:
        """Undo a take (another policy refused the request): refill to `now`, add `cost`, cap at capacity."""
        if state is None:
            return None
        refilled = self.decide(state[0], state[1], now, 0.0)
        return BucketState(min(self.capacity, refilled.remaining + cost), now)
