"""Stopping a store's background task (a pub/sub listener) at close: bounded, and never at the caller's expense."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["stop_task"]


async def stop_task(task: asyncio.Task[Any] | None, patience: float) -> None:
    """Cancel `task` and wait for it to end, at most `patience` seconds, without taking its outcome.

    A cancellation of the caller itself still reaches the caller (awaiting the task inside a catch of
    `CancelledError` would swallow that one too, and leave its runner waiting for ever), and a task that
    swallowed its cancellation (redis-py may, when it meets a read's own timeout: redis/redis-py#2551)
    does not hold the caller longer than `patience`: the task should also stop by a flag of its own.
    """
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=patience)
    if task.done() and not task.cancelled():
        task.exception()  # (retrieved: a failure at close is not logged as never retrieved)
