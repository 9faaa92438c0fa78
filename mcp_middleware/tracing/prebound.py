"""Histogram measurements for pre-built attribute sets, without the OpenTelemetry SDK's per-measurement work.

`Histogram.record` in opentelemetry-sdk 1.45 cleans the attributes (a new dict, a type check per
value) and hashes them (sorted, type-tagged tuples) for every measurement before it finds the
aggregation they belong to: ≈ 600 bytecodes, ≈ 80,000 instructions a request in the gateway, the
largest single item of its tracing. Our attribute sets are built once per combination of bounded
label values and never change, so that lookup has the same answer every time. A
:class:`PreboundSet` lets the SDK answer it once (a public `record`, which also creates the
aggregation), keeps the aggregations that measurement landed in, and from then on hands each
measurement to them directly, as the SDK does after its lookup (same `Measurement`, same exemplar
filter). Readers see the same histogram.

It takes the public `record` whenever the shortcut could differ from what the SDK would do: a
reader with delta temporality (its aggregations are replaced at each collection), a reader added
or removed since the binding (bound again), an attribute set past the cardinality limit (the
overflow point), a value that is negative or not finite (the SDK warns and drops it), a disabled
meter, an API-only or foreign provider, or an SDK whose internals are not the ones read here.

>>> from opentelemetry.sdk.metrics import MeterProvider
>>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
>>> reader = InMemoryMetricReader()
>>> histogram = MeterProvider(metric_readers=[reader]).get_meter("doc").create_histogram("d")
>>> bound = PreboundSet(histogram, {"mcp.method.name": "tools/call"})
>>> for value in (0.1, 0.2, 0.3):
...     bound.record(value)
>>> point = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0]
>>> point.count, round(point.sum, 3), dict(point.attributes)
(3, 0.6, {'mcp.method.name': 'tools/call'})
"""

from __future__ import annotations

import math
from time import time_ns
from typing import Any

from opentelemetry.context import Context, get_current
from opentelemetry.metrics import Histogram

from .semconv import AttributeMap

__all__ = ["PreboundSet"]

try:  # the SDK's internals this reads; any other layout means the public path only
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.exemplar import AlwaysOffExemplarFilter as _AlwaysOff
    from opentelemetry.sdk.metrics._internal.instrument import Histogram as _SdkHistogram
    from opentelemetry.sdk.metrics._internal.measurement import Measurement as _Measurement
    from opentelemetry.sdk.metrics._internal.measurement_consumer import SynchronousMeasurementConsumer as _Consumer
except ImportError:  # pragma: no cover - the SDK is not installed, or moved these
    _SDK = False
else:
    _SDK = True

    class _CleanMeasurement(_Measurement):
        """A measurement whose attributes are one of our pre-built sets: already what cleaning returns."""

        __slots__ = ()

        def __post_init__(self) -> None:
            pass


_INF = math.inf
_NO_CONTEXT = Context()
"""The context of a measurement no exemplar can be taken of (nothing else reads it)."""
_new = object.__new__
_Binding = tuple[Any, Any, Any, tuple[Any, ...]]
"""(the consumer's reader storages when bound, the SDK instrument, the exemplar filter or None when it is
always off, the aggregations)"""


class PreboundSet:
    """One attribute set of one histogram: `record(amount)` is `histogram.record(amount, attributes)`.

    `attributes` must not change after this is built (it is handed to the SDK as it is, uncopied).
    Thread-safe as the SDK is: each aggregation takes its own lock.
    """

    __slots__ = ("_binding", "_histogram", "_refused", "attributes")

    def __init__(self, histogram: Histogram, attributes: AttributeMap) -> None:
        self._histogram = histogram
        self.attributes = attributes
        self._binding: _Binding | None = None
        self._refused: object = None  # the reader storages a binding was refused for (not tried again)

    def record(self, amount: float) -> None:
        binding = self._binding
        if binding is not None and 0.0 <= amount < _INF:
            storages, instrument, exemplars, aggregations = binding
            if storages is instrument._measurement_consumer._reader_storages and instrument._is_enabled():
                now = time_ns()
                attributes = self.attributes
                # The frozen dataclass's generated __init__ sets each field through object.__setattr__ and
                # calls __post_init__ (≈ 50 bytecodes); the same fields written at once make the same object.
                measurement = _new(_CleanMeasurement)
                if exemplars is None:  # the always-off filter: no exemplar, and the context serves only those
                    measurement.__dict__.update(
                        value=amount,
                        time_unix_nano=now,
                        instrument=instrument,
                        context=_NO_CONTEXT,
                        attributes=attributes,
                    )
                    for aggregation in aggregations:
                        aggregation.aggregate(measurement, False)
                    return
                context = get_current()
                measurement.__dict__.update(
                    value=amount, time_unix_nano=now, instrument=instrument, context=context, attributes=attributes
                )
                sample = exemplars.should_sample(amount, now, attributes, context)
                for aggregation in aggregations:
                    aggregation.aggregate(measurement, sample)
                return
        self._histogram.record(amount, self.attributes)
        if _SDK:
            self._bind()

    def _bind(self) -> None:
        """Find the aggregations the public `record` just used, if the shortcut is safe for them."""
        self._binding = None
        histogram: Any = self._histogram
        instrument = getattr(histogram, "_real_instrument", histogram)  # the API's proxy → its SDK instrument
        if not isinstance(instrument, _SdkHistogram) or not instrument._is_enabled():
            return
        consumer = instrument._measurement_consumer
        if type(consumer) is not _Consumer:
            return
        storages = consumer._reader_storages
        if storages is self._refused:
            return
        aggregations = []
        for storage in storages.values():
            for match in getattr(storage, "_instrument_view_instrument_matches", {}).get(instrument, ()):
                aggregation = self._aggregation(match)
                if aggregation is None:
                    self._refused = storages
                    return
                aggregations.append(aggregation)
        if aggregations:
            exemplars: Any = consumer._sdk_config.exemplar_filter
            if type(exemplars) is _AlwaysOff:
                exemplars = None  # never samples: `record` asks neither it nor the context
            self._binding = (storages, instrument, exemplars, tuple(aggregations))

    def _aggregation(self, match: Any) -> Any:
        """The aggregation of our set in one view's stream, or `None` when the shortcut would not be exact."""
        if getattr(match, "_reset_on_collect", True):
            return None  # delta: the SDK swaps the aggregations under a lock at each collection
        keys = match._view._attribute_keys
        attributes = self.attributes
        if keys is not None:
            attributes = {key: value for key, value in attributes.items() if key in keys}
        return match._attributes_aggregation.get(_hash_attributes(attributes))  # None: past the limit (overflow)
