"""`CircuitBreakerMiddleware`: fail fast in front of a failing MCP backend, time out hung calls,
and retry only what is safe to repeat.

Per request: find the breaker (per mount path by default, per tool where a selector
says so); refuse at once with a JSON-RPC error (HTTP 503, `Retry-After`) while it is
open; otherwise call the inner app under the request's timeout, watch the response
through the core's tap (never holding any of it back), classify the outcome and tell
the breaker. A timeout cancels the inner app and answers with a JSON-RPC error, also
inside an SSE response that has already started. Opt-in retries repeat only list
methods, reads, and tools declared read-only/idempotent or allow-listed, and only
while nothing has been sent to the client.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random as _random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    CoreConfig,
    Era,
    ErrorCode,
    McpRequest,
    RequestKind,
    ResponseOutcome,
    ResponseTap,
    SelectorMap,
    error_body,
    read_request,
    record_decision,
    send_error,
)

from .classify import Classifier, FailureClassifier, Fault
from .registry import BreakerRegistry
from .state import BreakerPolicy, BreakerState, CircuitBreaker, StateListener, Verdict

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_TIMEOUTS", "SAFE_METHODS", "CircuitBreakerMiddleware", "RetryPolicy"]

logger = logging.getLogger("mcp_middleware.breaker")

DEFAULT_TIMEOUTS: Mapping[str, float | None] = {"*": 30.0, "tools/call": 120.0, "subscriptions/listen": None}
"""Seconds per selector (most specific wins); `None` means no timeout. A long-lived
`subscriptions/listen` stream is never timed out."""

DEFAULT_EXCLUDE: tuple[str, ...] = ("subscriptions/listen",)
"""Passed straight through by default: a long-lived stream would hold a half-open probe slot for its whole life."""

SAFE_METHODS: frozenset[str] = frozenset(
    {
        "ping",
        "server/discover",
        "tools/list",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "completion/complete",
    }
)
"""Methods that read and change nothing: safe to send twice."""

_SSE_CONTENT_TYPE = b"text/event-stream"
_ROUTE_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Opt-in retries of idempotent requests that failed before any byte reached the client.

    `attempts` counts the first one. Between attempts the middleware waits
    `min(backoff * 2 ** (n - 1), max_backoff)` seconds, times a jitter factor in
    `[1 - jitter, 1 + jitter]`. Retried: `methods` (lists and reads by default), and
    `tools/call` of tools whose backend declared `readOnlyHint` or `idempotentHint`
    in its last `tools/list` (when `learn_annotations`) or that match a selector in
    `allow` (e.g. `"tools/call:get_*"`). Nothing else, ever.

    >>> RetryPolicy(attempts=3, backoff=0.1, jitter=0.0).delay(2, draw=0.5)
    0.2
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0
    jitter: float = 0.5
    methods: Collection[str] = SAFE_METHODS
    allow: Sequence[str] = ()
    learn_annotations: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < self.backoff or not 0.0 <= self.jitter <= 1.0:
            raise ValueError("need 0 <= backoff <= max_backoff and 0 <= jitter <= 1")

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait before attempt number `attempt + 1`, for a random `draw` in [0, 1)."""
        base: float = min(self.backoff * 2.0 ** min(attempt - 1, 32), self.max_backoff)
        return base * (1.0 + self.jitter * (2.0 * draw - 1.0))


class _Deadlines:
    """Cancels overdue calls with one timer for all of them.

    A timer per request (`anyio.move_on_after`) costs more than the rest of the
    breaker together; instead each call's cancel scope (without a deadline of its
    own) joins the slot of the first tick at or after its deadline, and one loop
    timer, armed for the earliest slot, cancels whole slots as they fall due. A call
    is cancelled at most one tick late. Off asyncio, each call gets a deadline scope.
    """

    __slots__ = ("_armed", "_handle", "_loop", "_slots", "tick")

    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._slots: dict[int, dict[anyio.CancelScope, None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0

    def scope(self, seconds: float) -> tuple[anyio.CancelScope, int | None]:
        """A cancel scope that is cancelled `seconds` from now (give the slot back to :meth:`release`)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return anyio.CancelScope(deadline=anyio.current_time() + seconds), None
        if loop is not self._loop:  # first use, or a new event loop: nothing of the old one is due here
            self._loop, self._slots, self._handle = loop, {}, None
        cancel = anyio.CancelScope()
        slot = math.ceil((loop.time() + seconds) / self.tick)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = bucket = {}
        bucket[cancel] = None
        if self._handle is None or slot < self._armed:
            self._arm(loop, slot)
        return cancel, slot

    def release(self, cancel: anyio.CancelScope, slot: int | None) -> None:
        if slot is None:
            return
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.pop(cancel, None)
            if not bucket:
                del self._slots[slot]

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = loop.call_at(slot * self.tick, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        loop = self._loop
        if loop is None:
            return
        due = loop.time() / self.tick + 1e-9
        for slot in [slot for slot in self._slots if slot <= due]:
            for cancel in self._slots.pop(slot):
                cancel.cancel("timeout")
        if self._slots:
            self._arm(loop, min(self._slots))


class _Route(NamedTuple):
    """What the options say about one (method, target), resolved once and cached."""

    excluded: bool
    timeout: float | None
    per_target: bool
    policy: BreakerPolicy | None
    retry_listed: bool


KeyFunction = Callable[[Scope, McpRequest], str]


class CircuitBreakerMiddleware:
    """Circuit breaking, timeouts and safe retries that understand MCP responses.

    Options (all keyword-only):

    - `policy`: the :class:`BreakerPolicy` of backend breakers;
    - `per_target`: selectors (optionally mapped to their own policy) whose requests
      get one breaker per tool/prompt/resource instead of the backend's, e.g.
      `{"tools/call:search_*": BreakerPolicy(consecutive_failures=3)}`;
    - `timeouts`: seconds per selector (`None` = none), default :data:`DEFAULT_TIMEOUTS`;
    - `classifier`: replaces :class:`FailureClassifier` (`(request, outcome, fault) -> Verdict`);
    - `retry`: a :class:`RetryPolicy` to turn safe retries on (off by default);
    - `registry`: share or inspect the breakers (:meth:`BreakerRegistry.snapshot`);
    - `key`: `(scope, request) -> str` naming the backend (default: the request path,
      so each router mount gets its own breaker);
    - `exclude`: selectors passed straight through (no breaker, no timeout), default
      :data:`DEFAULT_EXCLUDE` (`subscriptions/listen`);
    - `on_state_change`: called with each :class:`StateChange` (metrics, logs).

    Only JSON-RPC requests are guarded; notifications, responses, GET streams and
    DELETE pass through. Each request is judged by exactly one breaker.

    >>> from mcp.server.mcpserver import MCPServer
    >>> server = MCPServer("demo")
    >>> app = CircuitBreakerMiddleware(
    ...     server.streamable_http_app(),
    ...     policy=BreakerPolicy(consecutive_failures=5, open_for=10.0),
    ...     timeouts={"*": 10.0, "tools/call": 30.0, "tools/list": 5.0},
    ...     retry=RetryPolicy(attempts=2),
    ... )
    >>> app.registry.open_keys()
    []
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: BreakerPolicy | None = None,
        per_target: Mapping[str, BreakerPolicy | None] | Iterable[str] = (),
        timeouts: Mapping[str, float | None] = DEFAULT_TIMEOUTS,
        classifier: Classifier | None = None,
        retry: RetryPolicy | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunction | None = None,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        on_state_change: StateListener | None = None,
        random: Callable[[], float] = _random.random,
        config: CoreConfig = DEFAULT_CONFIG,
    ) -> None:
        self.app = app
        self.registry = registry if registry is not None else BreakerRegistry(policy=policy)
        self.policy = policy if policy is not None else self.registry.policy
        if on_state_change is not None:
            self.registry.add_listener(on_state_change)
        for seconds in timeouts.values():
            if seconds is not None and seconds <= 0:
                raise ValueError("timeouts must be positive seconds (or None for no timeout)")
        targets = per_target.items() if isinstance(per_target, Mapping) else ((s, None) for s in per_target)
        self._per_target: SelectorMap[tuple[BreakerPolicy | None]] = SelectorMap((s, (p,)) for s, p in targets)
        self._timeouts: SelectorMap[float | None] = SelectorMap(timeouts)
        shortest = min((t for t in timeouts.values() if t is not None), default=1.0)
        self.deadlines = _Deadlines(tick=min(0.05, shortest / 10))
        self._exclude: SelectorMap[bool] = SelectorMap((s, True) for s in exclude)
        self._retry_allow: SelectorMap[bool] = SelectorMap((s, True) for s in (retry.allow if retry else ()))
        self.classifier: Classifier = classifier if classifier is not None else FailureClassifier()
        self.retry = retry
        self.key = key
        self.random = random
        self.config = config
        self._routes: dict[tuple[str | None, str | None], _Route] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None or request.kind is not RequestKind.REQUEST:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        method, target = request.method, request.target
        route = self._routes.get((method, target))
        if route is None:
            route = self._resolve(method, target)
        if route.excluded:
            await self.app(scope, receive, send)
            return
        backend = self.key(scope, request) if self.key is not None else (scope["path"].rstrip("/") or "/")
        breaker_key = f"{backend} {method}:{target}" if route.per_target else backend
        breaker = self.registry.get(breaker_key, route.policy if route.policy is not None else self.policy)
        await _Call(self, scope, request, receive, send, breaker, backend, route).run()

    def _resolve(self, method: str | None, target: str | None) -> _Route:
        per_target = self._per_target.lookup_parts(method, target)
        retry = self.retry
        route = _Route(
            excluded=self._exclude.lookup_parts(method, target) is True,
            timeout=self._timeouts.lookup_parts(method, target),
            per_target=per_target is not None and target is not None,
            policy=per_target[0] if per_target is not None else None,
            retry_listed=retry is not None
            and (method in retry.methods or self._retry_allow.lookup_parts(method, target) is True),
        )
        if len(self._routes) >= _ROUTE_CACHE_SIZE:  # targets come from clients: keep the cache bounded
            self._routes.clear()
        self._routes[(method, target)] = route
        return route


class _Call:
    """One guarded request: its attempts, what was sent, and whether the client is still there."""

    __slots__ = (
        "_downstream",
        "_receive",
        "backend",
        "body_consumed",
        "breaker",
        "client_gone",
        "closed",
        "completed",
        "error",
        "middleware",
        "replay",
        "request",
        "route",
        "scope",
        "start",
        "tap",
    )

    def __init__(
        self,
        middleware: CircuitBreakerMiddleware,
        scope: Scope,
        request: McpRequest,
        receive: Receive,
        send: Send,
        breaker: CircuitBreaker,
        backend: str,
        route: _Route,
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.request = request
        self._receive = receive
        self.breaker = breaker
        self.backend = backend
        self.route = route
        self.tap, self._downstream = ResponseTap.attach(
            scope, send, request, max_bytes=middleware.config.max_inspect_bytes
        )
        self.start: Message | None = None
        self.completed = False
        self.closed = False
        self.client_gone = False
        self.body_consumed = False
        self.replay = False
        self.error: BaseException | None = None

    # --- the inner app's view of the exchange ---------------------------------------------------

    async def receive(self) -> Message:
        if self.replay:  # a retry: the body once more, then the real stream
            self.replay = False
            while not self.body_consumed:  # the first attempt may not have read it all
                self._observe(await self._receive())
            return {"type": "http.request", "body": self.request.body, "more_body": False}
        message = await self._receive()
        if message["type"] != "http.request" or message.get("more_body", False):
            self._observe(message)
        else:
            self.body_consumed = True
        return message

    def _observe(self, message: Message) -> Message:
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_consumed = True
        elif kind == "http.disconnect":
            self.body_consumed = True
            # uvicorn also reports a disconnect once the response is complete; only an earlier one is the client's
            if not self.completed:
                self.client_gone = True
        return message

    async def send(self, message: Message) -> None:
        if self.closed:  # the attempt is over (timed out): nothing more from it reaches the client
            return
        kind = message["type"]
        if kind == "http.response.body":
            if not message.get("more_body", False):
                self.completed = True
        elif kind == "http.response.start":
            self.start = message
        await self._downstream(message)

    # --- the request --------------------------------------------------------------------------

    async def run(self) -> None:
        middleware, breaker, scope, request = self.middleware, self.breaker, self.scope, self.request
        attempt = 1
        while True:
            permit = breaker.acquire()
            if permit is None:
                await self._refuse()
                return
            if breaker.state is BreakerState.CLOSED:  # (literal strings: Enum.value is slow on the hot path)
                record_decision(scope, "breaker", "allow", state="closed", key=breaker.key)
            else:
                record_decision(scope, "breaker", "probe", state="half_open", key=breaker.key)
            try:
                fault = await self._attempt()
            except BaseException:  # cancelled from outside (shutdown, an outer timeout): no verdict
                breaker.record(permit, Verdict.NEUTRAL)
                raise
            if self.client_gone and fault is not Fault.TIMEOUT:
                fault, verdict, outcome = await self._judge_abandoned()
            else:
                outcome = self.tap.outcome()
                verdict = self._classify(outcome, fault)
            breaker.record(permit, verdict)
            if verdict is not Verdict.SUCCESS:
                reason = fault.value if fault is not None else _describe(outcome.status, outcome.error_code)
                record_decision(scope, "breaker", verdict.value, key=breaker.key, reason=reason, attempt=attempt)
            retry = middleware.retry
            if retry is not None and retry.learn_annotations and request.method == "tools/list":
                result = outcome.result
                if result is not None:
                    middleware.registry.learn_tools(self.backend, result.get("tools"))
            if fault is Fault.TIMEOUT:
                timeout_ms = int((self.route.timeout or 0.0) * 1000)
                record_decision(scope, "breaker", "timeout", key=breaker.key, timeout_ms=timeout_ms)
                await self._cancel_legacy_request()
            if fault is None or self.client_gone:
                return
            if self.start is None:
                if self._may_retry(attempt):
                    assert retry is not None
                    delay = retry.delay(attempt, middleware.random())
                    record_decision(scope, "breaker", "retry", key=breaker.key, attempt=attempt + 1, reason=fault.value)
                    await anyio.sleep(delay)
                    attempt += 1
                    self.closed = False
                    self.replay = True
                    self.error = None
                    continue
                await self._answer_failure(fault)
                return
            if not self.completed:
                await self._end_stream(fault)
            return

    async def _attempt(self) -> Fault | None:
        """Call the inner app once; how it failed, or `None` if it answered."""
        timeout = self.route.timeout
        cancel: anyio.CancelScope | None = None
        slot: int | None = None
        try:
            if timeout is None:
                await self.middleware.app(self.scope, self.receive, self.send)
            else:
                cancel, slot = self.middleware.deadlines.scope(timeout)
                with cancel:
                    await self.middleware.app(self.scope, self.receive, self.send)
        except Exception as exc:
            if self.completed:
                return None  # it failed after answering: the client has its response
            if cancel is not None and cancel.cancel_called:
                return Fault.TIMEOUT  # it broke while being cancelled: still a timeout
            self.error = exc
            logger.warning("MCP backend %s failed on %s", self.backend, self.request.method, exc_info=exc)
            return Fault.EXCEPTION
        finally:
            self.closed = True
            if cancel is not None:
                self.middleware.deadlines.release(cancel, slot)
        if self.completed:
            return None
        if cancel is not None and cancel.cancelled_caught:
            return Fault.TIMEOUT
        return Fault.DROPPED

    async def _judge_abandoned(self) -> tuple[Fault | None, Verdict, ResponseOutcome]:
        """The client disconnected before the response ended.

        A client often closes an SSE stream as soon as it holds its response, before
        the server's final empty message: finish the stream (nobody reads it any
        more) so the tap can judge the response that was delivered. Without one,
        the abandoned call says nothing about the backend.
        """
        start = self.start
        if start is not None and not self.completed and _is_plain_sse(start):
            self.completed = True
            await self._downstream({"type": "http.response.body", "body": b"", "more_body": False})
        outcome = self.tap.outcome()
        if outcome.result is None and outcome.error is None:
            return None, Verdict.NEUTRAL, outcome
        return None, self._classify(outcome, None), outcome

    def _classify(self, outcome: ResponseOutcome, fault: Fault | None) -> Verdict:
        try:
            return self.middleware.classifier(self.request, outcome, fault)
        except Exception:  # a broken custom classifier must not leak the permit (a half-open probe slot)
            logger.exception("circuit breaker classifier failed; the call counts as neutral")
            return Verdict.NEUTRAL

    def _may_retry(self, attempt: int) -> bool:
        retry = self.middleware.retry
        if retry is None or attempt >= retry.attempts or self.client_gone:
            return False
        if self.route.retry_listed:
            return True
        request = self.request
        name = request.name
        return (
            retry.learn_annotations
            and request.method == "tools/call"
            and name is not None
            and self.middleware.registry.is_repeatable(self.backend, name)
        )

    # --- what the client gets when it does not get the backend's answer ------------------------

    async def _refuse(self) -> None:
        breaker = self.breaker
        state = breaker.state
        wait = breaker.retry_after()
        seconds = max(1, math.ceil(wait))
        wait_ms = math.ceil(wait * 1000) if state is BreakerState.OPEN else seconds * 1000
        record_decision(self.scope, "breaker", "open", state=state.value, key=breaker.key, retry_after_ms=wait_ms)
        what = "circuit is open" if state is BreakerState.OPEN else "circuit is testing recovery"
        await send_error(
            self._downstream,
            status=503,
            code=ErrorCode.UNAVAILABLE,
            message=f"Backend unavailable ({what}); retry in {seconds} s",
            request_id=self.request.id,
            data={"retryAfterMs": wait_ms, "breaker": breaker.key, "state": state.value},
            headers={"Retry-After": str(seconds)},
        )

    def _failure(self, fault: Fault) -> tuple[int, ErrorCode, str, dict[str, int] | None]:
        if fault is Fault.TIMEOUT:
            timeout = self.route.timeout or 0.0
            return (
                504,
                ErrorCode.TIMEOUT,
                f"Backend did not answer within {timeout:g} s",
                {"timeoutMs": int(timeout * 1000)},
            )
        if fault is Fault.EXCEPTION:
            return 502, ErrorCode.BAD_GATEWAY, "Backend failed while handling the request", None
        return 502, ErrorCode.BAD_GATEWAY, "Backend closed the response without answering", None

    async def _answer_failure(self, fault: Fault) -> None:
        status, code, message, data = self._failure(fault)
        await send_error(
            self._downstream, status=status, code=code, message=message, request_id=self.request.id, data=data
        )

    async def _end_stream(self, fault: Fault) -> None:
        """Complete a response that broke off: an SSE stream gets a final error event for the request."""
        start = self.start
        assert start is not None
        if _is_plain_sse(start):
            _, code, message, data = self._failure(fault)
            event = b"event: message\r\ndata: " + error_body(code, message, self.request.id, data) + b"\r\n\r\n"
            await self._downstream({"type": "http.response.body", "body": event, "more_body": False})
            return
        # A JSON (or compressed) body cannot be finished honestly: the connection must drop.
        if self.error is not None:
            raise self.error
        raise RuntimeError(f"MCP backend {self.backend} broke off a response ({fault.value}) after it started")

    async def _cancel_legacy_request(self) -> None:
        """Tell a legacy session that the timed-out request is cancelled.

        A legacy (2025-era) server runs the handler in its session, not in the HTTP
        request, so cancelling the request leaves the tool running: the spec's
        `notifications/cancelled` stops it. Modern servers cancel with the request.
        """
        request = self.request
        if request.era is not Era.LEGACY or request.session_id is None or request.method == "initialize":
            return
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": request.id, "reason": "timeout"},
            }
        )
        dropped = (b"content-length", b"mcp-method", b"mcp-name")
        headers = [(k, v) for k, v in self.scope["headers"] if k not in dropped]
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        # A fresh scope: the request view, tap and decisions of this request must not leak into it.
        scope = {k: v for k, v in self.scope.items() if not k.startswith("mcp_middleware.")}
        scope["headers"] = headers
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await anyio.sleep_forever()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def discard(message: Message) -> None:
            return None

        with anyio.move_on_after(1.0):
            try:
                await self.middleware.app(scope, receive, discard)
            except Exception:
                logger.warning("could not cancel timed-out request %r on %s", request.id, self.backend, exc_info=True)


def _is_plain_sse(start: Message) -> bool:
    sse = False
    for key, value in start.get("headers", ()):
        if key == b"content-type":
            sse = value.split(b";", 1)[0].strip().lower() == _SSE_CONTENT_TYPE
        elif key == b"content-encoding" and value.strip().lower() != b"identity":
            return False
    return sse


def _describe(status: int | None, code: int | None) -> str:
    if code is not None:
        return f"jsonrpc_{code}"
    return f"http_{status}" if status is not None else "no_response"
