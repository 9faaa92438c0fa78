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
from typing import Any, Final

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import MeterProvider, NoOpMeterProvider

from mcp_middleware.core import (
    OTHER,
    BoundedValues,
    Decision,
    McpRequest,
    known_method,
    known_version,
)

from .decision_counters import BreakerChange, DecisionCounters
from .known_names import KnownNames
from .prebound import PreboundSet
from .providers import ProviderWatch
from .semconv import (
    DURATION_BUCKETS,
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROMPT_NAME,
    GEN_AI_TOOL_NAME,
    MCP_METHOD_NAME,
    MCP_PROTOCOL_VERSION,
    RPC_RESPONSE_STATUS_CODE,
    TOOL_ERROR,
    AttributeMap,
)

try:  # the API's stand-in until a global provider is set: recording through it is a no-op
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _UNSET_METER_PROVIDER
except ImportError:  # pragma: no cover - a later API may move it; then only NoOp counts as off
    _UNSET_METER_PROVIDER = NoOpMeterProvider  # type: ignore[misc,assignment]

__all__ = ["OPERATION_DURATION", "SERVER_LABEL", "BreakerChange", "KnownNames", "McpMetrics"]

OPERATION_DURATION: Final = "mcp.server.operation.duration"
SERVER_LABEL: Final = "mcp_middleware.server"
"""The backend that served the request: a configured server name, never a client's text."""
_OTHER: Final = OTHER
_MAX_SETS: Final = 4096
_UNKNOWN_NAME: Final = (None, OTHER)
"""Most pre-built attribute sets kept per instrument (each label is bounded; this bounds their product)."""
_OPERATION_LABELS: Final = (
    MCP_METHOD_NAME,
    MCP_PROTOCOL_VERSION,
    GEN_AI_TOOL_NAME,
    GEN_AI_PROMPT_NAME,
    ERROR_TYPE,
    RPC_RESPONSE_STATUS_CODE,
    SERVER_LABEL,
)
_HTTP_LABELS: Final = (
    "http.request.method",
    "url.scheme",
    "http.response.status_code",
    "network.protocol.version",
    "server.address",
    SERVER_LABEL,
)
_HTTP_METHODS: Final = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
_HTTP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


def _operation_attributes(key: tuple[str | None, ...]) -> AttributeMap:
    attributes: AttributeMap = {
        name: value for name, value in zip(_OPERATION_LABELS, key, strict=True) if value is not None
    }
    if key[0] == "tools/call":
        attributes[GEN_AI_OPERATION_NAME] = "execute_tool"
    return attributes


_STAND_INS: Final = (NoOpMeterProvider, _UNSET_METER_PROVIDER)


def _records(provider: MeterProvider) -> bool:
    """False for the API's stand-ins (nothing configured yet, or explicitly no-op)."""
    return not isinstance(provider, _STAND_INS)


class McpMetrics:
    """The project's instruments on one meter; see the module docstring for the list."""

    def __init__(
        self, meter_provider: MeterProvider | None = None, *, max_names: int = 500, http: bool = False
    ) -> None:
        from mcp_middleware import __version__

        self._provider = meter_provider
        self._active = ProviderWatch(otel_metrics.get_meter_provider, _records, meter_provider)
        meter = otel_metrics.get_meter("mcp_middleware.tracing", __version__, meter_provider)
        self.names = KnownNames(max_names)
        self._errors = BoundedValues(max_names)
        self._servers = BoundedValues(max_names)
        self._hosts = BoundedValues(max_names, max_length=255)
        # Pre-built attribute sets, one per combination of (bounded) label values: the request path
        # looks one up instead of building a dict per request, and records through it without the
        # SDK's per-measurement cleaning and hashing (`PreboundSet`). At most `_MAX_SETS` of each kept.
        self._operation_sets: dict[tuple[str | None, ...], PreboundSet] = {}
        self._http_sets: dict[tuple[object, ...], PreboundSet] = {}
        self._operation_memo: dict[tuple[Any, ...], PreboundSet] = {}
        """`record_operation`'s raw values → their set, skipping the labelling (see `_operation_set`)."""
        self.duration = meter.create_histogram(
            OPERATION_DURATION,
            unit="s",
            description="MCP request or notification duration as observed on the receiver "
            "from the time it was received until the result or ack is sent.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        # Counters are tallied here and read by the SDK at collection time (observable counters): a
        # decision costs a list append on the request path, not an SDK measurement (see `.decision_counters`).
        self.counters = DecisionCounters(meter, max_names)
        self.decisions = self.counters.decisions
        self.pending = self.counters.pending
        self.pending_decision = self.pending.append
        """A decision observer that only keeps the decision for the counters (C: no frame of ours a decision)."""
        self.http_duration = (
            meter.create_histogram(
                "http.server.request.duration",
                unit="s",
                description="Duration of HTTP server requests.",
                explicit_bucket_boundaries_advisory=list(_HTTP_BUCKETS),
            )
            if http
            else None
        )

    @property
    def active(self) -> bool:
        """Whether recording does anything: an SDK meter provider is given or set globally (see
        :mod:`.providers`)."""
        return self._active()

    def record_operation(
        self,
        request: McpRequest,
        duration: float,
        error_type: str | None,
        error_code: int | None,
        server: str | None = None,
    ) -> None:
        """Record one MCP request or notification in `mcp.server.operation.duration`.

        Tool and prompt names are labels only once :attr:`names` knows them (see :class:`KnownNames`):
        call :meth:`KnownNames.learn` with the response's result first, as `TracingMiddleware` does.
        `server` (the backend's configured name) becomes `mcp_middleware.server`, bounded like the others.
        """
        self.record_measured(request, None, error_type, error_code, duration, server, None)

    def record_measured(
        self,
        request: McpRequest,
        result: Mapping[str, Any] | None,
        error_type: str | None,
        error_code: int | None,
        duration: float,
        server: str | None,
        exception: str | None,
    ) -> None:
        """What a measured request records when it ends (`measured.py`): the names its result teaches
        (:meth:`KnownNames.learn`, given `error_type`), then the operation, its error the response's
        `error_type` or else `exception`; as those two calls would, with the request's name read once.

        A call whose set is remembered has a known name (`_operation_set` remembers no other), which
        learning cannot change: only a request with no name (a list) is learned from then.
        """
        name = request.name
        if error_type is None:
            raw = (request.method, request.protocol_version, name, exception, error_code, server)
        else:
            raw = (request.method, request.protocol_version, name, error_type, error_code, server)
        bound = self._operation_memo.get(raw)
        # (a result is never an error: `tool_error` is `isError`)
        if result is not None and (bound is None or name is None):
            self.names.learn(request, result, error_type == TOOL_ERROR)
        value = duration if duration > 0.0 else 0.0
        if bound is None:
            if raw[0] is None:
                return  # GET streams, DELETE, client responses: not MCP operations
            bound = self._operation_set(raw)
            if bound is None:  # no room to keep a binding: the SDK's own path
                self.duration.record(value, _operation_attributes(self._operation_key(raw)))
                return
        bound.record(value)

    def _operation_key(self, raw: tuple[Any, ...]) -> tuple[str | None, ...]:
        """The label values of `raw` (the request's method, version and name, the error, the server)."""
        method, version, name, error_type, error_code, server = raw
        method = known_method(method)
        tool = prompt = None
        if name is not None:  # (a request has a name for `tools/call` and `prompts/get` only)
            if method == "tools/call":
                tool = self.names.label(name)
            elif method == "prompts/get":
                prompt = self.names.label(name)
        return (
            method,
            known_version(version),
            tool,
            prompt,
            None if error_type is None else self._errors(error_type),
            None if error_code is None else self._errors(str(error_code)),
            None if server is None else self._servers(server),
        )

    def _operation_set(self, raw: tuple[Any, ...]) -> PreboundSet | None:
        """The attribute set for `raw`, remembered by its raw values when their labels cannot change.

        Every label of a value seen is final (the bounded sets never evict), but for a tool or prompt
        name that is not known yet: it becomes its own label once known, so it is not remembered.
        Only known methods and versions are remembered (the raw values are the client's, of any size),
        so the memo is as bounded as the sets are; it is emptied if it ever reaches `_MAX_SETS`.
        """
        key = self._operation_key(raw)
        bound = self._operation_sets.get(key)
        if bound is None:
            if len(self._operation_sets) >= _MAX_SETS:
                return None
            bound = self._operation_sets[key] = PreboundSet(self.duration, _operation_attributes(key))
        if (
            key[0] is raw[0]  # a known method and version: a client's text (of any size) is no key kept
            and key[1] is raw[1]
            and (raw[2] is None or key[2] not in _UNKNOWN_NAME or key[3] not in _UNKNOWN_NAME)
        ):
            memo = self._operation_memo
            if len(memo) >= _MAX_SETS:
                memo.clear()
            memo[raw] = bound
        return bound

    def record_http(self, scope: Mapping[str, Any], status: int | None, duration: float, server: str | None) -> None:
        """Record `http.server.request.duration` (stable conventions; `http_metrics=True` only).

        The `Host` header is a label only bounded, like every other value a client chose.
        """
        if self.http_duration is None:
            return
        host = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = self._hosts(value.decode("latin-1").rsplit(":", 1)[0] if b"]" not in value else OTHER)
                break
        method = scope["method"]
        key = (
            method if method in _HTTP_METHODS else _OTHER,
            scope.get("scheme", "http"),
            status,
            scope.get("http_version"),
            host,
            None if server is None else self._servers(server),
        )
        seconds = duration if duration > 0.0 else 0.0
        bound = self._http_sets.get(key)
        if bound is None:
            attributes = {name: value for name, value in zip(_HTTP_LABELS, key, strict=True) if value is not None}
            if len(self._http_sets) >= _MAX_SETS:  # no room to keep a binding: the SDK's own path
                self.http_duration.record(seconds, attributes)
                return
            bound = self._http_sets[key] = PreboundSet(self.http_duration, attributes)
        bound.record(seconds)

    def record_decision(self, decision: Decision) -> None:
        """Count one middleware decision (its component and outcome: `Component` and `Outcome` of the core)."""
        self.counters.record(decision)

    def record_breaker_change(self, change: BreakerChange) -> None:
        """Count one circuit state change; usable as the breaker's state listener (`on_state_change`).

        Duck-typed, so tracing needs no import of the breaker: anything with `key`, `previous`,
        `state` (strings or enums with a string `value`) and `reason` will do.
        """
        self.counters.record_breaker_change(change)
