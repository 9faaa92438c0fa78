"""`ApprovalMiddleware`: selected tool calls wait for a person's yes, asked through MCP itself."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import anyio
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    Component,
    CoreConfig,
    Era,
    ErrorCode,
    JsonRpcCode,
    McpRequest,
    Outcome,
    RequestKind,
    ResponseTap,
    SelectorMap,
    clip,
    get_principal,
    read_request,
    record_decision,
    send_error,
)
from mcp_middleware.core.request import REQUEST_SCOPE_KEY
from mcp_middleware.policy.catalog import ToolCatalog
from mcp_middleware.policy.fetch import fetcher_of

from .call import DEFAULT_REDACT, ApprovalCall, Redaction
from .legacy import (
    AnswerEvents,
    ElicitationDesk,
    EventStream,
    FreshReceive,
    Question,
    accepts_events,
    can_show_forms,
    until_disconnect,
)
from .outcomes import APPROVAL_REFUSED, facts_of, refusal_data, refusal_message, refusal_word, refuse
from .relayed_answers import deliver_elsewhere, question_key, relayed_answer
from .state import RetryVerdict, StateBook, approved, elicitation_params, input_required_result
from .store import ApprovalStore, ApprovalStoreUnavailable
from .webhook import WebhookApprover
from .webhook_hold import HeldCalls, by_webhook

__all__ = ["APPROVAL_REFUSED", "ApprovalMiddleware", "ApprovalRule"]

logger = logging.getLogger("mcp_middleware.approval")

ApprovalRule = Callable[[Scope, McpRequest, Mapping[str, Any]], bool]
"""`rule(scope, request, annotations)`: True when this call needs approval (beside selectors and annotations)."""

_CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
_MISSING_DATA: dict[str, Any] = {"requiredCapabilities": {"elicitation": {"form": {}}}}


class ApprovalMiddleware:
    """Hold selected `tools/call` requests until they are approved; the calling user approves by default.

    - `require`: selectors of the calls that need approval (`["tools/call:delete_*"]`);
    - `destructive`: also every tool whose annotations say `destructiveHint: true` (learned from the
      backend's tool list, shared with the policy through `catalog`; fetched once when a call names an
      unknown tool);
    - `rule`: any other test, e.g. a policy lookup (see :data:`ApprovalRule`);
    - `approver`: `"client"` (ask the caller: an `elicitation/create` on the call's stream in 2025-11-25,
      an `input_required` result in 2026-07-28), or a :class:`WebhookApprover`;
    - `timeout`: seconds a 2025-11-25 question waits for its answer;
    - `secrets`: sealing secrets of the 2026-07-28 `requestState` (newest first; every instance of a
      deployment needs the same ones; default: a random one of this process); `state_ttl`: its lifetime;
    - `backend`: this backend's name (shown to the approver, bound into the digest);
    - `store`: where spent 2026-07-28 nonces are kept (default: this process's memory; a
      :class:`RedisApprovalStore` shares them, so a replayed retry is refused at every instance).

    Place it after authentication and policy, before rate limiting and the breaker (a person's
    thinking time is not the backend's latency). Refusals are JSON-RPC error -32013 with
    `data.approval`; see docs/approval.md.

    >>> from mcp.server.mcpserver import MCPServer
    >>> app = ApprovalMiddleware(MCPServer("files").streamable_http_app(), require=["tools/call:delete_*"])
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        require: Iterable[str] = (),
        destructive: bool = True,
        rule: ApprovalRule | None = None,
        approver: Literal["client"] | WebhookApprover = "client",
        timeout: float = 120.0,
        secrets: Iterable[str] = (),
        state_ttl: float = 300.0,
        backend: str = "",
        catalog: ToolCatalog | None = None,
        fetch_unknown: bool = True,
        redact: Iterable[str] = DEFAULT_REDACT,
        keepalive: float = 15.0,
        store: ApprovalStore | None = None,
        config: CoreConfig = DEFAULT_CONFIG,
    ) -> None:
        if timeout <= 0 or state_ttl <= 0 or keepalive <= 0:
            raise ValueError("timeout, state_ttl and keepalive must be positive")
        if approver != "client" and not isinstance(approver, WebhookApprover):
            raise ValueError(f"approver must be 'client' or a WebhookApprover, not {approver!r}")
        self.app = app
        self.require: SelectorMap[bool] = SelectorMap((text, True) for text in require)
        self.destructive = destructive
        self.rule = rule
        self.approver = approver
        self.timeout = timeout
        self.backend = backend
        self.catalog = catalog if catalog is not None else ToolCatalog()
        self.fetch_unknown = fetch_unknown
        self.redaction = Redaction(redact)
        self.keepalive = keepalive
        self.config = config
        chosen = list(secrets) or [os.urandom(32).hex()]
        self.states = StateBook(chosen, ttl=state_ttl, store=store)
        self.desk = ElicitationDesk()
        self._elsewhere = functools.partial(deliver_elsewhere, self.states.store)
        self.held = HeldCalls()
        """2025-11-25 calls waiting for a webhook's callback (a `notifications/cancelled` withdraws one)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        kind = request.kind
        if request.era is Era.LEGACY:
            if kind is RequestKind.RESPONSE and await self.desk.take_answer(scope, send, request, self._elsewhere):
                return
            if kind is RequestKind.REQUEST and request.method == "initialize":
                send = self.desk.watch_initialize(scope, request, send)
            elif kind is RequestKind.TERMINATE and request.session_id is not None:
                self.desk.forget(request.session_id)
            elif kind is RequestKind.NOTIFICATION and request.method == "notifications/cancelled":
                self.desk.withdraw(scope, request)  # and on to the server, which may run a call of that id
                self.held.withdraw(scope, request)
        if kind is RequestKind.REQUEST and request.method == "tools/call":
            why = await self.needs_approval(scope, request)
            if why is not None:
                await self._hold(scope, receive, send, request, why)
                return
        elif kind is RequestKind.REQUEST and request.method == "tools/list" and (self.destructive or self.rule):
            await self._learning(scope, receive, send, request)
            return
        await self.app(scope, receive, send)

    async def _learning(self, scope: Scope, receive: Receive, send: Send, request: McpRequest) -> None:
        """Pass a `tools/list` on, and learn the annotations it shows once it has been answered (a backend that
        cannot be listed in 2026-07-28 is known from its clients' own lists)."""
        tap, send = ResponseTap.attach(scope, send, request, max_bytes=self.config.max_inspect_bytes)
        try:
            await self.app(scope, receive, send)
        finally:
            result = tap.outcome().result
            tools = result.get("tools") if result is not None else None
            if isinstance(tools, list):
                self.catalog.learn(tools)

    async def needs_approval(self, scope: Scope, request: McpRequest) -> str | None:
        """Why this call is held (`selector`, `destructive`, `unlisted`, `rule`), or None when it is not."""
        tool = request.target
        if tool is None:
            return None
        if self.require.lookup(request):
            return "selector"
        if self.destructive or self.rule is not None:
            if self.fetch_unknown and self.catalog.needs_list(tool):
                await fetcher_of(self.catalog).ensure(self.app, scope, tool)
            annotations = self.catalog.annotations(tool)
            if self.destructive and annotations.get("destructiveHint") is True:
                return "destructive"
            if self.destructive and self.catalog.get(tool) is None:
                return "unlisted"  # no list says what it is (the backend's list failed, or omits it): held
            if self.rule is not None and self.rule(scope, request, annotations):
                return "rule"
        return None

    # --- holding ----------------------------------------------------------------------------

    async def _hold(self, scope: Scope, receive: Receive, send: Send, request: McpRequest, why: str) -> None:
        params = request.params or {}
        call = ApprovalCall.of(
            get_principal(scope), self.backend, "tools/call", request.target or "", params.get("arguments", {}), why
        )
        if isinstance(self.approver, WebhookApprover):
            hook, redaction = self.approver, self.redaction
            await by_webhook(self.app, scope, receive, send, request, call, hook, redaction, self.keepalive, self.held)
        elif request.era is Era.MODERN:
            await self._modern(scope, receive, send, request, call)
        else:
            await self._legacy(scope, receive, send, request, call)

    async def _modern(
        self, scope: Scope, receive: Receive, send: Send, request: McpRequest, call: ApprovalCall
    ) -> None:
        params = request.params or {}
        try:
            retry = await self.states.read(call, params)
        except ApprovalStoreUnavailable:  # a nonce that cannot be spent is never approved
            record_decision(
                scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason="store_unavailable"
            )
            await self._refuse(send, request, call, "store_unavailable")
            return
        verdict = retry.verdict
        if verdict is RetryVerdict.APPROVED:
            assert retry.params is not None
            record_decision(scope, Component.APPROVAL, Outcome.APPROVED, **facts_of(call), approver="client")
            await self._run_rewritten(scope, receive, send, request, retry.params)
            return
        if verdict in (RetryVerdict.DECLINED, RetryVerdict.INVALID):
            reason = retry.reason if verdict is RetryVerdict.INVALID else refusal_word(retry.reason)
            record_decision(scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason=reason)
            await self._refuse(send, request, call, reason)
            return
        meta = request.meta or {}
        if not can_show_forms(meta.get(_CAPABILITIES_META)):
            await self._missing_capability(scope, send, request, call, "in this request's _meta")
            return
        state = self.states.seal(call, params)
        if state is None:
            record_decision(
                scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason="carried_too_large"
            )
            await self._refuse(send, request, call, "carried_too_large")
            return
        reason = retry.reason or ("backend_round" if "requestState" in params else "new")
        record_decision(scope, Component.APPROVAL, Outcome.REQUIRED, **facts_of(call), approver="client", reason=reason)
        result = input_required_result(call.message(self.redaction), state)
        body = orjson.dumps({"jsonrpc": "2.0", "id": request.id, "result": result})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _run_rewritten(
        self, scope: Scope, receive: Receive, send: Send, request: McpRequest, params: Mapping[str, Any]
    ) -> None:
        """Run the approved call with the middleware's own input taken out (a backend's own input stays)."""
        body = orjson.dumps({"jsonrpc": "2.0", "id": request.id, "method": request.method, "params": params})
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        inner = {**scope, "headers": headers, REQUEST_SCOPE_KEY: request._replace(params=params, body=body)}
        await self.app(inner, FreshReceive(body, receive), send)

    async def _legacy(
        self, scope: Scope, receive: Receive, send: Send, request: McpRequest, call: ApprovalCall
    ) -> None:
        session = request.session_id
        if session is None or self.desk.can_ask(scope, session) is False or not accepts_events(scope):
            await self._missing_capability(scope, send, request, call, "in initialize")
            return
        question = self.desk.open(scope, session, request.id)
        if question is None:
            await send_error(
                send,
                status=503,
                code=ErrorCode.UNAVAILABLE,
                message="Too many calls are waiting for approval (here, or of this caller); retry later",
                request_id=request.id,
            )
            return
        store, key = self.states.store, question_key(question.id, question.owner)
        try:  # an answer reaching another process (a resumed session) is delivered through the store
            await store.hold(key, self.timeout + 5)
        except ApprovalStoreUnavailable:
            self.desk.close(question)
            record_decision(
                scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason="store_unavailable"
            )
            await self._refuse(send, request, call, "store_unavailable")
            return
        record_decision(scope, Component.APPROVAL, Outcome.REQUIRED, **facts_of(call), approver="client", reason="new")
        stream = EventStream(send, request.id)
        try:
            await stream.start()
            await stream.ask(question, elicitation_params(call.message(self.redaction)))
            waited = await self._wait(question, receive, stream, key)
        finally:
            self.desk.close(question)
            with anyio.CancelScope(shield=True), contextlib.suppress(ApprovalStoreUnavailable):
                await store.release(key)  # (an answer that comes now elsewhere is an answer to nothing)
        if waited == "gone":
            record_decision(
                scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason="disconnected"
            )
            return
        if waited == "timeout":
            record_decision(scope, Component.APPROVAL, Outcome.TIMEOUT, **facts_of(call), approver="client")
            await stream.error(
                APPROVAL_REFUSED, refusal_message(call, "timeout", self.timeout), refusal_data(call, "timeout")
            )
            return
        yes, word = approved(question.answer)
        if not yes:
            reason = refusal_word(word)
            record_decision(scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason=reason)
            await stream.error(APPROVAL_REFUSED, refusal_message(call, reason), refusal_data(call, reason))
            return
        record_decision(scope, Component.APPROVAL, Outcome.APPROVED, **facts_of(call), approver="client")
        events = AnswerEvents(stream)
        try:
            await self.app(scope, FreshReceive(request.body, receive), events)
        except Exception:  # the stream has started: the call's answer is an error event, the traceback goes to the log
            logger.exception("the approved call to %s failed", clip(call.tool, 80))
        finally:
            await events.finish()

    async def _wait(self, question: Question, receive: Receive, stream: EventStream, key: str) -> str:
        """`answered`, `timeout` or `gone` (the client left); keep-alive comments while waiting."""
        result = "timeout"
        with anyio.move_on_after(self.timeout):
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    nonlocal result
                    await until_disconnect(receive)
                    result = "gone"
                    group.cancel_scope.cancel()

                async def keep_alive() -> None:
                    nonlocal result
                    while True:
                        await anyio.sleep(self.keepalive)
                        try:
                            await stream.write(b": waiting for approval\n\n")
                        except Exception:  # the connection is gone
                            result = "gone"
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch)
                group.start_soon(keep_alive)
                group.start_soon(relayed_answer, self.states.store, key, question, self.timeout)
                await question.answered.wait()
                result = "answered"
                group.cancel_scope.cancel()
        return result

    # --- answers ----------------------------------------------------------------------------

    async def _missing_capability(
        self, scope: Scope, send: Send, request: McpRequest, call: ApprovalCall, where: str
    ) -> None:
        record_decision(
            scope, Component.APPROVAL, Outcome.DENY, **facts_of(call), approver="client", reason="missing_capability"
        )
        await send_error(
            send,
            status=400,
            code=JsonRpcCode.MISSING_REQUIRED_CLIENT_CAPABILITY,
            message=(
                f"The call to {clip(call.tool, 80)!r} needs a person's approval: declare the elicitation capability "
                f"(form) {where}, and accept text/event-stream"
            ),
            request_id=request.id,
            data={**_MISSING_DATA, **refusal_data(call, "missing_capability")},
        )

    async def _refuse(self, send: Send, request: McpRequest, call: ApprovalCall, reason: str, detail: str = "") -> None:
        await refuse(send, request, call, reason, detail, self.timeout)
