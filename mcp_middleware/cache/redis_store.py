"""The Redis cache store: entries shared by every instance, invalidated by tag in one script call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from mcp_middleware.core.background import stop_task
from mcp_middleware.core.store_urls import redis_client_name

from .store import CacheEntry, CacheStoreUnavailable, MemoryCacheStore, SyncCacheStore

__all__ = ["RedisCacheStore"]

logger = logging.getLogger("mcp_middleware.cache")


# Store an entry and index it under each tag (a sorted set scored by expiry, trimmed on each
# write so it never grows with dead members, and kept alive as long as its longest member).
_SET_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local ttl = tonumber(ARGV[2])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[3], KEYS[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[4])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
"""

# Drop every entry indexed under the given tags, and the tags themselves; tell every instance's L1.
_INVALIDATE_SCRIPT = """
redis.call('PUBLISH', ARGV[1], '1')
local dropped = 0
for i = 1, #KEYS do
  local members = redis.call('ZRANGE', KEYS[i], 0, -1)
  for j = 1, #members, 500 do
    dropped = dropped + redis.call('DEL', unpack(members, j, math.min(j + 499, #members)))
  end
  redis.call('DEL', KEYS[i])
end
return dropped
"""


class RedisCacheStore:
    """A store shared by every instance, in Redis (`redis.asyncio`), with an optional memory L1 in front.

    Entries expire in Redis by themselves (`PX`); tags are sorted sets scored by expiry, so
    invalidation drops the entries of a method, mount, partition or URI in one script call,
    atomically. All keys share the hash tag `{prefix}` (one slot), as the scripts need on Redis Cluster.

    The L1 (a :class:`MemoryCacheStore`) answers repeated hits without a round trip, for at most
    `l1_ttl` seconds per entry. Every invalidation is also published on a channel; each instance
    with an L1 listens (a background task started with its first lookup) and empties its L1 at
    once. The L1 answers only while that subscription is up, so a lost connection can never
    leave it serving what another instance invalidated.

    If Redis is unreachable or slower than `timeout` (for a store built from a URL), lookups miss
    and writes are skipped: the backend answers. The outage is logged once at WARNING when it
    starts and once when Redis answers again, however many requests met it.

    >>> store = RedisCacheStore("redis://127.0.0.1:6379/0", l1=MemoryCacheStore(max_entries=1000))
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "mcp-cache",
        l1: MemoryCacheStore | None = None,
        l1_ttl: float = 1.0,
        max_entry_bytes: int = 1024 * 1024,
        timeout: float = 0.5,
        clock: Any = time.time,
    ) -> None:
        self.shown = _without_password(redis) if isinstance(redis, str) else "Redis"
        self.sync: SyncCacheStore | None = None
        """Every miss of the L1 is a round trip: there is no synchronous path."""
        """How logs name this store (its URL without a password)."""
        self._down = False
        if isinstance(redis, str):
            from redis.asyncio import Redis  # optional dependency: only needed for this store

            # A slow Redis must cost a request at most `timeout`, then it is a miss.
            redis = Redis.from_url(
                redis,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                client_name=redis_client_name("cache"),  # its own client: aclose() disconnects it
            )
        self.redis = redis
        self.prefix = "{" + prefix + "}:"
        self.l1 = l1
        self.l1_ttl = l1_ttl
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._set = redis.register_script(_SET_SCRIPT)
        self._invalidate = redis.register_script(_INVALIDATE_SCRIPT)
        self.channel = f"{self.prefix}invalidations"
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self.close_patience = 5.0
        """Seconds `aclose` waits for the invalidation channel to stop before it closes the client anyway."""
        self._l1_live = False
        """The L1 may answer: the invalidation channel is subscribed."""
        self._l1_epoch = 0
        """Counts L1 purges: a Redis read that a purge overtook is not copied into the L1."""

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._down:  # once per outage: every lookup meets the dead store, the log must not
            self._down = True
            logger.warning(
                "cache store %s unavailable (%s: %r): lookups miss, writes are skipped", self.shown, what, exc
            )

    def _answered(self) -> None:
        if self._down:
            self._down = False
            logger.warning("cache store %s recovered: caching again", self.shown)

    def _purge_l1(self) -> None:
        if self.l1 is not None:
            self._l1_epoch += 1
            self.l1.clear()

    def _listen_once_running(self) -> None:
        if self.l1 is None or (self._listener is not None and not self._listener.done()):
            return
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="mcp-cache-invalidations")

    async def _listen(self) -> None:
        """Empty the L1 on every published invalidation; keep it out of use while not subscribed."""
        assert self.l1 is not None
        while not self._closing:  # (checked too: a cancellation may be swallowed by redis-py, redis/redis-py#2551)
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._answered()
                self._purge_l1()  # whatever happened while we were not listening
                self._l1_live = True
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if message is not None:
                        self._purge_l1()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:  # the client closed under it: nothing failed
                    return
                self._failed("invalidation channel", exc)
                await asyncio.sleep(0.5)
            finally:
                self._l1_live = False
                self._purge_l1()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _key(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _tag(self, tag: str) -> str:
        return f"{self.prefix}t:{tag}"

    async def get(self, keys: Sequence[str]) -> tuple[str, CacheEntry] | None:
        if self.l1 is not None:
            if self._l1_live:
                found = self.l1.lookup(keys)
                if found is not None:
                    return found
            else:
                self._listen_once_running()
        epoch = self._l1_epoch
        try:
            values = await self.redis.mget([self._key(key) for key in keys])
        except Exception as exc:  # a cache outage is a miss, never a failed request
            self._failed("lookup", exc)
            return None
        if self._down:
            self._answered()
        now = self._clock()
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue
            try:
                entry = CacheEntry.decode(value)
            except (ValueError, TypeError):
                continue
            if entry.stale_until <= now:
                continue
            if self.l1 is not None and self._l1_live and epoch == self._l1_epoch:
                held_until = min(entry.stale_until, now + self.l1_ttl)
                copy = entry._replace(fresh_until=min(entry.fresh_until, held_until), stale_until=held_until)
                self.l1.put(key, copy, ())  # untagged: it lives only l1_ttl
            return key, entry
        return None

    async def set(self, key: str, entry: CacheEntry, tags: Sequence[str]) -> bool:
        if entry.size > self.max_entry_bytes:
            return False
        ttl_ms = int((entry.stale_until - self._clock()) * 1000)
        if ttl_ms <= 0:
            return False
        try:
            await self._set(
                keys=[self._key(key), *(self._tag(tag) for tag in tags)],
                args=[entry.encode(), ttl_ms, int(entry.stale_until * 1000), int(self._clock() * 1000)],
            )
        except Exception as exc:
            self._failed("write", exc)
            return False
        if self._down:
            self._answered()
        return True

    async def invalidate(self, tags: Sequence[str]) -> int:
        self._purge_l1()  # L1 copies are untagged and short-lived: drop them all
        try:
            dropped = int(await self._invalidate(keys=[self._tag(tag) for tag in tags], args=[self.channel]))
        except Exception as exc:
            self._failed("invalidation", exc)
            return 0
        self._answered()
        return dropped

    def take_evictions(self) -> int:
        """The L1's evictions since the last call (Redis's own `maxmemory` evictions are not visible here)."""
        return self.l1.take_evictions() if self.l1 is not None else 0

    async def check(self) -> None:
        try:
            await self.redis.ping()
        except Exception as exc:
            raise CacheStoreUnavailable(f"Redis cache store unreachable: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Stop the L1's invalidation channel (its pub/sub connection) and close the client: built from a URL,
        every connection (named `mcp-middleware:cache`); a client passed in closes as it was made to."""
        self._closing = True
        await stop_task(self._listener, self.close_patience)
        await self.redis.aclose()


def _without_password(url: str) -> str:
    """`url` for a log line: a Redis URL may carry a password."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{host}" if at else url
