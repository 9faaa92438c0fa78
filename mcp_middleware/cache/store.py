"""Where cached answers live: a small protocol, a bounded memory store, and a Redis store shared by instances.

An entry is the JSON of one `result` (without `ttlMs`, which a hit recomputes) plus when it
stops being fresh and when it may no longer be served even as stale. Entries carry tags
(:func:`~mcp_middleware.cache.keys.entry_tags`) so that a whole method, mount, partition or
resource URI can be dropped at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson
from cachetools import LRUCache

from mcp_middleware.core.errors import McpMiddlewareError
from mcp_middleware.core.store_urls import parse_store_url

__all__ = [
    "CacheEntry",
    "CacheStore",
    "CacheStoreUnavailable",
    "MemoryCacheStore",
    "SyncCacheStore",
    "cache_store_from_url",
]

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


class CacheStoreUnavailable(McpMiddlewareError):
    """:meth:`CacheStore.check` found the store unreachable (requests still pass: they miss)."""


class SyncCacheStore(Protocol):
    """A store's operations without a coroutine, for a store that needs no I/O (the memory store)."""

    def lookup(self, keys: Sequence[str]) -> tuple[str, CacheEntry] | None: ...

    def put(self, key: str, entry: CacheEntry, tags: Sequence[str]) -> bool: ...

    def drop(self, tags: Sequence[str]) -> int: ...


class CacheStore(Protocol):
    """The contract every store keeps.

    `get` returns the first of `keys` that is present and not past its `stale_until` (a store
    may drop an entry earlier: it is a cache). `set` returns whether the entry was kept (too
    large entries are not). `invalidate` drops every entry carrying any of `tags` and returns
    how many it dropped. A store that fails (Redis down) answers `None` / `False` / `0` and
    logs: a cache outage must never fail a request.

    `sync` is the same store without coroutines (`lookup`, `put`, `drop`) when it needs no
    I/O (the memory store), else None: the middleware's hit path calls it instead of awaiting
    `get`. `check` raises :class:`CacheStoreUnavailable` when the store cannot be reached
    (readiness probes), and returns otherwise. `take_evictions` counts capacity evictions
    (not expiry, not invalidation): the middleware asks after each write and records an
    `evict` decision, which feeds the `mcp.middleware.cache.evictions` metric.
    """

    @property
    def sync(self) -> SyncCacheStore | None: ...

    async def get(self, keys: Sequence[str]) -> tuple[str, CacheEntry] | None: ...

    async def set(self, key: str, entry: CacheEntry, tags: Sequence[str]) -> bool: ...

    async def invalidate(self, tags: Sequence[str]) -> int: ...

    async def check(self) -> None:
        """Raise :class:`CacheStoreUnavailable` when the store cannot be reached."""
        ...

    def take_evictions(self) -> int:
        """How many entries the store dropped to make room since it was last asked (0 if it cannot tell)."""
        ...

    async def aclose(self) -> None: ...


class _TaggedLru(LRUCache[str, tuple[CacheEntry, tuple[str, ...]]]):
    """An LRU that keeps the tag index in step with every removal, evictions included."""

    def __init__(self, maxsize: int, getsizeof: Any, index: dict[str, set[str]]) -> None:
        super().__init__(maxsize, getsizeof)
        self._index = index
        self.evictions = 0

    def popitem(self) -> tuple[str, tuple[CacheEntry, tuple[str, ...]]]:
        # cachetools calls this (only) to make room for a new item: a capacity eviction
        item = super().popitem()
        self.evictions += 1
        return item

    def __delitem__(self, key: str) -> None:
        _, tags = self.get(key, (None, ()))
        super().__delitem__(key)
        for tag in tags:
            keys = self._index.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[tag]


_ASYNC_OPERATIONS = ("get", "set", "invalidate")


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
        # A subclass that wraps the coroutines (to observe or fault them) is awaited through them.
        plain = all(getattr(type(self), name) is getattr(MemoryCacheStore, name) for name in _ASYNC_OPERATIONS)
        self.sync: SyncCacheStore | None = self if plain else None
        """`lookup`, `put` and `drop`: the synchronous paths of `get`, `set` and `invalidate`."""

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
        entries = self._entries
        evictions = entries.evictions  # emptying is not evicting (whichever way the LRU empties itself)
        entries.clear()
        entries.evictions = evictions
        self._index.clear()

    def take_evictions(self) -> int:
        """Entries dropped to make room (least recently used first) since the last call."""
        evicted, self._entries.evictions = self._entries.evictions, 0
        return evicted

    async def check(self) -> None:
        """Always reachable: it is this process's memory."""

    async def aclose(self) -> None:
        self.clear()


def cache_store_from_url(
    url: str,
    *,
    max_entries: int = 10_000,
    max_bytes: int = 64 * 1024 * 1024,
    max_entry_bytes: int = 1024 * 1024,
    prefix: str = "mcp-cache",
    l1: MemoryCacheStore | None = None,
    timeout: float = 0.5,
) -> CacheStore:
    """The store a URL names, as `limits` names its storages (nothing connects yet).

    - `memory://`: a :class:`MemoryCacheStore` bounded by `max_entries`, `max_bytes`, `max_entry_bytes`;
    - `redis://host:6379/0`, `rediss://…` (TLS), `redis+unix:///path/redis.sock?db=0` (or
      `unix://…`): a :class:`~mcp_middleware.cache.RedisCacheStore` with `prefix`, `l1`,
      `timeout` and `max_entry_bytes`.

    Raise ValueError for any other URL.

    >>> cache_store_from_url("memory://", max_entries=100).sync is not None
    True
    >>> cache_store_from_url("memcached://localhost")
    Traceback (most recent call last):
    ...
    ValueError: cache store URL must be memory:// or redis://, rediss://, redis+unix://, unix://: 'memcached://localhost'
    """
    parsed = parse_store_url(url, "cache store")
    if parsed.kind == "memory":
        return MemoryCacheStore(max_entries=max_entries, max_bytes=max_bytes, max_entry_bytes=max_entry_bytes)
    from .redis_store import RedisCacheStore

    return RedisCacheStore(parsed.redis_url, prefix=prefix, l1=l1, max_entry_bytes=max_entry_bytes, timeout=timeout)
