"""Counters kept as running totals on the request path and reported to OpenTelemetry when a reader collects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from .semconv import AttributeMap

__all__ = ["Tally"]


class Tally:
    """A monotonic counter kept as a dict of totals, reported through an observable counter.

    Each key is the tuple of the (bounded) label values in `labels`' order; its attribute set is built
    once, the first time the key is counted. `add(amount, attributes)` is the `Counter.add` shape.
    """

    __slots__ = ("_before", "_labels", "_sets", "totals")

    def __init__(
        self,
        meter: Meter,
        name: str,
        labels: tuple[str, ...],
        *,
        unit: str,
        description: str,
        before: Callable[[], None] | None = None,
    ) -> None:
        """`before` is called before each collection reads the totals (to count what is pending first)."""
        self._labels = labels
        self._before = before
        self.totals: dict[tuple[object, ...], int] = {}
        """Totals by key; a key already here may be added to in place (a new one goes through :meth:`count`)."""
        self._sets: dict[tuple[object, ...], AttributeMap] = {}
        meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)

    def count(self, key: tuple[object, ...], amount: int = 1) -> None:
        totals = self.totals
        if key in totals:
            totals[key] += amount
            return
        self._sets[key] = {
            label: value for label, value in zip(self._labels, key, strict=True) if isinstance(value, str | int)
        }  # before the total: a collection in another thread finds the set of every total it sees
        totals[key] = amount

    def add(self, amount: int, attributes: Mapping[str, object] | None = None) -> None:
        values = attributes or {}
        self.count(tuple(values.get(label) for label in self._labels), amount)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._before is not None:
            self._before()
        sets = self._sets
        return [Observation(total, sets[key]) for key, total in list(self.totals.items())]
