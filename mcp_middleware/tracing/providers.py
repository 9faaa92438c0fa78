"""Whether a real OpenTelemetry provider records what the middleware emits: asked on every request.

With the API alone (no SDK configured yet) the global providers are the API's stand-ins, and
the middleware skips spans and measurements. A global provider can be set after the middleware
was built (an app's start-up configures telemetry late), so while none is set the question is
asked again; asking the API costs an `os.environ` lookup per provider, so it is asked at most
once a second. A provider, once set globally, stays (the API sets it once per process).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

__all__ = ["ProviderWatch", "quiet_until"]

P = TypeVar("P")

RECHECK_SECONDS: Final = 1.0
"""How soon a global provider set after start-up is noticed."""


class ProviderWatch(Generic[P]):
    """`watch()` is True once the provider (given, or the global one) records; see the module docstring.

    >>> watch = ProviderWatch(lambda: "stand-in", lambda provider: provider != "stand-in")
    >>> watch()
    False
    >>> ProviderWatch(lambda: "sdk", lambda provider: provider != "stand-in")()
    True
    """

    __slots__ = ("_current", "_next", "_records", "_set")

    def __init__(self, current: Callable[[], P], records: Callable[[P], bool], given: P | None = None) -> None:
        self._current = current
        self._records = records
        self._set: bool | None = None if given is None else records(given)
        self._next = 0.0

    def __call__(self) -> bool:
        fixed = self._set
        if fixed is not None:
            return fixed
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + RECHECK_SECONDS
        if self._records(self._current()):
            self._set = True
            return True
        return False

    def quiet_until(self) -> float:
        """Until when (on `time.monotonic()`) the watch answers False without asking anyone: forever for a
        given provider that records nothing, until its next re-check while none is set, never once one records."""
        fixed = self._set
        if fixed is None:
            return self._next
        return -math.inf if fixed else math.inf

    def records_until(self) -> float:
        """Until when (on `time.monotonic()`) the watch answers True without asking anyone: forever once a
        provider records (it stays: see the module docstring), never before."""
        return math.inf if self._set else -math.inf


def quiet_until(*watches: ProviderWatch[Any]) -> float:
    """Until when none of `watches` can answer True (each would answer False without asking the API):
    a caller that asked them all and got False may skip asking again before then (same answers)."""
    return min(watch.quiet_until() for watch in watches)
