"""One thread that wakes an event loop when a deadline slot of the breaker's wheel falls due.

The wheel's next slot is usually a whole timeout away (30 s by default), so a loop timer armed for it
sits in the loop's timer heap for the whole run, and every timer of the app (the SDK's, anyio's)
then compares against it in Python (`TimerHandle.__lt__`) while `_run_once` computes a select
timeout for it on every turn: ≈ 58 bytecodes a request of the in-process full stack, measured.
Here the alarms wait in a heap of their own, in one daemon thread for the whole process, which
sleeps until the earliest and hands its loop the callback with `call_soon_threadsafe` (that wakes
the loop's selector). Arming happens once per new earliest slot, not per request.

Only for a loop whose clock is `time.monotonic` (asyncio's own `time`); other loops keep a loop timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any
from weakref import WeakMethod, ref

__all__ = ["ALARMS", "Alarms"]


_Alarm = tuple[float, int, "ref[asyncio.AbstractEventLoop]", "WeakMethod[Callable[[Any], None]]", Any]
"""(when, the order armed, the loop, the callback, its argument)."""


class Alarms:
    """`at(when, loop, callback, arg)`: `loop.call_soon_threadsafe(callback, arg)` once `time.monotonic()`
    has reached `when`. Alarms are never cancelled: a callback must ignore one it no longer wants. The loop
    and the callback (a bound method) are held weakly: an alarm of a wheel or a loop that is gone is dropped
    (a pending alarm keeps neither alive for a whole timeout)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._heap: list[_Alarm] = []
        self._order = itertools.count()  # (ties are taken in the order armed; loops do not compare)
        self._thread: threading.Thread | None = None

    def at(self, when: float, loop: asyncio.AbstractEventLoop, callback: Callable[[Any], None], arg: Any) -> None:
        entry: _Alarm = (when, next(self._order), ref(loop), WeakMethod(callback), arg)
        with self._condition:
            heap = self._heap
            heapq.heappush(heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mcp-breaker-deadlines", daemon=True)
                self._thread.start()
            elif heap[0][0] == when:  # a new earliest alarm: the thread may be sleeping past it
                self._condition.notify()

    def _run(self) -> None:
        condition = self._condition
        heap = self._heap
        with condition:
            while True:
                if not heap:
                    condition.wait()
                    continue
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    condition.wait(delay)
                    continue
                _, _, loop_ref, callback_ref, arg = heapq.heappop(heap)
                loop, callback = loop_ref(), callback_ref()
                if loop is not None and callback is not None:  # (else gone: nobody waits for this alarm)
                    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it either
                        loop.call_soon_threadsafe(callback, arg)
                del loop, callback  # (not kept alive by this thread while it sleeps)


ALARMS = Alarms()
"""The process's one alarm thread (started on first use)."""

if hasattr(os, "register_at_fork"):  # a forked child has no thread: it starts its own, with no alarm of the parent's
    os.register_at_fork(after_in_child=ALARMS._reset)
