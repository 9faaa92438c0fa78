"""What each middleware decided about a request, for whoever observes (tracing, logs, metrics).

A middleware never imports tracing: it calls :func:`record_decision` with its
:class:`Component`, the :class:`Outcome` and a few attributes, and the decision lands in the scope. An observer (the
tracing middleware, a test, an access log) installed further out with
:func:`observe_decisions` is called at once with each one; without an observer a decision
costs one small tuple and a list append.

>>> scope = {"type": "http"}
>>> seen = []
>>> observe_decisions(scope, seen.append)
>>> _ = record_decision(scope, Component.RATELIMIT, Outcome.ALLOW, policy="per-user", remaining=4)
>>> seen[0].component is Component.RATELIMIT, seen[0].outcome == "allow", seen[0].attributes["remaining"]
(True, True, 4)
>>> [str(d.outcome) for d in get_decisions(scope)]
['allow']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import NamedTuple

from starlette.types import Scope

__all__ = [
    "DECISIONS_SCOPE_KEY",
    "Component",
    "Decision",
    "DecisionObserver",
    "DecisionValue",
    "Outcome",
    "get_decisions",
    "observe_decisions",
    "add_decision",
    "record_decision",
]

DecisionValue = str | bool | int | float
"""Attribute values are the scalar types OpenTelemetry attributes accept."""

DECISIONS_SCOPE_KEY = "mcp_middleware.decisions"
_OBSERVERS_SCOPE_KEY = "mcp_middleware.decision_observers"
_observing = False
"""Whether any observer was ever installed in this process (`observe_decisions`): until then a decision has
no observer to tell, and `add_decision` does not look for any (API-only tracing installs none)."""


class Component(StrEnum):
    """Who decided: the middleware or part of the project that records a decision.

    A `StrEnum`, so a member equals its word (`Component.AUTH == "auth"`) and is written as it.
    """

    CORE = "core"
    """The kernel: bad input refused before any middleware saw the request."""
    AUTH = "auth"
    RATELIMIT = "ratelimit"
    BREAKER = "breaker"
    CACHE = "cache"
    ROUTER = "router"
    FRONTDOOR = "frontdoor"
    """The gateway's front door (Host, Origin, body size)."""
    AFFINITY = "affinity"
    """The gateway's legacy-session affinity check."""
    POLICY = "policy"
    """The policy middleware: a rule allowed or denied a call (attributes `rule`, `reason`, `phase`)."""
    ARGUMENTS = "arguments"
    """Argument validation against the tool's `inputSchema` (`allow`, `rejected`, `bypass`: schema unknown)."""
    CREDENTIALS = "credentials"
    """A backend's own credentials (RFC 8693 exchange): `allow` (attribute `cached`), `deny` (the token
    endpoint refused the caller: 401/403), `failure` (it failed: 502/504), `retry` (the backend said 401)."""
    APPROVAL = "approval"
    """Human approval of a call (`required`: asked; `approved`; `deny`: refused, `reason` says how; `timeout`)."""
    SESSION = "session"
    """The gateway's sealed session handles (`rejected` with a `reason`, `session_refused`, `reopened`)."""


class Outcome(StrEnum):
    """What was decided: a short lowercase word, the same for every component that uses it."""

    ALLOW = "allow"
    DENY = "deny"
    REJECTED = "rejected"
    """core: bad input answered with a JSON-RPC error."""
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"
    BYPASS = "bypass"
    INVALIDATE = "invalidate"
    EVICT = "evict"
    """cache: entries left the cache to make room (attribute `count`, an int)."""
    OPEN = "open"
    """breaker: refused by an open (or probing) circuit."""
    PROBE = "probe"
    TIMEOUT = "timeout"
    RETRY = "retry"
    SUCCESS = "success"
    FAILURE = "failure"
    NEUTRAL = "neutral"
    """breaker: a call's verdict (`success`, `failure`, or `neutral`: says nothing of the backend's health)."""
    ROUTED = "routed"
    FALLBACK = "fallback"
    """router: a route moved a call on to its next backend (attributes `route`, `server`, `to`, `reason`)."""
    PARTIAL = "partial"
    """router: a merged list that lacks some backends (attribute `failed`)."""
    BACKEND_ERROR = "backend_error"
    SESSION_REFUSED = "session_refused"
    MISROUTED = "misrouted"
    REQUIRED = "required"
    """approval: the call is held and its approver asked (attributes `approver`, `digest`, `reason`)."""
    APPROVED = "approved"
    """approval: the approver said yes; the call runs."""
    REOPENED = "reopened"
    """session: a sealed session this process did not hold was opened again here (its sealed `initialize`)."""


class Decision(NamedTuple):
    """One middleware's verdict on one request.

    `component` is who decided, `outcome` what (see :class:`Component`, :class:`Outcome`);
    `attributes` the details (`reason`, `policy`, `remaining`, `state`, …) — never secrets.
    """

    component: Component
    outcome: Outcome
    attributes: Mapping[str, DecisionValue]


DecisionObserver = Callable[[Decision], None]


def record_decision(scope: Scope, component: Component, outcome: Outcome, /, **attributes: DecisionValue) -> Decision:
    """Record a decision in the scope and tell the observers, if any (they must not raise)."""
    # tuple.__new__ builds the NamedTuple without its Python-level __new__ (a frame per decision).
    decision: Decision = tuple.__new__(Decision, (component, outcome, attributes))
    add_decision(scope, decision)
    return decision


def add_decision(scope: Scope, decision: Decision) -> None:
    """:func:`record_decision` for a decision already built: a constant made once (say, the same
    `allow` for every request of one caller), or one built on a hot path without keyword arguments.

    >>> scope = {"type": "http"}
    >>> ALLOWED = Decision(Component.AUTH, Outcome.ALLOW, {"subject": "alice"})
    >>> add_decision(scope, ALLOWED)
    >>> get_decisions(scope) == (ALLOWED,)
    True
    """
    scope.setdefault(DECISIONS_SCOPE_KEY, []).append(decision)
    if _observing:  # (until a first observer is installed in this process, no scope has one to tell)
        observers = scope.get(_OBSERVERS_SCOPE_KEY)
        if observers:
            for observer in observers:
                observer(decision)


def observe_decisions(scope: Scope, observer: DecisionObserver) -> None:
    """Call `observer` with every decision recorded for this request from now on.

    Install it before calling the app: the list lives in the scope, and scopes copied
    further in (`{**scope, ...}`) share it, so decisions made there are seen too.
    """
    global _observing
    _observing = True
    scope.setdefault(DECISIONS_SCOPE_KEY, [])
    observers = scope.get(_OBSERVERS_SCOPE_KEY)
    if observers is None:
        scope[_OBSERVERS_SCOPE_KEY] = [observer]
    else:
        observers.append(observer)


def get_decisions(scope: Scope) -> tuple[Decision, ...]:
    """Every decision recorded for this request so far, in order."""
    return tuple(scope.get(DECISIONS_SCOPE_KEY, ()))
