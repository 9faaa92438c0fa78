"""Where cached answers live: a small protocol, a bounded memory store, and a Redis store shared by instances.

An entry is the JSON of one `result` (without `ttlMs`, which a hit recomputes) plus when it
stops being fresh and when it may no longer be served even as stale. Entries carry tags
(:func:`~mcp_middleware.cache.keys.entry_tags`) so that a whole method, mount, partition or
resource URI can be dropped at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson
from cachetools import LRUCache

__all__ = ["CacheEntry", "CacheStore", "MemoryCacheStore", "RedisCacheStore"]

logger = logging.getLogger("mcp_middleware.cache")

_ENTRY_OVERHEAD = 256
"""Bytes an entry costs beyond its result (the tuple, its key, the tag index)."""


class CacheEntry(NamedTuple):
    """One cached answer (immutable); times are Unix seconds (`time.time()`), comparable across instances.

    - `result`: the JSON of the `result` object, without `ttlMs`;
    - `fresh_until`: served as a hit before this; `stale_until`: kept (for stale-if-error) until this;
    - `ttl_field`: the backend's result carried `ttlMs`, so a hit carries the remaining time;
    - `sse`: the backend answered as an event stream (a legacy hit answers the same way when it may);
    - `public`: `cacheScope: public` (shared by every caller); `stored_at`: when it was stored.
    """

    result: bytes
    fresh_until: float
    stale_until: float
    ttl_field: bool = False
    sse: bool = False
    public: bool = False
    stored_at: float = 0.0

    @property
    def size(self) -> int:
        return len(self.result) + _ENTRY_OVERHEAD

    def encode(self) -> bytes:
        """`header\\nresult`: the form the Redis store keeps."""
        header = orjson.dumps(
            [self.fresh_until, self.stale_until, self.ttl_field, self.sse, self.public, self.stored_at]
        )
        return header + b"\n" + self.result

    @classmethod
    def decode(cls, data: bytes) -> CacheEntry:
        header, _, result = data.partition(b"\n")
        fresh_until, stale_until, ttl_field, sse, public, stored_at = orjson.loads(header)
        return cls(result, float(fresh_until), float(stale_until), bool(ttl_field), bool(sse), bool(public), stored_at)


class CacheStore(Protocol):
    """The contract every store keeps.

    `get` returns the first of `keys` that is present and not past its `stale_until` (a store
    may drop an entry earlier: it is a cache). `set` returns whether the entry was kept (too
    large entries are not). `invalidate` drops every entry carrying any of `tags` and returns
    how many it dropped. A store that fails (Redis down) answers `None` / `False` / `0` and
    logs: a cache outage must never fail a request.
    """

    async def get(self, keys: Sequence[str]) -> tuple[str, CacheEntry] | None: ...

    async def set(self, key: str, entry: CacheEntry, tags: Sequence[str]) -> bool: ...

    async def invalidate(self, tags: Sequence[str]) -> int: ...

    async def aclose(self) -> None: ...


class _TaggedLru(LRUCache[str, tuple[CacheEntry, tuple[str, ...]]]):
    """An LRU that keeps the tag index in step with every removal, evictions included."""

    def __init__(self, maxsize: int, getsizeof: Any, index: dict[str, set[str]]) -> None:
        super().__init__(maxsize, getsizeof)
        self._index = index

    def __delitem__(self, key: str) -> None:
        _, tags = self.get(key, (None, ()))
        super().__delitem__(key)
        for tag in tags:
            keys = self._index.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[tag]


class MemoryCacheStore:
    """The default store: in-process, bounded by entry count AND bytes, with an entry size cap.

    Least recently used entries make room for new ones. Every entry costs at least
    `max_bytes / max_entries` of the byte budget, so one bound (cachetools' `maxsize`) enforces
    both. Not shared between processes: use :class:`RedisCacheStore` for that.

    >>> import asyncio
    >>> store = MemoryCacheStore(max_entries=1000, max_bytes=8 << 20, max_entry_bytes=1 << 20)
    >>> entry = CacheEntry(b'{"tools":[]}', fresh_until=time.time() + 60, stale_until=time.time() + 60)
    >>> asyncio.run(store.set("k", entry, tags=("t:/mcp|tools/list|*|*",)))
    True
    >>> asyncio.run(store.get(["missing", "k"]))[0]
    'k'
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        max_entry_bytes: int = 1024 * 1024,
        clock: Any = time.time,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or max_entry_bytes < 1:
            raise ValueError("MemoryCacheStore bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._floor = max(1, max_bytes // max_entries)
        self._clock = clock
        self._index: dict[str, set[str]] = {}
        self._entries = _TaggedLru(max_bytes, self._sizeof, self._index)

    def _sizeof(self, value: tuple[CacheEntry, tuple[str, ...]]) -> int:
        return max(value[0].size, self._floor)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Bytes accounted for (each entry at least `max_bytes / max_entries`)."""
        return int(self._entries.currsize)

    def lookup(self, keys: Sequence[str]) -> tuple[str, CacheEntry] | None:
        """:meth:`get` without the coroutine (the hit path of a memory-only cache)."""
        entries = self._entries
        for key in keys:
            item = entries.get(key)
            if item is not None:
                entry = item[0]
                if entry.stale_until > self._clock():
                    return key, entry
                del entries[key]
        return None

    async def get(self, keys: Sequence[str]) -> tuple[str, CacheEntry] | None:
        return self.lookup(keys)

    def put(self, key: str, entry: CacheEntry, tags: Sequence[str]) -> bool:
        """:meth:`set` without the coroutine."""
        if entry.size > self.max_entry_bytes:
            return False
        entries = self._entries
        if key in entries:
            del entries[key]  # untag the old one first
        tags = tuple(tags)
        entries[key] = (entry, tags)
        index = self._index
        for tag in tags:
            keys = index.get(tag)
            if keys is None:
                index[tag] = {key}
            else:
                keys.add(key)
        return True

    async def set(self, key: str, entry: CacheEntry, tags: Sequence[str]) -> bool:
        return self.put(key, entry, tags)

    def drop(self, tags: Sequence[str]) -> int:
        """:meth:`invalidate` without the coroutine."""
        doomed: set[str] = set()
        for tag in tags:
            doomed.update(self._index.get(tag, ()))
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    async def invalidate(self, tags: Sequence[str]) -> int:
        return self.drop(tags)

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()

    async def aclose(self) -> None:
        self.clear()


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
        """How logs name this store (its URL without a password)."""
        self._down = False
        if isinstance(redis, str):
            from redis.asyncio import Redis  # optional dependency: only needed for this store

            # A slow Redis must cost a request at most `timeout`, then it is a miss.
            redis = Redis.from_url(redis, socket_timeout=timeout, socket_connect_timeout=timeout)
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
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._answered()
                self._purge_l1()  # whatever happened while we were not listening
                self._l1_live = True
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if message is not None:
                        self._purge_l1()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
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

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self.redis.aclose()


def _without_password(url: str) -> str:
    """`url` for a log line: a Redis URL may carry a password."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{host}" if at else url
