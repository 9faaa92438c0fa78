"""One guarded request: its attempts under a timeout, the verdict it earns, and what the client gets.

The inner app's response streams to the client through the core's tap (never held back).
When the backend fails before anything was sent, the client gets a JSON-RPC error (or, for
a safe request, another attempt); when it breaks off a started SSE response, the stream is
finished with an error event for the request.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, NamedTuple

import anyio
import orjson
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import (
    Era,
    ErrorCode,
    McpRequest,
    ResponseOutcome,
    ResponseTap,
    error_body,
    record_decision,
    send_error,
)
from mcp_middleware.core.decisions import Component, Outcome
from mcp_middleware.core.protocol import is_event_stream

from .classify import Fault
from .state import BreakerPolicy, BreakerState, CircuitBreaker, Classification

if TYPE_CHECKING:
    from .middleware import CircuitBreakerMiddleware

__all__ = ["Call", "Route"]

logger = logging.getLogger("mcp_middleware.breaker")


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
        route: Route,
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

    def _observe(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_consumed = True
        elif kind == "http.disconnect":
            self.body_consumed = True
            # uvicorn also reports a disconnect once the response is complete; only an earlier one is the client's
            if not self.completed:
                self.client_gone = True

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
                record_decision(scope, Component.BREAKER, Outcome.ALLOW, state="closed", key=breaker.key)
            else:
                record_decision(scope, Component.BREAKER, Outcome.PROBE, state="half_open", key=breaker.key)
            try:
                fault = await self._attempt()
            except BaseException:  # cancelled from outside (shutdown, an outer timeout): no verdict
                breaker.record(permit, Classification.NEUTRAL)
                raise
            if self.client_gone and fault is not Fault.TIMEOUT:
                fault, verdict, outcome = await self._judge_abandoned()
            else:
                outcome = self.tap.outcome()
                verdict = self._classify(outcome, fault)
            breaker.record(permit, verdict)
            if verdict is not Classification.SUCCESS:
                reason = fault.value if fault is not None else _describe(outcome.status, outcome.error_code)
                record_decision(
                    scope, Component.BREAKER, Outcome(verdict.value), key=breaker.key, reason=reason, attempt=attempt
                )
            retry = middleware.retry
            if retry is not None and retry.learn_annotations and request.method == "tools/list":
                result = outcome.result
                if result is not None:
                    middleware.registry.learn_tools(self.backend, result.get("tools"))
            if fault is Fault.TIMEOUT:
                timeout_ms = int((self.route.timeout or 0.0) * 1000)
                record_decision(scope, Component.BREAKER, Outcome.TIMEOUT, key=breaker.key, timeout_ms=timeout_ms)
                await self._cancel_legacy_request()
            if fault is None or self.client_gone:
                return
            if self.start is None:
                if self._may_retry(attempt):
                    assert retry is not None
                    delay = retry.delay(attempt, middleware.random())
                    record_decision(
                        scope,
                        Component.BREAKER,
                        Outcome.RETRY,
                        key=breaker.key,
                        attempt=attempt + 1,
                        reason=fault.value,
                    )
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
        deadline = self.middleware.deadlines.start(timeout) if timeout is not None else None
        if deadline is None:  # no timeout, or not on asyncio (then an anyio deadline scope)
            return await self._attempt_scoped(timeout)
        try:
            await self.middleware.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            deadline.finish()
            if not deadline.expired or deadline.cancelled_elsewhere:
                raise  # not (only) the deadline's: shutdown, an outer timeout, the server
            return None if self.completed else Fault.TIMEOUT
        except Exception as exc:
            deadline.finish()
            if self.completed:
                return None  # it failed after answering: the client has its response
            if deadline.expired:
                return Fault.TIMEOUT  # it broke while being cancelled: still a timeout
            return self._failed(exc)
        except BaseException:
            deadline.finish()
            raise
        else:
            deadline.finish()
        finally:
            self.closed = True
        if self.completed:
            return None
        return Fault.TIMEOUT if deadline.expired else Fault.DROPPED

    async def _attempt_scoped(self, seconds: float | None) -> Fault | None:
        """An attempt without a deadline, or (off asyncio) inside an anyio deadline scope."""
        cancel: anyio.CancelScope | None = None
        try:
            if seconds is None:
                await self.middleware.app(self.scope, self.receive, self.send)
            else:
                cancel = anyio.CancelScope(deadline=anyio.current_time() + seconds)
                with cancel:
                    await self.middleware.app(self.scope, self.receive, self.send)
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

    async def _judge_abandoned(self) -> tuple[Fault | None, Classification, ResponseOutcome]:
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
            return None, Classification.NEUTRAL, outcome
        return None, self._classify(outcome, None), outcome

    def _classify(self, outcome: ResponseOutcome, fault: Fault | None) -> Classification:
        try:
            return self.middleware.classifier(self.request, outcome, fault)
        except Exception:  # a broken custom classifier must not leak the permit (a half-open probe slot)
            logger.exception("circuit breaker classifier failed; the call counts as neutral")
            return Classification.NEUTRAL

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
        record_decision(
            self.scope, Component.BREAKER, Outcome.OPEN, state=state.value, key=breaker.key, retry_after_ms=wait_ms
        )
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
            sse = is_event_stream(value)
        elif key == b"content-encoding" and value.strip().lower() != b"identity":
            return False
    return sse


def _describe(status: int | None, code: int | None) -> str:
    if code is not None:
        return f"jsonrpc_{code}"
    return f"http_{status}" if status is not None else "no_response"
