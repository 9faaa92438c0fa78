"""A breaker's policy: when it trips, how long it stays open, how it probes (see :mod:`.state`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BreakerPolicy"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker trips, how long it stays open, and how it probes.

    Trips when either enabled condition holds (set one to `None` to disable it):
    `consecutive_failures` failures in a row, or a failure rate of at least
    `failure_rate` among the calls of the last `window` seconds once there were at
    least `minimum_calls` of them. The window is kept in `window_buckets` buckets
    (memory is constant; the window slides a bucket at a time).

    The n-th consecutive opening (n = 0 for a trip from closed) lasts
    `min(open_for * backoff ** n, max_open_for)`, times a jitter factor drawn from
    `[1 - jitter, 1 + jitter]`. Half-open admits at most `half_open_probes` calls
    at a time and closes after `probes_to_close` successes; one failed probe opens
    the circuit again.

    >>> BreakerPolicy(consecutive_failures=3, open_for=5.0).open_duration(level=2, draw=0.5)
    20.0
    """

    consecutive_failures: int | None = 5
    failure_rate: float | None = 0.5
    minimum_calls: int = 20
    window: float = 60.0
    window_buckets: int = 10
    open_for: float = 30.0
    backoff: float = 2.0
    max_open_for: float = 300.0
    jitter: float = 0.1
    half_open_probes: int = 1
    probes_to_close: int = 1

    def __post_init__(self) -> None:
        if self.consecutive_failures is None and self.failure_rate is None:
            raise ValueError("BreakerPolicy needs consecutive_failures or failure_rate (or both)")
        if self.consecutive_failures is not None and self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if self.failure_rate is not None and not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.minimum_calls < 1 or self.window_buckets < 1 or self.window <= 0:
            raise ValueError("minimum_calls, window and window_buckets must be positive")
        if self.open_for <= 0 or self.max_open_for < self.open_for or self.backoff < 1.0:
            raise ValueError("need 0 < open_for <= max_open_for and backoff >= 1")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.half_open_probes < 1 or self.probes_to_close < 1:
            raise ValueError("half_open_probes and probes_to_close must be at least 1")

    def open_duration(self, level: int, draw: float) -> float:
        """Seconds to stay open at backoff `level`, for a random `draw` in [0, 1)."""
        base = min(self.open_for * self.backoff ** min(level, 64), self.max_open_for)
        return base * (1.0 + self.jitter * (2.0 * draw - 1.0))
