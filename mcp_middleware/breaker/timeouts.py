"""Timeouts: the default seconds per method, and one timer that cancels every overdue call.

A timed-out call is cancelled and answered with a JSON-RPC error (see :mod:`.call`); a legacy
session is also told `notifications/cancelled`, since its handler does not run in the request.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from types import MappingProxyType

import anyio

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_TIMEOUTS", "Deadlines"]

DEFAULT_TIMEOUTS: Mapping[str, float | None] = MappingProxyType(
    {"*": 30.0, "tools/call": 120.0, "subscriptions/listen": None}
)
"""Seconds per selector (most specific wins); `None` means no timeout. A long-lived
`subscriptions/listen` stream is never timed out. Read-only: copy it to change it
(`{**DEFAULT_TIMEOUTS, "tools/call": 300.0}`); the gateway starts from it too."""

DEFAULT_EXCLUDE: tuple[str, ...] = ("subscriptions/listen",)
"""Passed straight through by default: a long-lived stream would hold a half-open probe slot for its whole life."""


class Deadlines:
    """Cancels overdue calls with one timer for all of them.

    A timer per request (`anyio.move_on_after`) costs more than the rest of the
    breaker together; instead each call's cancel scope (without a deadline of its
    own) joins the slot of the first tick at or after its deadline, and one loop
    timer, armed for the earliest slot, cancels whole slots as they fall due. A call
    is cancelled at most one tick late. Off asyncio, each call gets a deadline scope.
    """

    __slots__ = ("_armed", "_handle", "_loop", "_scope_class", "_slots", "tick")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._slots: dict[int, dict[anyio.CancelScope, None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0
        self._scope_class: type[anyio.CancelScope] = anyio.CancelScope
        """The running backend's own cancel scope class (`anyio.CancelScope()` looks the backend up on each call)."""

    def scope(self, seconds: float) -> tuple[anyio.CancelScope, int | None]:
        """A cancel scope that is cancelled `seconds` from now (give the slot back to :meth:`release`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return anyio.CancelScope(deadline=anyio.current_time() + seconds), None
        if loop is not self._loop:  # first use, or a new event loop: nothing of the old one is due here
            self._loop, self._slots, self._handle = loop, {}, None
            self._scope_class = type(anyio.CancelScope())
        cancel = self._scope_class()
        slot = math.ceil((loop.time() + seconds) / self.tick)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = bucket = {}
        bucket[cancel] = None
        if self._handle is None or slot < self._armed:
            self._arm(loop, slot)
        return cancel, slot

    def release(self, cancel: anyio.CancelScope, slot: int | None) -> None:
        if slot is None:
            return
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.pop(cancel, None)
            if not bucket:
                del self._slots[slot]

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = loop.call_at(slot * self.tick, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        loop = self._loop
        if loop is None:
            return
        due = loop.time() / self.tick + 1e-9
        for slot in [slot for slot in self._slots if slot <= due]:
            for cancel in self._slots.pop(slot):
                cancel.cancel("timeout")
        if self._slots:
            self._arm(loop, min(self._slots))
