"""`close_stores` closes what has an `aclose` and skips a store of one's own that has none (never raises)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from mcp_middleware.gateway.store_closing import close_stores

pytestmark = pytest.mark.anyio


class Closable:
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


class Failing:
    async def aclose(self) -> None:
        raise ConnectionError("the store went away")


async def test_stores_without_aclose_are_skipped_and_a_failing_one_stops_no_other() -> None:
    cache, webhook = Closable(), Closable()
    assembly: Any = SimpleNamespace(
        approval_store=object(),  # a custom store written before the protocol had `aclose`
        bucket_store=Failing(),
        quota_storage=None,
        cache_store=cache,
        approval_webhook=webhook,
    )
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("mcp_middleware.gateway")  # (another test may have stopped its propagation)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # (or raised its level)
    try:
        await close_stores(assembly)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert (cache.closed, webhook.closed) == (1, 1)
    assert any("closing the rate-limit store failed" in line for line in said), said
