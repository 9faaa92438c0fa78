"""The breaker's common path: a closed circuit, no retry, the default classifier.

Most guarded requests are answered by a healthy backend with one JSON body. For them a
:class:`~.call.Call` (its attempt loop, its body watcher, its verdict tuple) is more than needed:
:func:`guarded` hands the inner app a plain `send` that forwards every
message at once and only notes the start and the final body. Whether the client left is read from
the core's replay (:func:`~mcp_middleware.core.read_request`'s `receive`, asked to note a disconnect),
so the app reads the `receive` the breaker was given; only without one (the breaker behind a layer
that hands on another `receive`) does the app get an :class:`~.inbound.Inbound`. The verdict is read from that final
body (or from an outer tap's outcome, when one is attached), by the same rules as the `Call` path
(:func:`~.watch.answer_in`, :meth:`~.classify.FailureClassifier.judge`).

Everything unusual goes to a `Call`, which then owns the rest of the request exactly as if it had
run it from the start: a response that is not one JSON body (SSE, a status of 400 or more, a
compressed or chunked body) is handed over as it starts (or at its first partial body), and an
attempt that timed out, raised, ended without its response or lost its client is settled by
:meth:`.Call.settle` (a JSON-RPC error, a final SSE error event, a legacy `notifications/cancelled`).
A circuit that is not closed, a retry policy, a custom classifier or a loop without the deadline
wheel take the `Call` path from the start (:attr:`.CircuitBreakerMiddleware.fast_path`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import McpRequest, ResponseTap, record_decision
from mcp_middleware.core.decisions import Component, Decision, Outcome, add_decision
from mcp_middleware.core.kernel import _Replay
from mcp_middleware.core.tap import TAP_SCOPE_KEY

from .answers import describe
from .call import Call, Route
from .classify import FailureClassifier, Fault
from .inbound import Inbound, Noted, Noting
from .state import BreakerState, CircuitBreaker, Classification
from .timeouts import Deadline, Deadlines
from .watch import CONTENT_TYPES, JSON_BODY, answer_in, watchable

if TYPE_CHECKING:
    from .middleware import CircuitBreakerMiddleware

__all__ = ["Lane", "guarded"]

_JSON = CONTENT_TYPES[JSON_BODY]
_CLOSED = BreakerState.CLOSED
_NOT_FOUND: tuple[None, None] = (None, None)
"""`(result, error)` when the body is not the response (as `find_response` answers)."""

Judge = Callable[[int | None, str | None, bool, "dict[str, Any] | None", "dict[str, Any] | None"], Classification]


class Lane:
    """What every request of one route to one breaker shares, made once (the middleware keeps its lanes:
    :meth:`.CircuitBreakerMiddleware.mcp_direct`): a request on the common path stores only its own."""

    __slots__ = (
        "allowed",
        "backend",
        "breaker",
        "deadlines",
        "judge",
        "judge_results",
        "limit",
        "middleware",
        "route",
        "timeout",
        "touch",
    )

    def __init__(
        self,
        middleware: CircuitBreakerMiddleware,
        route: Route,
        breaker: CircuitBreaker,
        backend: str,
        touch: Callable[[], None],
    ) -> None:
        self.middleware = middleware
        self.route = route
        self.breaker = breaker
        self.backend = backend
        self.touch = touch
        """What makes the breaker the registry's most recently used (:meth:`.BreakerRegistry.toucher`)."""
        self.timeout = route.timeout
        self.deadlines: Deadlines = middleware.deadlines
        self.limit = middleware.config.max_inspect_bytes
        classifier = middleware.classifier  # (a lane is forgotten when the middleware's classifier or config is set)
        self.judge: Judge = _not_the_default
        self.judge_results = True
        """Whether a result to the request is judged too (else it is a success): with `count_tool_errors`."""
        if type(classifier) is FailureClassifier:
            self.judge, self.judge_results = classifier.judge, classifier.count_tool_errors
        # = record_decision(…, ALLOW, state="closed", key=breaker.key): read-only, shared by every request
        attributes = MappingProxyType({"state": "closed", "key": breaker.key})
        self.allowed = Decision(Component.BREAKER, Outcome.ALLOW, attributes)

    def call(self, scope: Scope, request: McpRequest, receive: Receive, send: Send) -> Call:
        """A :class:`Call` of this lane (the `Call` path)."""
        return Call(self.middleware, scope, request, receive, send, self.breaker, self.backend, self.route)


def _not_the_default(*parts: Any) -> Classification:  # pragma: no cover - `fast_path` is the default classifier's
    raise AssertionError("the common path judges with the default classifier only")


class _Watch(Deadline):
    """The inner app's `send` on the common path (see the module's docstring), and the call's deadline
    (when the route has a timeout: :meth:`.Deadlines.enter`), one object a request.

    Not slotted on purpose: what every request starts with is a class attribute, so a request stores
    only what is its own (the common path counts its bytecodes).
    """

    start: Message | None = None
    body = b""
    gone: bool | None = None
    """Whether the client had left when the response completed (`None`: not completed): a disconnect
    after the response is not the client's."""
    diverted = False
    """A Call took over (`call`), or the attempt is over: `send` leaves the common path."""
    call: Call | None = None
    tap: ResponseTap | None = None
    """An outer middleware's tap watching this response (the gateway's): its outcome is the verdict's."""
    source: Noting
    """Where the app reads `receive`: it notes whether the app was told the client left."""

    forward: Send
    """Where the response goes (the breaker's `send`)."""
    lane: Lane
    scope: Scope
    request: McpRequest
    """What a Call taking over needs, with `forward`."""
    # (No `__init__`: `guarded` sets the four above; a frame less a request.)

    def send(self, message: Message) -> Awaitable[None]:
        """Forward `message` (a plain call: the awaitable returned is the next `send`'s own)."""
        if self.diverted:
            call = self.call
            if call is not None:
                return call.send(message)
            return _dropped()  # the attempt is over (timed out): nothing more from it reaches the client
        kind = message["type"]
        if kind == "http.response.body":
            if message.get("more_body"):
                if self.tap is None:  # a body in parts: the Call's watcher keeps them, bounded
                    return self.hand_over().send(message)
            else:
                self.gone = self.source.disconnected  # (True or False: a replay notes from False on)
                self.body = message.get("body", b"")
        elif kind == "http.response.start":
            if self.tap is None and watchable(message) != JSON_BODY:
                return self.hand_over().send(message)  # SSE, an error status, another type: the Call's rules
            self.start = message
        return self.forward(message)

    def hand_over(self) -> Call:
        """A :class:`Call` takes over the rest of the request (what was forwarded is its own)."""
        call = self.call = self.lane.call(self.scope, self.request, _unread, self.forward)
        self.diverted = True
        call.inbound = Noted(self.source, self.gone)  # (the app goes on reading what it was given)
        call.completed = self.gone is not None
        call.adopt(self.start)
        if call.completed and call._watch == JSON_BODY:  # the whole JSON body came (the client then left first):
            call._watch_body(self.body, False)  # the call judges it as its own watcher would have
        return call


async def _dropped() -> None:
    return None


async def _unread() -> Message:  # pragma: no cover - a Call taking over never reads its own `receive`
    raise AssertionError("the app reads the common path's receive")


async def guarded(lane: Lane, scope: Scope, request: McpRequest, receive: Receive, send: Send) -> None:
    """One guarded request on the common path (the `Call` path for anything else)."""
    breaker = lane.breaker
    if breaker._state is not _CLOSED:  # open or probing: refusals and probes are the Call's
        return await lane.call(scope, request, receive, send).run()
    watch = _Watch()
    watch.forward = send
    watch.lane = lane
    watch.scope = scope
    watch.request = request
    if TAP_SCOPE_KEY in scope:
        watch.tap = ResponseTap.current(scope, request)
    timeout = lane.timeout  # (None: no deadline; else `watch` is the call's)
    if timeout is not None and not lane.deadlines.enter(watch, timeout):  # not on asyncio: anyio's scope
        return await lane.call(scope, request, receive, send).run()
    permit = breaker._generation  # = breaker.acquire() on a closed circuit (which does nothing else)
    add_decision(scope, lane.allowed)
    if type(receive) is _Replay and receive.disconnected is None:  # the core's replay: it notes a disconnect
        receive.disconnected = False
        watch.source = receive
    else:  # another layer's `receive` (or a replay another breaker notes with): one that notes
        watch.source = receive = Inbound(receive, request.body)
    try:
        try:
            await lane.middleware._next(scope, receive, watch.send)
        except asyncio.CancelledError:
            if timeout is None:
                raise
            watch.finish()
            if not watch.expired or watch.cancelled_elsewhere:
                raise  # not (only) the deadline's: shutdown, an outer timeout, the server
            fault: Fault | None = None if _completed(watch) else Fault.TIMEOUT
        except Exception as exc:
            if timeout is not None:
                watch.finish()
            if _completed(watch):
                fault = None  # it failed after answering: the client has its response
            elif watch.expired:  # (never without a deadline)
                fault = Fault.TIMEOUT  # it broke while being cancelled: still a timeout
            else:
                fault, failure = Fault.EXCEPTION, exc
        except BaseException:
            if timeout is not None:
                watch.finish()
            raise
        else:
            if timeout is not None:
                watch.finish()
            if watch.call is None and watch.gone is not None:  # (= `_completed(watch)`, inline on the usual end)
                fault = None
            else:
                fault = None if _completed(watch) else Fault.TIMEOUT if watch.expired else Fault.DROPPED
        finally:
            watch.diverted = True
            call = watch.call
            if call is not None:
                call.closed = True
    except BaseException:  # cancelled from outside (shutdown, an outer timeout): no verdict
        breaker.record(permit, Classification.NEUTRAL)
        raise
    if call is None and fault is None and not watch.gone:  # the usual end: one JSON body (or a tap's outcome)
        tap = watch.tap
        if tap is None and watch.start is not None:  # as the Call's watcher judges a JSON body in one part
            body = watch.body
            if body and len(body) <= lane.limit:
                result, error = answer_in(body, request.id) or _NOT_FOUND
                if result is not None and not lane.judge_results:
                    breaker.succeeded(permit)  # = what `judge` says of a result to the request (its status is < 400)
                    return
                truncated = False
            else:  # nothing to read, or too much: the status says
                result = error = None
                truncated = len(body) > lane.limit
            status = watch.start["status"]
            verdict = lane.judge(status, _JSON, truncated, result, error)
        elif tap is not None:
            status, error = tap.status, tap.error
            verdict = lane.judge(status, tap.content_type, tap.truncated, tap.result, error)
        else:  # a body without a start: nothing the client could read
            status = error = None
            verdict = Classification.FAILURE
        if verdict is Classification.SUCCESS:
            breaker.succeeded(permit)
            return
        breaker.record(permit, verdict)
        reason = describe(status, error)
        if verdict is Classification.FAILURE:
            record_decision(scope, Component.BREAKER, Outcome.FAILURE, key=breaker.key, reason=reason, attempt=1)
        else:
            record_decision(scope, Component.BREAKER, Outcome.NEUTRAL, key=breaker.key, reason=reason, attempt=1)
        return
    if call is None:
        call = watch.hand_over()
        call.closed = True
    elif fault is None and not call.inbound.client_gone:  # handed over (SSE, an error status, ...) and answered
        call._conclude(permit, None, 1, call._verdict(None))
        return
    if fault is Fault.EXCEPTION:
        call._failed(failure)  # (bound with that fault)
    await call.settle(permit, fault, 1)


def _completed(watch: _Watch) -> bool:
    call = watch.call
    return call.completed if call is not None else watch.gone is not None
