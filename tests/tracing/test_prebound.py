"""`PreboundSet`: recording through a pre-built attribute set is indistinguishable, to every reader, from
`Histogram.record` with the same attributes — whatever the readers' temporality, views, cardinality
limits and exemplar filter, and when readers come and go.

Each test records the same sequence twice, into two real SDK meter providers built alike: once through
`PreboundSet`, once through the public `record`, and compares everything the readers export.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from opentelemetry.metrics import Histogram
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOffExemplarFilter, AlwaysOnExemplarFilter
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader, MetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.trace import TracerProvider

from mcp_middleware.tracing.prebound import PreboundSet

NAME = "mcp.server.operation.duration"
BUCKETS = (0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SETS: tuple[dict[str, Any], ...] = (
    {"mcp.method.name": "tools/call", "gen_ai.tool.name": "echo"},
    {"mcp.method.name": "tools/call", "gen_ai.tool.name": "add", "error.type": "tool_error"},
    {"mcp.method.name": "tools/list", "rpc.response.status_code": 200},
    {"mcp.method.name": "ping"},
)
VALUES = (0.0, 0.003, 0.004, 0.02, 0.2, 0.2, 1.5, 7.0, 12.0, 0.0001)


def histogram(provider: MeterProvider) -> Histogram:
    meter = provider.get_meter("test")
    return meter.create_histogram(NAME, unit="s", explicit_bucket_boundaries_advisory=list(BUCKETS))


def export(reader: InMemoryMetricReader, names: tuple[str, ...] = (NAME, "renamed")) -> list[tuple[Any, ...]]:
    """Every exported point of the histogram's streams, in a comparable form (timestamps aside)."""
    data = reader.get_metrics_data()
    points: list[tuple[Any, ...]] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name not in names:
                    continue
                for p in metric.data.data_points:
                    exemplars = tuple(
                        (e.value, e.span_id, e.trace_id, tuple(sorted((e.filtered_attributes or {}).items())))
                        for e in p.exemplars
                    )
                    attributes = tuple(sorted((p.attributes or {}).items()))
                    points.append(
                        (
                            metric.name,
                            attributes,
                            p.count,
                            round(p.sum, 9),
                            p.min,
                            p.max,
                            tuple(p.bucket_counts),
                            exemplars,
                        )
                    )
    return sorted(points, key=repr)


class Twins:
    """Two providers built alike: `fast` recorded through `PreboundSet`, `slow` through `record`."""

    def __init__(self, make_readers: Callable[[], Sequence[MetricReader]], **provider: Any) -> None:
        self.fast_readers = list(make_readers())
        self.slow_readers = list(make_readers())
        self.fast_provider = MeterProvider(metric_readers=self.fast_readers, **provider)
        self.slow_provider = MeterProvider(metric_readers=self.slow_readers, **provider)
        self.fast_histogram = histogram(self.fast_provider)
        self.slow_histogram = histogram(self.slow_provider)
        self.bound = [PreboundSet(self.fast_histogram, attributes) for attributes in SETS]

    def record(self, index: int, value: float) -> None:
        self.bound[index].record(value)
        self.slow_histogram.record(value, SETS[index])

    def record_all(self, values: Sequence[float] = VALUES) -> None:
        for value in values:
            for index in range(len(SETS)):
                self.record(index, value)

    def assert_same(self) -> list[list[tuple[Any, ...]]]:
        """Collect every reader of both (a collection resets exemplars and delta streams) and compare."""
        everything = []
        for fast, slow in zip(self.fast_readers, self.slow_readers, strict=True):
            assert isinstance(fast, InMemoryMetricReader) and isinstance(slow, InMemoryMetricReader)
            exported = export(fast)
            assert exported == export(slow)
            assert exported  # something was compared
            everything.append(exported)
        return everything

    def close(self) -> None:
        self.fast_provider.shutdown()
        self.slow_provider.shutdown()


def cumulative() -> Sequence[MetricReader]:
    return [InMemoryMetricReader()]


def delta() -> Sequence[MetricReader]:
    return [InMemoryMetricReader(preferred_temporality={SdkHistogram: AggregationTemporality.DELTA})]


def both() -> Sequence[MetricReader]:
    return [*cumulative(), *delta()]


def test_cumulative_reader_sees_the_same_histogram_and_the_fast_path_is_taken() -> None:
    twins = Twins(cumulative)
    twins.record_all()
    assert all(bound._binding is not None for bound in twins.bound)  # the shortcut is really in use
    twins.assert_same()
    twins.record_all(VALUES[:3])  # collections in between change nothing
    twins.assert_same()
    twins.close()


@pytest.mark.parametrize("readers", [delta, both], ids=["delta", "delta-and-cumulative"])
def test_delta_readers_lose_nothing_across_collections(readers: Callable[[], Sequence[MetricReader]]) -> None:
    twins = Twins(readers)
    for rounds in range(3):
        twins.record_all(VALUES[rounds:])
        twins.assert_same()  # each collection of a delta reader starts the aggregations afresh
    assert all(bound._binding is None for bound in twins.bound)  # delta streams are never bound
    twins.close()


def test_a_reader_added_or_removed_later_is_seen() -> None:
    twins = Twins(cumulative)
    twins.record_all(VALUES[:4])
    late_fast, late_slow = InMemoryMetricReader(), InMemoryMetricReader()
    twins.fast_provider.add_metric_reader(late_fast)
    twins.slow_provider.add_metric_reader(late_slow)
    twins.fast_readers.append(late_fast)
    twins.slow_readers.append(late_slow)
    twins.record_all(VALUES[4:])
    early, late = twins.assert_same()
    assert late[0][2] == len(VALUES) - 4 and early[0][2] == len(VALUES)  # the late reader: only the later ones
    twins.fast_provider.remove_metric_reader(late_fast)
    twins.slow_provider.remove_metric_reader(late_slow)
    twins.fast_readers.pop()
    twins.slow_readers.pop()
    twins.record_all()
    twins.assert_same()
    twins.close()


def test_views_that_keep_some_attributes_or_rename_the_stream() -> None:
    views = [
        View(instrument_name=NAME, attribute_keys={"mcp.method.name"}),
        View(instrument_name=NAME, name="renamed", attribute_keys=set()),
    ]
    twins = Twins(cumulative, views=views)
    twins.record_all()
    (exported,) = twins.assert_same()
    assert sorted(p[1] for p in exported if p[0] == NAME) == [
        (("mcp.method.name", method),) for method in ("ping", "tools/call", "tools/list")
    ]
    assert [(p[1], p[2]) for p in exported if p[0] == "renamed"] == [((), len(SETS) * len(VALUES))]
    twins.close()


def test_attribute_sets_past_the_cardinality_limit_go_to_the_overflow_point() -> None:
    twins = Twins(cumulative, views=[View(instrument_name=NAME, aggregation_cardinality_limit=2)])
    twins.record_all()
    (exported,) = twins.assert_same()
    assert (("otel.metric.overflow", True),) in [p[1] for p in exported]
    assert sum(bound._binding is None for bound in twins.bound) == 2  # the two past the limit stay public
    twins.close()


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf, -math.inf])
def test_values_the_sdk_drops_are_dropped(value: float) -> None:
    twins = Twins(cumulative)
    twins.record_all(VALUES[:2])
    for index in range(len(SETS)):
        twins.record(index, value)
    (exported,) = twins.assert_same()
    assert exported[0][2] == 2
    twins.close()


def test_exemplars_follow_the_provider_filter_and_the_current_span() -> None:
    twins = Twins(cumulative, exemplar_filter=AlwaysOnExemplarFilter())
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request"):
        twins.record_all(VALUES[:5])
    twins.record_all(VALUES[5:])
    (exported,) = twins.assert_same()  # both twins record inside the same span: the same exemplars
    assert any(point[7] for point in exported)
    twins.close()


def test_with_exemplars_always_off_the_shortcut_asks_neither_filter_nor_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gateway's Prometheus provider takes no exemplars: its measurements skip the filter and the current
    context (read for exemplars only) and export what the SDK's own path exports, in a span or not."""
    twins = Twins(cumulative, exemplar_filter=AlwaysOffExemplarFilter())
    twins.record_all(VALUES[:2])  # bound from here on
    asked: list[object] = []
    monkeypatch.setattr(AlwaysOffExemplarFilter, "should_sample", lambda *args: asked.append(args) or False)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request"):
        twins.record_all(VALUES[2:5])
    twins.record_all(VALUES[5:])
    assert all(bound._binding is not None and bound._binding[2] is None for bound in twins.bound)
    exported = twins.assert_same()
    assert not any(point[7] for points in exported for point in points)  # no exemplar on either side
    assert len(asked) == len(SETS) * (len(VALUES) - 2)  # only the SDK's own path asked the filter
    twins.close()


def test_an_api_proxy_histogram_records_once_a_provider_is_set() -> None:
    """A histogram made before any provider was set (the API's proxy) binds to the SDK's once there is one."""
    proxy_provider = _ProxyMeterProvider()
    proxy = histogram(proxy_provider)  # type: ignore[arg-type]
    bound = PreboundSet(proxy, SETS[0])
    bound.record(0.5)  # nothing to record into yet: a no-op, as the API says
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    proxy_provider.on_set_meter_provider(provider)
    for value in VALUES:
        bound.record(value)
    assert bound._binding is not None
    ((_, attributes, count, total, *_),) = export(reader)
    assert (dict(attributes), count, total) == (SETS[0], len(VALUES), round(sum(VALUES), 9))
    provider.shutdown()


def test_threads_recording_at_once_lose_no_measurement() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bound = PreboundSet(histogram(provider), SETS[0])
    bound.record(0.1)

    def work() -> None:
        for _ in range(2000):
            bound.record(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ((_, _, count, total, *_),) = export(reader)
    assert count == 8001
    assert total == pytest.approx(0.1 + 80.0)
    provider.shutdown()


def test_past_the_kept_sets_measurements_take_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """`McpMetrics` keeps at most `_MAX_SETS` bindings; later label combinations are still recorded."""
    from mcp_middleware.core import Era, McpRequest, RequestKind
    from mcp_middleware.tracing import McpMetrics
    from mcp_middleware.tracing import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "_MAX_SETS", 2)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    recorder = McpMetrics(provider)
    methods = ("ping", "tools/list", "prompts/list", "resources/list")
    for method in methods * 3:
        recorder.record_operation(
            McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method=method, id=1), 0.01, None, None
        )
    assert len(recorder._operation_sets) == 2
    counts = {dict(p[1])["mcp.method.name"]: p[2] for p in export(reader)}
    assert counts == dict.fromkeys(methods, 3)
    provider.shutdown()


def test_the_shortcut_hands_the_aggregations_the_measurement_the_sdk_would_build() -> None:
    """Field for field what `Measurement(value, time, instrument, context, attributes)` holds (built faster)."""
    from opentelemetry.context import get_current
    from opentelemetry.sdk.metrics._internal.measurement import Measurement

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    bound = PreboundSet(histogram(provider), dict(SETS[0]))
    bound.record(0.5)  # the public path, which binds
    assert bound._binding is not None
    seen: list[tuple[Any, Any]] = []

    class Recorder:
        def aggregate(self, measurement: Any, sample: Any) -> None:
            seen.append((measurement, sample))

    storages, instrument, exemplars, _ = bound._binding
    bound._binding = (storages, instrument, exemplars, (Recorder(),))
    bound.record(0.25)
    [(measurement, _)] = seen
    assert isinstance(measurement, Measurement)
    expected = Measurement(0.25, measurement.time_unix_nano, instrument, get_current(), bound.attributes)
    assert {field: getattr(measurement, field) for field in vars(expected)} == vars(expected)
    assert measurement.attributes is bound.attributes  # uncopied: our sets are already clean
    with pytest.raises(AttributeError):  # still frozen
        measurement.value = 1.0
    provider.shutdown()
