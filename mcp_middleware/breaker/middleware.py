"""`CircuitBreakerMiddleware`: fail fast in front of a failing MCP backend, time out hung calls,
and retry only what is safe to repeat.

Per request: find the breaker (per mount path by default, per tool where a selector
says so); refuse at once with a JSON-RPC error (HTTP 503, `Retry-After`) while it is
open; otherwise call the inner app under the request's timeout, watch the response
through the core's tap (never holding any of it back), classify the outcome and tell
the breaker (see :mod:`.call`). Timeouts live in :mod:`.timeouts`, retries in :mod:`.retry`.
"""

from __future__ import annotations

import random as _random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import cast

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    CoreConfig,
    McpRequest,
    RequestKind,
    SelectorMap,
    read_request,
)
from mcp_middleware.core.direct import UNREAD, inner_app
from mcp_middleware.core.request import REQUEST_SCOPE_KEY, KeyFunction

from .call import Route
from .classify import Classifier, FailureClassifier
from .fast import Lane, guarded
from .registry import BreakerRegistry
from .retry import SAFE_METHODS, RetryPolicy
from .state import BreakerPolicy, StateListener
from .timeouts import DEFAULT_EXCLUDE, DEFAULT_TIMEOUTS, Deadlines

__all__ = [
    "DEFAULT_EXCLUDE",
    "DEFAULT_TIMEOUTS",
    "SAFE_METHODS",
    "CircuitBreakerMiddleware",
    "RetryPolicy",
]

_ROUTE_CACHE_SIZE = 4096
_UNKEYED = object()
"""`_guard`'s `backend` when the `key` function has not been asked yet."""


class CircuitBreakerMiddleware:
    """Circuit breaking, timeouts and safe retries that understand MCP responses.

    Options (all keyword-only):

    - `policy`: the :class:`BreakerPolicy` of backend breakers;
    - `per_target`: selectors (optionally mapped to their own policy) whose requests
      get one breaker per tool/prompt/resource instead of the backend's, e.g.
      `{"tools/call:search_*": BreakerPolicy(consecutive_failures=3)}`;
    - `timeouts`: seconds per selector (`None` = none), default :data:`DEFAULT_TIMEOUTS`;
    - `classifier`: replaces :class:`FailureClassifier` (`(request, outcome, fault) -> Classification`);
    - `retry`: a :class:`RetryPolicy` to turn safe retries on (off by default);
    - `registry`: share or inspect the breakers (:meth:`BreakerRegistry.snapshot`);
    - `key`: `(scope, request) -> str` naming the backend (default: the request path,
      so each router mount gets its own breaker);
    - `exclude`: selectors passed straight through (no breaker, no timeout), default
      :data:`DEFAULT_EXCLUDE` (`subscriptions/listen`);
    - `on_state_change`: called with each :class:`StateChange` (metrics, logs).

    Only JSON-RPC requests are guarded; notifications, responses, GET streams and
    DELETE pass through. Each request is judged by exactly one breaker.

    >>> from mcp.server.mcpserver import MCPServer
    >>> server = MCPServer("demo")
    >>> app = CircuitBreakerMiddleware(
    ...     server.streamable_http_app(),
    ...     policy=BreakerPolicy(consecutive_failures=5, open_for=10.0),
    ...     timeouts={"*": 10.0, "tools/call": 30.0, "tools/list": 5.0},
    ...     retry=RetryPolicy(attempts=2),
    ... )
    >>> app.registry.open_keys()
    []
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: BreakerPolicy | None = None,
        per_target: Mapping[str, BreakerPolicy | None] | Iterable[str] = (),
        timeouts: Mapping[str, float | None] = DEFAULT_TIMEOUTS,
        classifier: Classifier | None = None,
        retry: RetryPolicy | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunction | None = None,
        exclude: Iterable[str] = DEFAULT_EXCLUDE,
        on_state_change: StateListener | None = None,
        random: Callable[[], float] = _random.random,
        config: CoreConfig = DEFAULT_CONFIG,
    ) -> None:
        self.app = app
        self._next = inner_app(app)
        """What a call of the inner app goes through (see :mod:`mcp_middleware.core.direct`)."""
        self.registry = registry if registry is not None else BreakerRegistry(policy=policy)
        self.policy = policy if policy is not None else self.registry.policy
        if on_state_change is not None:
            self.registry.add_listener(on_state_change)
        for seconds in timeouts.values():
            if seconds is not None and seconds <= 0:
                raise ValueError("timeouts must be positive seconds (or None for no timeout)")
        targets = per_target.items() if isinstance(per_target, Mapping) else ((s, None) for s in per_target)
        self._per_target: SelectorMap[tuple[BreakerPolicy | None]] = SelectorMap((s, (p,)) for s, p in targets)
        self._timeouts: SelectorMap[float | None] = SelectorMap(timeouts)
        shortest = min((t for t in timeouts.values() if t is not None), default=1.0)
        self.deadlines = Deadlines(tick=min(0.05, shortest / 10))
        self._exclude: SelectorMap[bool] = SelectorMap((s, True) for s in exclude)
        self._retry_allow: SelectorMap[bool] = SelectorMap((s, True) for s in (retry.allow if retry else ()))
        self._lanes: dict[tuple[str | None, str | None, str], Lane] = {}
        """`(method, target, path)` → what `_guard` resolved for it (without a `key` function), forgotten
        with every lane when the registry forgets a breaker (:meth:`BreakerRegistry.on_forget`)."""
        self._keyed_lanes: dict[tuple[str | None, str | None], dict[str, Lane]] = {}
        """With a `key` function: `(method, target)` → the backend it names → its lane (forgotten as above)."""
        self.registry.on_forget(self._forget_lanes)
        self._classifier: Classifier = classifier if classifier is not None else FailureClassifier()
        self._config = config
        self.retry = retry
        self.key = key
        self.random = random
        self._routes: dict[tuple[str | None, str | None], Route] = {}
        self._by_target = bool(self._per_target) or any(
            selector.target is not None
            for rules in (self._timeouts, self._exclude, self._retry_allow)
            for selector, _ in rules
        )
        """Whether a request's target can change its route or breaker (a selector names one, or breakers per
        target): else lanes leave it out of their key (reading it costs a property call a request)."""
        self.fast_path = retry is None and type(self.classifier) is FailureClassifier
        """Whether a request to a closed circuit takes the common path (:mod:`.fast`): decided here, and again
        whenever `classifier` is set, from `retry` (none) and `classifier` (the default's type); set it to False
        to force the `Call` path (the verdicts, decisions and answers are the same either way)."""

    @property
    def classifier(self) -> Classifier:
        return self._classifier

    @classifier.setter
    def classifier(self, classifier: Classifier) -> None:
        self._classifier = classifier
        self._forget_lanes()  # (a lane keeps the classifier's `judge`)
        self.fast_path = (
            self.retry is None and type(classifier) is FailureClassifier
        )  # (decided again: see `fast_path`)

    @property
    def config(self) -> CoreConfig:
        return self._config

    @config.setter
    def config(self, config: CoreConfig) -> None:
        self._config = config
        self._forget_lanes()  # (a lane keeps `max_inspect_bytes`)

    def _forget_lanes(self) -> None:
        self._lanes.clear()
        self._keyed_lanes.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self._config)
        if request is None or request.kind is not RequestKind.REQUEST:
            return await self._next(scope, receive, send) if receive is not ANSWERED else None
        await self.mcp_direct(scope, receive, send)  # (the request is in the scope now)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """`__call__` entered by an outer middleware of ours (see :mod:`mcp_middleware.core.direct`):
        the guarded call is awaited straight from there, one coroutine fewer in the chain. What to
        await for a JSON-RPC request: its guarded call, or (excluded) the next layer's."""
        request = scope.get(REQUEST_SCOPE_KEY, UNREAD)
        if request is UNREAD:
            return self.__call__(scope, receive, send)
        if request is None or request.kind is not RequestKind.REQUEST:
            return self._next(scope, receive, send)
        if self.key is None:  # the backend is the path's: route, backend and breaker in one lookup
            lane = self._lanes.get((request.method, request.target if self._by_target else None, scope["path"]))
            if lane is None:
                return self._guard(request, scope, receive, send, _UNKEYED)
        else:  # a key function (the gateway's): the lanes of `(method, target)` by the backend it names
            by_backend = self._keyed_lanes.get((request.method, request.target if self._by_target else None))
            if by_backend is None:  # (with one, the route is guarded: lanes are made for nothing else)
                return self._guard(request, scope, receive, send, _UNKEYED)
            backend = self.key(scope, request)
            lane = by_backend.get(backend)
            if lane is None:
                return self._guard(request, scope, receive, send, backend)
        lane.touch()  # (the breaker is now the registry's most recently used, as `get` leaves it)
        if self.fast_path:  # (its breaker is still the registry's: lanes are forgotten with any breaker)
            return guarded(lane, scope, request, receive, send)
        return lane.call(scope, request, receive, send).run()

    def _guard(
        self, request: McpRequest, scope: Scope, receive: Receive, send: Send, backend: str | object
    ) -> Awaitable[None]:
        """:meth:`mcp_direct` without a lane: resolve the route, the backend (unless the `key` function named it
        already: `backend`) and its breaker, and keep them as a lane."""
        method, target = request.method, request.target
        route = self._routes.get((method, target))
        if route is None:
            route = self._resolve(method, target)
        if route.excluded:
            return self._next(scope, receive, send)
        if backend is _UNKEYED:
            backend = self.key(scope, request) if self.key is not None else (scope["path"].rstrip("/") or "/")
        backend = cast(str, backend)
        breaker_key = f"{backend} {method}:{target}" if route.per_target else backend
        breaker = self.registry.get(breaker_key, route.policy if route.policy is not None else self.policy)
        lane = Lane(self, route, breaker, backend, self.registry.toucher(breaker_key))
        by_target = target if self._by_target else None
        if self.key is None:
            lanes = self._lanes
            if len(lanes) >= _ROUTE_CACHE_SIZE:  # (paths and targets come from clients: bounded)
                lanes.clear()
            lanes[(method, by_target, scope["path"])] = lane
        else:  # (the route and the breaker depend on the method, the target and the backend alone)
            keyed = self._keyed_lanes
            by_backend = keyed.get((method, by_target))
            if by_backend is None or len(by_backend) >= _ROUTE_CACHE_SIZE:  # (bounded: targets and backends)
                if len(keyed) >= _ROUTE_CACHE_SIZE:
                    keyed.clear()
                by_backend = keyed[(method, by_target)] = {}
            by_backend[backend] = lane
        if self.fast_path:
            return guarded(lane, scope, request, receive, send)
        return lane.call(scope, request, receive, send).run()

    def _resolve(self, method: str | None, target: str | None) -> Route:
        per_target = self._per_target.lookup_parts(method, target)
        retry = self.retry
        route = Route(
            excluded=self._exclude.lookup_parts(method, target) is True,
            timeout=self._timeouts.lookup_parts(method, target),
            per_target=per_target is not None and target is not None,
            policy=per_target[0] if per_target is not None else None,
            retry_listed=retry is not None
            and (method in retry.methods or self._retry_allow.lookup_parts(method, target) is True),
        )
        if len(self._routes) >= _ROUTE_CACHE_SIZE:  # targets come from clients: keep the cache bounded
            self._routes.clear()
        self._routes[(method, target)] = route
        return route
