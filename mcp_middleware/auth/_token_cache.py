"""Verified tokens, remembered until they expire, so a repeat request verifies no signature."""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Generic, TypeVar

__all__ = ["TokenCache", "forget_token", "token_key"]

V = TypeVar("V")

_LIVE: weakref.WeakSet[TokenCache[Any]] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def token_key(token: str | bytes) -> bytes:
    """The cache key of a token: a digest, so the cache is not a table of credentials."""
    return hashlib.blake2b(token.encode() if isinstance(token, str) else token, digest_size=16).digest()


class TokenCache(Generic[V]):
    """A bounded LRU map from token digests to values, each kept until its own deadline.

    Deadlines are Unix times (a token's `exp`), capped at `max_ttl` seconds from when the
    entry is stored: that cap is the longest a revoked but unexpired token stays accepted.

    >>> cache: TokenCache[str] = TokenCache(maxsize=2, max_ttl=60)
    >>> cache.put("token-a", "alice", expires_at=None)
    >>> cache.get("token-a"), cache.get("token-b")
    ('alice', None)
    """

    __slots__ = ("__weakref__", "_entries", "clock", "max_ttl", "maxsize")

    def __init__(self, *, maxsize: int = 10_000, max_ttl: float = 300.0) -> None:
        if maxsize <= 0 or max_ttl <= 0:
            raise ValueError("TokenCache bounds must be positive")
        self.maxsize = maxsize
        self.max_ttl = max_ttl
        self.clock = time.time
        self._entries: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        with _LIVE_LOCK:
            _LIVE.add(self)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> V | None:
        return self.get_by_key(token_key(token))

    def get_by_key(self, key: bytes) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        deadline, value = entry
        if deadline <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, token: str, value: V, *, expires_at: float | None, ttl: float | None = None) -> None:
        self.put_by_key(token_key(token), value, expires_at=expires_at, ttl=ttl)

    def put_by_key(self, key: bytes, value: V, *, expires_at: float | None, ttl: float | None = None) -> None:
        now = self.clock()
        deadline = now + min(self.max_ttl, ttl if ttl is not None else self.max_ttl)
        if expires_at is not None:
            deadline = min(deadline, expires_at)
        if deadline <= now:
            return
        entries = self._entries
        entries[key] = (deadline, value)
        entries.move_to_end(key)
        while len(entries) > self.maxsize:
            entries.popitem(last=False)

    def discard(self, token: str) -> None:
        self._entries.pop(token_key(token), None)

    def discard_key(self, key: bytes) -> bool:
        """Drop the entry of a token digest; whether there was one."""
        return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        self._entries.clear()


def forget_token(key: bytes) -> int:
    """Drop a revoked token (by :func:`token_key`) from every token cache of this process, at once.

    An authorization server that revokes a grant calls this for the grant's access tokens, so no
    `AuthMiddleware` keeps accepting one from its cache (which skips the verifier) for up to
    `cache_ttl`. Returns how many caches held it. Other processes still need their verifier to
    consult revocation, which the embedded server's verifier does on every cache miss.
    """
    with _LIVE_LOCK:
        caches = list(_LIVE)
    return sum(cache.discard_key(key) for cache in caches)
