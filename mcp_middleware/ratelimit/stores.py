"""Where buckets live: a small protocol and a bounded in-memory store (the shared Redis store: `redis_store`).

Every store decides a whole set of buckets at once, all or nothing: a request that must
pass several bucket policies is admitted only if every bucket has its cost, and then all
are charged; otherwise none is. So a refused request consumes nothing anywhere.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from mcp_middleware.core.errors import McpMiddlewareError

from .bucket import EPSILON, BucketDecision, TokenBucket

__all__ = ["BucketStore", "BucketTake", "MemoryBucketStore", "StoreUnavailable", "SyncBucketStore"]

_new: Any = tuple.__new__

Clock = Callable[[], float]


class BucketTake(NamedTuple):
    """One bucket to charge: its storage key, its shape, and what the request costs."""

    key: str
    bucket: TokenBucket
    cost: float = 1.0


class StoreUnavailable(McpMiddlewareError):
    """The store could not decide (Redis down or slow); the limiter fails open or closed."""


class SyncBucketStore(Protocol):
    """A store's decision without a coroutine: what `take` awaits, for a store that needs no I/O."""

    def decide(self, takes: Sequence[BucketTake], now: float | None = None) -> list[BucketDecision]: ...


@runtime_checkable
class BucketStore(Protocol):
    """Where bucket state lives.

    `take` decides all `takes` atomically: either every bucket had its cost and all were
    charged (every decision `allowed`), or none was charged (the decisions say which
    buckets were short, and by how long). `now` injects the clock for tests; stores use
    their own clock otherwise (the memory store a monotonic clock, Redis its server
    clock). Raise :class:`StoreUnavailable` when the decision cannot be made.

    `sync` is the same decision without a coroutine when the store can make it without I/O
    (the memory store), else None: the limiter calls it instead of awaiting `take`, which
    saves a coroutine per request. `check` raises :class:`StoreUnavailable` when the store
    cannot be reached (readiness probes), and returns otherwise.
    """

    @property
    def sync(self) -> SyncBucketStore | None: ...

    async def take(self, takes: Sequence[BucketTake], *, now: float | None = None) -> list[BucketDecision]: ...

    async def check(self) -> None:
        """Raise :class:`StoreUnavailable` when the store cannot be reached."""
        ...

    async def give_back(self, takes: Sequence[BucketTake], *, now: float | None = None) -> None:
        """Return tokens taken for a request that another limit then refused."""
        ...

    async def aclose(self) -> None: ...


_IDLE_SLACK = 1.0
"""A bucket is forgotten this many seconds after it would be full again: from then on, forgetting it
changes nothing (a missing bucket is a full one), float rounding included."""


class MemoryBucketStore:
    """Buckets in this process, on a monotonic clock (the default store).

    Bounded: at most `max_buckets` are kept, least recently used dropped first (a dropped
    bucket comes back full, so under a flood of distinct keys the bound trades exactness for
    memory; key on identities, not on free-form input). Idle buckets are forgotten once they
    would be full again, a little on every decision, so memory follows live callers.

    >>> import asyncio
    >>> store = MemoryBucketStore(max_buckets=10_000)
    >>> take = BucketTake("alice", TokenBucket(capacity=1, rate=1))
    >>> [d.allowed for d in asyncio.run(store.take([take], now=0.0))]
    [True]
    >>> [d.allowed for d in asyncio.run(store.take([take], now=0.5))]
    [False]
    """

    def __init__(self, *, max_buckets: int = 100_000, clock: Clock = time.monotonic) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self.max_buckets = max_buckets
        self.clock = clock
        # key -> [tokens, updated, forget_at], changed in place (no new object a decision); ordered least recently
        # used first. An entry the store lets go is emptied (`[]`): whoever kept it (`LoneLimit`) sees it is gone.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        # A subclass that wraps `take` (to observe or fault it) is awaited through it.
        self.sync: SyncBucketStore | None = self if type(self).take is MemoryBucketStore.take else None
        """`decide`, the synchronous path of `take` (None for a subclass that overrides `take`)."""

    def __len__(self) -> int:
        return len(self._buckets)

    def __iter__(self) -> Iterator[str]:
        """The storage keys of the buckets held, least recently used first."""
        return iter(list(self._buckets))

    def decide(self, takes: Sequence[BucketTake], now: float | None = None) -> list[BucketDecision]:
        """The synchronous decision `take` awaits (no I/O, so no await is needed to be atomic)."""
        if len(takes) == 1:  # the common case, without building lists of states
            key, bucket, cost = takes[0]
            return [self.decide_one(key, bucket, cost, now)]
        if now is None:
            now = self.clock()
        self._forget_idle(now)
        buckets = self._buckets
        decisions = []
        for key, bucket, cost in takes:
            entry = buckets.get(key)
            decisions.append(
                bucket.decide(entry[0], entry[1], now, cost)
                if entry is not None
                else bucket.decide(None, 0.0, now, cost)
            )
        if all(decision.allowed for decision in decisions):
            for (key, bucket, _), decision in zip(takes, decisions, strict=True):
                self._store(key, bucket, decision.remaining, now)
        else:
            for take in takes:
                if take.key in buckets:
                    buckets.move_to_end(take.key)
        return decisions

    def decide_one(self, key: str, bucket: TokenBucket, cost: float, now: float | None = None) -> BucketDecision:
        """:meth:`decide` for one bucket (what a limiter with one policy asks), without a take or a list.

        The hot path of every limited request: the bucket's arithmetic (:meth:`TokenBucket.decide`, the rule)
        is written out here, operation for operation, to spare a frame; `tests/ratelimit/test_stores.py`
        checks that the two agree on every state, time and cost."""
        if now is None:
            now = self.clock()
        buckets = self._buckets
        if buckets and buckets[next(iter(buckets))][2] <= now:  # (`_forget_idle`'s first test, inline)
            self._forget_idle(now)
        entry = buckets.get(key)
        capacity = bucket.capacity
        rate = bucket.rate
        if entry is None:
            tokens = capacity
        else:
            tokens = entry[0]
            elapsed = now - entry[1]
            if elapsed > 0:
                tokens = min(capacity, tokens + elapsed * rate)
        if tokens + EPSILON >= cost:
            tokens = max(0.0, tokens - cost)
            reset = (capacity - tokens) / rate
            if entry is not None:
                entry[0] = tokens
                entry[1] = now
                entry[2] = now + reset + _IDLE_SLACK
                buckets.move_to_end(key)
            else:
                buckets[key] = [tokens, now, now + reset + _IDLE_SLACK]
                if len(buckets) > self.max_buckets:  # (a new bucket, at the end already: the only one that grows it)
                    buckets.popitem(last=False)[1].clear()
            decision: BucketDecision = _new(BucketDecision, (True, tokens, 0.0, reset))
            return decision
        if entry is not None:
            buckets.move_to_end(key)  # a refused caller is a live one: never the first to be dropped
        decision = _new(BucketDecision, (False, tokens, (cost - tokens) / rate, (capacity - tokens) / rate))
        return decision

    def _forget_idle(self, now: float) -> None:
        """Forget up to two idle buckets (full again by `now`), least recently used first: O(1) a decision,
        and faster than callers can create them, so memory follows live callers."""
        buckets = self._buckets
        for _ in range(2):
            if not buckets:
                return
            oldest = next(iter(buckets))
            if buckets[oldest][2] > now:
                return
            buckets.pop(oldest).clear()

    async def take(self, takes: Sequence[BucketTake], *, now: float | None = None) -> list[BucketDecision]:
        return self.decide(takes, now)

    async def give_back(self, takes: Sequence[BucketTake], *, now: float | None = None) -> None:
        if now is None:
            now = self.clock()
        for key, bucket, cost in takes:
            entry = self._buckets.get(key)
            if entry is not None:
                refilled = bucket.decide(entry[0], entry[1], now, 0.0)
                self._store(key, bucket, min(bucket.capacity, refilled.remaining + cost), now)

    async def check(self) -> None:
        """Always reachable: it is this process's memory."""

    async def aclose(self) -> None:
        for entry in self._buckets.values():
            entry.clear()
        self._buckets.clear()

    def _store(self, key: str, bucket: TokenBucket, tokens: float, now: float) -> None:
        buckets = self._buckets
        forget_at = now + (bucket.capacity - tokens) / bucket.rate + _IDLE_SLACK
        entry = buckets.get(key)
        if entry is not None:  # (changed in place: see `_buckets`)
            entry[0] = tokens
            entry[1] = now
            entry[2] = forget_at
            buckets.move_to_end(key)
        else:
            buckets[key] = [tokens, now, forget_at]
            if len(buckets) > self.max_buckets:
                buckets.popitem(last=False)[1].clear()


def __getattr__(name: str) -> Any:
    """`RedisBucketStore` and `bucket_store_from_url` live in :mod:`.redis_store`; still importable from here."""
    if name in ("RedisBucketStore", "bucket_store_from_url"):
        from . import redis_store

        return getattr(redis_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
