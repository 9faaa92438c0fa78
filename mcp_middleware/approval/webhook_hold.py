"""A held call decided by a :class:`WebhookApprover`: now (its HTTP answer), or later (its callback).

Synchronous: the webhook's 200 decides while the request waits. With `callback=True` the call also
waits under a one-time nonce in the approval store: the webhook answers 202, and the decision comes
through the callback URL (on this instance or another, with a shared store), or `timeout` refuses
the call. While it waits nothing is buffered: a 2025-11-25 client that takes an event stream gets
the stream at once with keep-alive comments (the backend's answer continues it once approved); a
2026-07-28 request is held open, as the synchronous webhook holds it. A client that leaves, or a
2025-11-25 `notifications/cancelled` for the call, ends the wait and its record (a late callback is
then told 409).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import Component, Era, McpRequest, Outcome, RequestId, clip, get_principal, record_decision

from .call import ApprovalCall, Redaction
from .legacy import AnswerEvents, EventStream, FreshReceive, accepts_events, until_disconnect
from .outcomes import APPROVAL_REFUSED, facts_of, refusal_data, refusal_message, refuse
from .store import ApprovalStoreUnavailable, CallbackAnswer
from .webhook import WebhookApprover, WebhookVerdict

__all__ = ["LATE_GRACE", "HeldCalls", "by_webhook"]

logger = logging.getLogger("mcp_middleware.approval")

LATE_GRACE = 60.0
"""Seconds past `timeout` a callback token still opens, so a late approver is told 409 (too late), not 404."""


_Key = tuple[str, str, RequestId]


class HeldCalls:
    """The 2025-11-25 calls waiting for a callback, by (session, principal, call id): a `notifications/cancelled`
    from that session and principal withdraws one. Entries live only while their call waits."""

    def __init__(self) -> None:
        self._held: dict[_Key, anyio.Event] = {}

    @staticmethod
    def _key(scope: Scope, session: str, call_id: RequestId) -> _Key:
        return session, get_principal(scope).key, call_id

    def hold(self, scope: Scope, request: McpRequest) -> tuple[_Key, anyio.Event] | None:
        if request.session_id is None or request.id is None:
            return None
        key = self._key(scope, request.session_id, request.id)
        event = self._held[key] = anyio.Event()
        return key, event

    def forget(self, key: _Key) -> None:
        self._held.pop(key, None)

    def withdraw(self, scope: Scope, request: McpRequest) -> None:
        cancelled = (request.params or {}).get("requestId")
        if request.session_id is None or not isinstance(cancelled, str | int) or isinstance(cancelled, bool):
            return
        event = self._held.get(self._key(scope, request.session_id, cancelled))
        if event is not None:
            event.set()

    def __len__(self) -> int:
        return len(self._held)


async def by_webhook(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    request: McpRequest,
    call: ApprovalCall,
    hook: WebhookApprover,
    redaction: Redaction,
    keepalive: float,
    held: HeldCalls,
) -> None:
    facts = facts_of(call)
    record_decision(scope, Component.APPROVAL, Outcome.REQUIRED, **facts, approver="webhook")
    if not hook.callback:
        verdict = await hook.decide(call.facts(redaction))
        if verdict.approved:
            record_decision(scope, Component.APPROVAL, Outcome.APPROVED, **facts, approver="webhook")
            await app(scope, receive, send)
            return
        _record_refusal(scope, call, verdict.reason)
        await refuse(send, request, call, verdict.reason, verdict.detail, hook.timeout)
        return
    await _CallbackHold(app, scope, receive, send, request, call, hook, redaction, keepalive, held).run()


def _record_refusal(scope: Scope, call: ApprovalCall, reason: str, **extra: str) -> None:
    if reason == "timeout":
        record_decision(scope, Component.APPROVAL, Outcome.TIMEOUT, **facts_of(call), approver="webhook", **extra)
    else:
        record_decision(
            scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="webhook", reason=reason, **extra
        )


@dataclass
class _CallbackHold:
    app: ASGIApp
    scope: Scope
    receive: Receive
    send: Send
    request: McpRequest
    call: ApprovalCall
    hook: WebhookApprover
    redaction: Redaction
    keepalive: float
    held: HeldCalls
    verdict: WebhookVerdict | None = None
    gone: bool = False
    cancelled: bool = False
    stream: EventStream | None = None

    async def run(self) -> None:
        hook, call = self.hook, self.call
        nonce = os.urandom(16).hex()
        url = hook.callback_url(self.scope, call.digest, nonce, ttl=hook.timeout + LATE_GRACE)
        if url is None:  # no public_url and no Host to trust: nobody could answer
            return await self._refused("no_callback_url")
        try:
            await hook.store.hold(nonce, hook.timeout + LATE_GRACE)
        except ApprovalStoreUnavailable:
            return await self._refused("store_unavailable")
        withdrawn = None
        if self.request.era is Era.LEGACY:
            withdrawn = self.held.hold(self.scope, self.request)
            if accepts_events(self.scope):
                self.stream = EventStream(self.send, self.request.id)
        answer: CallbackAnswer | None = None
        store_down = False
        try:
            if self.stream is not None:
                await self.stream.start()
            await self._wait(nonce, url, withdrawn[1] if withdrawn is not None else None)
        finally:
            if withdrawn is not None:
                self.held.forget(withdrawn[0])
            with anyio.CancelScope(shield=True):  # the record ends whatever happened: a late answer gets 409
                try:
                    answer = await hook.store.release(nonce)
                except ApprovalStoreUnavailable:
                    store_down = True
        if self.gone:
            record_decision(
                self.scope,
                Component.APPROVAL,
                Outcome.DENY,
                **facts_of(call),
                approver="webhook",
                reason="disconnected",
            )
            return None
        if self.cancelled:  # the client withdrew the call: a late callback is told 409
            return await self._refused("cancelled")
        verdict = self.verdict
        if verdict is not None and verdict.reason != "pending":  # the webhook decided at once (200)
            if verdict.approved:
                record_decision(self.scope, Component.APPROVAL, Outcome.APPROVED, **facts_of(call), approver="webhook")
                return await self._run()
            return await self._refused(verdict.reason, verdict.detail)
        if answer is not None:
            if answer.approved:
                record_decision(
                    self.scope,
                    Component.APPROVAL,
                    Outcome.APPROVED,
                    **facts_of(call),
                    approver="webhook",
                    via="callback",
                )
                return await self._run()
            return await self._refused("declined", answer.reason, via="callback")
        return await self._refused("store_unavailable" if store_down else "timeout")

    async def _wait(self, nonce: str, url: str, withdrawn: anyio.Event | None) -> None:
        hook = self.hook
        deadline = anyio.current_time() + hook.timeout
        facts = {**self.call.facts(self.redaction), "callback": url, "expires": int(time.time() + hook.timeout)}
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await until_disconnect(self.receive)
                self.gone = True
                group.cancel_scope.cancel()

            async def keep_alive(stream: EventStream) -> None:
                while True:
                    await anyio.sleep(self.keepalive)
                    try:
                        await stream.write(b": waiting for approval\n\n")
                    except Exception:  # the connection is gone
                        self.gone = True
                        group.cancel_scope.cancel()
                        return

            async def cancelled(event: anyio.Event) -> None:
                await event.wait()
                self.cancelled = True
                group.cancel_scope.cancel()

            group.start_soon(watch)
            if withdrawn is not None:
                group.start_soon(cancelled, withdrawn)
            if self.stream is not None:
                group.start_soon(keep_alive, self.stream)
            with anyio.move_on_after(hook.timeout):
                self.verdict = await hook.decide(facts)
                if self.verdict.reason == "pending":
                    await hook.store.wait(nonce, deadline - anyio.current_time())
            group.cancel_scope.cancel()

    async def _run(self) -> None:
        """The approved call, with the body once more (the wait read the client's side of the connection)."""
        fresh = FreshReceive(self.request.body, self.receive)
        if self.stream is None:
            await self.app(self.scope, fresh, self.send)
            return
        events = AnswerEvents(self.stream)
        try:
            await self.app(self.scope, fresh, events)
        except Exception:  # the stream has started: the call's answer is an error event, the traceback goes to the log
            logger.exception("the approved call to %s failed", clip(self.call.tool, 80))
        finally:
            await events.finish()

    async def _refused(self, reason: str, detail: str = "", **extra: str) -> None:
        _record_refusal(self.scope, self.call, reason, **extra)
        call, timeout = self.call, self.hook.timeout
        if self.stream is None:
            await refuse(self.send, self.request, call, reason, detail, timeout)
            return
        data = refusal_data(call, reason)
        if detail:
            data["detail"] = detail
        await self.stream.error(APPROVAL_REFUSED, refusal_message(call, reason, timeout, detail), data)
