"""The contract between the middlewares that decide and the tracing that counts.

(a) Every (component, outcome) that tracing's metrics, spans or access log treat specially is
produced by some middleware: the producers are found by reading the package's source (every
`record_decision(...)` and router `decide(...)` call, every decision built whole for `add_decision`:
`Decision(Component.X, Outcome.Y, …)` or the tuple `(Component.X, Outcome.Y, …)`), the special cases
by asking the metrics themselves which decisions feed an instrument of their own.

(b) Every metric docs/observability.md documents is fed by real traffic through the real stack
(auth → rate limit → cache → breaker around an SDK server, under uvicorn), read back from an
in-memory OpenTelemetry reader.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

import mcp_middleware
from mcp_middleware import stack
from mcp_middleware.auth import StaticTokenVerifier
from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.cache import MemoryCacheStore
from mcp_middleware.core import Component, Decision, Outcome
from mcp_middleware.ratelimit import BucketPolicy
from mcp_middleware.tracing.metrics import McpMetrics
from tests.conftest import Served
from tests.servers import build_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

PACKAGE = Path(mcp_middleware.__file__).parent
DOCS = PACKAGE.parent / "docs" / "observability.md"

# Outcomes computed at run time, by the producer that computes them (the scan cannot read a variable).
DYNAMIC: dict[tuple[str, str], set[str]] = {
    ("breaker/call.py", "breaker"): {"success", "failure", "neutral"},  # a `Classification`'s value
    ("router/bridge.py", "router"): set(),  # `decide()` passes its caller's outcome on; the callers are scanned
    ("cache/middleware.py", "cache"): {"hit", "stale"},  # `status` of a served entry
    ("router/credentials.py", "credentials"): {"deny", "failure"},  # 401/403 deny, 502/504 failure
}


def _word(node: ast.expr, enum: str) -> str | None:
    """`Component.AUTH` / `"auth"` → "auth"; anything computed → None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == enum:
        return str(getattr(Component if enum == "Component" else Outcome, node.attr))
    return None


def _named(node: ast.expr, enum: str) -> bool:
    """`node` is `Component.X` / `Outcome.Y` written out (not a string that happens to be a word)."""
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == enum


def produced() -> set[tuple[str, str]]:
    """Every (component, outcome) some module of the package records."""
    pairs: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), relative)):
            if isinstance(node, ast.Tuple) and len(node.elts) == 3:  # a decision built whole, for `add_decision`
                component, outcome = _word(node.elts[0], "Component"), _word(node.elts[1], "Outcome")
                if component is not None and outcome is not None and _named(node.elts[0], "Component"):
                    pairs.add((component, outcome))
                continue
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id == "Decision" and len(node.args) >= 2:  # `Decision(Component.X, Outcome.Y, …)`
                component, outcome_node = _word(node.args[0], "Component"), node.args[1]
            elif node.func.id == "record_decision" and len(node.args) >= 3:
                component = _word(node.args[1], "Component")
                outcome_node = node.args[2]
            elif node.func.id == "decide" and len(node.args) >= 2:  # the router's aggregate and bridge
                component, outcome_node = "router", node.args[1]
            else:
                continue
            if component is None:
                continue
            outcome = _word(outcome_node, "Outcome")
            if outcome is not None:
                pairs.add((component, outcome))
            else:  # a computed outcome: its producer must say which words it computes
                words = DYNAMIC.get((relative, component))
                assert words is not None, (
                    f"{relative}:{node.lineno} computes its outcome: list what it can be in DYNAMIC"
                )
                pairs.update((component, word) for word in words)
    return pairs


def specially_counted() -> set[tuple[str, str]]:
    """The decisions that feed a metric of their own (not only `mcp.middleware.decisions`), asked of the metrics."""
    special: set[tuple[str, str]] = set()
    for component in Component:
        for outcome in Outcome:
            reader = InMemoryMetricReader()
            McpMetrics(MeterProvider(metric_readers=[reader])).record_decision(
                Decision(component, outcome, {"reason": "r", "policy": "p", "state": "open", "count": 1})
            )
            data = reader.get_metrics_data()
            names = (
                {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics} if data else set()
            )
            if names - {"mcp.middleware.decisions"}:
                special.add((str(component), str(outcome)))
    return special


def referenced_in_tracing() -> set[str]:
    """Every `Component.X` and `Outcome.Y` the tracing package names (its special cases), as words."""
    words: set[str] = set()
    for path in (PACKAGE / "tracing").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("Component", "Outcome")
            ):
                word = _word(node, node.value.id)
                assert word is not None
                words.add(f"{node.value.id}:{word}")
    return words


def test_the_scan_sees_the_producers() -> None:
    # The scan itself must work, or (a) would pass on an empty set.
    pairs = produced()
    assert ("core", "rejected") in pairs
    assert ("auth", "deny") in pairs and ("ratelimit", "deny") in pairs
    assert ("router", "routed") in pairs and ("router", "partial") in pairs and ("router", "fallback") in pairs
    assert ("breaker", "open") in pairs and ("cache", "miss") in pairs
    assert ("policy", "deny") in pairs and ("arguments", "rejected") in pairs
    assert {c for c, _ in pairs} == {str(c) for c in Component}, "a component no module records"


def test_every_specially_counted_decision_is_produced() -> None:
    special = specially_counted()
    assert special, "the metrics count nothing specially: the probe is broken"
    pairs = produced()
    missing = {pair for pair in special if pair not in pairs}
    assert not missing, f"tracing counts decisions no middleware makes: {sorted(missing)}"


def test_every_word_tracing_matches_is_produced() -> None:
    pairs = produced()
    components = {c for c, _ in pairs}
    outcomes = {o for _, o in pairs}
    for reference in referenced_in_tracing():
        kind, word = reference.split(":")
        assert word in (components if kind == "Component" else outcomes), f"tracing matches {reference}, never made"
    # The core's refusal is what the exchange reads the JSON-RPC code from.
    assert ("core", "rejected") in pairs


def documented_metrics() -> list[str]:
    """The instrument names of the Metrics table of docs/observability.md."""
    text = DOCS.read_text()
    table = text[text.index("## Metrics") :]
    table = table[: table.index("\n\n", table.index("| instrument"))]
    return re.findall(r"^\| `([a-z_.]+)`", table, re.MULTILINE)


def test_the_documented_metrics_are_found() -> None:
    names = documented_metrics()
    assert "mcp.server.operation.duration" in names and "mcp.middleware.cache.evictions" in names
    assert len(names) >= 8


async def test_every_documented_metric_is_fed_by_real_traffic(serve: Any) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    served: Served | None = None
    app = stack(
        build_server().streamable_http_app(),
        auth={
            "verifier": StaticTokenVerifier({"tok": ["mcp"]}, resource="http://127.0.0.1/mcp"),
            "resource": "http://127.0.0.1/mcp",
        },
        # Five requests with the token pass; the sixth is refused.
        ratelimit={"policies": [BucketPolicy("per-user", rate=0.001, capacity=5)]},
        # One entry: a second list evicts the first.
        cache={"store": MemoryCacheStore(max_entries=1), "honor_ttl_ms": False, "ttl": 60},
        breaker={
            "policy": BreakerPolicy(consecutive_failures=1, open_for=60),
            "timeouts": {"tools/call:slow": 0.05},
        },
        tracing={"meter_provider": provider},
    )
    assert app.breaker is not None and app.tracing is not None
    app.breaker.registry.add_listener(app.tracing.metrics.record_breaker_change)
    recorder = DecisionRecorder(app)
    served = serve(recorder)
    token = {"authorization": "Bearer tok"}

    async def call(method: str, params: dict[str, Any] | None = None, name: str | None = None, **headers: str) -> int:
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.post(
                served.mcp_url, content=modern_body(method, params), headers=modern_headers(method, name, **headers)
            )
            return response.status_code

    assert await call("tools/call", {"name": "echo", "arguments": {"text": "a"}}, "echo") == 401
    assert await call("tools/list", **token) == 200  # miss, stored
    assert await call("tools/list", **token) == 200  # hit
    assert await call("prompts/list", **token) == 200  # miss, stored: evicts tools/list
    assert await call("tools/call", {"name": "slow", "arguments": {"steps": 5}}, "slow", **token) == 504  # timeout
    assert await call("tools/call", {"name": "echo", "arguments": {"text": "b"}}, "echo", **token) == 503  # open
    assert await call("tools/call", {"name": "echo", "arguments": {"text": "c"}}, "echo", **token) == 429

    data = reader.get_metrics_data()
    assert data is not None
    fed: dict[str, float] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = point.value if isinstance(point, NumberDataPoint) else point.count
                    fed[metric.name] = fed.get(metric.name, 0) + value
    unfed = [name for name in documented_metrics() if not fed.get(name)]
    assert not unfed, f"documented but never fed: {unfed}"
    # The shape tracing reads: component cache, outcome evict, `count` the number of entries dropped (an int).
    evictions = [d.attributes for d in recorder.decisions if (d.component, d.outcome) == ("cache", "evict")]
    assert evictions and all(type(e.get("count")) is int and e["count"] > 0 for e in evictions), evictions
    assert fed["mcp.middleware.cache.evictions"] == sum(int(e["count"]) for e in evictions) == 1
