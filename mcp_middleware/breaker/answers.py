"""What the client gets when it does not get the backend's answer: a refusal while the circuit is
open, a JSON-RPC error for a failed attempt, a final SSE error event for a stream that broke off;
and what a legacy session is told about a request that timed out."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio
import orjson
from starlette.types import Message

from mcp_middleware.core import Era, ErrorCode, error_body, record_decision, send_error
from mcp_middleware.core.decisions import Component, Outcome
from mcp_middleware.core.protocol import is_event_stream

from .classify import Fault
from .state import BreakerState

if TYPE_CHECKING:
    from .call import Call

__all__ = ["answer_failure", "cancel_legacy_request", "describe", "end_stream", "is_plain_sse", "refuse"]

logger = logging.getLogger("mcp_middleware.breaker")


async def refuse(call: Call) -> None:
    """The circuit refuses the call: 503 with `Retry-After`."""
    breaker = call.breaker
    state = breaker.state
    wait = breaker.retry_after()
    seconds = max(1, math.ceil(wait))
    wait_ms = math.ceil(wait * 1000) if state is BreakerState.OPEN else seconds * 1000
    record_decision(
        call.scope, Component.BREAKER, Outcome.OPEN, state=state.value, key=breaker.key, retry_after_ms=wait_ms
    )
    what = "circuit is open" if state is BreakerState.OPEN else "circuit is testing recovery"
    await send_error(
        call.forward,
        status=503,
        code=ErrorCode.UNAVAILABLE,
        message=f"Backend unavailable ({what}); retry in {seconds} s",
        request_id=call.request.id,
        data={"retryAfterMs": wait_ms, "breaker": breaker.key, "state": state.value},
        headers={"Retry-After": str(seconds)},
    )


def _failure(call: Call, fault: Fault) -> tuple[int, ErrorCode, str, dict[str, int] | None]:
    if fault is Fault.TIMEOUT:
        timeout = call.route.timeout or 0.0
        return (
            504,
            ErrorCode.TIMEOUT,
            f"Backend did not answer within {timeout:g} s",
            {"timeoutMs": int(timeout * 1000)},
        )
    if fault is Fault.EXCEPTION:
        return 502, ErrorCode.BAD_GATEWAY, "Backend failed while handling the request", None
    return 502, ErrorCode.BAD_GATEWAY, "Backend closed the response without answering", None


async def answer_failure(call: Call, fault: Fault) -> None:
    """The attempt failed before anything was sent: a JSON-RPC error (502, or 504 for a timeout)."""
    status, code, message, data = _failure(call, fault)
    await send_error(call.forward, status=status, code=code, message=message, request_id=call.request.id, data=data)


async def end_stream(call: Call, fault: Fault) -> None:
    """Complete a response that broke off: an SSE stream gets a final error event for the request."""
    start = call.start
    assert start is not None
    if is_plain_sse(start):
        _, code, message, data = _failure(call, fault)
        event = b"event: message\r\ndata: " + error_body(code, message, call.request.id, data) + b"\r\n\r\n"
        await call.forward({"type": "http.response.body", "body": event, "more_body": False})
        return
    # A JSON (or compressed) body cannot be finished honestly: the connection must drop.
    if call.error is not None:
        raise call.error
    raise RuntimeError(f"MCP backend {call.backend} broke off a response ({fault.value}) after it started")


async def cancel_legacy_request(call: Call) -> None:
    """Tell a legacy session that the timed-out request is cancelled.

    A legacy (2025-era) server runs the handler in its session, not in the HTTP
    request, so cancelling the request leaves the tool running: the spec's
    `notifications/cancelled` stops it. Modern servers cancel with the request.
    """
    request = call.request
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
    headers = [(k, v) for k, v in call.scope["headers"] if k not in dropped]
    headers.append((b"content-length", str(len(body)).encode("latin-1")))
    # A fresh scope: the request view, tap and decisions of this request must not leak into it.
    scope = {k: v for k, v in call.scope.items() if not k.startswith("mcp_middleware.")}
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
            await call.middleware.app(scope, receive, discard)
        except Exception:
            logger.warning("could not cancel timed-out request %r on %s", request.id, call.backend, exc_info=True)


def is_plain_sse(start: Message) -> bool:
    sse = False
    for key, value in start.get("headers", ()):
        if key == b"content-type":
            sse = is_event_stream(value)
        elif key == b"content-encoding" and value.strip().lower() != b"identity":
            return False
    return sse


def describe(status: int | None, error: dict[str, object] | None) -> str:
    """The reason a decision gives for a verdict: the JSON-RPC error code, else the HTTP status."""
    code = error.get("code") if error is not None else None
    if isinstance(code, int):
        return f"jsonrpc_{code}"
    return f"http_{status}" if status is not None else "no_response"
