"""`ResponseCacheMiddleware`: answer repeated MCP lists, reads and opted-in idempotent calls from a cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial

import orjson
from mcp_types.methods import CACHEABLE_METHODS
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core.decisions import Component, Outcome

from .._outside_auth import OutsideAuth, authenticated
from ..core.decisions import DecisionValue, record_decision
from ..core.direct import inner_app
from ..core.kernel import ANSWERED, DEFAULT_CONFIG, CoreConfig, read_request
from ..core.principal import Principal, get_principal
from ..core.request import REQUEST_SCOPE_KEY, Era, McpRequest, RequestKind
from ..core.selectors import Selector, SelectorMap
from ..core.tap import ResponseTap
from .admission import Admission
from .flight import Flight
from .invalidation import Invalidator, StreamWatch
from .keys import DEFAULT_KEY_META_FIELDS, PUBLIC_PARTITION, entry_key, partition_of, request_digest, with_origin
from .miss import CacheParts, Miss, MissResponse
from .policy import OPT_IN_METHODS, CachePolicy, RuleValue, ScopeName, as_policy
from .responses import StaleGuard, accepts, render, send_answer
from .sessions import SESSION_HEADER, LegacySessions, SessionWatch
from .store import CacheEntry, CacheStore, MemoryCacheStore
from .tools import ReadOnlyTools

__all__ = ["CACHEABLE_METHODS", "CachePolicy", "ResponseCacheMiddleware", "RuleValue"]

logger = logging.getLogger("mcp_middleware.cache")


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
        legacy_scope: ScopeName = "private",
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
        self._next = inner_app(app)
        self.store: CacheStore = store if store is not None else MemoryCacheStore()
        self._sync = self.store.sync  # a store without I/O (memory) answers hits without a coroutine
        self.ttl = ttl
        cacheable: dict[str, RuleValue] = dict.fromkeys(sorted(CACHEABLE_METHODS), ttl)
        opt_in: dict[str, RuleValue] = {}
        for text, value in (rules or {}).items():
            selector = Selector.parse(text)
            if selector.method in OPT_IN_METHODS:
                opt_in[text] = value  # opting in takes a literal tools/call or prompts/get selector
            else:
                cacheable[text] = value  # never widens beyond the cacheable methods (checked per request)
        self._rules: SelectorMap[CachePolicy | None] = SelectorMap({k: as_policy(v) for k, v in cacheable.items()})
        self._opt_in: SelectorMap[CachePolicy | None] = SelectorMap({k: as_policy(v) for k, v in opt_in.items()})
        self._has_opt_in = bool(opt_in)
        self.trust_read_only_hint = trust_read_only_hint
        self._learn_tools = bool(opt_in) and trust_read_only_hint
        self._handled = frozenset(
            {*CACHEABLE_METHODS, "subscriptions/listen", "initialize", *(OPT_IN_METHODS if opt_in else ())}
        )
        """The JSON-RPC methods the cache has anything to do with (the others go straight on)."""
        self._dispatched: frozenset[str | None] = frozenset({*self._handled, None})
        """What `mcp_direct` hands to `_dispatch`: a method in `_handled`, or none (a GET stream, a DELETE, a
        response: views that are not JSON-RPC requests). A method in neither goes straight on whatever its kind:
        `_dispatch` sends a notification (or any other message that is not a request) on as well."""
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
        self._flights: dict[str, Flight] = {}
        self._tools = ReadOnlyTools(allow=allow_tools, trust_hint=trust_read_only_hint)
        self._sessions = LegacySessions(session_check_interval)
        self._invalidator = Invalidator(self.store, self._tools)
        self.outside_auth = OutsideAuth(
            "ResponseCacheMiddleware",
            "Its anonymous partition would hold other callers' answers, so from now on it caches nothing",
            logger,
        )
        """Trips (for good) once a request is seen to be authenticated only inside the cache."""
        self._parts = CacheParts(
            store=self.store,
            admission=Admission(
                honor_ttl_ms=honor_ttl_ms, legacy_scope=legacy_scope, stale_grace=stale_grace, clock=clock
            ),
            sessions=self._sessions,
            invalidator=self._invalidator,
            tools=self._tools,
            outside_auth=self.outside_auth,
            status_header=self._status_header,
            max_inspect_bytes=config.max_inspect_bytes,
        )

    # --- the request path ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None:
            return await self._next(scope, receive, send) if receive is not ANSWERED else None
        await self._dispatch(request, scope, receive, send)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """`__call__` entered by an outer middleware of ours (see :mod:`mcp_middleware.core.direct`):
        a request the cache has nothing to do with goes straight on to the next layer."""
        try:
            request = scope[REQUEST_SCOPE_KEY]
        except KeyError:  # (no layer of ours read it: `__call__` reads it)
            return self.__call__(scope, receive, send)
        else:  # (the usual request, in `else`: no jump over the handler)
            if request is None or request.method not in self._dispatched:
                return self._next(scope, receive, send)  # (what `_dispatch` would do, without its frame)
            return self._dispatch(request, scope, receive, send)

    def _dispatch(self, request: McpRequest, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What to await for a parsed request: the cache's own path, or the next layer's call."""
        if request.kind is RequestKind.REQUEST:
            method = request.method
            if method not in self._handled:  # (a `tools/call` without opt-in rules, say: one test)
                return self._next(scope, receive, send)
            if method in CACHEABLE_METHODS:
                policy = self._rules.lookup(request)
            elif method in OPT_IN_METHODS and self._has_opt_in:
                policy = self._opt_in.lookup(request)
            else:
                policy = None
            if policy is not None:
                return self._cacheable(policy, request, scope, receive, send)
            if method == "subscriptions/listen":
                return self._watch(scope, receive, send)
            if method == "initialize" and request.era is Era.LEGACY:
                return self._initialize(request, scope, receive, send)
            if method == "tools/list" and self._learn_tools:
                return self._learn_list(request, scope, receive, send)
            return self._next(scope, receive, send)
        if request.kind is RequestKind.STREAM:
            return self._watch(scope, receive, send)
        if request.kind is RequestKind.TERMINATE:
            self._sessions.closed(self._mount(scope), request.session_id, partition_of(get_principal(scope)))
        return self._next(scope, receive, send)

    async def _learn_list(self, request: McpRequest, scope: Scope, receive: Receive, send: Send) -> None:
        """An uncacheable `tools/list` still teaches which tools are read-only."""
        await self._forward(Miss(request, scope, None, self._mount(scope), learn=True), receive, send)

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
            record_decision(scope, Component.CACHE, Outcome.BYPASS, reason="outside_auth")
            await self._next(scope, receive, send)
            return
        params = request.params
        if params is not None and ("inputResponses" in params or "requestState" in params):
            record_decision(scope, Component.CACHE, Outcome.BYPASS, reason="input_responses")
            await self._next(scope, receive, send)
            return
        mount = self._mount(scope)
        method: str = request.method  # type: ignore[assignment]
        if method == "tools/call" and not self._tools.trusted(mount, request.name):
            record_decision(scope, Component.CACHE, Outcome.BYPASS, reason="not_read_only", tool=request.name or "")
            await self._next(scope, receive, send)
            return
        json_ok, sse_ok = accepts(scope["headers"])
        if not json_ok:
            record_decision(scope, Component.CACHE, Outcome.BYPASS, reason="accept")
            await self._next(scope, receive, send)
            return

        partition = partition_of(get_principal(scope))
        unvouched = not authenticated(scope)
        digest = with_origin(request_digest(request, self.key_meta_fields), scope["headers"])
        private_key = entry_key(mount, method, digest, partition)
        keys = (private_key, entry_key(mount, method, digest, PUBLIC_PARTITION))
        found = self._sync.lookup(keys) if self._sync is not None else await self.store.get(keys)
        now = self._clock()
        stale: CacheEntry | None = None
        if found is not None:
            entry = found[1]
            if request.era is Era.MODERN or self._sessions.live(mount, request.session_id, partition):
                if entry.fresh_until > now:
                    if method == "tools/list" and self._learn_tools and not self._tools.knows(mount):
                        self._tools.learn(mount, orjson.loads(entry.result))
                    if await self._answer(request, entry, now, sse_ok, send, "hit", scope, public=entry.public):
                        return
                elif self.stale_grace > 0:
                    stale = entry

        flight: Flight | None = None
        leader = False
        if self.single_flight:
            flight = self._flights.get(private_key)
            if flight is None:
                flight = self._flights[private_key] = Flight()
                leader = True
            else:
                entry = await flight.wait(self.max_wait)  # type: ignore[assignment]
                now = self._clock()
                if (
                    entry is not None
                    and entry.fresh_until > now
                    and (request.era is Era.MODERN or self._sessions.live(mount, request.session_id, partition))
                    and await self._answer(
                        request, entry, now, sse_ok, send, "hit", scope, public=entry.public, coalesced=True
                    )
                ):
                    return
                flight = None
        miss = Miss(
            request,
            scope,
            policy,
            mount,
            partition,
            digest,
            self._invalidator.generation,
            unvouched,
            learn=method == "tools/list" and self._learn_tools,
        )
        stored: CacheEntry | None = None
        try:
            stored = await self._forward(miss, receive, send, stale=stale)
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
            headers.append((SESSION_HEADER, request.session_id.encode("latin-1")))
        if self._status_header is not None:
            headers.append((self._status_header, status.encode("ascii")))
        body = render(request.id, entry, now, sse=sse, stale=status == "stale")
        record_decision(scope, Component.CACHE, Outcome(status), age_ms=int((now - entry.stored_at) * 1000), **decision)
        await send_answer(send, body, sse=sse, extra_headers=headers)
        return True

    async def _forward(
        self, miss: Miss, receive: Receive, send: Send, *, stale: CacheEntry | None = None
    ) -> CacheEntry | None:
        """Ask the backend (streaming its answer through untouched) and keep the result if it may be kept.

        With a `stale` entry, a failing backend's answer is replaced by it.
        """
        request, scope = miss.request, miss.scope
        tap, send = ResponseTap.attach(scope, send, request, max_bytes=self.config.max_inspect_bytes)
        response = MissResponse(send, tap, miss, self._parts)
        if stale is None:
            await self._next(scope, receive, response.send)
        else:
            guard = StaleGuard(response.send, request, self.config.max_inspect_bytes)
            try:
                await self._next(scope, receive, guard.send)
            except Exception:
                if guard.forwarded:
                    raise
                logger.exception("backend failed; serving a stale %s", request.method)
                await self._serve_stale(request, stale, scope, send, "exception")
                return None
            if guard.failed or not guard.forwarded:
                await self._serve_stale(request, stale, scope, send, "backend_failed")
                return None
        await response.settle()  # if the app ended without a last body message
        return response.entry

    async def _serve_stale(self, request: McpRequest, entry: CacheEntry, scope: Scope, send: Send, reason: str) -> None:
        now = self._clock()
        _, sse_ok = accepts(scope["headers"])
        if not await self._answer(request, entry, now, sse_ok, send, "stale", scope, reason=reason):
            await self._answer(request, entry._replace(sse=False), now, sse_ok, send, "stale", scope, reason=reason)

    async def _watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A notification stream: what it says drops what it makes stale, before it is forwarded."""
        notified = partial(self._invalidator.notified, scope, self._mount(scope))
        await self._next(scope, receive, StreamWatch(send, notified).send)

    async def _initialize(self, request: McpRequest, scope: Scope, receive: Receive, send: Send) -> None:
        """Remember the session a legacy initialize opens: hits are answered only on sessions the backend knows."""
        response = SessionWatch(send)
        unvouched = not authenticated(scope)
        await self._next(scope, receive, response.send)
        if unvouched and self.outside_auth.check(scope):
            return
        if response.session_id is not None and response.status is not None and 200 <= response.status < 300:
            self._sessions.opened(self._mount(scope), response.session_id, partition_of(get_principal(scope)))

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
        partition = partition_of(principal) if isinstance(principal, Principal) else principal
        return await self._invalidator.drop(mount=mount, method=method, partition=partition, uri=uri)
