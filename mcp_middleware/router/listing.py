"""The aggregate's list answers, kept while the merged list they came from is current.

A warm `tools/list` over 100 backends is mostly serialization: the merged page is
the same for every caller who sees the same things. The first answer for a page
is made by the aggregate's own server (its exact shape for that protocol
version: `_meta`, cache hints); later ones reuse its `result` with the new
request's id. An answer is kept only when nothing failed, and when backends
filter their lists, per principal. It is dropped as soon as a backend's list
changes (the merged list is a new one) or after `max_entries` newer ones.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson
from mcp.shared.exceptions import MCPError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import JsonRpcCode, McpRequest, SseParser, get_mcp_request
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE, EVENT_STREAM, META_NAMESPACE, is_event_stream

from .catalog import Catalog
from .catalog_kinds import KIND_OF_LIST, Kind, Merged
from .sessions import owner_of

__all__ = ["MERGED_SCOPE_KEY", "ROUTER_META_KEY", "ListAnswers", "ListGate", "Page", "page_of"]

ROUTER_META_KEY = f"{META_NAMESPACE}/router"
"""The `_meta` key under which the aggregate reports failed backends and name collisions."""

ListGate = Callable[[Scope, str, str], bool]
"""`(scope, method, backend name) -> visible`: a backend's list filter (e.g. `AuthMiddleware.visible`)."""

_MAX_ANSWER = DEFAULT_MAX_BODY_SIZE
_SSE_HEADERS = ((b"content-type", EVENT_STREAM), (b"cache-control", b"no-cache, no-transform"))
MERGED_SCOPE_KEY = "mcp_middleware.router.merged"
"""The merged list a request was looked up with, for the server that answers it."""
_Key = tuple[str, str | None, int, str, str]


class ListAnswers:
    """The aggregate's own server, with reusable list answers in front (bounded LRU).

    `answerable(request)` says whether a request may be answered here (a modern one, or one of a legacy
    session the aggregate knows: others go to the server, which knows what to say).
    """

    def __init__(
        self,
        app: ASGIApp,
        catalog: Catalog,
        *,
        per_principal: bool,
        answerable: Callable[[McpRequest], bool],
        max_entries: int = 1024,
    ) -> None:
        self.app = app
        self.catalog = catalog
        self.per_principal = per_principal
        self.answerable = answerable
        self.max_entries = max_entries
        self._answers: OrderedDict[_Key, tuple[bytes, bool]] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = get_mcp_request(scope) if scope["type"] == "http" else None
        kind = KIND_OF_LIST.get(request.method or "") if request is not None else None
        if request is None or kind is None or request.id is None or not self.answerable(request):
            await self.app(scope, receive, send)
            return
        merged: Merged = await self.catalog.merge(kind)
        owner = owner_of(scope) if self.per_principal else ""
        key: _Key = (kind.name, request.cursor, merged.serial, request.protocol_version, owner)
        kept = self._answers.get(key)
        if kept is not None:
            self._answers.move_to_end(key)
            result, as_sse = kept
            message = b'{"jsonrpc":"2.0","id":' + orjson.dumps(request.id) + b',"result":' + result + b"}"
            if as_sse:  # framed as the server framed it for this protocol version (an SSE stream, or JSON)
                body, headers = b"event: message\r\ndata: " + message + b"\r\n\r\n", list(_SSE_HEADERS)
            else:
                body, headers = message, [(b"content-type", b"application/json")]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        keeper = _Keeper(send, request.id)
        scope[MERGED_SCOPE_KEY] = merged  # the server pages this very list (no second fan-out)
        await self.app(scope, receive, keeper)
        if keeper.result is not None and not merged.failures and self.catalog.current(kind) is merged:
            self._answers[key] = (keeper.result, keeper.sse)
            while len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)


class Page(NamedTuple):
    """One page of a merged list as a caller sees it."""

    items: list[Any]
    next_cursor: str | None
    meta: dict[str, Any] | None
    failed: str
    """The backends missing from it, comma-separated ("" when none)."""


async def page_of(
    catalog: Catalog,
    kind: Kind,
    cursor: str | None,
    page_size: int,
    scope: Scope | None,
    gates: Mapping[str, ListGate],
) -> Page:
    """The page after `cursor` of the merged list, with what each backend's list filter lets the caller see."""
    after = decode_cursor(cursor, kind)
    looked_up = scope.get(MERGED_SCOPE_KEY) if scope is not None else None
    merged = looked_up if isinstance(looked_up, Merged) and looked_up.kind == kind.name else None
    if merged is None:
        merged = await catalog.merge(kind)
    keys, items = merged.keys, merged.items
    if gates and scope is not None:
        visible = [
            index
            for index, server in enumerate(merged.servers)
            if (gate := gates.get(server)) is None or gate(scope, kind.call, merged.originals[index])
        ]
        if len(visible) != len(keys):
            keys = [keys[index] for index in visible]
            items = [items[index] for index in visible]
    start = bisect.bisect_right(keys, after) if after is not None else 0
    end = start + page_size
    next_cursor = encode_cursor(kind, keys[end - 1]) if end < len(items) else None
    report: dict[str, Any] = {}
    if merged.failures:
        report["partial"] = True
        report["failed"] = [failure.describe() for failure in merged.failures]
    if merged.collisions:
        report["collisions"] = merged.collisions
    failed = ",".join(failure.server for failure in merged.failures)
    return Page(items[start:end], next_cursor, {ROUTER_META_KEY: report} if report else None, failed)


class _Keeper:
    """Forwards the own server's answer untouched and keeps its `result` (a 200, JSON or one SSE message)."""

    __slots__ = ("_chunks", "_id", "_parser", "_send", "_size", "result", "sse")

    def __init__(self, send: Send, request_id: Any) -> None:
        self._send = send
        self._id = request_id
        self._chunks: list[bytes] = []
        self._size = 0
        self._parser: SseParser | None = None
        self.result: bytes | None = None
        self.sse = False

    async def __call__(self, message: Message) -> None:
        await self._send(message)
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                self._size = -1
            elif any(k.lower() == b"content-type" and is_event_stream(v) for k, v in message["headers"]):
                self._parser = SseParser(_MAX_ANSWER)
                self.sse = True
            return
        if message["type"] != "http.response.body" or self._size < 0:
            return
        chunk: bytes = message.get("body", b"")
        final = not message.get("more_body", False)
        if self._parser is not None:
            for _, data in self._parser.feed(chunk, final=final):
                self._take(data)
            return
        self._size += len(chunk)
        if self._size > _MAX_ANSWER:
            self._size = -1
            return
        self._chunks.append(chunk)
        if final:
            self._take(b"".join(self._chunks))

    def _take(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(message, dict) and message.get("id") == self._id and isinstance(message.get("result"), dict):
            self.result = orjson.dumps(message["result"])


_CURSOR_VERSION = 1


def encode_cursor(kind: Kind, after: str) -> str:
    raw = orjson.dumps({"v": _CURSOR_VERSION, "k": kind.name, "a": after})
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None, kind: Kind) -> str | None:
    """The last public key a cursor handed out; a forged or foreign cursor is -32602."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
        if decoded["v"] == _CURSOR_VERSION and decoded["k"] == kind.name and isinstance(decoded["a"], str):
            return str(decoded["a"])
    except (binascii.Error, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        pass
    raise MCPError(JsonRpcCode.INVALID_PARAMS, "Invalid cursor", data={"cursor": cursor[:200]})
