"""`RateLimitMiddleware`: token buckets and window quotas in front of an MCP server."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final, Literal

import limits.aio.storage
from opentelemetry import metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware._outside_auth import OutsideAuth, authenticated
from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    Component,
    CoreConfig,
    ErrorCode,
    McpRequest,
    Outcome,
    RequestKind,
    read_request,
    record_decision,
    send_error,
)
from mcp_middleware.core.direct import inner_app
from mcp_middleware.core.principal import PRINCIPAL_SCOPE_KEY
from mcp_middleware.core.request import REQUEST_SCOPE_KEY

from .bucket import BucketDecision
from .keys import CallerKey, KeyFunction
from .limiter import Admission, FailureMode, PolicyState, RateLimiter, lone_admission
from .lone import LoneLimit
from .policies import Policy
from .stores import BucketStore

__all__ = ["RateLimitMiddleware", "ratelimit_headers"]

logger = logging.getLogger("mcp_middleware.ratelimit")

_REQUEST: Final = RequestKind.REQUEST


def ratelimit_headers(states: Iterable[PolicyState]) -> list[tuple[bytes, bytes]]:
    """`RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11): structured-field lists.

    >>> ratelimit_headers([PolicyState("search", 10, 2, 7, 1)])
    [(b'ratelimit-policy', b'"search";q=10;w=2'), (b'ratelimit', b'"search";r=7;t=1')]
    """
    states = tuple(states)
    if len(states) == 1:  # the common case, without joins
        (s,) = states
        policy = f'"{s.policy}";q={s.quota};w={s.window}'
        current = f'"{s.policy}";r={s.remaining};t={s.reset}'
    elif states:
        policy = ", ".join(f'"{s.policy}";q={s.quota};w={s.window}' for s in states)
        current = ", ".join(f'"{s.policy}";r={s.remaining};t={s.reset}' for s in states)
    else:
        return []
    return [(b"ratelimit-policy", policy.encode("ascii")), (b"ratelimit", current.encode("ascii"))]


def _tightest(states: Sequence[PolicyState]) -> PolicyState:
    """The policy closest to refusing (smallest share left): the one a decision record names."""
    if len(states) == 1:
        return states[0]
    return min(states, key=lambda s: s.remaining / s.quota if s.quota else 0.0)


class RateLimitMiddleware:
    """Rate-limit MCP requests per caller, per tool, per server; refuse with errors an agent can read.

    Only JSON-RPC requests count (see docs/ratelimit.md): notifications, responses, GET
    streams and DELETEs pass untouched. A refused request gets HTTP 429, `Retry-After`,
    the IETF `RateLimit-Policy`/`RateLimit` fields, and a JSON-RPC error `-32014` with its
    id and `data = {"retryAfterMs": …, "policy": …}`. With `headers=True`, admitted requests
    carry the `RateLimit` fields too (off by default: MCP clients read the JSON-RPC error, not
    the fields; two more response headers cost the server's HTTP layer more than the decision;
    and every answer would tell the caller its budget and the policy's name). When the store fails, `failure="open"`
    admits (and counts it), `failure="closed"` answers 503 with JSON-RPC error `-32015`.

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.ratelimit import BucketPolicy, QuotaPolicy
    >>> app = RateLimitMiddleware(
    ...     MCPServer("demo").streamable_http_app(),
    ...     policies=[
    ...         BucketPolicy("search", selector="tools/call:search_*", rate=5, capacity=10),
    ...         BucketPolicy("per-caller", rate="20/second"),
    ...         QuotaPolicy("daily", selector="tools/call", limit="1000/day"),
    ...     ],
    ... )
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        policies: Sequence[Policy],
        store: BucketStore | None = None,
        quota_storage: str | limits.aio.storage.Storage = "memory://",
        quota_timeout: float = 0.25,
        key: KeyFunction | None = None,
        trusted_proxies: Iterable[str] = (),
        ipv6_prefix: int = 64,
        namespace: str = "",
        failure: FailureMode = "open",
        headers: bool = False,
        config: CoreConfig = DEFAULT_CONFIG,
        on_store_error: Callable[[Exception], None] | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        trusted = tuple(trusted_proxies)
        if key is not None and (trusted or ipv6_prefix != 64):
            raise ValueError("give trusted_proxies and ipv6_prefix to CallerKey yourself when you pass a key function")
        self.app = app
        self._next = inner_app(app)
        self.limiter = RateLimiter(
            policies,
            store=store,
            quota_storage=quota_storage,
            quota_timeout=quota_timeout,
            key=key if key is not None else CallerKey(trusted_proxies=trusted, ipv6_prefix=ipv6_prefix),
            namespace=namespace,
            failure=failure,
            on_store_error=on_store_error,
            meter_provider=meter_provider,
        )
        self.headers = headers
        self.config = config
        # The usual setup (one per-caller bucket in memory) decided in one step; with `headers`, the general
        # path builds the policy states the fields are written from.
        self._lone = LoneLimit.of(self.limiter) if not headers else None
        self._policy_fields: dict[tuple[str, int, int], bytes] = {}
        # Only limits keyed on the caller care where auth runs; a global or custom key does not.
        self._keys_on_caller = any(isinstance(p.key or self.limiter.key, CallerKey) for p in self.limiter.policies)
        self.outside_auth = OutsideAuth(
            "RateLimitMiddleware",
            "Its per-caller limits count every caller by address instead (one bucket for everyone behind a "
            "proxy or NAT); if a per-address limit in front of auth is what you want, pass a key function",
            logger,
        )
        """Trips once a request is seen to be authenticated only inside the limiter."""

    async def aclose(self) -> None:
        """Close the store's connections (call from your app's lifespan shutdown)."""
        await self.limiter.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None or request.kind is not RequestKind.REQUEST:
            return await self._next(scope, receive, send) if receive is not ANSWERED else None
        unvouched = self._keys_on_caller and not self.outside_auth.detected and not authenticated(scope)
        lone = self._lone
        if lone is None:
            decided: BucketDecision | Literal[False] | None = False
        elif PRINCIPAL_SCOPE_KEY in scope:
            decided = lone.admit(scope, scope[PRINCIPAL_SCOPE_KEY])
        else:  # (anonymous, counted by address: no principal to find its bucket by, the exact step)
            decided = lone.recorded(scope, lone.take(scope, request))
        if decided is None:  # admitted
            await self._next(scope, receive, send)
            if unvouched:
                self.outside_auth.check(scope)
            return
        if decided is not False:
            assert lone is not None
            verdict: Admission | None = lone_admission(lone.policy, decided)
        else:
            verdict = self.limiter.check_now(scope, request)
        if verdict is None:
            verdict = await self.limiter.check(scope, request)
        if not verdict.allowed:
            await self._refuse(scope, send, request, verdict)
            return
        await self._next(scope, receive, self._admitted(scope, send, verdict))
        if unvouched:
            self.outside_auth.check(scope)

    def mcp_direct(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """`__call__` entered by an outer middleware of ours (see :mod:`mcp_middleware.core.direct`): a request
        decided without a wait and with nothing to check afterwards goes straight on to the next layer."""
        try:
            request = scope[REQUEST_SCOPE_KEY]
        except KeyError:  # (no layer of ours read it: `__call__` reads it)
            return self.__call__(scope, receive, send)
        else:  # (the usual request, in `else`: no jump over the handler)
            if request is None or request.kind is not _REQUEST:
                return self._next(scope, receive, send)
            lone = self._lone
            if lone is not None and PRINCIPAL_SCOPE_KEY in scope:  # (anonymous: `__call__` checks afterwards)
                decided = lone.admit(scope, scope[PRINCIPAL_SCOPE_KEY])
                if decided is None:  # admitted
                    return self._next(scope, receive, send)
                if decided is not False:
                    return self._refuse(scope, send, request, lone_admission(lone.policy, decided))
        if self._keys_on_caller and not self.outside_auth.detected and not authenticated(scope):
            return self.__call__(scope, receive, send)  # (it checks afterwards whether auth ran further in)
        verdict = self.limiter.check_now(scope, request)
        if verdict is None:
            return self.__call__(scope, receive, send)
        if not verdict.allowed:
            return self._refuse(scope, send, request, verdict)
        return self._next(scope, receive, self._admitted(scope, send, verdict))

    def _admitted(self, scope: Scope, send: Send, verdict: Admission) -> Send:
        """Record an admission; the `send` the request goes on with (with the `RateLimit` fields if asked)."""
        states = verdict.states
        if states:
            tightest = states[0] if len(states) == 1 else _tightest(states)
            record_decision(
                scope, Component.RATELIMIT, Outcome.ALLOW, policy=tightest.policy, remaining=tightest.remaining
            )
            if self.headers:
                return _with_headers(send, self._admitted_headers(states))
        elif verdict.degraded:
            record_decision(scope, Component.RATELIMIT, Outcome.ALLOW, reason="store-unavailable")
        return send

    def _admitted_headers(self, states: tuple[PolicyState, ...]) -> list[tuple[bytes, bytes]]:
        """:func:`ratelimit_headers`, the constant `RateLimit-Policy` of a lone policy built once."""
        if len(states) != 1:
            return ratelimit_headers(states)
        (s,) = states
        key = (s.policy, s.quota, s.window)
        policy = self._policy_fields.get(key)
        if policy is None:  # policies come from the config: the table stays as small as it is
            policy = self._policy_fields[key] = f'"{s.policy}";q={s.quota};w={s.window}'.encode("ascii")
        return [
            (b"ratelimit-policy", policy),
            (b"ratelimit", f'"{s.policy}";r={s.remaining};t={s.reset}'.encode("ascii")),
        ]

    async def _refuse(self, scope: Scope, send: Send, request: McpRequest, verdict: Admission) -> None:
        retry_ms = max(1, math.ceil(verdict.retry_after * 1000))
        retry_seconds = max(1, math.ceil(retry_ms / 1000))  # Retry-After takes whole seconds, rounded up
        if verdict.degraded:
            record_decision(scope, Component.RATELIMIT, Outcome.DENY, reason="store-unavailable")
            await send_error(
                send,
                status=503,
                code=ErrorCode.UNAVAILABLE,
                message="Rate limiting is unavailable; try again shortly",
                request_id=request.id,
                data={"retryAfterMs": retry_seconds * 1000},
                headers=[("retry-after", str(retry_seconds))],
            )
            return
        record_decision(
            scope, Component.RATELIMIT, Outcome.DENY, policy=verdict.policy or "", retry_after_ms=retry_ms, remaining=0
        )
        headers = [("retry-after", str(retry_seconds))]
        headers += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ratelimit_headers(verdict.states)]
        await send_error(
            send,
            status=429,
            code=ErrorCode.RATE_LIMITED,
            message=f"Rate limit exceeded (policy {verdict.policy!r}); retry in {retry_ms} ms",
            request_id=request.id,
            data={"retryAfterMs": retry_ms, "policy": verdict.policy},
            headers=headers,
        )


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """A `send` that adds `extra` to the response start and forwards everything else at once."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending
