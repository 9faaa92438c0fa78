"""Decisions: what each middleware decided lands in the scope and reaches observers, refusals of the core too."""

from __future__ import annotations

import httpx2
import pytest
from starlette.types import Scope

from mcp_middleware.core import (
    Decision,
    McpCoreMiddleware,
    get_decisions,
    observe_decisions,
    record_decision,
)
from tests.conftest import Served
from tests.servers import build_server
from tests.support.decisions import DecisionRecorder


def test_decisions_are_recorded_in_order_and_observed() -> None:
    scope: Scope = {"type": "http"}
    record_decision(scope, "auth", "allow", subject="alice")  # before anyone observes: kept, not reported
    seen: list[Decision] = []
    observe_decisions(scope, seen.append)
    record_decision(scope, "ratelimit", "deny", policy="burst", retry_after_ms=250)
    assert [(d.component, d.outcome) for d in get_decisions(scope)] == [("auth", "allow"), ("ratelimit", "deny")]
    assert seen == [Decision("ratelimit", "deny", {"policy": "burst", "retry_after_ms": 250})]


def test_before_any_observer_exists_decisions_are_kept_and_the_first_observer_sees_what_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`add_decision` looks for observers only once one was installed in the process (the flag it reads):
    the same decisions land in the scope either way, and an observer installed later misses none after it."""
    from mcp_middleware.core import decisions as module

    monkeypatch.setattr(module, "_observing", False)
    first: Scope = {"type": "http"}
    allowed = Decision("auth", "allow", {"subject": "alice"})
    module.add_decision(first, allowed)
    record_decision(first, "ratelimit", "allow", policy="p", remaining=3)
    assert module._observing is False
    seen: list[Decision] = []
    observe_decisions(first, seen.append)  # installs the first observer of the process
    assert module._observing is True
    module.add_decision(first, allowed)
    record_decision(first, "cache", "miss")
    assert [(d.component, d.outcome) for d in get_decisions(first)] == [
        ("auth", "allow"),
        ("ratelimit", "allow"),
        ("auth", "allow"),
        ("cache", "miss"),
    ]
    assert seen == [allowed, Decision("cache", "miss", {})]
    other: Scope = {"type": "http"}  # another request without an observer of its own: nothing to call
    record_decision(other, "cache", "hit")
    assert len(seen) == 2 and get_decisions(other) == (Decision("cache", "hit", {}),)


def test_a_copied_scope_shares_the_decisions_of_its_origin() -> None:
    outer: Scope = {"type": "http"}
    seen: list[Decision] = []
    observe_decisions(outer, seen.append)
    inner = {**outer, "path": "/mcp"}  # what mounts and routers do
    record_decision(inner, "cache", "hit")
    assert get_decisions(outer) == (Decision("cache", "hit", {}),)
    assert len(seen) == 1


def test_no_decisions_is_an_empty_tuple() -> None:
    assert get_decisions({"type": "http"}) == ()


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"content-type": "text/plain"}, b"{}", 415),
        ({"content-type": "application/json"}, b"{not json", 400),
        ({"content-type": "application/json"}, b"x" * 5_000_000, 413),
    ],
    ids=["media-type", "malformed", "too-large"],
)
def test_core_refusals_are_decisions(serve: object, headers: dict[str, str], body: bytes, status: int) -> None:
    observer = DecisionRecorder(McpCoreMiddleware(build_server().streamable_http_app()))
    served: Served = serve(observer)  # type: ignore[operator]
    accept = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}
    response = httpx2.post(served.mcp_url, content=body, headers={**headers, **accept})
    assert response.status_code == status
    [decision] = observer.decisions
    assert (decision.component, decision.outcome, decision.attributes["status"]) == ("core", "rejected", status)
    assert decision.attributes["code"] == response.json()["error"]["code"]
