"""The verified-token cache: keyed by digest, bounded, and never past a token's expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.auth import canonical_resource
from mcp_middleware.auth._token_cache import TokenCache, token_key


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def cache_with_clock(**options: float) -> tuple[TokenCache[str], FakeClock]:
    cache: TokenCache[str] = TokenCache(**options)  # type: ignore[arg-type]
    clock = FakeClock()
    cache.clock = clock
    return cache, clock


def test_an_entry_lives_until_the_token_expires() -> None:
    cache, clock = cache_with_clock(max_ttl=300)
    cache.put("t", "alice", expires_at=clock.now + 10)
    clock.now += 9.9
    assert cache.get("t") == "alice"
    clock.now += 0.2
    assert cache.get("t") is None
    assert len(cache) == 0


def test_max_ttl_caps_tokens_that_live_long() -> None:
    cache, clock = cache_with_clock(max_ttl=60)
    cache.put("t", "alice", expires_at=clock.now + 86_400)
    clock.now += 61
    assert cache.get("t") is None


def test_an_already_expired_token_is_not_stored() -> None:
    cache, clock = cache_with_clock()
    cache.put("t", "alice", expires_at=clock.now - 1)
    assert len(cache) == 0


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache, _ = cache_with_clock(maxsize=2)
    cache.put("a", "1", expires_at=None)
    cache.put("b", "2", expires_at=None)
    assert cache.get("a") == "1"  # a is now the most recent
    cache.put("c", "3", expires_at=None)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("1", None, "3")


def test_the_cache_never_holds_the_token_itself() -> None:
    cache, _ = cache_with_clock()
    cache.put("secret-token", "alice", expires_at=None)
    assert all(b"secret-token" not in key for key in cache._entries)
    assert token_key("secret-token") in cache._entries


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenCache(maxsize=0)


@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=60), st.integers(min_value=1, max_value=10))
def test_size_never_exceeds_the_bound(tokens: list[str], maxsize: int) -> None:
    cache: TokenCache[int] = TokenCache(maxsize=maxsize)
    for n, token in enumerate(tokens):
        cache.put(token, n, expires_at=None)
        assert len(cache) <= maxsize
    assert cache.get(tokens[-1]) == len(tokens) - 1


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("HTTPS://MCP.Example.COM/mcp", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com:443/mcp/", "https://mcp.example.com/mcp"),
        ("http://127.0.0.1:8000/mcp#frag", "http://127.0.0.1:8000/mcp"),
        ("http://[::1]:8000/mcp", "http://[::1]:8000/mcp"),
        ("https://mcp.example.com/Path", "https://mcp.example.com/Path"),
    ],
)
def test_canonical_resource(uri: str, canonical: str) -> None:
    assert canonical_resource(uri) == canonical
