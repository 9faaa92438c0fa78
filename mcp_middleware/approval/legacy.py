"""The 2025-11-25 approval round: an `elicitation/create` on the call's own event stream, answered by a POST.

A handshake-era client answers a server's request with a separate POST in the same session. The
:class:`ElicitationDesk` remembers what each session declared in `initialize` (whether it can show a
form), keeps the questions it has asked (an unguessable id each, bound to the session and to the
principal), and takes the answer POST that carries one of those ids — from that session and that
principal only — answering it 202 itself (the server behind never asked it). Everything is in this
process's memory and bounded; a session opened elsewhere (another instance) is not known here.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.core import JsonRpcCode, McpRequest, RequestId, get_principal, send_error
from mcp_middleware.core.protocol import is_event_stream, is_json

__all__ = [
    "ID_PREFIX",
    "AnswerEvents",
    "ElicitationDesk",
    "EventStream",
    "FreshReceive",
    "Question",
    "accepts_events",
    "can_show_forms",
    "until_disconnect",
]

ID_PREFIX = "mcp-approval-"
"""The ids of this middleware's questions to a client (an answer with another id is not ours)."""

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def can_show_forms(capabilities: Any) -> bool:
    """Whether client capabilities include form elicitation (`elicitation: {}` means form, as the spec says)."""
    if not isinstance(capabilities, Mapping):
        return False
    elicitation = capabilities.get("elicitation")
    if not isinstance(elicitation, Mapping):
        return False
    return not elicitation or isinstance(elicitation.get("form"), Mapping)


@dataclass(slots=True)
class Question:
    """One `elicitation/create` in flight: who may answer it, and the answer once it came."""

    id: str
    session: str
    owner: str
    call_id: RequestId | None = None
    """The held call's own id (a `notifications/cancelled` for it withdraws the question)."""
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Any = None


class ElicitationDesk:
    """Sessions' elicitation capability, and the questions asked in them (bounded, this process)."""

    def __init__(self, *, max_sessions: int = 10_000, max_questions: int = 10_000, max_per_owner: int = 32) -> None:
        self.max_sessions = max_sessions
        self.max_questions = max_questions
        self.max_per_owner = max_per_owner
        """Questions one principal may have open at once (so one caller cannot take every slot)."""
        self._sessions: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._questions: dict[str, Question] = {}
        self._open_by: dict[str, int] = {}

    # --- sessions ---------------------------------------------------------------------------

    def watch_initialize(self, scope: Scope, request: McpRequest, send: Send) -> Send:
        """A `send` that learns the session id the server gives this `initialize`, with what it declared."""
        params = request.params or {}
        forms = can_show_forms(params.get("capabilities"))
        owner = get_principal(scope).key

        async def learn(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 200:
                for key, value in message.get("headers", ()):
                    if key.lower() == b"mcp-session-id":
                        self._remember(value.decode("latin-1"), owner, forms)
            await send(message)

        return learn

    def _remember(self, session: str, owner: str, forms: bool) -> None:
        self._sessions[session] = (owner, forms)
        self._sessions.move_to_end(session)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def forget(self, session: str) -> None:
        self._sessions.pop(session, None)

    def can_ask(self, scope: Scope, session: str | None) -> bool | None:
        """Whether this session (of this principal) declared form elicitation in its `initialize`; None when its
        `initialize` was not seen here (another instance, or before a reload): worth asking, a client that cannot
        answer says so with an error."""
        known = self._sessions.get(session) if session is not None else None
        if known is None:
            return None
        return known[0] == get_principal(scope).key and known[1]

    # --- questions --------------------------------------------------------------------------

    def open(self, scope: Scope, session: str, call_id: RequestId | None = None) -> Question | None:
        """A new question in `session` about the call `call_id`, or None when too many are open already."""
        owner = get_principal(scope).key
        if len(self._questions) >= self.max_questions or self._open_by.get(owner, 0) >= self.max_per_owner:
            return None
        question = Question(ID_PREFIX + os.urandom(16).hex(), session, owner, call_id)
        self._questions[question.id] = question
        self._open_by[owner] = self._open_by.get(owner, 0) + 1
        return question

    def close(self, question: Question) -> None:
        if self._questions.pop(question.id, None) is None:
            return
        left = self._open_by.pop(question.owner, 1) - 1
        if left:
            self._open_by[question.owner] = left

    def withdraw(self, scope: Scope, request: McpRequest) -> None:
        """The client cancelled a held call (`notifications/cancelled` in its session): its question ends."""
        params = request.params or {}
        cancelled = params.get("requestId")
        owner = get_principal(scope).key
        for question in list(self._questions.values()):
            if (
                question.session == request.session_id
                and question.owner == owner
                and question.call_id == cancelled
                and not question.answered.is_set()
            ):
                question.answer = {"action": "cancel"}
                question.answered.set()

    async def take_answer(
        self, scope: Scope, send: Send, request: McpRequest, elsewhere: Elsewhere | None = None
    ) -> bool:
        """If `request` (a client's JSON-RPC response) answers one of our questions, take it: True when answered.
        `elsewhere(scope, request)` delivers an answer to a question another process asked (True: it waited)."""
        if not isinstance(request.id, str) or not request.id.startswith(ID_PREFIX):
            return False
        question = self._questions.get(request.id)
        if question is None and elsewhere is not None and await elsewhere(scope, request):
            await _accepted(send)
            return True
        # Another session's or another principal's answer is treated as an answer to nothing; so is a second one.
        if (
            question is None
            or question.session != request.session_id
            or question.owner != get_principal(scope).key
            or question.answered.is_set()
        ):
            await send_error(
                send, status=404, code=JsonRpcCode.INVALID_REQUEST, message="No approval is waiting for this answer"
            )
            return True
        try:
            message = orjson.loads(request.body)
        except orjson.JSONDecodeError:  # the core parsed it already: cannot happen, refuse anyway
            message = {}
        answered = isinstance(message, dict) and "result" in message
        question.answer = message["result"] if answered else {"action": "error"}
        question.answered.set()
        await _accepted(send)
        return True


Elsewhere = Callable[[Scope, McpRequest], Awaitable[bool]]


async def _accepted(send: Send) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- the call's event stream --------------------------------------------------------------------


def _event(message: Mapping[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


class EventStream:
    """The call's `text/event-stream` answer, started by the middleware; the backend's answer continues it."""

    def __init__(self, send: Send, request_id: RequestId | None) -> None:
        self.send = send
        self.request_id = request_id
        self.ended = False

    async def start(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": list(_SSE_HEADERS)})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def ask(self, question: Question, params: Mapping[str, Any]) -> None:
        await self.write(
            _event({"jsonrpc": "2.0", "id": question.id, "method": "elicitation/create", "params": params})
        )

    async def error(self, code: int, message: str, data: Any = None) -> None:
        """End the stream with the call's JSON-RPC error."""
        if self.ended:
            return
        self.ended = True
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        body = _event({"jsonrpc": "2.0", "id": self.request_id, "error": error})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class AnswerEvents:
    """The backend's answer as events of the already started stream: its events as they come; a JSON answer
    as one event, streamed chunk by chunk (raw line breaks in JSON are only whitespace, so they become spaces)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream = stream
        self.mode = "none"
        self.opened = False

    async def __call__(self, message: Message) -> None:
        stream = self.stream
        if stream.ended:
            return
        if message["type"] == "http.response.start":
            content_type = next((v for k, v in message.get("headers", ()) if k.lower() == b"content-type"), b"")
            self.mode = "sse" if is_event_stream(content_type) else "json" if is_json(content_type) else "other"
            return
        if message["type"] != "http.response.body":
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self.mode == "sse":
            if more:
                if body:
                    await stream.write(body)
                return
            stream.ended = True
            await stream.send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if self.mode == "json" and body:
            prefix = b"" if self.opened else b"event: message\ndata: "
            self.opened = True
            await stream.write(prefix + body.replace(b"\r", b" ").replace(b"\n", b" "))
        if not more:
            await self.finish()

    async def finish(self) -> None:
        """The backend is done (or failed): make sure the stream ends with an answer."""
        stream = self.stream
        if stream.ended:
            return
        if self.mode == "json" and self.opened:
            stream.ended = True
            await stream.send({"type": "http.response.body", "body": b"\n\n", "more_body": False})
            return
        await stream.error(JsonRpcCode.INTERNAL_ERROR, "The server ended the approved call without an answer")


class FreshReceive:
    """`receive` for the app after a wait: the body once, then only what the client does next (its disconnect)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    def __call__(self) -> Awaitable[Message]:
        return self._next()

    async def _next(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        while True:
            message = await self.receive()
            if message["type"] != "http.request":  # a replay of the body an outer layer kept: already given
                return message


async def until_disconnect(receive: Receive) -> None:
    """Return when the client has gone (a replayed body is skipped)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def accepts_events(scope: Scope) -> bool:
    """Whether the client takes an event stream (`Accept` names it, or anything)."""
    for key, value in scope["headers"]:
        if key == b"accept":
            lowered = value.lower()
            return b"text/event-stream" in lowered or b"*/*" in lowered
    return False
