"""The shared Redis bucket store (one atomic Lua script a decision), and the store a URL names."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mcp_middleware.core.store_urls import parse_store_url, redis_client_name

from .bucket import EPSILON, BucketDecision
from .stores import BucketStore, BucketTake, Clock, MemoryBucketStore, StoreUnavailable, SyncBucketStore

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisBucketStore", "bucket_store_from_url"]

logger = logging.getLogger("mcp_middleware.ratelimit")


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
