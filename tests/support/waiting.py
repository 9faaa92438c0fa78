"""Waiting for state another thread changes.

The servers under test run under uvicorn in a thread of their own: what they record (a breaker's
verdict, a metric, a log line, a cache entry) can land a moment after the client read the response,
and no event crosses the thread boundary to tell the test. These helpers poll, bounded in time:

    await until(lambda: len(log.records) == 2)          # fails the test after `patience` seconds
    assert not await held_within(lambda: leaked(), 0.5)  # for "it must not happen" checks
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

__all__ = ["held_within", "until"]


async def held_within(condition: Callable[[], object], patience: float = 5.0, interval: float = 0.02) -> bool:
    """Whether `condition()` held within `patience` seconds (polled every `interval`; checked once more at the end)."""
    with anyio.move_on_after(patience):
        while not condition():  # noqa: ASYNC110 (the state lives in the server's thread: polled)
            await anyio.sleep(interval)
        return True
    return bool(condition())


async def until(condition: Callable[[], object], patience: float = 5.0, interval: float = 0.02) -> None:
    """Wait until `condition()` holds; fail the test (`TimeoutError`) if it did not within `patience` seconds."""
    if not await held_within(condition, patience, interval):
        raise TimeoutError(f"condition not met within {patience} s")
