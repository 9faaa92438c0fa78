"""The breaker's default timeouts: one read-only source, which the gateway starts from too."""

from __future__ import annotations

import pytest

from mcp_middleware.breaker import DEFAULT_EXCLUDE, DEFAULT_TIMEOUTS


def test_the_default_timeouts_are_read_only_and_what_the_docs_say() -> None:
    assert dict(DEFAULT_TIMEOUTS) == {"*": 30.0, "tools/call": 120.0, "subscriptions/listen": None}
    with pytest.raises(TypeError):
        DEFAULT_TIMEOUTS["*"] = 1.0  # type: ignore[index]
    overridden = {**DEFAULT_TIMEOUTS, "tools/call": 300.0}  # how a caller changes one
    assert overridden["tools/call"] == 300.0 and DEFAULT_TIMEOUTS["tools/call"] == 120.0


def test_long_lived_streams_are_neither_timed_out_nor_guarded_by_default() -> None:
    assert DEFAULT_TIMEOUTS["subscriptions/listen"] is None
    assert "subscriptions/listen" in DEFAULT_EXCLUDE
