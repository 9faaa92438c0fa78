"""`ResponseCacheMiddleware`: answer repeated MCP lists, reads and opted-in idempotent calls from a cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from hashlib import blake2b
from typing import Any, Literal, NamedTuple

import anyio
import orjson
from cachetools import LRUCache, TTLCache
from mcp_types.methods import CACHEABLE_METHODS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._outside_auth import OutsideAuth, authenticated
from ..core.decisions import DecisionValue, record_decision
from ..core.kernel import ANSWERED, DEFAULT_CONFIG, CoreConfig, read_request
from ..core.principal import Principal, get_principal
from ..core.request import Era, McpRequest, RequestKind
from ..core.selectors import Selector, SelectorMap
from ..core.tap import ResponseTap, SseParser
from .invalidation import DROPPED_BY, StreamWatch
from .keys import (
    DEFAULT_KEY_META_FIELDS,
    PUBLIC_PARTITION,
    entry_key,
    entry_tags,
    invalidation_tag,
    partition_of,
    request_digest,
)
from .responses import StaleGuard, accepts, render, send_answer
from .store import CacheEntry, CacheStore, MemoryCacheStore

__all__ = ["CACHEABLE_METHODS", "CachePolicy", "ResponseCacheMiddleware"]

logger = logging.getLogger("mcp_middleware.cache")

Scope_ = Literal["public", "private"]

_OPT_IN_METHODS = frozenset({"tools/call", "prompts/get"})
"""Cached only where the operator opts in with a `tools/call…` or `prompts/get…` selector."""
_MAX_TOOLS_PER_MOUNT = 10_000
_SESSION_HEADER = b"mcp-session-id"
_STORE_PATIENCE = 2.0
"""Seconds a store write or invalidation may take where the app could cancel it (it is shielded)."""


class CachePolicy(NamedTuple):
    """How long a selected result may be reused, and (optionally) by whom.

    `ttl` is in seconds; an upstream `ttlMs` can only shorten it. `scope` forces `"private"`
    (partitioned by principal) or allows `"public"` for results whose backend says nothing
    (legacy results, `tools/call`, `prompts/get`); an upstream `cacheScope: private` always wins.
    """

    ttl: float
    scope: Scope_ | None = None


RuleValue = CachePolicy | float | None


def _as_policy(value: RuleValue) -> CachePolicy | None:
    if value is None:
        return None
    policy = value if isinstance(value, CachePolicy) else CachePolicy(float(value))
    return policy if policy.ttl > 0 else None


def _with_origin(digest: str, headers: list[tuple[bytes, bytes]]) -> str:
    """The digest, bound to the request's `Origin` when it has one (browsers send it with every POST).

    The app inside may refuse a browser's request by its origin alone (the SDK's DNS-rebinding
    protection answers 403), so the origin is part of the question: a page on attacker.example
    that rebinds its name to this server gets a miss, goes to the app and is refused there,
    instead of getting what a genuine client stored. (`Host` is not keyed: only a browser can be
    made to send a rebound `Host`, and a browser also sends `Origin`; any other client can send
    whatever `Host` it likes, the genuine one included.) Hashed: the value is the client's.
    """
    for name, value in headers:
        if name == b"origin":
            return blake2b(b"%s\x00%s" % (digest.encode(), value), digest_size=16).hexdigest()
    return digest


class _Flight:
    """One backend call that identical concurrent misses wait for.

    The event is made only when someone waits: most misses have no company, and an event
    costs more than the rest of the bookkeeping.
    """

    __slots__ = ("_done", "entry", "landed")

    def __init__(self) -> None:
        self._done: anyio.Event | None = None
        self.entry: CacheEntry | None = None
        self.landed = False

    async def wait(self, patience: float) -> CacheEntry | None:
        if not self.landed:
            if self._done is None:
                self._done = anyio.Event()
            with anyio.move_on_after(patience):
                await self._done.wait()
        return self.entry

    def land(self, entry: CacheEntry | None) -> None:
        self.entry = entry
        self.landed = True
        if self._done is not None:
            self._done.set()


class _MissResponse:
    """The `send` of a forwarded request: marks the response as a miss and remembers status and session.

    Right after the last byte is forwarded it has the middleware settle the request (store the
    result), so that a client's next request finds the entry. With `learn`, it also reads a
    `tools/list` result before that last byte goes, so that a client calling a tool right after
    listing finds it already known as read-only. It holds its context as plain attributes (no
    closures): a miss leaves no reference cycle for the garbage collector.
    """

    __slots__ = (
        "_body",
        "_header",
        "_size",
        "digest",
        "ended",
        "entry",
        "generation",
        "learn",
        "mount",
        "owner",
        "partition",
        "policy",
        "request",
        "scope",
        "send_",
        "session_id",
        "status",
        "tap",
        "unvouched",
    )

    def __init__(self, send: Send, header: bytes | None, request: McpRequest | None = None) -> None:
        self.send_ = send
        self._header = header
        self.request = request
        self.owner: ResponseCacheMiddleware | None = None
        self.learn = False
        self._body: list[bytes] = []
        self._size = 0
        self.status: int | None = None
        self.session_id: str | None = None
        self.ended = False
        self.entry: CacheEntry | None = None
        self.policy: CachePolicy | None = None
        self.scope: Scope | None = None
        self.tap: ResponseTap | None = None
        self.mount = ""
        self.partition = ""
        self.digest = ""
        self.generation = 0
        self.unvouched = False
        """The request was unauthenticated when it reached the cache (see `OutsideAuth`)."""

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            headers = message.get("headers", ())
            for name, value in headers:
                if name == _SESSION_HEADER:
                    self.session_id = value.decode("latin-1")
            if self._header is not None:
                message = {**message, "headers": [*headers, (self._header, b"miss")]}
        elif kind == "http.response.body" and self.learn:
            body: bytes = message.get("body", b"")
            self._size -= len(body)
            if self._size < 0:
                self.learn = False  # too large to read here; the tap still sees it
            else:
                self._body.append(body)
                if not message.get("more_body", False):
                    self._read_result(b"".join(self._body))
        await self.send_(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            await self.settle()

    async def settle(self) -> None:
        if not self.ended:
            self.ended = True
            if self.owner is not None:
                try:
                    self.entry = await self.owner._settle(self)
                except Exception:  # this runs inside the app's send: a cache fault must not fail the response
                    logger.exception("cache could not settle %s", self.request.method if self.request else "?")

    def _read_result(self, body: bytes) -> None:
        assert self.owner is not None and self.request is not None
        candidates = (
            [data for _, data in SseParser(len(body) + 1).feed(body, final=True)] if body[:1] != b"{" else [body]
        )
        for data in reversed(candidates):
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(message, dict) and message.get("id") == self.request.id:
                result = message.get("result")
                if isinstance(result, dict) and self.status == 200:
                    self.owner._learn(self.mount, result)
                return


class ResponseCacheMiddleware:
    """Answer repeated MCP requests from a cache, correctly.

    Cached by default (TTL `ttl` seconds, bounded by the backend's `ttlMs`): the successful
    results of `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`,
    `resources/read` and `server/discover`. `prompts/get` and `tools/call` only where a rule
    opts in (`rules={"tools/call:search_*": 30}`), and tools only if the backend's `tools/list`
    annotated them `readOnlyHint` or they are in `allow_tools`. Never `initialize`, errors, tool
    errors, MRTR retries (`inputResponses`/`requestState`) or `input_required` results.

    Results are private to the principal (issuer + subject + client) unless the backend says
    `cacheScope: public`; legacy-era results carry no scope and are private unless
    `legacy_scope="public"`. Hits never reach the backend, carry the request's own id, and come
    as JSON or an event stream as the client accepts and the backend answered. list_changed
    and resources/updated notifications on streams passing through drop what they make stale;
    :meth:`invalidate` does it on demand. Identical concurrent misses make one backend call.
    With `stale_grace`, an expired entry stands in (marked stale in `_meta`) when the backend
    fails or its breaker is open.

    >>> from mcp.server.mcpserver import MCPServer
    >>> server = MCPServer("demo")
    >>> app = ResponseCacheMiddleware(server.streamable_http_app(), ttl=30, stale_grace=300,
    ...                               rules={"tools/call:lookup_*": 10})
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: CacheStore | None = None,
        ttl: float = 60.0,
        rules: Mapping[str, RuleValue] | None = None,
        allow_tools: Iterable[str] = (),
        trust_read_only_hint: bool = True,
        legacy_scope: Scope_ = "private",
        honor_ttl_ms: bool = True,
        stale_grace: float = 0.0,
        single_flight: bool = True,
        max_wait: float = 10.0,
        key_meta_fields: Iterable[str] = DEFAULT_KEY_META_FIELDS,
        mount: Callable[[Scope], str] | None = None,
        status_header: str | None = "x-mcp-cache",
        session_check_interval: float = 60.0,
        config: CoreConfig = DEFAULT_CONFIG,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl < 0 or stale_grace < 0 or max_wait < 0 or session_check_interval <= 0:
            raise ValueError("ttl, stale_grace and max_wait must be >= 0, session_check_interval > 0")
        if legacy_scope not in ("public", "private"):
            raise ValueError("legacy_scope must be 'public' or 'private'")
        self.app = app
        self.store: CacheStore = store if store is not None else MemoryCacheStore()
        self._sync = self.store.sync  # a store without I/O (memory) answers hits without a coroutine
        self.ttl = ttl
        cacheable: dict[str, RuleValue] = dict.fromkeys(sorted(CACHEABLE_METHODS), ttl)
        opt_in: dict[str, RuleValue] = {}
        for text, value in (rules or {}).items():
            selector = Selector.parse(text)
            if selector.method in _OPT_IN_METHODS:
                opt_in[text] = value  # opting in takes a literal tools/call or prompts/get selector
            else:
                cacheable[text] = value  # never widens beyond the cacheable methods (checked per request)
        self._rules: SelectorMap[CachePolicy | None] = SelectorMap({k: _as_policy(v) for k, v in cacheable.items()})
        self._opt_in: SelectorMap[CachePolicy | None] = SelectorMap({k: _as_policy(v) for k, v in opt_in.items()})
        self._allow_tools = tuple(Selector.parse(f"tools/call:{name}") for name in allow_tools)
        self.trust_read_only_hint = trust_read_only_hint
        self._learn_tools = bool(opt_in) and trust_read_only_hint
        self.legacy_scope = legacy_scope
        self.honor_ttl_ms = honor_ttl_ms
        self.stale_grace = stale_grace
        self.single_flight = single_flight
        self.max_wait = max_wait
        self.key_meta_fields = frozenset(key_meta_fields)
        self._mount_of = mount
        self._status_header = status_header.lower().encode("latin-1") if status_header else None
        self.config = config
        self._clock = clock
        self._flights: dict[str, _Flight] = {}
        self._read_only: LRUCache[str, dict[str, bool]] = LRUCache(maxsize=1024)
        self._sessions: TTLCache[tuple[str, str, str], bool] = TTLCache(maxsize=10_000, ttl=session_check_interval)
        self._generation = 0
        """Counts invalidations: a response fetched before one is not stored after it."""
        self.outside_auth = OutsideAuth(
            "ResponseCacheMiddleware",
            "Its anonymous partition would hold other callers' answers, so from now on it caches nothing",
            logger,
        )
        """Trips (for good) once a request is seen to be authenticated only inside the cache."""

    # --- the request path ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        if request.kind is RequestKind.REQUEST:
            method = request.method
            if method in CACHEABLE_METHODS:
                policy = self._rules.lookup(request)
            elif method in _OPT_IN_METHODS:
                policy = self._opt_in.lookup(request)
            else:
                policy = None
            if policy is not None:
                await self._cacheable(policy, request, scope, receive, send)
            elif method == "subscriptions/listen":
                await self._watch(scope, receive, send)
            elif method == "initialize" and request.era is Era.LEGACY:
                await self._initialize(request, scope, receive, send)
            elif method == "tools/list" and self._learn_tools:
                await self._forward(None, request, scope, receive, send, "", "", "", None)
            else:
                await self.app(scope, receive, send)
        elif request.kind is RequestKind.STREAM:
            await self._watch(scope, receive, send)
        elif request.kind is RequestKind.TERMINATE:
            self._sessions.pop((self._mount(scope), request.session_id or "", partition_of(get_principal(scope))), None)
            await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _mount(self, scope: Scope) -> str:
        if self._mount_of is not None:
            return self._mount_of(scope)
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        return path if not root or path.startswith(root) else root + path

    async def _cacheable(
        self, policy: CachePolicy, request: McpRequest, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if self.outside_auth.detected:
            # Misplaced outside auth: no answer here can be told apart by caller, so none is given or kept.
            record_decision(scope, "cache", "bypass", reason="outside_auth")
            await self.app(scope, receive, send)
            return
        params = request.params
        if params is not None and ("inputResponses" in params or "requestState" in params):
            record_decision(scope, "cache", "bypass", reason="input_responses")
            await self.app(scope, receive, send)
            return
        mount = self._mount(scope)
        method: str = request.method  # type: ignore[assignment]
        if method == "tools/call" and not self._trusted_tool(mount, request.name):
            record_decision(scope, "cache", "bypass", reason="not_read_only", tool=request.name or "")
            await self.app(scope, receive, send)
            return
        json_ok, sse_ok = accepts(scope["headers"])
        if not json_ok:
            record_decision(scope, "cache", "bypass", reason="accept")
            await self.app(scope, receive, send)
            return

        partition = partition_of(get_principal(scope))
        unvouched = not authenticated(scope)
        digest = _with_origin(request_digest(request, self.key_meta_fields), scope["headers"])
        private_key = entry_key(mount, method, digest, partition)
        keys = (private_key, entry_key(mount, method, digest, PUBLIC_PARTITION))
        found = self._sync.lookup(keys) if self._sync is not None else await self.store.get(keys)
        now = self._clock()
        stale: CacheEntry | None = None
        if found is not None:
            entry = found[1]
            if request.era is Era.MODERN or self._session_live(mount, request.session_id, partition):
                if entry.fresh_until > now:
                    if method == "tools/list" and self._learn_tools and mount not in self._read_only:
                        self._learn(mount, orjson.loads(entry.result))
                    if await self._answer(request, entry, now, sse_ok, send, "hit", scope, public=entry.public):
                        return
                elif self.stale_grace > 0:
                    stale = entry

        flight: _Flight | None = None
        leader = False
        if self.single_flight:
            flight = self._flights.get(private_key)
            if flight is None:
                flight = self._flights[private_key] = _Flight()
                leader = True
            else:
                entry = await flight.wait(self.max_wait)  # type: ignore[assignment]
                now = self._clock()
                if (
                    entry is not None
                    and entry.fresh_until > now
                    and (request.era is Era.MODERN or self._session_live(mount, request.session_id, partition))
                    and await self._answer(
                        request, entry, now, sse_ok, send, "hit", scope, public=entry.public, coalesced=True
                    )
                ):
                    return
                flight = None
        stored: CacheEntry | None = None
        try:
            stored = await self._forward(
                policy, request, scope, receive, send, mount, partition, digest, stale, unvouched
            )
        finally:
            if leader and flight is not None:
                del self._flights[private_key]
                flight.land(stored)

    async def _answer(
        self,
        request: McpRequest,
        entry: CacheEntry,
        now: float,
        sse_ok: bool,
        send: Send,
        status: str,
        scope: Scope,
        **decision: DecisionValue,
    ) -> bool:
        """Send `entry` as the answer, in the form the client accepts; False if it accepts none we may use.

        The decision is recorded before the answer goes out: whoever observes it sees it first.
        """
        if request.era is Era.MODERN:
            sse = False  # a cached answer has no notifications: a modern server would answer JSON
        elif entry.sse:
            if not sse_ok:
                return False  # the backend streams and would refuse this Accept: let it say so
            sse = True
        else:
            sse = False
        headers: list[tuple[bytes, bytes]] = []
        if request.session_id is not None:
            headers.append((_SESSION_HEADER, request.session_id.encode("latin-1")))
        if self._status_header is not None:
            headers.append((self._status_header, status.encode("ascii")))
        body = render(request.id, entry, now, sse=sse, stale=status == "stale")
        record_decision(scope, "cache", status, age_ms=int((now - entry.stored_at) * 1000), **decision)
        await send_answer(send, body, sse=sse, extra_headers=headers)
        return True

    async def _forward(
        self,
        policy: CachePolicy | None,
        request: McpRequest,
        scope: Scope,
        receive: Receive,
        send: Send,
        mount: str,
        partition: str,
        digest: str,
        stale: CacheEntry | None,
        unvouched: bool = False,
    ) -> CacheEntry | None:
        """Ask the backend (streaming its answer through untouched) and keep the result if it may be kept."""
        tap, send = ResponseTap.attach(scope, send, request, max_bytes=self.config.max_inspect_bytes)
        response = _MissResponse(send, self._status_header if policy is not None else None, request)
        response.owner = self
        response.policy, response.scope, response.tap = policy, scope, tap
        response.mount = mount or self._mount(scope)
        response.partition, response.digest, response.generation = partition, digest, self._generation
        response.unvouched = unvouched
        if request.method == "tools/list" and self._learn_tools:
            response.learn = True
            response._size = self.config.max_inspect_bytes
        guard = StaleGuard(response.send, request, self.config.max_inspect_bytes) if stale is not None else None
        try:
            await self.app(scope, receive, guard.send if guard is not None else response.send)
        except Exception:
            if guard is None or guard.forwarded:
                raise
            logger.exception("backend failed; serving a stale %s", request.method)
            await self._serve_stale(request, stale, scope, send, "exception")  # type: ignore[arg-type]
            return None
        if guard is not None and (guard.failed or not guard.forwarded):
            await self._serve_stale(request, stale, scope, send, "backend_failed")  # type: ignore[arg-type]
            return None
        await response.settle()  # if the app ended without a last body message
        return response.entry

    async def _settle(self, response: _MissResponse) -> CacheEntry | None:
        """After the response: remember the session, and store the result if it may be stored."""
        policy, request, scope, tap = response.policy, response.request, response.scope, response.tap
        mount, partition, digest = response.mount, response.partition, response.digest
        assert request is not None and scope is not None and tap is not None
        if response.unvouched and self.outside_auth.check(scope):
            # Authenticated only further in: this answer is someone's, but was keyed as nobody's.
            record_decision(scope, "cache", "bypass", reason="outside_auth")
            return None
        outcome = tap.outcome()
        status = response.status
        if request.era is Era.LEGACY and status is not None and policy is not None:
            session = (mount, request.session_id or response.session_id or "", partition)
            if 200 <= status < 300:
                self._sessions[session] = True
            elif status == 404:
                self._sessions.pop(session, None)
        result = outcome.result
        if policy is None:
            return None
        reason = self._unstorable(outcome.status, outcome.complete, outcome.truncated, result, outcome.error)
        entry: CacheEntry | None = None
        if reason is None and result is not None:
            entry = self._entry(policy, request, result, outcome.content_type == "text/event-stream")
            if entry is None:
                reason = "ttl_zero"
            elif response.generation != self._generation:
                reason, entry = "invalidated", None
        if entry is not None:
            owner = PUBLIC_PARTITION if entry.public else partition
            key = entry_key(mount, request.method or "", digest, owner)
            uri = request.uri if request.method == "resources/read" else None
            tags = entry_tags(mount, request.method or "", owner, uri)
            if self._sync is not None:
                kept = self._sync.put(key, entry, tags)
            else:
                kept = False
                # This runs inside the app's send: the SDK may cancel it once the response is out.
                with anyio.move_on_after(_STORE_PATIENCE, shield=True):
                    kept = await self.store.set(key, entry, tags)
            if not kept:
                reason, entry = "not_kept", None
        if entry is not None:
            record_decision(scope, "cache", "miss", stored=True, public=entry.public)
        else:
            record_decision(scope, "cache", "miss", stored=False, reason=reason or "unknown")
        return entry

    @staticmethod
    def _unstorable(
        status: int | None, complete: bool, truncated: bool, result: dict[str, Any] | None, error: Any
    ) -> str | None:
        if error is not None:
            return "error"
        if status != 200 or not complete:
            return "incomplete" if status == 200 else "status"
        if truncated:
            return "too_large"
        if result is None:
            return "no_result"
        if result.get("isError") is True:
            return "tool_error"
        if result.get("resultType") == "input_required":
            return "input_required"
        return None

    def _entry(self, policy: CachePolicy, request: McpRequest, result: dict[str, Any], sse: bool) -> CacheEntry | None:
        ttl = policy.ttl
        upstream_ttl = result.get("ttlMs")
        ttl_field = isinstance(upstream_ttl, int | float) and not isinstance(upstream_ttl, bool)
        upstream_scope = result.get("cacheScope")
        if self.honor_ttl_ms:
            if ttl_field:
                ttl = min(ttl, max(0.0, float(upstream_ttl) / 1000))  # type: ignore[arg-type]
            elif request.era is Era.MODERN and request.method in CACHEABLE_METHODS:
                ttl = 0.0  # the spec: a cacheable result without ttlMs is immediately stale
        if ttl <= 0:
            return None
        if upstream_scope in ("public", "private"):
            public = upstream_scope == "public" and policy.scope != "private"
        elif request.era is Era.LEGACY and request.method in CACHEABLE_METHODS:
            public = (policy.scope or self.legacy_scope) == "public"
        else:
            public = policy.scope == "public"
        stored = {key: value for key, value in result.items() if key != "ttlMs"} if ttl_field else result
        now = self._clock()
        return CacheEntry(orjson.dumps(stored), now + ttl, now + ttl + self.stale_grace, ttl_field, sse, public, now)

    async def _serve_stale(self, request: McpRequest, entry: CacheEntry, scope: Scope, send: Send, reason: str) -> None:
        now = self._clock()
        _, sse_ok = accepts(scope["headers"])
        if not await self._answer(request, entry, now, sse_ok, send, "stale", scope, reason=reason):
            await self._answer(request, entry._replace(sse=False), now, sse_ok, send, "stale", scope, reason=reason)

    # --- what the backend tells us -----------------------------------------------------------------

    async def _watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        mount = self._mount(scope)

        async def invalidate(notification: str, uri: str | None) -> None:
            try:
                dropped = await self._drop_for(mount, notification, uri)
            except Exception:  # inside the stream's send: never break the stream over the cache
                logger.exception("cache invalidation for %s failed", notification)
                return
            record_decision(scope, "cache", "invalidate", notification=notification, dropped=dropped)

        await self.app(scope, receive, StreamWatch(send, invalidate).send)

    async def _drop_for(self, mount: str, notification: str, uri: str | None) -> int:
        self._generation += 1
        if uri is not None:
            tags = [invalidation_tag(mount, uri=uri)]
        else:
            methods = DROPPED_BY[notification]
            if "tools/call" in methods:
                self._read_only.pop(mount, None)
            tags = [invalidation_tag(mount, method) for method in methods]
        if self._sync is not None:
            return self._sync.drop(tags)
        dropped = 0
        with anyio.move_on_after(_STORE_PATIENCE, shield=True):  # inside a stream's send, like a store
            dropped = await self.store.invalidate(tags)
        return dropped

    async def _initialize(self, request: McpRequest, scope: Scope, receive: Receive, send: Send) -> None:
        """Remember the session a legacy initialize opens: hits are answered only on sessions the backend knows."""
        response = _MissResponse(send, None)
        unvouched = not authenticated(scope)
        await self.app(scope, receive, response.send)
        if unvouched and self.outside_auth.check(scope):
            return
        if response.session_id is not None and response.status is not None and 200 <= response.status < 300:
            self._sessions[(self._mount(scope), response.session_id, partition_of(get_principal(scope)))] = True

    def _session_live(self, mount: str, session_id: str | None, partition: str) -> bool:
        return (mount, session_id or "", partition) in self._sessions

    def _learn(self, mount: str, result: dict[str, Any]) -> None:
        tools = result.get("tools")
        if not isinstance(tools, list):
            return
        book = self._read_only.get(mount)
        if book is None:
            book = self._read_only[mount] = {}
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(name := tool.get("name"), str):
                continue
            if name not in book and len(book) >= _MAX_TOOLS_PER_MOUNT:
                break
            annotations = tool.get("annotations")
            book[name] = isinstance(annotations, dict) and annotations.get("readOnlyHint") is True

    def _trusted_tool(self, mount: str, name: str | None) -> bool:
        if name is None:
            return False
        if any(selector.matches_parts("tools/call", name) for selector in self._allow_tools):
            return True
        if not self.trust_read_only_hint:
            return False
        book = self._read_only.get(mount)
        return book is not None and book.get(name, False)

    # --- the operator's API ------------------------------------------------------------------------

    async def invalidate(
        self,
        *,
        mount: str | None = None,
        method: str | None = None,
        principal: Principal | str | None = None,
        uri: str | None = None,
    ) -> int:
        """Drop cached answers: of a mount, a method, a principal (or a partition string), any combination;
        or of one resource `uri` (optionally in one mount). Returns how many the store dropped.

        >>> # await cache.invalidate(mount="/mcp", method="tools/list")
        >>> # await cache.invalidate(principal=Principal(subject="alice", issuer="https://idp"))
        """
        self._generation += 1
        if uri is not None:
            return await self.store.invalidate([invalidation_tag(mount, uri=uri)])
        partition = partition_of(principal) if isinstance(principal, Principal) else principal
        if method in (None, "tools/list", "tools/call"):
            if mount is None:
                self._read_only.clear()
            else:
                self._read_only.pop(mount, None)
        return await self.store.invalidate([invalidation_tag(mount, method, partition)])
