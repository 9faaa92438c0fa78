"""Store URLs, read one way for every store kind (rate-limit buckets, cache entries), as `limits` reads its own."""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["StoreUrl", "parse_store_url", "redis_client_name"]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+unix"})


class StoreUrl(NamedTuple):
    """`kind` is `"memory"` or `"redis"`; `redis_url` is the URL in redis-py's spelling (`redis+unix` → `unix`)."""

    kind: Literal["memory", "redis"]
    redis_url: str


def redis_client_name(role: str) -> str:
    """The name a store's Redis connections give themselves (`CLIENT SETNAME`): `CLIENT LIST` shows whose
    they are. One per role, never per request or per server (bounded); a URL's `client_name=` wins.

    >>> redis_client_name("cache")
    'mcp-middleware:cache'
    """
    return f"mcp-middleware:{role}"


def parse_store_url(url: str, what: str) -> StoreUrl:
    """Read a store URL; ValueError naming `what` for anything but memory:// and the Redis schemes.

    >>> parse_store_url("redis+unix:///run/redis.sock?db=1", "cache store")
    StoreUrl(kind='redis', redis_url='unix:///run/redis.sock?db=1')
    """
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if separator and scheme == "memory" and rest in ("", "/"):
        return StoreUrl("memory", "")
    if separator and scheme in _REDIS_SCHEMES:
        return StoreUrl("redis", "unix://" + rest if scheme == "redis+unix" else url)
    raise ValueError(f"{what} URL must be memory:// or redis://, rediss://, redis+unix://, unix://: {url!r}")
