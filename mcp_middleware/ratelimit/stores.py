"""Where buckets live: a small protocol, a bounded in-memory store and a shared Redis store.

Every store decides a whole set of buckets at once, all or nothing: a request that must
pass several bucket policies is admitted only if every bucket has its cost, and then all
are charged; otherwise none is. So a refused request consumes nothing anywhere.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from mcp_middleware.core.errors import McpMiddlewareError
from mcp_middleware.core.store_urls import parse_store_url, redis_client_name

from .bucket import EPSILON, BucketDecision, TokenBucket

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "BucketStore",
    "BucketTake",
    "MemoryBucketStore",
    "RedisBucketStore",
    "StoreUnavailable",
    "SyncBucketStore",
    "bucket_store_from_url",
]

logger = logging.getLogger("mcp_middleware.ratelimit")
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
        # key -> (tokens, updated, forget_at); ordered least recently used first.
        self._buckets: OrderedDict[str, tuple[float, float, float]] = OrderedDict()
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
                bucket.decide(*entry[:2], now, cost) if entry is not None else bucket.decide(None, 0.0, now, cost)
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
            buckets[key] = (tokens, now, now + reset + _IDLE_SLACK)
            if entry is not None:
                buckets.move_to_end(key)
            elif len(buckets) > self.max_buckets:  # (a new bucket, at the end already: the only one that grows it)
                buckets.popitem(last=False)
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
            del buckets[oldest]

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
        self._buckets.clear()

    def _store(self, key: str, bucket: TokenBucket, tokens: float, now: float) -> None:
        buckets = self._buckets
        buckets[key] = (tokens, now, now + (bucket.capacity - tokens) / bucket.rate + _IDLE_SLACK)
        buckets.move_to_end(key)
        if len(buckets) > self.max_buckets:
            buckets.popitem(last=False)


# One decision is one EVALSHA. ARGV[1] is the time ('' = the Redis server's TIME), ARGV[2] the
# mode ('take' or 'give'), then capacity, rate, cost per key. The arithmetic is TokenBucket.take's,
# operation for operation; numbers travel as %.17g strings, which round-trip doubles exactly
# (Lua numbers in replies would be truncated to integers).
_BUCKET_SCRIPT = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local give = ARGV[2] == 'give'
local eps = EPSILON
local n = #KEYS
local states = {}
local reply = {}
local all = true
for i = 1, n do
  local base = 2 + (i - 1) * 3
  local capacity, rate, cost = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local s = redis.call('HMGET', KEYS[i], 't', 'u')
  local tokens, updated = tonumber(s[1]), tonumber(s[2])
  local known = tokens ~= nil and updated ~= nil
  if not known then
    tokens = capacity
  else
    local elapsed = now - updated
    if elapsed > 0 then tokens = math.min(capacity, tokens + elapsed * rate) end
  end
  if give then
    if known then states[i] = math.min(capacity, tokens + cost) end
  elseif tokens + eps >= cost then
    local left = tokens - cost
    if left < 0 then left = 0 end
    states[i] = left
    reply[#reply + 1] = 1
    reply[#reply + 1] = string.format('%.17g', left)
    reply[#reply + 1] = '0'
    reply[#reply + 1] = string.format('%.17g', (capacity - left) / rate)
  else
    all = false
    reply[#reply + 1] = 0
    reply[#reply + 1] = string.format('%.17g', tokens)
    reply[#reply + 1] = string.format('%.17g', (cost - tokens) / rate)
    reply[#reply + 1] = string.format('%.17g', (capacity - tokens) / rate)
  end
end
if all then
  for i = 1, n do
    if states[i] ~= nil then
      local base = 2 + (i - 1) * 3
      local capacity, rate = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
      redis.call('HSET', KEYS[i], 't', string.format('%.17g', states[i]), 'u', string.format('%.17g', now))
      redis.call('PEXPIRE', KEYS[i], math.ceil((capacity - states[i]) / rate * 1000) + 1000)
    end
  end
end
return reply
""".replace("EPSILON", repr(EPSILON))


class RedisBucketStore:
    """Buckets in Redis, shared by every instance that points at it.

    One decision is one atomic Lua script (one round trip, EVALSHA), on the Redis server's
    clock so instances with skewed clocks agree; keys expire once the bucket would be full
    again. Timeouts are short and there are no client retries: a dead or slow Redis costs
    milliseconds, after which the store answers :class:`StoreUnavailable` at once for
    `retry_interval` seconds, then tries again (it reconnects by itself).

    >>> store = RedisBucketStore.from_url("redis://127.0.0.1:6379/0")   # needs the [redis] extra
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "mcpmw:rl:",
        retry_interval: float = 0.5,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.retry_interval = retry_interval
        self.clock = clock
        self._script: AsyncScript = client.register_script(_BUCKET_SCRIPT)
        self._unavailable_until = -math.inf
        self.sync: SyncBucketStore | None = None
        """Every decision is a round trip: there is no synchronous path."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "mcpmw:rl:",
        timeout: float = 0.25,
        retry_interval: float = 0.5,
        max_connections: int = 64,
        **options: Any,
    ) -> RedisBucketStore:
        """A store on a new `redis.asyncio` client that it owns (:meth:`aclose` closes its connections):
        `timeout` bounds connecting and each reply; its connections are named `mcp-middleware:ratelimit`."""
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options.setdefault("client_name", redis_client_name("ratelimit"))
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,  # waiting for a free pooled connection is bounded too
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        # from_pool: the client owns the pool, so its aclose() disconnects it (Redis(connection_pool=) would not)
        return cls(Redis.from_pool(pool), prefix=prefix, retry_interval=retry_interval)

    async def take(self, takes: Sequence[BucketTake], *, now: float | None = None) -> list[BucketDecision]:
        reply = await self._run(takes, "take", now)
        return [
            BucketDecision(bool(reply[i]), float(reply[i + 1]), float(reply[i + 2]), float(reply[i + 3]))
            for i in range(0, len(reply), 4)
        ]

    async def give_back(self, takes: Sequence[BucketTake], *, now: float | None = None) -> None:
        await self._run(takes, "give", now)

    async def check(self) -> None:
        try:
            await self.client.ping()
        except Exception as exc:
            raise StoreUnavailable(f"Redis bucket store unreachable: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the client (and its connections, when the client owns its pool: :meth:`from_url`'s does)."""
        await self.client.aclose()

    async def _run(self, takes: Sequence[BucketTake], mode: str, now: float | None) -> list[Any]:
        if self.clock() < self._unavailable_until:
            raise StoreUnavailable("Redis was unreachable moments ago; not retrying yet")
        args: list[str] = ["" if now is None else repr(now), mode]
        for take in takes:
            args += [repr(take.bucket.capacity), repr(take.bucket.rate), repr(float(take.cost))]
        try:
            reply: list[Any] = await self._script(keys=[self.prefix + take.key for take in takes], args=args)
        except Exception as exc:  # connection refused, timeouts, OOM, BUSY …: no decision either way
            self._unavailable_until = self.clock() + self.retry_interval
            raise StoreUnavailable(f"Redis bucket store failed: {type(exc).__name__}: {exc}") from exc
        return reply


def bucket_store_from_url(
    url: str,
    *,
    max_buckets: int = 100_000,
    prefix: str = "mcpmw:rl:",
    timeout: float = 0.25,
    retry_interval: float = 0.5,
    **redis_options: Any,
) -> BucketStore:
    """The store a URL names, as `limits` names its storages (nothing connects yet).

    - `memory://`: a :class:`MemoryBucketStore` of at most `max_buckets` buckets;
    - `redis://host:6379/0`, `rediss://…` (TLS), `redis+unix:///path/redis.sock?db=0` (or
      `unix://…`): a :class:`RedisBucketStore`; `prefix`, `timeout`, `retry_interval` and
      `redis_options` are its :meth:`RedisBucketStore.from_url` options.

    Raise ValueError for any other URL.

    >>> bucket_store_from_url("memory://", max_buckets=1000).sync is not None
    True
    >>> bucket_store_from_url("memcached://localhost")
    Traceback (most recent call last):
    ...
    ValueError: bucket store URL must be memory:// or redis://, rediss://, redis+unix://, unix://: 'memcached://localhost'
    """
    parsed = parse_store_url(url, "bucket store")
    if parsed.kind == "memory":
        if redis_options:
            raise ValueError(f"options {sorted(redis_options)} apply to a Redis store only")
        return MemoryBucketStore(max_buckets=max_buckets)
    return RedisBucketStore.from_url(
        parsed.redis_url, prefix=prefix, timeout=timeout, retry_interval=retry_interval, **redis_options
    )
