"""Where window quotas count: a `limits` async storage, built from a URI, and closed.

`limits` storages have no close of their own: :func:`aclose_quota_storage` closes the Redis client
a Redis storage holds (its connections) and stops a memory storage's expiry task. Several
limiters may share one storage (their keys carry their namespaces): the gateway builds one.

>>> storage = quota_storage_from_url("memory://")
>>> import asyncio; asyncio.run(aclose_quota_storage(storage))
"""

from __future__ import annotations

import contextlib
from typing import Any

import limits.aio.storage
import limits.storage

from mcp_middleware.core.store_urls import redis_client_name

__all__ = ["aclose_quota_storage", "quota_storage_from_url"]

_ONE_SERVER = frozenset({"async+redis", "async+rediss", "async+redis+unix"})


def quota_storage_from_url(uri: str, *, timeout: float = 0.25) -> limits.aio.storage.Storage:
    """The async `limits` storage `uri` names (`memory://`, `redis://host:6379/0`, ...; `async+` is implied).

    A Redis one uses redis-py (as the bucket store does), `timeout` bounds connecting and each reply,
    no retries, and its connections are named `mcp-middleware:quota` (a URI's `client_name=` wins).
    Nothing connects yet; :func:`aclose_quota_storage` closes it.
    """
    given, uri = uri, uri if uri.startswith("async+") else "async+" + uri
    scheme = uri.partition("://")[0]
    options: dict[str, Any] = {}
    if "redis" in scheme:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        options = {
            "implementation": "redispy",  # redis-py, which the bucket store uses too (no coredis)
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if scheme in _ONE_SERVER:  # cluster and sentinel clients take their options elsewhere
            options["client_name"] = redis_client_name("quota")
    made = limits.storage.storage_from_string(uri, wrap_exceptions=True, **options)
    if not isinstance(made, limits.aio.storage.Storage):
        raise ValueError(f"{given!r} is not an async limits storage")
    return made


async def aclose_quota_storage(storage: limits.aio.storage.Storage) -> None:
    """Close what `storage` holds open: a Redis storage's clients (the primary's, a replica's), a memory
    storage's expiry task. Others (MongoDB, memcached) are left as they are."""
    bridge = getattr(storage, "bridge", None)  # limits' Redis storages keep their redis-py client there
    clients = {id(found): found for name in ("storage", "storage_replica") if (found := getattr(bridge, name, None))}
    for client in clients.values():
        close = getattr(client, "aclose", None)
        if close is not None:
            await close()
    timer = getattr(storage, "timer", None)  # limits' memory storage expires its keys in a task
    if timer is not None and not timer.done():
        with contextlib.suppress(RuntimeError):  # its loop is closed already: nothing runs it any more
            timer.cancel()
