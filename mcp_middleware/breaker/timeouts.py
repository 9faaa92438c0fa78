"""Timeouts: the default seconds per method, and one timer that cancels every overdue call.

A timed-out call is cancelled and answered with a JSON-RPC error (see :mod:`.call`); a legacy
session is also told `notifications/cancelled`, since its handler does not run in the request.

On asyncio a call opens no cancel scope: a :class:`Deadline` only notes the call's task in the
slot of the tick it falls due in, and removes it when the call ends. When a slot falls due, its
tasks are cancelled the way anyio's cancel scopes cancel them (never inside a shielded scope, never
while a finished wait is being resumed, again if the cancellation was swallowed), and the call
tells its own cancellation from any other by the task's cancellation count. Elsewhere (trio), or
if anyio's task states cannot be read, each call gets an anyio deadline scope instead.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import time
from asyncio import _get_running_loop
from collections.abc import Callable, Mapping
from math import ceil
from types import MappingProxyType
from typing import Any
from weakref import WeakKeyDictionary, ref

from .alarm import ALARMS

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_TIMEOUTS", "Deadline", "Deadlines"]


def _anyio_internals() -> WeakKeyDictionary[asyncio.Task[Any], Any] | None:
    """anyio's record of each asyncio task's innermost cancel scope, if every internal the wheel reads when a
    deadline falls due is where this code expects it (checked once, at import); else None: every call then
    gets an anyio deadline scope, as before, and a newer anyio or Python can never leave a call uncancelled."""
    try:
        from anyio._backends._asyncio import CancelScope, TaskState, _task_states
    except ImportError:  # pragma: no cover - a future anyio
        return None
    scope = CancelScope()
    usable = (
        isinstance(_task_states, WeakKeyDictionary)
        and "cancel_scope" in getattr(TaskState, "__slots__", ())
        and hasattr(scope, "_shield")
        and hasattr(scope, "_parent_scope")
        and hasattr(asyncio.Task, "_must_cancel")
        and hasattr(asyncio.Task, "_fut_waiter")
    )
    return _task_states if usable else None


_anyio_task_states = _anyio_internals()
_task_state_refs: dict[Any, Any] | None = getattr(_anyio_task_states, "data", None)
"""The dictionary inside `_anyio_task_states` (keyed by weak references): read without its Python `get`."""

_current_tasks: dict[Any, asyncio.Task[Any]] | None = getattr(asyncio.tasks, "_current_tasks", None)
if sys.version_info >= (3, 12) or not isinstance(_current_tasks, dict):  # (3.12 on: `current_task` is in C)
    _current_tasks = None
"""asyncio's current task per loop on Python 3.11, read without `current_task`'s Python frame."""
_current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _current_tasks.get if _current_tasks is not None else asyncio.current_task
)

DEFAULT_TIMEOUTS: Mapping[str, float | None] = MappingProxyType(
    {"*": 30.0, "tools/call": 120.0, "subscriptions/listen": None}
)
"""Seconds per selector (most specific wins); `None` means no timeout. A long-lived
`subscriptions/listen` stream is never timed out. Read-only: copy it to change it
(`{**DEFAULT_TIMEOUTS, "tools/call": 300.0}`); the gateway starts from it too."""

DEFAULT_EXCLUDE: tuple[str, ...] = ("subscriptions/listen",)
"""Passed straight through by default: a long-lived stream would hold a half-open probe slot for its whole life."""

TIMEOUT_REASON = "mcp_middleware.breaker: deadline exceeded"
"""The message of the cancellation a deadline delivers."""


class Deadline:
    """One call's deadline on asyncio: see :meth:`Deadlines.start`, then :meth:`finish` when the call ends.

    `expired`: the deadline fell due while the call ran (its task was, or was about to be, cancelled).
    Made empty and filled by :meth:`Deadlines.enter`, so that an object of the call's own may be its
    deadline too (the breaker's common path, one object a request). Not slotted on purpose: what every
    call starts with is a class attribute, so a call stores only what is its own.
    """

    expired = False
    _cancels = 0
    """Cancellations delivered to the task (taken back by :meth:`finish`)."""
    _deadlines: Deadlines
    """The wheel that expired it (set when it expires)."""
    _task: asyncio.Task[Any]
    _base: object = None
    """The task's innermost anyio cancel scope when the call began: shields above it are not the call's."""
    _bucket: dict[Deadline, None]
    _cancelling: int

    def finish(self) -> None:
        """The call has ended: forget the deadline and take back the cancellations it delivered."""
        # Out of its bucket: once expired, that is how `_deliver` knows the call is over. (An empty
        # bucket stays until its tick: no dict made and dropped per call.)
        del self._bucket[self]
        if self._cancels:
            for _ in range(self._cancels):
                self._task.uncancel()

    @property
    def cancelled_elsewhere(self) -> bool:
        """Someone else also cancelled the task during the call (call after :meth:`finish`)."""
        return self._task.cancelling() > self._cancelling

    def _expire(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self.expired = True
        self._bucket = {self: None}  # (out of the swept slot; `finish` still finds itself)
        self._deliver()

    def _deliver(self) -> None:
        """Cancel the task as an anyio cancel scope around the call would; try again until the call ends."""
        if self not in self._bucket:  # finished (`finish` took it out of its bucket)
            return
        task = self._task
        if task.done():
            return
        loop = self._deadlines._loop
        assert loop is not None
        if task._must_cancel:  # type: ignore[attr-defined]  # a cancellation is on its way already
            loop.call_later(self._deadlines.tick, self._deliver)
            return
        waiter = task._fut_waiter  # type: ignore[attr-defined]
        if (isinstance(waiter, asyncio.Future) and waiter.done()) or self._shielded():
            # A finished wait is about to resume (cancelling now would lose its result), or the task
            # is inside a shielded scope: anyio would not cancel it now either; try on the next turn.
            loop.call_soon(self._deliver)
            return
        task.cancel(TIMEOUT_REASON)
        self._cancels += 1
        loop.call_later(self._deadlines.tick, self._deliver)  # again if the call swallows it

    def _shielded(self) -> bool:
        states = _anyio_task_states
        state = states.get(self._task) if states is not None else None
        scope = state.cancel_scope if state is not None else None
        base = self._base
        while scope is not None and scope is not base:
            if scope._shield:
                return True
            scope = scope._parent_scope
        return False


class Deadlines:
    """Cancels overdue calls with one timer for all of them.

    A timer or a cancel scope per request costs more than the rest of the breaker
    together; instead each call's :class:`Deadline` joins the slot of the first tick
    at or after its deadline, and one alarm, armed for the earliest slot, expires whole
    slots as they fall due (the process's alarm thread, :mod:`.alarm`, keeps it out of
    the loop's timer heap; a loop with a clock of its own gets a loop timer). A call is cancelled at most one tick late.
    :meth:`start` answers `None` off asyncio: the caller then opens an anyio deadline scope.
    """

    __slots__ = ("__weakref__", "_armed", "_due", "_handle", "_loop", "_now", "_slots", "tick")  # (weak: see .alarm)

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._slots: dict[int, dict[Deadline, None]] = {}
        self._due: list[int] = []
        """The slots (tick numbers) of `_slots`, as a heap."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | bool | None = None
        """What is armed: a loop timer, True (an alarm of the alarm thread) or None (nothing)."""
        self._armed = 0
        self._now: Callable[[], float] = time.monotonic
        """The loop's clock (`time.monotonic` itself when the loop's `time` is asyncio's own)."""

    def start(self, seconds: float) -> Deadline | None:
        """A deadline `seconds` from now for the current task's call (`None`: not on asyncio)."""
        deadline = Deadline()
        return deadline if self.enter(deadline, seconds) else None

    def enter(self, deadline: Deadline, seconds: float) -> bool:
        """Make the empty `deadline` fall due `seconds` from now for the current task's call (False: not on
        asyncio, `deadline` untouched)."""
        loop = _get_running_loop()
        if loop is None:
            return False
        if loop is not self._loop:  # first use, or a new event loop: nothing of the old one is due here
            if _anyio_task_states is None:
                return False
            self._loop, self._slots, self._due, self._handle = loop, {}, [], None
            self._now = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        task = _current_task(loop)
        if task is None:
            return False
        slot = ceil((self._now() + seconds) / self.tick)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = bucket = {}
            heapq.heappush(self._due, slot)
            if self._handle is None or slot < self._armed:
                self._arm(loop, slot)
        state = _task_state_refs.get(ref(task))  # type: ignore[union-attr]  # (checked when the loop was taken)
        if state is not None:  # (else no anyio scope is open in the task: `_base` stays None)
            deadline._base = state.cancel_scope
        deadline._task = task
        deadline._cancelling = task.cancelling()
        deadline._bucket = bucket
        bucket[deadline] = None
        return True

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        self._armed = slot
        if self._now is time.monotonic:  # the alarm thread (an earlier alarm, if any, is ignored when it comes)
            self._handle = True
            ALARMS.at(slot * self.tick, loop, self._alarm, slot)
            return
        if isinstance(self._handle, asyncio.TimerHandle):
            self._handle.cancel()
        self._handle = loop.call_at(slot * self.tick, self._sweep)

    def _alarm(self, slot: int) -> None:
        """The alarm thread's call: sweep if this is the alarm armed last for this wheel's loop."""
        if slot == self._armed and self._handle is True and asyncio.get_running_loop() is self._loop:
            self._sweep()

    def _sweep(self) -> None:
        self._handle = None
        loop = self._loop
        if loop is None:
            return
        due = loop.time() / self.tick + 1e-9
        heap = self._due
        while heap and heap[0] <= due:
            for deadline in list(self._slots.pop(heapq.heappop(heap))):
                deadline._expire(self)
        if heap:
            self._arm(loop, heap[0])
