"""The circuit breaker state machine: closed → open → half-open → closed.

A :class:`CircuitBreaker` admits calls (:meth:`~CircuitBreaker.acquire` hands out a
permit, or `None` when the circuit refuses) and learns from their verdicts
(:meth:`~CircuitBreaker.record`). It trips on consecutive failures and/or on a
failure rate over a sliding time window with a minimum volume; stays open for a
duration that grows exponentially each time a probe fails (with jitter, so many
breakers do not retry in lockstep); then lets a bounded number of concurrent
probes through, and closes after enough of them succeed.

Nothing here knows about HTTP or MCP: the clock and the random source are
injectable, so tests drive time by hand.
"""

from __future__ import annotations

import enum
import logging
import random as _random
import time
from collections.abc import Callable
from typing import NamedTuple

from .policy import BreakerPolicy

__all__ = [
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "StateChange",
    "StateListener",
    "Classification",
]

logger = logging.getLogger("mcp_middleware.breaker")

Permit = int
"""What :meth:`CircuitBreaker.acquire` hands out: the breaker's generation at admission.

Every state change starts a new generation, so a verdict that arrives after the
state it was admitted under has ended (a slow call finishing after the circuit
opened) is recognised as stale and ignored.
"""


class BreakerState(enum.Enum):
    CLOSED = "closed"
    """Calls flow; failures are counted."""
    OPEN = "open"
    """Calls are refused at once until the open duration has passed."""
    HALF_OPEN = "half_open"
    """A limited number of probe calls test whether the backend has recovered."""


class Classification(enum.Enum):
    """What one call's outcome means for the breaker."""

    SUCCESS = "success"
    """The backend answered properly (resets the consecutive-failure count)."""
    FAILURE = "failure"
    """The backend failed (timeout, crash, 5xx, JSON-RPC internal error)."""
    NEUTRAL = "neutral"
    """Says nothing about the backend's health (a client error, the client left)."""


class StateChange(NamedTuple):
    """One transition, as state listeners (metrics, logs) receive it.

    `open_for` is the chosen open duration in seconds when `state` is open, else 0.
    `reason`: `"consecutive_failures"`, `"failure_rate"`, `"probe_failed"`,
    `"open_elapsed"`, `"probes_succeeded"`, `"reset"` or `"forced"`.
    """

    key: str
    previous: BreakerState
    state: BreakerState
    reason: str
    open_for: float
    at: float


StateListener = Callable[[StateChange], None]


class BreakerSnapshot(NamedTuple):
    """A read-only view of one breaker (for readiness checks and dashboards)."""

    key: str
    state: BreakerState
    retry_after: float
    """Seconds until an open circuit lets a probe through (0 unless open)."""
    consecutive_failures: int
    window_calls: int
    window_failures: int
    open_level: int
    """How many times in a row the circuit has opened (resets when it closes)."""
    probes_in_flight: int
    rejected: int
    """Calls refused since the breaker was created."""


class CircuitBreaker:
    """One circuit. Not thread-safe: use it from one event loop (as ASGI apps do).

    >>> now = [0.0]
    >>> breaker = CircuitBreaker("demo", BreakerPolicy(consecutive_failures=2, open_for=10.0, jitter=0.0),
    ...                          clock=lambda: now[0])
    >>> for _ in range(2):
    ...     breaker.record(breaker.acquire(), Classification.FAILURE)
    >>> breaker.state, breaker.acquire(), breaker.retry_after()
    (<BreakerState.OPEN: 'open'>, None, 10.0)
    >>> now[0] = 10.0
    >>> probe = breaker.acquire()                      # half-open: one probe at a time
    >>> breaker.acquire() is None
    True
    >>> breaker.record(probe, Classification.SUCCESS)
    >>> breaker.state
    <BreakerState.CLOSED: 'closed'>
    """

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_bucket_index",
        "_bucket_width",
        "_clock",
        "_consecutive",
        "_current_index",
        "_current_slot",
        "_generation",
        "_listeners",
        "_open_until",
        "_pending",
        "_probe_successes",
        "_probes",
        "_random",
        "_state",
        "key",
        "level",
        "policy",
        "rejected",
    )

    def __init__(
        self,
        key: str,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        listeners: list[StateListener] | None = None,
    ) -> None:
        self.key = key
        self.policy = policy = policy if policy is not None else BreakerPolicy()
        self._clock = clock
        self._random = random
        self._listeners = listeners if listeners is not None else []
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._consecutive = 0
        self._open_until = 0.0
        self.level = 0
        self._probes = 0
        self._probe_successes = 0
        self.rejected = 0
        buckets = policy.window_buckets
        self._bucket_width = policy.window / buckets
        self._bucket_index = [-1] * buckets
        self._bucket_calls = [0] * buckets
        self._bucket_failures = [0] * buckets
        self._current_index: int | None = None
        self._current_slot = 0
        """The bucket counted in last (its index and slot): the next count is most likely there too."""
        self._pending = 0
        """Successes counted in that bucket but not yet added to `_bucket_calls` (by :meth:`_fold`)."""

    # --- admission -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an open circuit whose time is up reports half-open)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
            self._change(BreakerState.HALF_OPEN, "open_elapsed")
        return self._state

    def acquire(self) -> Permit | None:
        """A permit to make one call, or `None` if the circuit refuses it now.

        Every permit must be answered by exactly one :meth:`record` (with
        :attr:`Classification.NEUTRAL` if the call was abandoned), or a half-open probe
        slot stays taken.
        """
        state = self._state
        if state is BreakerState.CLOSED:
            return self._generation
        if state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                self.rejected += 1
                return None
            self._change(BreakerState.HALF_OPEN, "open_elapsed")
        if self._probes >= self.policy.half_open_probes:
            self.rejected += 1
            return None
        self._probes += 1
        return self._generation

    def retry_after(self) -> float:
        """Seconds until the circuit admits a call again (0 when closed or probing)."""
        if self._state is BreakerState.OPEN:
            return max(0.0, self._open_until - self._clock())
        return 0.0

    # --- verdicts --------------------------------------------------------------------------

    def record(self, permit: Permit | None, verdict: Classification) -> None:
        """Learn from the call admitted with `permit` (stale permits are ignored)."""
        if verdict is Classification.SUCCESS:
            self.succeeded(permit)
            return
        if permit != self._generation:  # (a `None` permit too: generations are ints)
            return
        if self._state is BreakerState.CLOSED:
            if verdict is Classification.FAILURE:
                self._consecutive += 1
                self._count(True)
                self._maybe_trip()
        elif self._state is BreakerState.HALF_OPEN:
            self._probes -= 1
            if verdict is Classification.FAILURE:
                self.level += 1
                self._open("probe_failed")

    def succeeded(self, permit: Permit | None) -> None:
        """`record(permit, Classification.SUCCESS)`: what most calls earn (the breaker's common path calls it)."""
        if permit != self._generation:  # (a `None` permit too: generations are ints)
            return
        if self._state is BreakerState.CLOSED:  # the hot path: one count in the current bucket
            self._consecutive = 0
            if self._clock() // self._bucket_width == self._current_index:  # (a float equal to the int index)
                self._pending += 1  # (added to the bucket's calls when the window is read or the bucket changes)
            else:
                self._count(False)
        elif self._state is BreakerState.HALF_OPEN:
            self._probes -= 1
            self._probe_successes += 1
            if self._probe_successes >= self.policy.probes_to_close:
                self._close("probes_succeeded")

    def _fold(self) -> None:
        """Add the pending successes to the calls of the bucket they were counted in (`_current_slot`)."""
        self._bucket_calls[self._current_slot] += self._pending
        self._pending = 0

    def _count(self, failed: bool) -> None:
        self._fold()
        index = int(self._clock() // self._bucket_width)
        slot = index % len(self._bucket_index)
        if self._bucket_index[slot] != index:
            self._bucket_index[slot] = index
            self._bucket_calls[slot] = 0
            self._bucket_failures[slot] = 0
        self._current_index, self._current_slot = index, slot
        self._bucket_calls[slot] += 1
        if failed:
            self._bucket_failures[slot] += 1

    def window_counts(self) -> tuple[int, int]:
        """(calls, failures) recorded in the current window."""
        self._fold()
        oldest = int(self._clock() // self._bucket_width) - len(self._bucket_index)
        calls = failures = 0
        for slot, index in enumerate(self._bucket_index):
            if index > oldest:
                calls += self._bucket_calls[slot]
                failures += self._bucket_failures[slot]
        return calls, failures

    def _maybe_trip(self) -> None:
        policy = self.policy
        if policy.consecutive_failures is not None and self._consecutive >= policy.consecutive_failures:
            self._open("consecutive_failures")
            return
        if policy.failure_rate is not None:
            calls, failures = self.window_counts()
            if calls >= policy.minimum_calls and failures >= policy.failure_rate * calls:
                self._open("failure_rate")

    # --- transitions -----------------------------------------------------------------------

    def _open(self, reason: str) -> None:
        duration = self.policy.open_duration(self.level, self._random())
        self._open_until = self._clock() + duration
        self._change(BreakerState.OPEN, reason, duration)

    def _close(self, reason: str) -> None:
        self.level = 0
        self._consecutive = 0
        for slot in range(len(self._bucket_index)):  # a fresh window: counts zeroed, not only marked old
            self._bucket_index[slot] = -1  # (-1 is inside the window while the clock reads < one bucket)
            self._bucket_calls[slot] = 0
            self._bucket_failures[slot] = 0
        self._current_index = None
        self._pending = 0
        self._change(BreakerState.CLOSED, reason)

    def _change(self, state: BreakerState, reason: str, open_for: float = 0.0) -> None:
        previous = self._state
        self._state = state
        self._generation += 1
        self._probes = 0
        self._probe_successes = 0
        # One WARNING per transition, naming the breaker's key (the gateway keys by server name).
        if state is previous and reason == "reset":
            pass  # a reset of a closed circuit changes nothing an operator needs to read
        elif state is BreakerState.OPEN:
            logger.warning("circuit breaker %r open (%s): calls refused for %.1f s", self.key, reason, open_for)
        elif state is BreakerState.HALF_OPEN:
            logger.warning("circuit breaker %r half-open (%s): probing", self.key, reason)
        else:
            logger.warning("circuit breaker %r closed (%s)", self.key, reason)
        if not self._listeners:
            return
        change = StateChange(self.key, previous, state, reason, open_for, self._clock())
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # a broken metrics hook must not break the request path
                logger.exception("circuit breaker state listener failed")

    def reset(self) -> None:
        """Close the circuit by hand (an operator's override); counts start afresh."""
        self._close("reset")

    def force_open(self, duration: float | None = None) -> None:
        """Open the circuit by hand for `duration` seconds (default: the policy's next duration)."""
        if duration is None:
            duration = self.policy.open_duration(self.level, self._random())
        self._open_until = self._clock() + duration
        self._change(BreakerState.OPEN, "forced", duration)

    def snapshot(self) -> BreakerSnapshot:
        state = self.state
        calls, failures = self.window_counts()
        return BreakerSnapshot(
            self.key,
            state,
            self.retry_after(),
            self._consecutive,
            calls,
            failures,
            self.level,
            self._probes,
            self.rejected,
        )
