"""What each middleware decided about a request, for whoever observes (tracing, logs, metrics).

A middleware never imports tracing: it calls :func:`record_decision` with its name, the
outcome and a few attributes, and the decision lands in the scope. An observer (the
tracing middleware, a test, an access log) installed further out with
:func:`observe_decisions` is called at once with each one; without an observer a decision
costs one small tuple and a list append.

>>> scope = {"type": "http"}
>>> seen = []
>>> observe_decisions(scope, seen.append)
>>> _ = record_decision(scope, "ratelimit", "allow", policy="per-user", remaining=4)
>>> seen[0].component, seen[0].outcome, seen[0].attributes["remaining"]
('ratelimit', 'allow', 4)
>>> [d.outcome for d in get_decisions(scope)]
['allow']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from starlette.types import Scope

__all__ = [
    "DECISIONS_SCOPE_KEY",
    "Decision",
    "DecisionObserver",
    "DecisionValue",
    "get_decisions",
    "observe_decisions",
    "record_decision",
]

DecisionValue = str | bool | int | float
"""Attribute values are the scalar types OpenTelemetry attributes accept."""

DECISIONS_SCOPE_KEY = "mcp_middleware.decisions"
_OBSERVERS_SCOPE_KEY = "mcp_middleware.decision_observers"


class Decision(NamedTuple):
    """One middleware's verdict on one request.

    `component` is the middleware (`"core"`, `"auth"`, `"ratelimit"`, `"breaker"`,
    `"cache"`, …); `outcome` a short lowercase word (`"allow"`, `"deny"`, `"hit"`,
    `"miss"`, `"stale"`, `"open"`, `"rejected"`, …); `attributes` the details
    (`reason`, `policy`, `remaining`, `state`, …) — never secrets.
    """

    component: str
    outcome: str
    attributes: Mapping[str, DecisionValue]


DecisionObserver = Callable[[Decision], None]


def record_decision(scope: Scope, component: str, outcome: str, /, **attributes: DecisionValue) -> Decision:
    """Record a decision in the scope and tell the observers, if any (they must not raise)."""
    decision = Decision(component, outcome, attributes)
    decisions = scope.get(DECISIONS_SCOPE_KEY)
    if decisions is None:
        scope[DECISIONS_SCOPE_KEY] = [decision]
    else:
        decisions.append(decision)
    observers = scope.get(_OBSERVERS_SCOPE_KEY)
    if observers:
        for observer in observers:
            observer(decision)
    return decision


def observe_decisions(scope: Scope, observer: DecisionObserver) -> None:
    """Call `observer` with every decision recorded for this request from now on.

    Install it before calling the app: the list lives in the scope, and scopes copied
    further in (`{**scope, ...}`) share it, so decisions made there are seen too.
    """
    scope.setdefault(DECISIONS_SCOPE_KEY, [])
    observers = scope.get(_OBSERVERS_SCOPE_KEY)
    if observers is None:
        scope[_OBSERVERS_SCOPE_KEY] = [observer]
    else:
        observers.append(observer)


def get_decisions(scope: Scope) -> tuple[Decision, ...]:
    """Every decision recorded for this request so far, in order."""
    return tuple(scope.get(DECISIONS_SCOPE_KEY, ()))
