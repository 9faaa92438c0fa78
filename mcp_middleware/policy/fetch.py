"""Fetching a backend's tool list once, through the rest of its stack, when a call names a tool not yet seen.

A call can arrive before any `tools/list` passed through this stack (the aggregate lists over its
own sessions; a client may call a tool it knows). The policy needs the tool's annotations and the
validator its schema, so the stack asks the backend itself: one stateless 2026-07-28 `tools/list`
sent to the inner app with the caller's principal (it sees what the caller's list would show),
read with a bound, every page followed. A backend that does not speak 2026-07-28, or fails, leaves
the catalog as it was; a fetch is tried at most once per `interval` seconds per backend (sooner when
the list's `ttlMs` says so, never more than once a second), and at once after the backend said its
tools changed (:meth:`ToolFetcher.changed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

import anyio
import orjson
from starlette.types import ASGIApp, Message, Scope

from mcp_middleware.core import SseParser
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY
from mcp_middleware.core.protocol import is_event_stream

from .catalog import ToolCatalog

__all__ = ["ToolFetcher", "fetcher_of"]

logger = logging.getLogger("mcp_middleware.policy")

_MODERN = "2026-07-28"
_ID = "mcp-middleware:tools"
_MAX_PAGES = 20
_MIN_INTERVAL = 1.0
"""However short the backend's `ttlMs`, one fetch a second at most (`ttlMs: 1` costs that much)."""
_PASSED_HEADERS = frozenset({b"host", b"origin", b"user-agent", b"x-forwarded-for", b"x-forwarded-proto"})


class ToolFetcher:
    """`await fetcher.ensure(app, scope, name)`: make sure the catalog knows `name` freshly, fetching if it may."""

    def __init__(self, catalog: ToolCatalog, *, interval: float = 30.0, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.catalog = catalog
        self.interval = interval
        self.max_bytes = max_bytes
        self._last = -float("inf")
        self._lock = anyio.Lock()

    def changed(self) -> None:
        """The backend's tools changed: the next call that needs them fetches at once."""
        self._last = -float("inf")

    def _due(self, name: str) -> bool:
        interval = max(_MIN_INTERVAL, min(self.interval, self.catalog.fresh_for))
        return self.catalog.needs_list(name) and time.monotonic() - self._last >= interval

    async def ensure(self, app: ASGIApp, scope: Scope, name: str) -> None:
        if not self._due(name):
            return
        async with self._lock:  # concurrent calls share one fetch
            if not self._due(name):
                return
            self._last = time.monotonic()
            generation = self.catalog.generation  # a change during the fetch: what it read is already old
            cursor: str | None = None
            for _ in range(_MAX_PAGES):
                result = await self._list(app, scope, cursor)
                if result is None:
                    return
                tools = result.get("tools")
                if isinstance(tools, list):
                    self.catalog.learn(tools, generation=generation)
                ttl = result.get("ttlMs")
                # 0 is what MCPServer answers unless built with cache hints: no promise either way, so the
                # catalog's own max_age holds (honouring it would list the tools again before most calls).
                if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl > 0:
                    self.catalog.advertised_ttl = min(ttl, 10**12) / 1000  # a hostile huge int stays a float
                cursor = result.get("nextCursor")
                if not isinstance(cursor, str) or not cursor:
                    return

    async def _list(self, app: ASGIApp, scope: Scope, cursor: str | None) -> dict[str, Any] | None:
        params: dict[str, Any] = {
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": _MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        }
        if cursor is not None:
            params["cursor"] = cursor
        body = orjson.dumps({"jsonrpc": "2.0", "id": _ID, "method": "tools/list", "params": params})
        headers = [(k, v) for k, v in scope.get("headers", ()) if k in _PASSED_HEADERS]
        headers += [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"mcp-protocol-version", _MODERN.encode()),
            (b"mcp-method", b"tools/list"),
            (b"content-length", str(len(body)).encode()),
        ]
        # A new request: none of the caller's per-request state (its request view, tap, decisions), its principal kept.
        inner: Scope = {k: v for k, v in scope.items() if not k.startswith("mcp_middleware.")}
        if PRINCIPAL_SCOPE_KEY in scope:
            inner[PRINCIPAL_SCOPE_KEY] = scope[PRINCIPAL_SCOPE_KEY]
        inner.update(method="POST", headers=headers, query_string=b"")
        exchange = _Exchange(body, self.max_bytes)
        try:
            with anyio.fail_after(10):
                await app(inner, exchange.receive, exchange.send)
        except Exception as exc:  # the backend could not say: the catalog stays as it was
            logger.info("tools/list for the catalog failed: %s: %s", type(exc).__name__, exc)
            return None
        finally:
            exchange.done.set()
        return exchange.result()


class _Exchange:
    """The synthetic request's `receive` and `send`: the body once, then wait; the answer kept within a bound."""

    def __init__(self, body: bytes, max_bytes: int) -> None:
        self.body: bytes | None = body
        self.max_bytes = max_bytes
        self.done = anyio.Event()
        self.status = 0
        self.sse = False
        self.chunks: list[bytes] = []
        self.size = 0

    def receive(self) -> Awaitable[Message]:
        return self._receive()

    async def _receive(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        await self.done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            content_type = dict(message.get("headers", ())).get(b"content-type", b"")
            self.sse = is_event_stream(content_type)
        elif message["type"] == "http.response.body":
            self.size += len(message.get("body", b""))
            if self.size <= self.max_bytes:
                self.chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.done.set()

    def result(self) -> dict[str, Any] | None:
        if self.status != 200 or self.size > self.max_bytes:
            return None
        raw = b"".join(self.chunks)
        candidates = [data for _, data in SseParser(self.max_bytes).feed(raw, final=True)] if self.sse else [raw]
        for data in candidates:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("id") == _ID and isinstance(message.get("result"), dict):
                result: dict[str, Any] = message["result"]
                return result
        return None


def fetcher_of(catalog: ToolCatalog) -> ToolFetcher:
    """The catalog's one fetcher (the policy and the validator of a stack share the catalog, hence the fetch)."""
    fetcher = catalog.fetcher
    if not isinstance(fetcher, ToolFetcher):
        fetcher = catalog.fetcher = ToolFetcher(catalog)
    return fetcher
