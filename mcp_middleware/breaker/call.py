"""One guarded request: its attempts under a timeout, the verdict it earns, and what the client gets.

The inner app's response streams to the client through the breaker's one `send` (never held
back), which also keeps what the classifier needs (see :mod:`.watch`); a tap attached by an
outer middleware is shared instead, and a custom classifier gets a tap of its own. When the
backend fails before anything was sent, the client gets a JSON-RPC error (or, for a safe
request, another attempt); when it breaks off a started SSE response, the stream is finished
with an error event for the request (see :mod:`.answers`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import McpRequest, ResponseTap, SseParser, record_decision
from mcp_middleware.core.decisions import Component, Outcome
from mcp_middleware.core.tap import TAP_SCOPE_KEY

from .answers import answer_failure, cancel_legacy_request, describe, end_stream, is_plain_sse, refuse
from .classify import FailureClassifier, Fault
from .inbound import Inbound, Noted
from .state import BreakerPolicy, BreakerState, CircuitBreaker, Classification, Permit
from .watch import CONTENT_TYPES, JSON_BODY, MAX_CANDIDATES, NOT_WATCHED, SSE_BODY, find_response, watchable

if TYPE_CHECKING:
    from .middleware import CircuitBreakerMiddleware

__all__ = ["Call", "Route"]

logger = logging.getLogger("mcp_middleware.breaker")

_UNDECIDED = -1
"""The watch mode before the response starts (when the breaker watches it itself)."""


class Route(NamedTuple):
    """What the options say about one (method, target), resolved once and cached."""

    excluded: bool
    timeout: float | None
    per_target: bool
    policy: BreakerPolicy | None
    retry_listed: bool


class Call:
    """One guarded request: its attempts, what was sent, and whether the client is still there."""

    __slots__ = (
        "_ended",
        "_kept",
        "_limit",
        "_receive",
        "_size",
        "_sse",
        "_truncated",
        "_watch",
        "backend",
        "breaker",
        "closed",
        "completed",
        "error",
        "forward",
        "inbound",
        "middleware",
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
        route: Route,
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.request = request
        self._receive = inbound = Inbound(receive, request.body)
        """The inner app's `receive` (apart from the call: see :class:`Inbound`)."""
        self.inbound: Inbound | Noted = inbound
        """Whether the client left: the `receive` above, or a :class:`Noted` when the call took over from
        the common path (:mod:`.fast`, where the app reads another `receive` and no retry is made)."""
        self.breaker = breaker
        self.backend = backend
        self.route = route
        self.forward = send
        """Where the response goes: the server's `send`, an outer tap's, or (once one is needed) a tap's own."""
        # An outer middleware's tap already watches this response: share what it learns.
        tap = ResponseTap.current(scope, request) if TAP_SCOPE_KEY in scope else None
        if tap is None and type(middleware._classifier) is not FailureClassifier:
            tap, self.forward = ResponseTap.attach(scope, send, request, max_bytes=middleware._config.max_inspect_bytes)
        self.tap = tap
        self._limit = middleware._config.max_inspect_bytes
        self._watch = NOT_WATCHED if tap is not None else _UNDECIDED
        self._kept: list[bytes] = []
        """The JSON body's parts, or the SSE events that can be the response (bounded as the tap bounds them)."""
        self._size = 0
        self._sse: SseParser | None = None
        self._truncated = False
        self._ended = False
        self.start: Message | None = None
        self.completed = False
        self.closed = False
        self.error: BaseException | None = None

    # --- the inner app's view of the exchange ---------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.closed:  # the attempt is over (timed out): nothing more from it reaches the client
            return
        if message["type"] == "http.response.body":
            more = message.get("more_body", False)
            if not more:
                self.completed = self.inbound.completed = True
            await self.forward(message)  # forward first: watching never delays the client
            if self._watch > NOT_WATCHED:
                self._watch_body(message.get("body", b""), more)
            return
        if message["type"] == "http.response.start":
            self.start = message
            if self._watch == _UNDECIDED:
                self._watch = watchable(message)
                if self._watch == NOT_WATCHED:  # an error answer, another type, a compressed body: the tap's rules
                    tap = self.tap = ResponseTap(self.forward, self.request, max_bytes=self._limit)
                    self.forward = tap.send
                elif self._watch == SSE_BODY:
                    self._sse = SseParser(self._limit)
        await self.forward(message)

    def _watch_body(self, body: bytes, more: bool) -> None:
        """Keep what can be the response, as the tap keeps it (see :mod:`.watch`)."""
        if self._watch == JSON_BODY:
            if not self._truncated:
                self._size += len(body)
                if self._size > self._limit:
                    self._kept, self._truncated = [], True
                elif body:
                    self._kept.append(body)
        else:
            sse = self._sse
            assert sse is not None
            for event, data in sse.feed(body, final=not more):
                # Only an event naming "result" or "error" can be the response; progress is not kept.
                if event == "message" and (b'"result"' in data or b'"error"' in data):
                    if len(self._kept) == MAX_CANDIDATES:
                        del self._kept[0]
                    self._kept.append(data)
            if sse.truncated:
                self._truncated = True
        if not more:
            self._ended = True

    def _verdict(
        self, fault: Fault | None
    ) -> tuple[Classification, int | None, dict[str, Any] | None, dict[str, Any] | None]:
        """`(verdict, status, result, error)`: what the classifier makes of the attempt."""
        tap = self.tap
        classifier = self.middleware._classifier
        if tap is None:  # watched here (the default classifier): the tap's view, without a tap
            start = self.start
            if start is None:
                return Classification.FAILURE, None, None, None  # (a fault, or nothing at all: both failures)
            status: int | None = start["status"]
            kept = self._kept
            result = error = None
            if self._ended and kept:
                if self._watch == JSON_BODY:
                    kept = [kept[0] if len(kept) == 1 else b"".join(kept)]
                result, error = find_response(kept, self.request.id)
            if fault is not None:
                return Classification.FAILURE, status, result, error
            assert type(classifier) is FailureClassifier
            verdict = classifier.judge(status, CONTENT_TYPES[self._watch], self._truncated, result, error)
            return verdict, status, result, error
        status, result, error = tap.status, tap.result, tap.error
        if type(classifier) is FailureClassifier:
            if fault is not None:
                return Classification.FAILURE, status, result, error
            return classifier.judge(status, tap.content_type, tap.truncated, result, error), status, result, error
        try:
            verdict = classifier(self.request, tap.outcome(), fault)
        except Exception:  # a broken custom classifier must not leak the permit (a half-open probe slot)
            logger.exception("circuit breaker classifier failed; the call counts as neutral")
            verdict = Classification.NEUTRAL
        return verdict, status, result, error

    def adopt(self, start: Message | None) -> None:
        """Take over a response the common path (:mod:`.fast`) has started: `start` was forwarded already."""
        self.start = start
        if start is not None and self._watch == _UNDECIDED:
            self._watch = watchable(start)  # (JSON: the only start the common path keeps to itself)
            if self._watch == SSE_BODY:
                self._sse = SseParser(self._limit)

    # --- the request --------------------------------------------------------------------------

    async def run(self) -> None:
        middleware, breaker, scope = self.middleware, self.breaker, self.scope
        attempt = 1
        while True:
            permit = breaker.acquire()
            if permit is None:
                await refuse(self)
                return
            if breaker.state is BreakerState.CLOSED:  # (literal strings: Enum.value is slow on the hot path)
                record_decision(scope, Component.BREAKER, Outcome.ALLOW, state="closed", key=breaker.key)
            else:
                record_decision(scope, Component.BREAKER, Outcome.PROBE, state="half_open", key=breaker.key)
            try:
                # One attempt, inline on the usual path (a coroutine more in the chain costs every wake-up).
                timeout = self.route.timeout
                deadline = middleware.deadlines.start(timeout) if timeout is not None else None
                if deadline is None:  # no timeout, or not on asyncio (then an anyio deadline scope)
                    fault = await self._attempt_scoped(timeout)
                else:
                    try:
                        await middleware._next(scope, self._receive, self.send)
                    except asyncio.CancelledError:
                        deadline.finish()
                        if not deadline.expired or deadline.cancelled_elsewhere:
                            raise  # not (only) the deadline's: shutdown, an outer timeout, the server
                        fault = None if self.completed else Fault.TIMEOUT
                    except Exception as exc:
                        deadline.finish()
                        if self.completed:
                            fault = None  # it failed after answering: the client has its response
                        elif deadline.expired:
                            fault = Fault.TIMEOUT  # it broke while being cancelled: still a timeout
                        else:
                            fault = self._failed(exc)
                    except BaseException:
                        deadline.finish()
                        raise
                    else:
                        deadline.finish()
                        fault = None if self.completed else Fault.TIMEOUT if deadline.expired else Fault.DROPPED
                    finally:
                        self.closed = True
            except BaseException:  # cancelled from outside (shutdown, an outer timeout): no verdict
                breaker.record(permit, Classification.NEUTRAL)
                raise
            if fault is None and not self.inbound.client_gone:  # answered: the usual end, no await
                self._conclude(permit, None, attempt, self._verdict(None))
                return
            delay = await self.settle(permit, fault, attempt)
            if delay is None:
                return
            await anyio.sleep(delay)
            attempt += 1
            self.closed = False
            self._receive.replay = True
            self.error = None

    async def settle(self, permit: Permit | None, fault: Fault | None, attempt: int) -> float | None:
        """After an attempt: the verdict, the decisions, what the client gets; the delay before the
        next attempt, or `None` when the call is over. (Shared with the common path in :mod:`.fast`.)"""
        if self.inbound.client_gone and fault is not Fault.TIMEOUT:
            fault = None
            judged = await self._judge_abandoned()
        else:
            judged = self._verdict(fault)
        self._conclude(permit, fault, attempt, judged)
        if fault is Fault.TIMEOUT:
            await self._timed_out()
        if fault is None or self.inbound.client_gone:
            return None
        if self.start is None:
            retry = self.middleware.retry
            if self._may_retry(attempt):
                assert retry is not None
                record_decision(
                    self.scope,
                    Component.BREAKER,
                    Outcome.RETRY,
                    key=self.breaker.key,
                    attempt=attempt + 1,
                    reason=fault.value,
                )
                return retry.delay(attempt, self.middleware.random())
            await answer_failure(self, fault)
            return None
        if not self.completed:
            await end_stream(self, fault)
        return None

    def _conclude(
        self,
        permit: Permit | None,
        fault: Fault | None,
        attempt: int,
        judged: tuple[Classification, int | None, dict[str, Any] | None, dict[str, Any] | None],
    ) -> None:
        """Tell the breaker the verdict, record it unless a success, learn a `tools/list`'s annotations."""
        verdict, status, result, error = judged
        breaker = self.breaker
        breaker.record(permit, verdict)
        if verdict is not Classification.SUCCESS:
            reason = fault.value if fault is not None else describe(status, error)
            record_decision(
                self.scope, Component.BREAKER, Outcome(verdict.value), key=breaker.key, reason=reason, attempt=attempt
            )
        retry = self.middleware.retry
        if retry is not None and retry.learn_annotations and self.request.method == "tools/list" and result is not None:
            self.middleware.registry.learn_tools(self.backend, result.get("tools"))

    async def _timed_out(self) -> None:
        timeout_ms = int((self.route.timeout or 0.0) * 1000)
        record_decision(self.scope, Component.BREAKER, Outcome.TIMEOUT, key=self.breaker.key, timeout_ms=timeout_ms)
        await cancel_legacy_request(self)

    async def _attempt_scoped(self, seconds: float | None) -> Fault | None:
        """An attempt without a deadline, or (off asyncio) inside an anyio deadline scope."""
        cancel: anyio.CancelScope | None = None
        try:
            if seconds is None:
                await self.middleware._next(self.scope, self._receive, self.send)
            else:
                cancel = anyio.CancelScope(deadline=anyio.current_time() + seconds)
                with cancel:
                    await self.middleware._next(self.scope, self._receive, self.send)
        except Exception as exc:
            if self.completed:
                return None  # it failed after answering: the client has its response
            if cancel is not None and cancel.cancel_called:
                return Fault.TIMEOUT  # it broke while being cancelled: still a timeout
            return self._failed(exc)
        finally:
            self.closed = True
        if self.completed:
            return None
        if cancel is not None and cancel.cancelled_caught:
            return Fault.TIMEOUT
        return Fault.DROPPED

    def _failed(self, exc: Exception) -> Fault:
        self.error = exc
        logger.warning("MCP backend %s failed on %s", self.backend, self.request.method, exc_info=exc)
        return Fault.EXCEPTION

    async def _judge_abandoned(
        self,
    ) -> tuple[Classification, int | None, dict[str, Any] | None, dict[str, Any] | None]:
        """The client disconnected before the response ended.

        A client often closes an SSE stream as soon as it holds its response, before
        the server's final empty message: finish the stream (nobody reads it any
        more) so the response that was delivered can be judged. Without one, the
        abandoned call says nothing about the backend.
        """
        start = self.start
        if start is not None and not self.completed and is_plain_sse(start):
            self.completed = self.inbound.completed = True
            await self.forward({"type": "http.response.body", "body": b"", "more_body": False})
            if self._watch > NOT_WATCHED:
                self._watch_body(b"", False)
        verdict, status, result, error = self._verdict(None)
        if result is None and error is None:
            return Classification.NEUTRAL, status, result, error
        return verdict, status, result, error

    def _may_retry(self, attempt: int) -> bool:
        retry = self.middleware.retry
        if retry is None or attempt >= retry.attempts or self.inbound.client_gone:
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
