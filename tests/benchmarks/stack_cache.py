"""End-to-end stacks with the response cache (`--apps bare,cache,cache_lists`).

The e2e load is a modern `tools/call` of `echo`, which the cache does not cache (it is not
read-only): `cache` measures what the cache costs on traffic it passes through. `cache_lists`
additionally serves this process's `tools/list` benchmark (bench_cache.py); the test server
sends the SDK's default `ttlMs: 0`, so that stack ignores upstream TTLs, as an operator would
for an SDK server without `cache_hints`.
"""

from __future__ import annotations

from mcp_middleware.cache import ResponseCacheMiddleware

from .apps import Stack

STACKS = {
    "cache": Stack(ResponseCacheMiddleware),
    "cache_lists": Stack(lambda app: ResponseCacheMiddleware(app, honor_ttl_ms=False)),
}
