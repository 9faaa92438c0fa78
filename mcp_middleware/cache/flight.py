"""Single flight: identical concurrent misses wait for one backend call."""

from __future__ import annotations

import anyio

from .store import CacheEntry

__all__ = ["Flight"]


class Flight:
    """One backend call that identical concurrent misses wait for.

    The event is made only when someone waits: most misses have no company, and an event
    costs more than the rest of the bookkeeping.
    """

    __slots__ = ("_done", "entry", "landed")

    def __init__(self) -> None:
        self._done: anyio.Event | None = None
        self.entry: CacheEntry | None = None
        self.landed = False

    async def wait(self, patience: float) -> CacheEntry | None:
        """The entry the leader stored (None if it stored none), waiting at most `patience` seconds."""
        if not self.landed:
            if self._done is None:
                self._done = anyio.Event()
            with anyio.move_on_after(patience):
                await self._done.wait()
        return self.entry

    def land(self, entry: CacheEntry | None) -> None:
        self.entry = entry
        self.landed = True
        if self._done is not None:
            self._done.set()
