"""`McpCoreMiddleware`: the core on its own: validation, one parse, and an outcome hook."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_answers import ErrorHold
from .errors import JsonRpcCode, RequestId, send_error
from .kernel import ANSWERED, DEFAULT_CONFIG, CoreConfig, read_request
from .request import REQUEST_SCOPE_KEY, McpRequest
from .tap import ResponseOutcome, ResponseTap

__all__ = ["McpCoreMiddleware", "OutcomeHook"]

logger = logging.getLogger("mcp_middleware")

OutcomeHook = Callable[[McpRequest, ResponseOutcome], Awaitable[None] | None]


class McpCoreMiddleware:
    """Put the core in front of any MCP app: bad input is answered with JSON-RPC errors,
    the request is parsed once for every middleware inside, responses stream untouched.

    `on_outcome(request, outcome)` (sync or async) is called once the response has
    ended, with what the response tap observed: status, JSON-RPC result or error
    code, tool `isError`, bytes and duration. If the inner app crashes before it
    has started a response, the client gets a JSON-RPC internal error (HTTP 500)
    with its request id instead of a plain-text page; the traceback goes to the log.

    >>> from mcp.server.mcpserver import MCPServer
    >>> server = MCPServer("demo")
    >>> app = McpCoreMiddleware(server.streamable_http_app())  # serve with uvicorn
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: CoreConfig = DEFAULT_CONFIG,
        on_outcome: OutcomeHook | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.on_outcome = on_outcome

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        created = REQUEST_SCOPE_KEY not in scope
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        try:
            if self.on_outcome is None:
                guard = _StartGuard(send, request.id)
                try:
                    await self.app(scope, receive, guard)
                except Exception:
                    if guard.started:
                        raise
                    await _internal_error(request, send)
                return
            tap, send = ResponseTap.attach(scope, send, request, max_bytes=self.config.max_inspect_bytes)
            try:
                try:
                    await self.app(scope, receive, send)
                except Exception:
                    if tap.started:
                        raise
                    await _internal_error(request, send)
            finally:
                pending = self.on_outcome(request, tap.outcome())
                if pending is not None:
                    await pending
        finally:
            if created:
                # Under uvicorn the scope outlives the request in a reference cycle (freed only by the
                # garbage collector); the view and its decoded params need not: they are freed now.
                del scope[REQUEST_SCOPE_KEY]


class _StartGuard:
    """A `send` that remembers whether the response has started (one object per request: no closure,
    no bound method, since the SDK keeps `send` in reference cycles only the garbage collector frees),
    and holds a small JSON error answer until its body is complete, to give it the request's id.

    Not a coroutine function: it hands out the server's own `send()` awaitable, so a message
    costs no extra coroutine and no extra frame."""

    __slots__ = ("_hold", "_request_id", "_send", "started")

    def __init__(self, send: Send, request_id: RequestId | None) -> None:
        self._send = send
        self._request_id = request_id
        self._hold: ErrorHold | None = None
        self.started = False

    def __call__(self, message: Message) -> Awaitable[None]:
        if self.started:  # the start has gone out: nothing more to decide
            return self._send(message)
        if self._hold is not None or (message["type"] == "http.response.start" and message["status"] >= 400):
            return self._error_answer(message)
        self.started = True
        return self._send(message)

    async def _error_answer(self, message: Message) -> None:
        hold = self._hold
        if hold is None or message["type"] == "http.response.start":  # (a new start replaces a failed one)
            self._hold = ErrorHold.start(self._request_id, message)
            if self._hold is None:
                self.started = True
                await self._send(message)
            return  # held, not started: a crash now still gets the JSON-RPC 500
        released = hold.add(message)
        if released is None:
            return
        self._hold = None
        self.started = True
        for item in released:
            await self._send(item)


async def _internal_error(request: McpRequest, send: Send) -> None:
    """The app crashed before it started a response: a JSON-RPC internal error, the traceback to the log."""
    logger.exception("MCP app failed before responding to %s", request.method or request.http_method)
    await send_error(send, status=500, code=JsonRpcCode.INTERNAL_ERROR, message="Internal error", request_id=request.id)
