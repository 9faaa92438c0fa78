"""The app's error answers, completed on the way out: the request's id filled in, an empty 405/406 given a body.

The SDK answers some refusals with `"id": null` although the id was readable (legacy: unknown
or missing session, 406, the session limit's 503), and its modern era answers 405 and 406 with
an empty body. The core read the id; :class:`ErrorHold` holds such an error response (start
and body, both small) until its body is complete and hands back the JSON-RPC error with the id.
Only error statuses with a JSON (or empty) body of at most 64 KiB are ever held; anything else
(an event stream, a compressed or larger body) is released unchanged as soon as that is known.
"""

from __future__ import annotations

import json
from typing import Final

import orjson
from starlette.types import Message

from .errors import JsonRpcCode, RequestId, error_body

__all__ = ["ErrorHold", "complete_error"]

MAX_COMPLETED: Final = 64 * 1024
"""Largest error body held and completed (the SDK's are under 200 bytes)."""
_EMPTY_ANSWERS: Final = {
    405: "Method Not Allowed",
    406: "Not Acceptable: Client must accept both application/json and text/event-stream",
}
"""Errors the SDK's modern era answers with an empty body: they get a JSON-RPC one."""


def complete_error(request_id: RequestId | None, start: Message, body: Message) -> tuple[Message, Message]:
    """An error response (`start`, then its whole body in one final message) as a complete JSON-RPC error.

    Comes back unchanged unless there is something to complete: an error status whose JSON-RPC
    error body has `"id": null` while the id is known, or an empty 405/406.
    """
    if body["type"] != "http.response.body" or body.get("more_body", False) or start["status"] < 400:
        return start, body
    content: bytes = body.get("body", b"")
    if not content:
        message = _EMPTY_ANSWERS.get(start["status"])
        if message is None:
            return start, body
        new = error_body(JsonRpcCode.INVALID_REQUEST, message, request_id)
    else:
        if request_id is None or len(content) > MAX_COMPLETED or b"null" not in content or not _json(start):
            return start, body
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            return start, body
        if type(answer) is not dict or answer.get("jsonrpc") != "2.0" or "error" not in answer:
            return start, body
        if "id" not in answer or answer["id"] is not None:
            return start, body
        answer["id"] = request_id
        try:
            new = orjson.dumps(answer)
        except orjson.JSONEncodeError:  # an id only the stdlib writes (a lone surrogate), as the SDK echoes it
            new = json.dumps(answer, separators=(",", ":")).encode()
    headers = [
        (key, value)
        for key, value in start.get("headers", ())
        if key != b"content-length" and (content or key != b"content-type")
    ]
    if not content:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(new)).encode("latin-1")))
    return {**start, "headers": headers}, {"type": "http.response.body", "body": new, "more_body": False}


def _json(start: Message) -> bool:
    """An uncompressed `application/json` body, or (no `Content-Type` at all) possibly an empty one."""
    content_type = b""
    for key, value in start.get("headers", ()):
        if key == b"content-type":
            content_type = value
        elif key == b"content-encoding" and value.strip().lower() != b"identity":
            return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


class ErrorHold:
    """An error response held, message by message, until its body is complete; see :meth:`start`."""

    __slots__ = ("_bodies", "_request_id", "_size", "_start")

    def __init__(self, request_id: RequestId | None, start: Message) -> None:
        self._request_id = request_id
        self._start = start
        self._bodies: list[Message] = []
        self._size = 0

    @classmethod
    def start(cls, request_id: RequestId | None, start: Message) -> ErrorHold | None:
        """A hold for this `http.response.start` if it may need completing, else `None` (send it at once)."""
        if start["status"] < 400:
            return None
        if request_id is None and start["status"] not in _EMPTY_ANSWERS:
            return None
        has_type = any(key == b"content-type" for key, _ in start.get("headers", ()))
        if has_type and not _json(start):
            return None
        return cls(request_id, start)

    def add(self, message: Message) -> list[Message] | None:
        """Take the next message; `None` while still holding, else the messages to send now, in order."""
        if message["type"] != "http.response.body":
            return [self._start, *self._bodies, message]
        self._bodies.append(message)
        self._size += len(message.get("body", b""))
        if message.get("more_body", False):
            return None if self._size <= MAX_COMPLETED else [self._start, *self._bodies]
        whole = b"".join(body.get("body", b"") for body in self._bodies) if len(self._bodies) > 1 else None
        final = self._bodies[-1] if whole is None else {"type": "http.response.body", "body": whole, "more_body": False}
        start, completed = complete_error(self._request_id, self._start, final)
        if completed is final:
            return [self._start, *self._bodies]  # nothing to complete: as it was sent, chunks and all
        return [start, completed]

    def release(self) -> list[Message]:
        """What is held, as it came (the app ended without finishing its body)."""
        return [self._start, *self._bodies]
