"""MCP metrics: the semconv operation duration, and counters fed by the middlewares' decisions.

Instruments (created from the meter provider given, else the global one):

- `mcp.server.operation.duration` (s): histogram with the semconv buckets, by `mcp.method.name`,
  `gen_ai.tool.name`/`gen_ai.prompt.name`, `gen_ai.operation.name`, `error.type`,
  `rpc.response.status_code`, `mcp.protocol.version`;
- `mcp.middleware.decisions`: every decision, by `mcp_middleware.component` and `mcp_middleware.outcome`;
- `mcp.middleware.auth.failures`: auth `deny`, by outcome and `mcp_middleware.reason`;
- `mcp.middleware.ratelimit.refusals`: ratelimit `deny`, by `mcp_middleware.policy` (and `mcp_middleware.reason`);
- `mcp.middleware.breaker.refusals`: breaker `open` (a request refused by an open or probing circuit),
  by `mcp_middleware.state`;
- `mcp.middleware.breaker.transitions`: circuit state changes, by `mcp_middleware.state` and
  `mcp_middleware.previous` — from :meth:`McpMetrics.record_breaker_change` (give it to the breaker
  as its state listener: a transition is not a per-request decision);
- `mcp.middleware.cache.lookups`: cache `hit`/`miss`/`stale`, by `mcp_middleware.outcome`;
- `mcp.middleware.cache.evictions`: cache `evict` decisions, by their `count` (entries dropped to make room).

No label takes a value a client chose as it came (anyone can send anything, and tracing runs
before authentication): `mcp.method.name` is a method of the specification or `_OTHER`,
`mcp.protocol.version` a revision the SDK knows or `_OTHER`, and a tool or prompt name is a
label only once it is *known* — listed in a `tools/list`/`prompts/list` result or answered
with a successful result (see :class:`KnownNames`) — else `_OTHER`. Other labels fed by
decisions and responses (`error.type`, reasons, policies, breaker keys) keep at most
`max_names` distinct values of at most 64 characters (128 for breaker keys); later or longer
ones are `_OTHER`. So the number of series is fixed, whatever the traffic.

>>> from opentelemetry.sdk.metrics import MeterProvider
>>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
>>> reader = InMemoryMetricReader()
>>> metrics = McpMetrics(MeterProvider(metric_readers=[reader]))
>>> from mcp_middleware.core import Component, Decision, Outcome
>>> metrics.record_decision(Decision(Component.RATELIMIT, Outcome.DENY, {"policy": "per-user"}))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider

from mcp_middleware.core import (
    OTHER,
    BoundedValues,
    Component,
    Decision,
    McpRequest,
    Outcome,
    known_method,
    known_version,
    portable_name,
)

from .semconv import (
    DURATION_BUCKETS,
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROMPT_NAME,
    GEN_AI_TOOL_NAME,
    MCP_METHOD_NAME,
    MCP_PROTOCOL_VERSION,
    RPC_RESPONSE_STATUS_CODE,
    AttributeMap,
)

try:  # the API's stand-in until a global provider is set: recording through it is a no-op
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _UNSET_METER_PROVIDER
except ImportError:  # pragma: no cover - a later API may move it; then only NoOp counts as off
    _UNSET_METER_PROVIDER = NoOpMeterProvider  # type: ignore[misc,assignment]

__all__ = ["OPERATION_DURATION", "BreakerChange", "KnownNames", "McpMetrics"]

OPERATION_DURATION: Final = "mcp.server.operation.duration"
_OTHER: Final = OTHER
_CACHE_LOOKUPS: Final = frozenset({Outcome.HIT, Outcome.MISS, Outcome.STALE})
_LISTS: Final = {"tools/list": "tools", "prompts/list": "prompts"}
_CALLS: Final = frozenset({"tools/call", "prompts/get"})


class KnownNames:
    """The tool and prompt names the server itself vouched for: the ones a label may carry.

    A name becomes known when a `tools/list` or `prompts/list` result lists it, or when a call
    with it is answered with a result that is not a tool error (the SDK answers an unknown tool
    with an `isError` result, so that does not count). A refused call (401, 429, an unknown
    name) teaches nothing, so anonymous traffic cannot make names known. Only short portable
    names (`[A-Za-z0-9_.-]{1,64}`) are kept, at most `limit` of them, never evicted.

    Span names are less strict (they are not series): :meth:`for_span` also admits the first
    `limit` distinct portable names it is asked about, known or not.
    """

    __slots__ = ("_known", "_seen")

    def __init__(self, limit: int) -> None:
        self._known = BoundedValues(limit)
        self._seen = BoundedValues(limit)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __len__(self) -> int:
        return len(self._known)

    def label(self, name: str) -> str:
        """`name` if it is known, else `_OTHER`."""
        return name if name in self._known else _OTHER

    def for_span(self, name: str) -> bool:
        """Whether a span may be named after `name`."""
        return name in self._known or (portable_name(name) and self._seen(name) is name)

    def learn(self, request: McpRequest, result: Mapping[str, Any] | None, tool_error: bool = False) -> None:
        """Learn from the result (`None` when there was none) the server gave to `request`."""
        if result is None or self._known.full:
            return
        method = request.method
        if method in _CALLS:
            name = request.name
            if name is not None and not tool_error and name not in self._known and portable_name(name):
                self._known(name)
            return
        key = _LISTS.get(method or "")
        items = result.get(key) if key is not None else None
        if type(items) is not list:
            return
        known = self._known
        for item in items:
            name = item.get("name") if type(item) is dict else None
            if type(name) is str and name not in known and portable_name(name) and known(name) is _OTHER:
                return  # full


def _records(provider: MeterProvider) -> bool:
    """False for the API's stand-ins (nothing configured yet, or explicitly no-op)."""
    return not isinstance(provider, NoOpMeterProvider | _UNSET_METER_PROVIDER)


class McpMetrics:
    """The project's instruments on one meter; see the module docstring for the list."""

    def __init__(self, meter_provider: MeterProvider | None = None, *, max_names: int = 500) -> None:
        from mcp_middleware import __version__

        self._provider = meter_provider
        self._active = None if meter_provider is None else _records(meter_provider)
        meter = otel_metrics.get_meter("mcp_middleware.tracing", __version__, meter_provider)
        self.names = KnownNames(max_names)
        self._errors = BoundedValues(max_names)
        self._reasons = BoundedValues(max_names)
        self._breakers = BoundedValues(max_names, max_length=128)
        self.duration = meter.create_histogram(
            OPERATION_DURATION,
            unit="s",
            description="MCP request or notification duration as observed on the receiver "
            "from the time it was received until the result or ack is sent.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.decisions = meter.create_counter(
            "mcp.middleware.decisions", unit="{decision}", description="Decisions of the middlewares, by outcome."
        )
        self.auth_failures = meter.create_counter(
            "mcp.middleware.auth.failures", unit="{request}", description="Requests auth did not allow, by reason."
        )
        self.ratelimit_refusals = meter.create_counter(
            "mcp.middleware.ratelimit.refusals", unit="{request}", description="Requests refused by a rate limit."
        )
        self.breaker_refusals = meter.create_counter(
            "mcp.middleware.breaker.refusals", unit="{request}", description="Requests refused by an open circuit."
        )
        self.breaker_transitions = meter.create_counter(
            "mcp.middleware.breaker.transitions", unit="{transition}", description="Circuit breaker state changes."
        )
        self.cache_lookups = meter.create_counter(
            "mcp.middleware.cache.lookups", unit="{lookup}", description="Response cache lookups, by outcome."
        )
        self.cache_evictions = meter.create_counter(
            "mcp.middleware.cache.evictions", unit="{entry}", description="Entries evicted from the response cache."
        )

    @property
    def active(self) -> bool:
        """Whether recording does anything: an SDK meter provider is given or set globally (checked per call)."""
        fixed = self._active
        return fixed if fixed is not None else _records(otel_metrics.get_meter_provider())

    def record_operation(
        self, request: McpRequest, duration: float, error_type: str | None, error_code: int | None
    ) -> None:
        """Record one MCP request or notification in `mcp.server.operation.duration`.

        Tool and prompt names are labels only once :attr:`names` knows them (see :class:`KnownNames`):
        call :meth:`KnownNames.learn` with the response's result first, as `TracingMiddleware` does.
        """
        method = request.method
        if method is None:
            return  # GET streams, DELETE, client responses: not MCP operations
        attributes: AttributeMap = {
            MCP_METHOD_NAME: known_method(method),
            MCP_PROTOCOL_VERSION: known_version(request.protocol_version),
        }
        if method == "tools/call":
            attributes[GEN_AI_OPERATION_NAME] = "execute_tool"
            if (name := request.name) is not None:
                attributes[GEN_AI_TOOL_NAME] = self.names.label(name)
        elif method == "prompts/get" and (name := request.name) is not None:
            attributes[GEN_AI_PROMPT_NAME] = self.names.label(name)
        if error_type is not None:
            attributes[ERROR_TYPE] = self._errors(error_type)
        if error_code is not None:
            attributes[RPC_RESPONSE_STATUS_CODE] = self._errors(str(error_code))
        self.duration.record(max(duration, 0.0), attributes)

    def record_decision(self, decision: Decision) -> None:
        """Count one middleware decision (its component and outcome: `Component` and `Outcome` of the core)."""
        component, outcome, details = decision
        self.decisions.add(1, {"mcp_middleware.component": component, "mcp_middleware.outcome": outcome})
        if component == Component.AUTH:
            if outcome == Outcome.DENY:
                reason = self._text(details.get("reason"))
                self.auth_failures.add(1, {"mcp_middleware.outcome": outcome, "mcp_middleware.reason": reason})
        elif component == Component.RATELIMIT:
            if outcome == Outcome.DENY:
                refusal: AttributeMap = {"mcp_middleware.policy": self._text(details.get("policy"))}
                if isinstance(why := details.get("reason"), str):
                    refusal["mcp_middleware.reason"] = self._text(why)
                self.ratelimit_refusals.add(1, refusal)
        elif component == Component.BREAKER:
            if outcome == Outcome.OPEN:
                self.breaker_refusals.add(1, {"mcp_middleware.state": self._text(details.get("state"))})
        elif component == Component.CACHE:
            if outcome in _CACHE_LOOKUPS:
                self.cache_lookups.add(1, {"mcp_middleware.outcome": outcome})
            elif outcome == Outcome.EVICT:
                count = details.get("count", 1)
                if type(count) is int and count > 0:
                    self.cache_evictions.add(count)

    def _text(self, value: object) -> str:
        """A decision detail as a label: bounded in number and length (a reason may quote the request)."""
        return self._reasons(value) if isinstance(value, str) and value else _OTHER

    def record_breaker_change(self, change: BreakerChange) -> None:
        """Count one circuit state change; usable as the breaker's state listener (`on_state_change`).

        Duck-typed, so tracing needs no import of the breaker: anything with `key`, `previous`,
        `state` (strings or enums with a string `value`) and `reason` will do.
        """
        self.breaker_transitions.add(
            1,
            {
                "mcp_middleware.breaker": self._breakers(_state(change.key)),
                "mcp_middleware.previous": self._text(_state(change.previous)),
                "mcp_middleware.state": self._text(_state(change.state)),
                "mcp_middleware.reason": self._text(_state(change.reason)),
            },
        )


class BreakerChange(Protocol):
    """What :meth:`McpMetrics.record_breaker_change` reads of a circuit state change."""

    @property
    def key(self) -> object: ...
    @property
    def previous(self) -> object: ...
    @property
    def state(self) -> object: ...
    @property
    def reason(self) -> object: ...


def _state(value: object) -> str:
    """A state (or its enum) as text."""
    value = getattr(value, "value", value)
    return value if isinstance(value, str) and value else _OTHER
