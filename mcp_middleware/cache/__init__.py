"""Response caching for MCP: lists, reads and opted-in idempotent tools.

Honours the backend's `ttlMs`/`cacheScope`, partitions private results by principal, drops
entries on list_changed / resources/updated, coalesces identical misses and can serve a stale
answer when the backend fails. See docs/cache.md.
"""

from .keys import ANONYMOUS_PARTITION, DEFAULT_KEY_META_FIELDS, PUBLIC_PARTITION, partition_of, request_digest
from .middleware import CachePolicy, ResponseCacheMiddleware
from .redis_store import RedisCacheStore
from .responses import CACHE_META_KEY
from .store import (
    CacheEntry,
    CacheStore,
    CacheStoreUnavailable,
    MemoryCacheStore,
    SyncCacheStore,
    cache_store_from_url,
)

__all__ = [
    "ANONYMOUS_PARTITION",
    "CACHE_META_KEY",
    "DEFAULT_KEY_META_FIELDS",
    "PUBLIC_PARTITION",
    "CacheEntry",
    "CachePolicy",
    "CacheStore",
    "CacheStoreUnavailable",
    "MemoryCacheStore",
    "RedisCacheStore",
    "ResponseCacheMiddleware",
    "SyncCacheStore",
    "cache_store_from_url",
    "partition_of",
    "request_digest",
]
