"""The counters fed by the middlewares' decisions, counted when a reader collects (or a batch fills).

Every decision of every request is counted (`mcp.middleware.decisions`), and a few in a counter of
their component's own (auth failures, rate-limit and breaker refusals, cache lookups and evictions).
On the request path a decision is only appended to a list: the observer a measured request installs
is that list's own `append` (C, no frame of ours a decision); the list is counted, in order, by the
same rules as before, when a reader collects (each counter's callback counts it first), when it
reaches `_BATCH` decisions, and before a circuit change is counted. So a collection reports every
decision made before it, as when each was counted at once. Counting is under one lock: a reader's
thread and the event loop never count at the same time.
"""

from __future__ import annotations

import threading
from collections import Counter
from itertools import compress
from operator import itemgetter
from typing import Final, Protocol

from opentelemetry.metrics import Meter

from mcp_middleware.core import OTHER, BoundedValues, Component, Decision, Outcome

from .semconv import AttributeMap
from .tally import Tally

__all__ = ["BreakerChange", "DecisionCounters"]

_OTHER: Final = OTHER
_CACHE_LOOKUPS: Final = frozenset({Outcome.HIT, Outcome.MISS, Outcome.STALE})
_AUTH, _RATELIMIT, _BREAKER, _CACHE = Component.AUTH, Component.RATELIMIT, Component.BREAKER, Component.CACHE
_DENY, _OPEN, _EVICT = Outcome.DENY, Outcome.OPEN, Outcome.EVICT
_COUNTED_APART: Final = frozenset({_DENY, _OPEN, _EVICT, *_CACHE_LOOKUPS})
"""The outcomes some component counts in an instrument of its own, besides `mcp.middleware.decisions`."""
_KEY: Final = itemgetter(0, 1)  # a decision's (component, outcome)
_OUTCOME: Final = itemgetter(1)
_COUNTERS: Final = (  # (attribute, instrument, labels, unit, description); each collection counts the pending first
    (
        "decisions",
        "mcp.middleware.decisions",
        ("mcp_middleware.component", "mcp_middleware.outcome"),
        "{decision}",
        "Decisions of the middlewares, by outcome.",
    ),
    (
        "auth_failures",
        "mcp.middleware.auth.failures",
        ("mcp_middleware.outcome", "mcp_middleware.reason"),
        "{request}",
        "Requests auth did not allow, by reason.",
    ),
    (
        "ratelimit_refusals",
        "mcp.middleware.ratelimit.refusals",
        ("mcp_middleware.policy", "mcp_middleware.reason"),
        "{request}",
        "Requests refused by a rate limit.",
    ),
    (
        "breaker_refusals",
        "mcp.middleware.breaker.refusals",
        ("mcp_middleware.state",),
        "{request}",
        "Requests refused by an open circuit.",
    ),
    (
        "breaker_transitions",  # (not a decision: counted at once, after the pending ones)
        "mcp.middleware.breaker.transitions",
        ("mcp_middleware.breaker", "mcp_middleware.previous", "mcp_middleware.state", "mcp_middleware.reason"),
        "{transition}",
        "Circuit breaker state changes.",
    ),
    (
        "cache_lookups",
        "mcp.middleware.cache.lookups",
        ("mcp_middleware.outcome",),
        "{lookup}",
        "Response cache lookups, by outcome.",
    ),
    ("cache_evictions", "mcp.middleware.cache.evictions", (), "{entry}", "Entries evicted from the response cache."),
)
BATCH: Final = 256
"""Decisions waiting at most (give or take one request's) before they are counted without a reader asking."""


class BreakerChange(Protocol):
    """What :meth:`DecisionCounters.record_breaker_change` reads of a circuit state change."""

    @property
    def key(self) -> object: ...
    @property
    def previous(self) -> object: ...
    @property
    def state(self) -> object: ...
    @property
    def reason(self) -> object: ...


class DecisionCounters:
    """The decision counters of one meter; `pending.append` is a decision observer (see the module docstring)."""

    __slots__ = (
        "_breakers",
        "_lock",
        "_reasons",
        "auth_failures",
        "breaker_refusals",
        "breaker_transitions",
        "cache_evictions",
        "cache_lookups",
        "decisions",
        "pending",
        "ratelimit_refusals",
    )

    decisions: Tally
    auth_failures: Tally
    ratelimit_refusals: Tally
    breaker_refusals: Tally
    breaker_transitions: Tally
    cache_lookups: Tally
    cache_evictions: Tally

    def __init__(self, meter: Meter, max_names: int) -> None:
        self.pending: list[Decision] = []
        """Decisions not counted yet, in the order they were made."""
        self._lock = threading.Lock()
        self._reasons = BoundedValues(max_names)
        self._breakers = BoundedValues(max_names, max_length=128)
        for attribute, name, labels, unit, description in _COUNTERS:  # (in the order they were always created)
            setattr(self, attribute, Tally(meter, name, labels, unit=unit, description=description, before=self.drain))

    def record(self, decision: Decision) -> None:
        """Count one decision (soon: it joins the pending ones, counted in order)."""
        pending = self.pending
        pending.append(decision)
        if len(pending) >= BATCH:
            self.drain()

    def drain(self) -> None:
        """Count every pending decision, in order (from any thread)."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        pending = self.pending
        size = len(pending)
        if not size:
            return
        batch = pending[:size]  # each step holds the GIL: an append from the loop meanwhile stays pending
        del pending[:size]
        # Counted in C: a Counter of (component, outcome) in order of first appearance (the order a key
        # is first counted in, as one by one), then one addition a key.
        tally = self.decisions
        totals = tally.totals
        for key, amount in Counter(map(_KEY, batch)).items():
            if key in totals:
                totals[key] += amount
            else:
                tally.count(key, amount)
        for decision in compress(batch, map(_COUNTED_APART.__contains__, map(_OUTCOME, batch))):
            self._count_apart(decision)  # the few a component counts apart too, in order

    def _count_apart(self, decision: Decision) -> None:
        component, outcome, details = decision
        # Members are read from module constants: on Python 3.11 `Component.AUTH` is a slow lookup (the
        # enum metaclass's `__getattr__` hook).
        if component == _AUTH:
            if outcome == _DENY:
                reason = self._text(details.get("reason"))
                self.auth_failures.add(1, {"mcp_middleware.outcome": outcome, "mcp_middleware.reason": reason})
        elif component == _RATELIMIT:
            if outcome == _DENY:
                refusal: AttributeMap = {"mcp_middleware.policy": self._text(details.get("policy"))}
                if isinstance(why := details.get("reason"), str):
                    refusal["mcp_middleware.reason"] = self._text(why)
                self.ratelimit_refusals.add(1, refusal)
        elif component == _BREAKER:
            if outcome == _OPEN:
                self.breaker_refusals.add(1, {"mcp_middleware.state": self._text(details.get("state"))})
        elif component == _CACHE:
            if outcome in _CACHE_LOOKUPS:
                self.cache_lookups.add(1, {"mcp_middleware.outcome": outcome})
            elif outcome == _EVICT:
                count = details.get("count", 1)
                if type(count) is int and count > 0:
                    self.cache_evictions.add(count)

    def _text(self, value: object) -> str:
        """A decision detail as a label: bounded in number and length (a reason may quote the request)."""
        return self._reasons(value) if isinstance(value, str) and value else _OTHER

    def record_breaker_change(self, change: BreakerChange) -> None:
        """Count one circuit state change (after the decisions made before it: their labels share a bound)."""
        with self._lock:
            self._drain()
            self.breaker_transitions.add(
                1,
                {
                    "mcp_middleware.breaker": self._breakers(_state(change.key)),
                    "mcp_middleware.previous": self._text(_state(change.previous)),
                    "mcp_middleware.state": self._text(_state(change.state)),
                    "mcp_middleware.reason": self._text(_state(change.reason)),
                },
            )


def _state(value: object) -> str:
    """A state (or its enum) as text."""
    value = getattr(value, "value", value)
    return value if isinstance(value, str) and value else _OTHER
