"""`make bench`'s bytecode count (tests/benchmarks/bench_bytecodes.py) measures what it says."""

from __future__ import annotations

import pytest

from tests.benchmarks.bench_bytecodes import count


@pytest.mark.timeout(300)
def test_the_count_is_repeatable_and_sees_one_more_header() -> None:
    bare, again, token = count("bare", 3), count("bare", 3), count("bare_token", 3)
    assert 5_000 < bare < 100_000, bare  # a request of the SDK's app is thousands of bytecodes
    assert abs(bare - again) <= bare // 200, (bare, again)  # deterministic up to the clock's re-checks
    assert token - bare > 50, (bare, token)  # the SDK scans the headers on each look-up: one more costs
