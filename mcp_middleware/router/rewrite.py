"""Rewriting a backend's answer on its way to an aggregate client, without holding the stream back.

Most answers pass byte for byte: the client's request id, its progress token and
its `_meta` went to the backend unchanged, so what comes back is already the
client's. Three things are the backend's own and get rewritten, each only in
the events that carry it:

* a handshake-era backend's requests to the client (sampling, elicitation, roots)
  get an id unique among the client's backends (the client's answer is routed back);
* resource URIs in `resources/read` results and `notifications/resources/updated`,
  when the aggregate namespaces URIs;
* the backend's `Mcp-Session-Id` response header (the client keeps the aggregate's).

SSE events are cut at their blank line and passed on one by one as they
complete; an event the rewriting does not concern is passed on as it came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import Message, Send

from mcp_middleware.core import ErrorCode, RequestId, send_error
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE, is_event_stream, is_json

from .sessions import ClientSession

__all__ = ["EVENT_ID_SEPARATOR", "AnswerRewriter", "rename_uris"]

_SESSION_HEADER = b"mcp-session-id"
EVENT_ID_SEPARATOR = b"/"
"""Between the backend's name and its own event id (server names never contain it)."""
_EVENT_ENDS = (b"\r\n\r\n", b"\n\n", b"\r\r")


class AnswerRewriter:
    """A `send` for one routed request: rewrites what must change, forwards everything at once."""

    __slots__ = (
        "_buffer",
        "_ended",
        "_json",
        "_keep_session",
        "_max",
        "_public_uri",
        "_send",
        "_server",
        "_session",
        "_sse",
        "_started",
    )

    def __init__(
        self,
        send: Send,
        *,
        server: str,
        session: ClientSession | None = None,
        public_uri: Callable[[str], str] | None = None,
        max_bytes: int = DEFAULT_MAX_BODY_SIZE,
        keep_session: bool = False,
    ) -> None:
        self._send = send
        self._keep_session = keep_session
        """Pass the backend's `Mcp-Session-Id` on (a path mount's client holds the backend's session)."""
        self._server = server
        self._session = session
        self._public_uri = public_uri
        self._max = max_bytes
        self._buffer = b""
        self._sse = False
        self._json = False
        self._started = False
        self._ended = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._started = True
            headers = [
                (k, v) for k, v in message.get("headers", ()) if self._keep_session or k.lower() != _SESSION_HEADER
            ]
            content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
            self._sse = is_event_stream(content_type)
            self._json = self._public_uri is not None and is_json(content_type)
            if self._json:  # the body changes length: it is sent whole, with its new length
                headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            await self._send({**message, "headers": headers})
            return
        more = message.get("more_body", False)
        if kind == "http.response.body" and not more:
            self._ended = True
        if kind != "http.response.body" or not (self._sse or self._json):
            await self._send(message)
            return
        data = self._buffer + message.get("body", b"")
        if self._json:  # one JSON-RPC response (bounded): rewritten when complete
            if more and len(data) <= self._max:
                self._buffer = data
                return
            self._buffer = b""
            await self._send({"type": "http.response.body", "body": self._rewrite_json(data), "more_body": more})
            return
        out, self._buffer = self._cut(data)
        if len(self._buffer) > self._max:  # an event past the bound is passed on as it is
            out.append(self._buffer)
            self._buffer = b""
        if not more and self._buffer:
            out.append(self._buffer)
            self._buffer = b""
        if out or not more:
            await self._send({"type": "http.response.body", "body": b"".join(out), "more_body": more})

    async def fail(self, request_id: RequestId | None, message: str) -> None:
        """The backend broke off: end the answer with a JSON-RPC error for the request, however far it got."""
        if self._ended:
            return
        if not self._started:
            await send_error(self._send, status=502, code=ErrorCode.BAD_GATEWAY, message=message, request_id=request_id)
            return
        self._ended = True
        self._buffer = b""  # an event the backend did not finish is never delivered half
        body = b""
        if self._sse and request_id is not None:
            error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": ErrorCode.BAD_GATEWAY, "message": message}}
            body = b"event: message\r\ndata: " + orjson.dumps(error) + b"\r\n\r\n"
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _cut(self, data: bytes) -> tuple[list[bytes], bytes]:
        """Complete events (rewritten where needed), and the incomplete rest."""
        out: list[bytes] = []
        start = 0
        while True:
            ends = [(index, marker) for marker in _EVENT_ENDS if (index := data.find(marker, start)) >= 0]
            if not ends:
                return out, data[start:]
            index, marker = min(ends)
            end = index + len(marker)
            out.append(self._rewrite_event(data[start:end]))
            start = end

    def _rewrite_event(self, event: bytes) -> bytes:
        if self._session is not None and (event.startswith(b"id:") or b"\nid:" in event or b"\rid:" in event):
            event = self._prefix_ids(event)
        if b'"method"' not in event and (self._public_uri is None or b'"contents"' not in event):
            return event  # a response or a notification with nothing of the backend's own: as it came
        lines = event.splitlines(keepends=True)
        data_lines = [line for line in lines if line.startswith(b"data:")]
        if len(data_lines) != 1:
            return event
        line = data_lines[0]
        payload = line[5:].strip()
        rewritten = self._rewrite_message(payload)
        if rewritten is payload:
            return event
        ending = line[len(line.rstrip(b"\r\n")) :]
        return b"".join(b"data: " + rewritten + ending if item is line else item for item in lines)

    def _prefix_ids(self, event: bytes) -> bytes:
        """Event ids name their backend (`server/id`): a client resuming with `Last-Event-ID` is sent there."""
        prefix = self._server.encode("latin-1") + EVENT_ID_SEPARATOR
        lines = event.splitlines(keepends=True)
        for index, line in enumerate(lines):
            if line.startswith(b"id:"):
                value = line[3:].rstrip(b"\r\n")
                value = value[1:] if value.startswith(b" ") else value
                lines[index] = b"id: " + prefix + value + line[len(line.rstrip(b"\r\n")) :]
        return b"".join(lines)

    def _rewrite_json(self, body: bytes) -> bytes:
        return self._rewrite_message(body)

    def _rewrite_message(self, payload: bytes) -> bytes:
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return payload
        if not isinstance(message, dict):
            return payload
        changed = False
        session = self._session
        if "method" in message and "id" in message and session is not None:  # the backend asks the client
            message["id"] = session.server_request(self._server, message["id"])
            changed = True
        if self._public_uri is not None:
            changed = rename_uris(message, self._public_uri) or changed
        return orjson.dumps(message) if changed else payload


def rename_uris(message: dict[str, Any], public_uri: Callable[[str], str]) -> bool:
    """Rename the URIs of a `resources/read` result, a `resources/updated` notification or a listen acknowledgement."""
    result = message.get("result")
    if isinstance(result, dict) and isinstance(result.get("contents"), list):
        for content in result["contents"]:
            if isinstance(content, dict) and isinstance(content.get("uri"), str):
                content["uri"] = public_uri(content["uri"])
        return True
    params = message.get("params")
    if message.get("method") == "notifications/resources/updated" and isinstance(params, dict):
        uri = params.get("uri")
        if isinstance(uri, str):
            params["uri"] = public_uri(uri)
            return True
    if message.get("method") == "notifications/subscriptions/acknowledged" and isinstance(params, dict):
        echoed = params.get("notifications")  # the listen filter, echoed: its URIs are the backend's too
        uris = echoed.get("resourceSubscriptions") if isinstance(echoed, dict) else None
        if isinstance(echoed, dict) and isinstance(uris, list):
            echoed["resourceSubscriptions"] = [public_uri(uri) if isinstance(uri, str) else uri for uri in uris]
            return True
    return False
