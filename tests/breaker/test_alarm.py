"""The deadline wheel's alarm lives in a thread of its own, not in the event loop's timer heap (the app's
own timers would compare against it on every turn), and still cancels overdue calls on time; a loop
with a clock of its own keeps a loop timer."""

from __future__ import annotations

import asyncio
import time
import weakref

from mcp_middleware.breaker.alarm import ALARMS, Alarms
from mcp_middleware.breaker.timeouts import Deadlines


async def _overdue(deadlines: Deadlines, seconds: float) -> tuple[bool, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = deadlines.start(seconds)
    assert deadline is not None
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass
    finally:
        deadline.finish()
    return deadline.expired, loop.time() - started


def test_an_armed_wheel_leaves_the_loops_timer_heap_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(tick=0.01)
        deadline = deadlines.start(60.0)  # pending for the whole test
        assert deadline is not None
        assert deadlines._handle is True and loop._scheduled == []  # type: ignore[attr-defined]
        expired, elapsed = await _overdue(deadlines, 0.1)  # an earlier slot: a new alarm, the old one ignored
        assert expired and 0.1 - 1e-6 <= elapsed < 5.0
        deadline.finish()
        assert not deadline.expired

    asyncio.run(main())


def test_a_loop_with_a_clock_of_its_own_gets_a_loop_timer() -> None:
    class OwnClock(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return time.monotonic() + 1000.0  # another origin: the alarm thread's clock would be wrong

    async def main() -> None:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(tick=0.01)
        expired, elapsed = await _overdue(deadlines, 0.05)
        assert expired and elapsed >= 0.05 - 1e-6
        waiting = deadlines.start(60.0)
        assert waiting is not None
        assert isinstance(deadlines._handle, asyncio.TimerHandle) and deadlines._handle in loop._scheduled  # type: ignore[attr-defined]
        waiting.finish()

    loop = OwnClock()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


class Listener:
    def __init__(self) -> None:
        self.heard: list[object] = []

    def hear(self, what: object) -> None:
        self.heard.append(what)
        if isinstance(what, asyncio.Event):
            what.set()


def test_alarms_of_a_closed_loop_or_a_listener_gone_are_dropped_and_later_ones_still_come() -> None:
    alarms = Alarms()
    listener = Listener()
    closed = asyncio.new_event_loop()
    closed.close()
    alarms.at(time.monotonic(), closed, listener.hear, "never")  # call_soon_threadsafe raises: the thread goes on
    gone = Listener()
    alarms.at(time.monotonic(), asyncio.new_event_loop(), gone.hear, "never")  # (that loop is collected too)
    held = weakref.ref(gone)
    del gone
    assert held() is None  # a pending alarm does not keep its listener alive

    async def main() -> None:
        loop = asyncio.get_running_loop()
        came = asyncio.Event()
        alarms.at(time.monotonic() + 0.05, loop, listener.hear, came)
        await asyncio.wait_for(came.wait(), 10)

    asyncio.run(main())
    assert alarms._heap == [] and listener.heard == [listener.heard[0]] and isinstance(listener.heard[0], asyncio.Event)


def test_one_wheel_on_a_new_loop_is_not_swept_by_the_old_loops_alarms() -> None:
    deadlines = Deadlines(tick=0.01)

    async def first() -> None:
        stale = deadlines.start(0.1)  # left pending: its loop ends before the alarm comes
        assert stale is not None

    async def second() -> None:
        own = deadlines.start(0.5)
        assert own is not None
        await asyncio.sleep(0.3)  # the first loop's alarm has come (and was dropped: that loop is closed)
        assert not own.expired
        own.finish()
        expired, _ = await _overdue(deadlines, 0.05)  # the wheel still works on this loop
        assert expired

    asyncio.run(first())
    asyncio.run(second())
    assert ALARMS._thread is not None and ALARMS._thread.is_alive() and ALARMS._thread.daemon
