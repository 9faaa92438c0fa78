"""The breaker state machine: when it trips, how long it stays open, how it probes and closes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from mcp_middleware.breaker import BreakerPolicy, BreakerState, CircuitBreaker, Classification, StateChange


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, draw: float = 0.5, **policy: Any) -> tuple[CircuitBreaker, list[StateChange]]:
    changes: list[StateChange] = []
    made = CircuitBreaker(
        "backend", BreakerPolicy(**policy), clock=clock, random=lambda: draw, listeners=[changes.append]
    )
    return made, changes


def state(b: CircuitBreaker) -> BreakerState:
    """The breaker's state (a call, so that a type checker does not narrow it across transitions)."""
    return b.state


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.record(b.acquire(), Classification.FAILURE)


def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.record(b.acquire(), Classification.SUCCESS)


def test_consecutive_failures_trip_and_a_success_resets_the_count() -> None:
    clock = Clock()
    b, changes = breaker(clock, consecutive_failures=3, failure_rate=None, open_for=10.0, jitter=0.0)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert state(b) is BreakerState.CLOSED
    fail(b)
    assert state(b) is BreakerState.OPEN
    assert b.acquire() is None and b.retry_after() == 10.0
    assert [(c.previous, c.state, c.reason, c.open_for) for c in changes] == [
        (BreakerState.CLOSED, BreakerState.OPEN, "consecutive_failures", 10.0)
    ]


def test_neutral_outcomes_neither_trip_nor_reset() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=2, failure_rate=None)
    fail(b)
    b.record(b.acquire(), Classification.NEUTRAL)
    fail(b)
    assert state(b) is BreakerState.OPEN


def test_failure_rate_needs_the_minimum_volume() -> None:
    clock = Clock()
    b, changes = breaker(clock, consecutive_failures=None, failure_rate=0.5, minimum_calls=10, window=10.0)
    for _ in range(4):
        fail(b)
        succeed(b)
    assert state(b) is BreakerState.CLOSED  # 4 of 8: rate reached, volume not
    succeed(b)
    fail(b)
    assert state(b) is BreakerState.OPEN  # 5 of 10
    assert changes[-1].reason == "failure_rate"


def test_the_window_slides_old_calls_out() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=None, failure_rate=0.5, minimum_calls=4, window=10.0, window_buckets=10)
    fail(b, 3)
    assert b.window_counts() == (3, 3)
    clock.now = 10.5  # the failures' bucket has left the window
    assert b.window_counts() == (0, 0)
    succeed(b, 3)
    fail(b)
    assert state(b) is BreakerState.CLOSED  # 1 failure in 4


def test_open_duration_backs_off_exponentially_with_jitter_and_a_cap() -> None:
    clock = Clock()
    draws = iter([0.5, 0.5, 0.5, 1.0, 0.0])
    changes: list[StateChange] = []
    policy = BreakerPolicy(consecutive_failures=1, open_for=2.0, backoff=3.0, max_open_for=20.0, jitter=0.25)
    b = CircuitBreaker("b", policy, clock=clock, random=lambda: next(draws), listeners=[changes.append])
    fail(b)
    for _ in range(4):
        clock.now += b.retry_after()
        fail(b)  # the probe fails: open again, longer
    assert [round(c.open_for, 6) for c in changes if c.state is BreakerState.OPEN] == [2.0, 6.0, 18.0, 25.0, 15.0]
    # cap 20 s, then ±25% jitter: 20 * 1.25 and 20 * 0.75


def test_half_open_admits_the_probe_budget_and_closes_after_enough_successes() -> None:
    clock = Clock()
    b, changes = breaker(clock, consecutive_failures=1, open_for=5.0, jitter=0.0, half_open_probes=2, probes_to_close=2)
    fail(b)
    clock.now = 5.0
    first, second = b.acquire(), b.acquire()
    assert first is not None and second is not None
    assert state(b) is BreakerState.HALF_OPEN and b.acquire() is None  # budget spent
    b.record(first, Classification.SUCCESS)
    third = b.acquire()  # a slot is free again
    assert third is not None and b.acquire() is None
    b.record(second, Classification.SUCCESS)
    assert state(b) is BreakerState.CLOSED
    b.record(third, Classification.FAILURE)  # admitted as a probe, answered after the circuit closed: stale
    assert state(b) is BreakerState.CLOSED and b.snapshot().consecutive_failures == 0
    assert [c.reason for c in changes] == ["consecutive_failures", "open_elapsed", "probes_succeeded"]


def test_a_neutral_probe_frees_its_slot_without_deciding() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=1, open_for=1.0, jitter=0.0)
    fail(b)
    clock.now = 1.0
    probe = b.acquire()
    b.record(probe, Classification.NEUTRAL)
    assert state(b) is BreakerState.HALF_OPEN and b.acquire() is not None


def test_a_failed_probe_reopens_and_a_close_resets_the_backoff() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=1, open_for=1.0, jitter=0.0)
    fail(b)
    clock.now = 1.0
    fail(b)
    assert state(b) is BreakerState.OPEN and b.retry_after() == 2.0 and b.level == 1
    clock.now = 3.0
    succeed(b)
    assert state(b) is BreakerState.CLOSED and b.level == 0
    fail(b)
    assert b.retry_after() == 1.0


def test_late_verdicts_from_before_a_trip_are_ignored() -> None:
    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=1, open_for=1.0, jitter=0.0)
    slow_call = b.acquire()
    fail(b)
    clock.now = 1.0
    probe = b.acquire()
    b.record(slow_call, Classification.SUCCESS)  # admitted while closed, finished while half-open
    assert state(b) is BreakerState.HALF_OPEN
    b.record(probe, Classification.SUCCESS)
    assert state(b) is BreakerState.CLOSED


def test_snapshot_reset_force_open_and_a_broken_listener() -> None:
    clock = Clock()

    def broken(change: StateChange) -> None:
        raise RuntimeError("a metrics hook with a bug")

    b = CircuitBreaker("k", BreakerPolicy(open_for=4.0, jitter=0.0), clock=clock, listeners=[broken])
    b.force_open()
    snap = b.snapshot()
    assert (snap.key, snap.state, snap.retry_after) == ("k", BreakerState.OPEN, 4.0)
    assert b.acquire() is None and b.snapshot().rejected == 1
    b.reset()
    assert state(b) is BreakerState.CLOSED and b.acquire() is not None


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"consecutive_failures": None, "failure_rate": None}, "needs consecutive_failures or failure_rate"),
        ({"consecutive_failures": 0}, "at least 1"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"open_for": 10.0, "max_open_for": 5.0}, "open_for"),
        ({"jitter": 1.0}, "jitter"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"backoff": 0.5}, "backoff"),
    ],
)
def test_policy_refuses_nonsense(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        BreakerPolicy(**options)  # type: ignore[arg-type]


# --- the state machine against a simple model ------------------------------------------------------


@dataclass
class Model:
    """The breaker's rules written as plainly as possible: every call kept in a list."""

    policy: BreakerPolicy
    state: BreakerState = BreakerState.CLOSED
    generation: int = 0
    consecutive: int = 0
    calls: list[tuple[float, bool]] = field(default_factory=list)
    open_until: float = 0.0
    level: int = 0
    probes: int = 0
    probe_successes: int = 0

    def go(self, state: BreakerState) -> None:
        self.state, self.generation, self.probes, self.probe_successes = state, self.generation + 1, 0, 0

    def tick(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now >= self.open_until:
            self.go(BreakerState.HALF_OPEN)

    def in_window(self, now: float) -> list[bool]:
        width = self.policy.window / self.policy.window_buckets
        current = int(now // width)
        return [failed for at, failed in self.calls if int(at // width) > current - self.policy.window_buckets]

    def open(self, now: float, draw: float) -> None:
        self.open_until = now + self.policy.open_duration(self.level, draw)
        self.go(BreakerState.OPEN)

    def acquire(self, now: float) -> int | None:
        self.tick(now)
        if self.state is BreakerState.OPEN:
            return None
        if self.state is BreakerState.HALF_OPEN:
            if self.probes >= self.policy.half_open_probes:
                return None
            self.probes += 1
        return self.generation

    def record(self, permit: int | None, verdict: Classification, now: float, draw: float) -> None:
        if permit != self.generation:
            return
        p = self.policy
        if self.state is BreakerState.CLOSED and verdict is not Classification.NEUTRAL:
            failed = verdict is Classification.FAILURE
            self.consecutive = self.consecutive + 1 if failed else 0
            self.calls.append((now, failed))
            window = self.in_window(now)
            if failed and (
                (p.consecutive_failures is not None and self.consecutive >= p.consecutive_failures)
                or (
                    p.failure_rate is not None
                    and len(window) >= p.minimum_calls
                    and sum(window) >= p.failure_rate * len(window)
                )
            ):
                self.open(now, draw)
        elif self.state is BreakerState.HALF_OPEN:
            self.probes -= 1
            if verdict is Classification.FAILURE:
                self.level += 1
                self.open(now, draw)
            elif verdict is Classification.SUCCESS:
                self.probe_successes += 1
                if self.probe_successes >= p.probes_to_close:
                    self.level, self.consecutive, self.calls = 0, 0, []
                    self.go(BreakerState.CLOSED)


policies = st.builds(
    BreakerPolicy,
    consecutive_failures=st.one_of(st.none(), st.integers(1, 4)),
    failure_rate=st.sampled_from([0.25, 0.5, 1.0]),
    minimum_calls=st.integers(1, 6),
    window=st.sampled_from([5.0, 10.0]),
    window_buckets=st.integers(1, 5),
    open_for=st.sampled_from([1.0, 2.5]),
    backoff=st.sampled_from([1.0, 2.0]),
    max_open_for=st.sampled_from([10.0, 40.0]),
    jitter=st.sampled_from([0.0, 0.3]),
    half_open_probes=st.integers(1, 3),
    probes_to_close=st.integers(1, 3),
)


class BreakerMachine(RuleBasedStateMachine):
    permits = Bundle("permits")

    @initialize(policy=policies)
    def start(self, policy: BreakerPolicy) -> None:
        self.now = 0.0
        self.draw = 0.5
        self.real = CircuitBreaker("p", policy, clock=lambda: self.now, random=lambda: self.draw)
        self.model = Model(policy)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 2.0, 7.5, 30.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(draw=st.floats(0.0, 0.999))
    def jitter_draw(self, draw: float) -> None:
        self.draw = draw

    @rule(target=permits)
    def acquire(self) -> int | None:
        permit = self.real.acquire()
        assert permit == self.model.acquire(self.now)
        return permit

    @rule(permit=consumes(permits), verdict=st.sampled_from(Classification))
    def record(self, permit: int | None, verdict: Classification) -> None:
        self.real.record(permit, verdict)
        self.model.record(permit, verdict, self.now, self.draw)

    @precondition(lambda self: hasattr(self, "real"))
    @invariant()
    def agrees_with_the_model(self) -> None:
        self.model.tick(self.now)
        snap = self.real.snapshot()
        assert snap.state is self.model.state
        assert snap.probes_in_flight == self.model.probes <= self.real.policy.half_open_probes
        assert snap.consecutive_failures == self.model.consecutive
        window = self.model.in_window(self.now)
        assert (snap.window_calls, snap.window_failures) == (len(window), sum(window))
        expected_wait = max(0.0, self.model.open_until - self.now) if self.model.state is BreakerState.OPEN else 0.0
        assert snap.retry_after == expected_wait
        assert snap.open_level == self.model.level


BreakerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


def test_closing_starts_a_fresh_window_even_at_the_clocks_start() -> None:
    """Found by the state machine: closing marked the window's buckets old but kept their counts, and
    while the clock read less than one bucket the marks were still inside the window."""
    now = [0.0]
    policy = BreakerPolicy(
        consecutive_failures=None,
        failure_rate=0.25,
        minimum_calls=1,
        window=5.0,
        window_buckets=2,
        open_for=1.0,
        jitter=0.0,
        half_open_probes=1,
        probes_to_close=1,
    )
    breaker = CircuitBreaker("p", policy, clock=lambda: now[0], random=lambda: 0.5)
    breaker.record(breaker.acquire(), Classification.FAILURE)
    now[0] = 1.0
    breaker.record(breaker.acquire(), Classification.SUCCESS)
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert (snapshot.window_calls, snapshot.window_failures) == (0, 0)


TestBreakerMachine = BreakerMachine.TestCase


def test_each_transition_is_logged_once_at_warning_naming_the_key(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    clock = Clock()
    b, _ = breaker(clock, consecutive_failures=2, open_for=10.0, jitter=0.0)
    b.reset()  # closed → closed: nothing an operator needs to read
    with caplog.at_level(logging.DEBUG, logger="mcp_middleware.breaker"):
        fail(b, 5)  # two trip it, three more are refused: still one line
        clock.now = 10.0
        assert state(b) is BreakerState.HALF_OPEN and state(b) is BreakerState.HALF_OPEN  # asked twice
        probe = b.acquire()
        b.record(probe, Classification.FAILURE)  # the probe fails: open again, twice as long
        clock.now = 30.0
        b.record(b.acquire(), Classification.SUCCESS)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "circuit breaker 'backend' open (consecutive_failures): calls refused for 10.0 s"),
        (logging.WARNING, "circuit breaker 'backend' half-open (open_elapsed): probing"),
        (logging.WARNING, "circuit breaker 'backend' open (probe_failed): calls refused for 20.0 s"),
        (logging.WARNING, "circuit breaker 'backend' half-open (open_elapsed): probing"),
        (logging.WARNING, "circuit breaker 'backend' closed (probes_succeeded)"),
    ]
