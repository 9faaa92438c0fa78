"""The decision counters count in batches (a measured request only appends its decisions to a list): what a reader
collects must be what counting each decision at once would have given, at every collection, in the same order,
whatever the decisions (hostile labels past the bounds, plain strings for enum members, odd eviction counts),
whichever thread collects, and the list stays bounded without a reader."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx2
from hypothesis import example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NoOpTracerProvider

from mcp_middleware.core import Component, Decision, Outcome
from mcp_middleware.tracing import McpMetrics, TracingMiddleware
from mcp_middleware.tracing.decision_counters import BATCH
from tests.conftest import Served
from tests.servers import build_server

from .conftest import RecordingDecider
from .test_measured import _modern_call

COUNTERS = (
    "mcp.middleware.decisions",
    "mcp.middleware.auth.failures",
    "mcp.middleware.ratelimit.refusals",
    "mcp.middleware.breaker.refusals",
    "mcp.middleware.breaker.transitions",
    "mcp.middleware.cache.lookups",
    "mcp.middleware.cache.evictions",
)


@dataclass(frozen=True)
class Change:
    """A circuit state change (what the breaker hands its state listener)."""

    key: object
    previous: object
    state: object
    reason: object


def collected(reader: InMemoryMetricReader) -> list[tuple[str, list[tuple[tuple[tuple[str, Any], ...], Any]]]]:
    """Every counter's points, in the order the reader reports them (labels in order, then the value)."""
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[tuple[tuple[str, Any], ...], Any]]] = {}
    if data is not None:
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name in COUNTERS:
                        found[metric.name] = [
                            (tuple((p.attributes or {}).items()), p.value) for p in metric.data.data_points
                        ]
    return [(name, found.get(name, [])) for name in COUNTERS]


def _pair(max_names: int) -> tuple[tuple[McpMetrics, InMemoryMetricReader], tuple[McpMetrics, InMemoryMetricReader]]:
    made = []
    for _ in range(2):
        reader = InMemoryMetricReader()
        made.append((McpMetrics(MeterProvider(metric_readers=[reader]), max_names=max_names), reader))
    return made[0], made[1]


_WORDS = st.sampled_from(["expired", "burst", "open", "x" * 80, "", "reason-1", "reason-2", "reason-3", "é"])
_DETAILS = st.dictionaries(
    st.sampled_from(["reason", "policy", "state", "count", "subject"]),
    st.one_of(_WORDS, st.integers(-2, 5), st.booleans(), st.floats(allow_nan=False, allow_infinity=False)),
    max_size=3,
)
_COMPONENTS = st.sampled_from([*Component, "auth", "cache", "ratelimit", "somebody"])
_OUTCOMES = st.sampled_from([*Outcome, "deny", "hit", "evict", "open", "whatever"])
_DECISION = st.builds(lambda c, o, d: Decision(c, o, d), _COMPONENTS, _OUTCOMES, _DETAILS)
_CHANGE = st.builds(Change, _WORDS, _WORDS, _WORDS, _WORDS)
_STEP = st.one_of(_DECISION, _DECISION, _DECISION, _CHANGE, st.just("collect"))


@settings(max_examples=150, deadline=None)
@example(  # a circuit change after a pending refusal: the refusal's reason is first to a label of the shared bound
    steps=[
        Decision(Component.AUTH, Outcome.DENY, {"reason": "expired"}),
        Change("k", "closed", "open", "x"),
        "collect",
    ],
    max_names=1,
)
@given(steps=st.lists(_STEP, max_size=80), max_names=st.integers(1, 4))
def test_counted_in_batches_is_counted_as_each_at_once(steps: list[object], max_names: int) -> None:
    (batched, batched_reader), (each, each_reader) = _pair(max_names)
    try:
        for step in steps:
            if isinstance(step, Decision):
                batched.pending_decision(step)  # what a measured request does: an append, counted later
                each.record_decision(step)
                each.counters.drain()  # counted at once, as before batches
            elif isinstance(step, Change):
                batched.record_breaker_change(step)
                each.record_breaker_change(step)
            else:
                assert collected(batched_reader) == collected(each_reader)
        assert collected(batched_reader) == collected(each_reader)
        assert not batched.pending
    finally:
        for reader in (batched_reader, each_reader):
            reader.shutdown()


def test_a_reader_in_another_thread_counts_every_decision_once() -> None:
    reader = InMemoryMetricReader()
    metrics = McpMetrics(MeterProvider(metric_readers=[reader]))
    allow = Decision(Component.AUTH, Outcome.ALLOW, {})
    miss = Decision(Component.CACHE, Outcome.MISS, {})
    done = threading.Event()
    collections = 0

    def collect() -> None:
        nonlocal collections
        while not done.is_set():
            reader.get_metrics_data()
            collections += 1

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        for i in range(20_000):
            metrics.pending_decision(allow if i % 4 else miss)
            if i % 1000 == 999:
                metrics.record_decision(allow)  # the general path's call, between the appends
    finally:
        done.set()
        thread.join(timeout=60)
    assert collections > 0
    points = dict(collected(reader))
    decisions = {dict(labels)["mcp_middleware.outcome"]: value for labels, value in points["mcp.middleware.decisions"]}
    assert decisions == {"allow": 15_000 + 20, "miss": 5_000}
    assert [value for _, value in points["mcp.middleware.cache.lookups"]] == [5_000]
    assert not metrics.pending


def test_with_no_reader_the_pending_decisions_stay_bounded(serve: Any) -> None:
    """A measured request appends its decisions; the next request counts them once `BATCH` are waiting."""
    provider = MeterProvider()  # no reader ever collects
    decider = RecordingDecider(
        build_server().streamable_http_app(),
        [(Component.AUTH, Outcome.ALLOW, {}), (Component.CACHE, Outcome.MISS, {}), (Component.BREAKER, "success", {})],
    )
    app = TracingMiddleware(decider, tracer_provider=NoOpTracerProvider(), meter_provider=provider)
    served: Served = serve(app.mcp_direct)
    call, mirrored = _modern_call(1, "echo", {"text": "a"})
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream", **mirrored}
    most = 0
    try:
        with httpx2.Client(base_url=served.base, timeout=30) as http:
            for _ in range(BATCH // 3 + 30):
                assert http.post("/mcp", content=call, headers=headers).status_code == 200
                most = max(most, len(app.metrics.pending))
        assert 0 < most < BATCH + 3
        assert app.metrics.counters.decisions.totals[(Component.AUTH, Outcome.ALLOW)] >= BATCH // 3 - 3
    finally:
        provider.shutdown()
