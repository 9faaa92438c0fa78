"""A miss: the backend's answer streamed through untouched, then stored if it may be.

Everything a miss needs is handed to its constructor: what the request was (:class:`Miss`,
built per request) and the cache's parts it stores into (:class:`CacheParts`, built once by
the middleware). It never calls back into the middleware.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import anyio
import orjson
from starlette.types import Message, Scope, Send

from mcp_middleware.core.decisions import Component, Outcome

from .._outside_auth import OutsideAuth
from ..core.decisions import record_decision
from ..core.request import Era, McpRequest
from ..core.tap import ResponseTap, SseParser
from .admission import Admission
from .invalidation import STORE_PATIENCE, Invalidator
from .keys import PUBLIC_PARTITION, entry_key, entry_tags
from .policy import CachePolicy
from .sessions import SESSION_HEADER, LegacySessions
from .store import CacheEntry, CacheStore
from .tools import ReadOnlyTools

__all__ = ["CacheParts", "Miss", "MissResponse"]

logger = logging.getLogger("mcp_middleware.cache")


@dataclass(frozen=True, slots=True)
class CacheParts:
    """What every miss of one middleware stores into and consults (built once, shared by its misses)."""

    store: CacheStore
    admission: Admission
    sessions: LegacySessions
    invalidator: Invalidator
    tools: ReadOnlyTools
    outside_auth: OutsideAuth
    status_header: bytes | None
    """The header that says `miss` on a cacheable response (None: no header)."""
    max_inspect_bytes: int
    """The most of a `tools/list` response read to learn its tools' annotations."""


class Miss(NamedTuple):
    """One request that goes to the backend, and where its answer would be stored."""

    request: McpRequest
    scope: Scope
    policy: CachePolicy | None
    """None: not to be stored, only read to learn the tools' annotations (a `tools/list`)."""
    mount: str
    partition: str = ""
    digest: str = ""
    generation: int = 0
    """The invalidator's generation when the request left: an answer older than an invalidation is not stored."""
    unvouched: bool = False
    """The request was unauthenticated when it reached the cache (see `OutsideAuth`)."""
    learn: bool = False
    """Read a `tools/list` result before its last byte goes, so a call right after finds its tool known."""


class MissResponse:
    """The `send` of a forwarded request: marks the response as a miss and remembers status and session.

    Right after the last byte is forwarded it settles the request (stores the result), so that
    a client's next request finds the entry. No closures and no reference back to the
    middleware: a miss leaves no reference cycle for the garbage collector.
    """

    __slots__ = (
        "_body",
        "_header",
        "_learning",
        "_left",
        "_parts",
        "_send",
        "ended",
        "entry",
        "miss",
        "session_id",
        "status",
        "tap",
    )

    def __init__(self, send: Send, tap: ResponseTap, miss: Miss, parts: CacheParts) -> None:
        self._send = send
        self.tap = tap
        self.miss = miss
        self._parts = parts
        self._header = parts.status_header if miss.policy is not None else None
        self._learning = miss.learn
        self._left = parts.max_inspect_bytes
        self._body: list[bytes] = []
        self.status: int | None = None
        self.session_id: str | None = None
        self.ended = False
        self.entry: CacheEntry | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            headers = message.get("headers", ())
            for name, value in headers:
                if name == SESSION_HEADER:
                    self.session_id = value.decode("latin-1")
            if self._header is not None:
                message = {**message, "headers": [*headers, (self._header, b"miss")]}
        elif kind == "http.response.body" and self._learning:
            body: bytes = message.get("body", b"")
            self._left -= len(body)
            if self._left < 0:
                self._learning = False  # too large to read here; the tap still sees it
            else:
                self._body.append(body)
                if not message.get("more_body", False):
                    self._learn(b"".join(self._body))
        await self._send(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            await self.settle()

    async def settle(self) -> None:
        """Store the result if it may be stored (once; also called if the app ended without a last body)."""
        if not self.ended:
            self.ended = True
            try:
                self.entry = await self._settle()
            except Exception:  # this runs inside the app's send: a cache fault must not fail the response
                logger.exception("cache could not settle %s", self.miss.request.method)

    def _learn(self, body: bytes) -> None:
        request = self.miss.request
        candidates = (
            [data for _, data in SseParser(len(body) + 1).feed(body, final=True)] if body[:1] != b"{" else [body]
        )
        for data in reversed(candidates):
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("id") == request.id:
                result = message.get("result")
                if isinstance(result, dict) and self.status == 200:
                    self._parts.tools.learn(self.miss.mount, result)
                return

    async def _settle(self) -> CacheEntry | None:
        """After the response: remember the session, and store the result if it may be stored."""
        miss, parts = self.miss, self._parts
        request, scope, policy = miss.request, miss.scope, miss.policy
        if miss.unvouched and parts.outside_auth.check(scope):
            # Authenticated only further in: this answer is someone's, but was keyed as nobody's.
            record_decision(scope, Component.CACHE, Outcome.BYPASS, reason="outside_auth")
            return None
        if policy is None:
            return None
        status = self.status
        if request.era is Era.LEGACY and status is not None:
            parts.sessions.answered(miss.mount, request.session_id or self.session_id, miss.partition, status)
        outcome = self.tap.outcome()
        reason = parts.admission.refusal(outcome)
        entry: CacheEntry | None = None
        if reason is None and outcome.result is not None:
            sse = outcome.content_type == "text/event-stream"
            entry = parts.admission.entry(policy, request, outcome.result, sse=sse, mount=miss.mount)
            if entry is None:
                reason = "ttl_zero"
            elif miss.generation != parts.invalidator.generation:
                reason, entry = "invalidated", None
        evicted = 0
        if entry is not None:
            if not await self._store(entry):
                reason, entry = "not_kept", None
            evicted = parts.store.take_evictions()
        if entry is not None:
            record_decision(scope, Component.CACHE, Outcome.MISS, stored=True, public=entry.public)
        else:
            record_decision(scope, Component.CACHE, Outcome.MISS, stored=False, reason=reason or "unknown")
        if evicted:
            record_decision(scope, Component.CACHE, Outcome.EVICT, count=evicted)
        return entry

    async def _store(self, entry: CacheEntry) -> bool:
        miss, store = self.miss, self._parts.store
        request, method = miss.request, miss.request.method or ""
        owner = PUBLIC_PARTITION if entry.public else miss.partition
        key = entry_key(miss.mount, method, miss.digest, owner)
        tags = entry_tags(miss.mount, method, owner, request.uri if method == "resources/read" else None)
        sync = store.sync
        if sync is not None:
            return sync.put(key, entry, tags)
        kept = False
        # This runs inside the app's send: the SDK may cancel it once the response is out.
        with anyio.move_on_after(STORE_PATIENCE, shield=True):
            kept = await store.set(key, entry, tags)
        return kept
