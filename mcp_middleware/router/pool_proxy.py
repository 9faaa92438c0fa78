"""The pool's ASGI side: pick a replica, forward, and fail over only what is safe to send twice.

Modern (2026-07-28) requests, and legacy ones without a session (`initialize`), go to the
replica in rotation with the fewest requests in flight (or the next one, round robin). A legacy
request carrying a session goes to the replica that created it (:mod:`.pool_sessions`).

A forward that fails before any byte reached the client (no connection, a connection reset
before the response head, a replica's 502/503) is sent to another replica when that cannot
hurt: it was never sent, or :func:`~mcp_middleware.router.safety.retry_safe` says the request
may run twice (reads, lists, tools annotated read-only or idempotent, tools the operator allows).
Otherwise the client gets a JSON-RPC error with its request id and
:func:`~mcp_middleware.router.safety.failure_data`: 502 `-32017` when it may have run, 503
`-32015` when it cannot have. The response is never held back: only its head is looked at.

With backend credentials (RFC 8693 exchange, one cache for the pool) the caller's token for the pool
is had before a replica is picked, and goes with the request to each replica tried
(:mod:`._pool_credentials`); no token is the caller's JSON-RPC error, never a replica's failure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.breaker import Classification, FailureClassifier
from mcp_middleware.core import (
    Component,
    ErrorCode,
    JsonRpcCode,
    Outcome,
    RequestKind,
    ResponseTap,
    SelectorMap,
    error_body,
    get_mcp_request,
    get_principal,
    record_decision,
    send_error,
)

from ._pool_credentials import CallerToken, TokenRefused
from ._pool_forward import Failure, StartHook
from ._pool_request import PoolCall
from ._pool_turn import SESSION_HEADER, Turn, as_backend
from .credentials import ExchangeError, send_exchange_error
from .pool_health import Replica, ToolHints
from .pool_sessions import MAX_INITIALIZE_BYTES, Sticky, StickySessions, note_replica, open_session, vouched_sticky
from .safety import failure_data, retry_safe
from .sessions import owner_of

if TYPE_CHECKING:
    from .pool import PoolBackend

__all__ = ["PoolProxy"]

logger = logging.getLogger("mcp_middleware.router.pool")


class PoolProxy:
    """Pure-ASGI dispatcher over a pool's replicas (built by :class:`~mcp_middleware.router.pool.PoolBackend`)."""

    def __init__(self, pool: PoolBackend, replicas: Sequence[Replica]) -> None:
        self.name = pool.name or "pool"
        self.replicas = tuple(replicas)
        self.round_robin = pool.balance == "round_robin"
        self.reinitialize = pool.on_replica_loss == "reinitialize"
        self.sessions = StickySessions(pool.max_sessions)
        self.hints = ToolHints(pool.max_tools)
        self.classifier = FailureClassifier()
        self.credentials = pool.credentials
        self._allow: SelectorMap[bool] = SelectorMap((selector, True) for selector in pool.retry_tools)
        self._retry_after = str(max(1, math.ceil(pool.probe_interval)))
        self._next = 0
        self.failovers = 0
        """Requests sent to another replica after one failed (for metrics)."""

    # --- choosing -----------------------------------------------------------------------------

    def pick(self, tried: Sequence[Replica] = ()) -> Replica | None:
        """The replica for the next request: in rotation, not tried yet, fewest in flight (or next in turn)."""
        replicas = self.replicas
        count = len(replicas)
        start = self._next
        self._next = (start + 1) % count
        first = replicas[start]
        if not tried and not first.in_flight and first.up:
            return first  # nothing beats an idle replica in rotation (the common case: one look, not a scan)
        best: Replica | None = None
        for step in range(count):
            replica = replicas[(start + step) % count]
            if replica in tried or not replica.up:
                continue
            if self.round_robin:
                return replica
            if best is None or replica.in_flight < best.in_flight:
                best = replica
        return best

    def safe(self, call: PoolCall) -> bool:
        """Whether the request may run twice (so it may be sent to another replica after it may have run)."""
        request = call.request
        method = request.method if request is not None else None
        if method is None:
            return False
        if method == "initialize":
            return True  # a session a failed replica may have opened is never handed to the client
        if method != "tools/call":
            return retry_safe(method)
        name = request.name if request is not None else None
        allowed = name is not None and self._allow.lookup_parts(method, name) is True
        return retry_safe(method, annotations=self.hints.annotations(name), allowed=allowed)

    # --- entry ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1000})
            return
        view = get_mcp_request(scope)  # read by a middleware in front: its tap is shared, its view reused
        call = await PoolCall.read(scope, receive, send, view)
        if call is None:
            return
        tap: ResponseTap | None = None
        if view is not None and view.kind is RequestKind.REQUEST:
            tap, send = ResponseTap.attach(scope, send, view)
        auth = CallerToken(self.credentials, get_principal(scope)) if self.credentials is not None else None
        if call.session_id is not None:
            await self._in_session(call, receive, send, tap, call.session_id, auth)
            return
        if auth is not None and not await auth.had(scope, send, self.name, lambda: call.id):
            return
        binder = self._binder(call) if not call.modern and call.method == "POST" else None
        turn = Turn(self, call, no_resume=binder is not None)
        while (replica := self.pick(turn.tried)) is not None:
            hook = binder(replica) if binder is not None else None
            failure = await self._attempt(replica, scope, receive, turn.send(send), call, tap, hook, auth)
            if failure is None:
                return
            turn.tried.append(replica)
            if not turn.goes_on(failure):
                break
            self._failing_over(scope, replica, failure)
        await self._give_up(scope, send, call, turn)

    async def _attempt(
        self,
        replica: Replica,
        scope: Scope,
        receive: Receive,
        send: Send,
        call: PoolCall,
        tap: ResponseTap | None,
        hook: StartHook | None,
        auth: CallerToken | None = None,
    ) -> Failure | None:
        breaker = replica.breaker
        permit = breaker.acquire()
        if permit is None:  # ejected since it was picked
            return Failure(False, "ejected")
        counted = call.method != "GET"  # a legacy GET stream is open for the session's life
        replica.in_flight += counted
        renewals = auth.renewals if auth is not None else 0
        try:
            answered = await replica.transport.forward(scope, call.body, receive, send, hook, auth)
        except BaseException:
            breaker.record(permit, Classification.NEUTRAL)  # cancelled, or broke mid-answer: the client's loss
            raise
        finally:
            replica.in_flight -= counted
        if auth is not None and auth.renewals > renewals:  # this replica answered 401: exchanged anew
            record_decision(
                scope, Component.CREDENTIALS, Outcome.RETRY, backend=self.name, replica=replica.label, status=401
            )
        if isinstance(answered, ExchangeError):
            refused = isinstance(answered, TokenRefused)  # a fresh token refused: that replica is at fault
            if refused:
                replica.last_error = answered.reason
            breaker.record(permit, Classification.FAILURE if refused else Classification.NEUTRAL)
            await send_exchange_error(scope, send, answered, backend=self.name, name=self.name, request_id=call.id)
            return None
        if isinstance(answered, Failure):
            replica.last_error = answered.reason
            breaker.record(permit, Classification.FAILURE)  # a fault, as the breaker classifies faults
            return answered
        if tap is None:  # nobody parsed the request: judged by its status, as the classifier judges
            # an answer it could not inspect (5xx a failure, 4xx the client's, else a success)
            verdict = (
                Classification.FAILURE
                if answered >= 500
                else Classification.NEUTRAL
                if answered >= 400
                else Classification.SUCCESS
            )
            if verdict is Classification.FAILURE:
                replica.last_error = f"HTTP {answered}"
            breaker.record(permit, verdict)
            return None
        outcome = tap.outcome()
        if not outcome.complete:  # the client left: the answer says nothing about the replica
            breaker.record(permit, Classification.NEUTRAL)
            return None
        request = call.request
        assert request is not None  # a tap is attached only to a parsed request
        verdict = self.classifier(request, outcome, None)
        if verdict is Classification.FAILURE:
            replica.last_error = f"HTTP {outcome.status}" + (
                f", JSON-RPC {outcome.error_code}" if outcome.error else ""
            )
        breaker.record(permit, verdict)
        if request.method == "tools/list" and outcome.result is not None:
            self.hints.learn(outcome.result.get("tools"))
        return None

    # --- legacy sessions ---------------------------------------------------------------------------

    def _binder(self, call: PoolCall) -> Callable[[Replica], StartHook]:
        """Record the session a replica opens for this sessionless legacy request (`initialize`), bound to
        the caller."""
        owner = owner_of(call.scope)
        body = call.body if len(call.body) <= MAX_INITIALIZE_BYTES else None

        def at(replica: Replica) -> StartHook:
            def bind(message: Message) -> Message:
                for key, value in message.get("headers", ()):
                    if key == SESSION_HEADER:
                        session_id = value.decode("latin-1")
                        self.sessions.bind(session_id, Sticky(replica, owner, session_id, body))
                        note_replica(call.scope, replica)  # a sealed handle carries where the session is
                return message

            return bind

        return at

    async def _in_session(
        self,
        call: PoolCall,
        receive: Receive,
        send: Send,
        tap: ResponseTap | None,
        session_id: str,
        auth: CallerToken | None,
    ) -> None:
        scope = call.scope
        sticky = self.sessions.get(session_id)
        if sticky is None and (sticky := vouched_sticky(scope, session_id, self.replicas)) is not None:
            self.sessions.bind(session_id, sticky)  # opened through another gateway instance: go on there
        if sticky is None or sticky.owner != owner_of(scope):
            await self._no_session(scope, send, call, "unknown")
            return
        if auth is not None and not await auth.had(scope, send, self.name, lambda: call.id):
            return  # (after the session check: a made-up session costs no exchange)
        ending = call.method == "DELETE"
        if ending:
            self.sessions.forget(session_id)
        replica = sticky.replica
        recreated = False
        turn = Turn(self, call, no_resume=ending)
        while True:
            if replica.up:
                target = as_backend(scope, sticky, session_id)
                hook = None if turn.resumed else self._session_hook(sticky, session_id)
                failure = await self._attempt(replica, target, receive, turn.send(send), call, tap, hook, auth)
                if failure is None:
                    return
                turn.tried.append(replica)
                if not turn.goes_on(failure):
                    await self._give_up(scope, send, call, turn)
                    return
                self._failing_over(scope, replica, failure)
            if recreated or not self.reinitialize or sticky.initialize is None or ending:
                break
            replacement = await self._recreate(scope, sticky, session_id, lost=replica, auth=auth)
            if replacement is None:
                break
            replica, recreated = replacement, True
        self.sessions.forget(session_id)
        if turn.resumed:  # the answer had begun: it ends with the error, the next request learns the session is gone
            await self._give_up(scope, send, call, turn)
            return
        await self._no_session(scope, send, call, "replica lost")

    def _session_hook(self, sticky: Sticky, session_id: str) -> StartHook:
        """The replica's answer in a session: its id shown as the client's; a 404 ends the session here too."""
        translated = sticky.backend_id != session_id
        client_id = session_id.encode("latin-1")

        def hook(message: Message) -> Message:
            if message["status"] == 404:
                self.sessions.forget(session_id)
            if translated:
                headers = [(k, client_id if k == SESSION_HEADER else v) for k, v in message.get("headers", ())]
                message = {**message, "headers": headers}
            return message

        return hook

    async def _recreate(
        self, scope: Scope, sticky: Sticky, session_id: str, lost: Replica, auth: CallerToken | None
    ) -> Replica | None:
        """Open the client's session again on another replica (its own `initialize`); the replica, or None."""
        async with sticky.lock:
            if sticky.replica is not lost and sticky.replica.up:
                return sticky.replica  # a concurrent request of this session re-created it already
            assert sticky.initialize is not None
            tried = [lost]
            while (replica := self.pick(tried)) is not None:
                tried.append(replica)
                backend_id = await open_session(scope, replica, sticky.initialize, auth)
                if backend_id is None:
                    continue
                sticky.replica, sticky.backend_id = replica, backend_id
                logger.info(
                    "backend %r: a session of replica %s re-created on replica %s", self.name, lost.label, replica.label
                )
                return replica
        return None

    # --- answers ----------------------------------------------------------------------------------

    def _failing_over(self, scope: Scope, replica: Replica, failure: Failure) -> None:
        self.failovers += 1
        record_decision(
            scope,
            Component.ROUTER,
            Outcome.RETRY,
            backend=self.name,
            replica=replica.label,
            reason=failure.reason[:120],
        )
        logger.debug("backend %r replica %s failed (%s): trying another", self.name, replica.label, failure.reason)

    async def _give_up(self, scope: Scope, send: Send, call: PoolCall, turn: Turn) -> None:
        """No replica served it: a JSON-RPC error, or, for an answer already begun, its last event."""
        may_have_run = turn.may_have_run
        record_decision(scope, Component.ROUTER, Outcome.BACKEND_ERROR, backend=self.name, may_have_run=may_have_run)
        data = failure_data(self.name, may_have_run=may_have_run)
        if turn.resumed:
            if not turn.sse:  # a JSON body cut short cannot be finished honestly: the connection must drop
                raise RuntimeError(f"backend {self.name!r}: a replica broke off a response after it started")
            message = "Backend failed while answering; the request may have run"
            event = error_body(ErrorCode.BAD_GATEWAY, message, call.id, data)
            await send({"type": "http.response.body", "body": b"event: message\r\ndata: " + event + b"\r\n\r\n"})
            return
        if may_have_run:
            await send_error(
                send,
                status=502,
                code=ErrorCode.BAD_GATEWAY,
                message="Backend failed before answering; the request may have run",
                request_id=call.id,
                data=data,
            )
            return
        message = (
            "No replica of the backend could be reached" if turn.tried else "No replica of the backend is available"
        )
        await send_error(
            send,
            status=503,
            code=ErrorCode.UNAVAILABLE,
            message=message,
            request_id=call.id,
            data=data,
            headers={"Retry-After": self._retry_after},
        )

    async def _no_session(self, scope: Scope, send: Send, call: PoolCall, reason: str) -> None:
        """Answered as the SDK answers a session it does not know: the client starts a new one."""
        record_decision(scope, Component.ROUTER, Outcome.SESSION_REFUSED, backend=self.name, reason=reason)
        await send_error(
            send, status=404, code=JsonRpcCode.INVALID_REQUEST, message="Session not found", request_id=call.id
        )
