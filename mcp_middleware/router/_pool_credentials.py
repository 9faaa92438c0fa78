"""A pool's backend credentials: one RFC 8693 exchange per caller for the whole pool, whichever replica serves.

The pool is one backend: one audience, one :class:`~mcp_middleware.router.credentials.BackendCredentials`
(one cache) shared by its replicas. A request's token is had once, before any replica is picked
(:meth:`CallerToken.header`: a refusal is the caller's answer, never a replica's failure), and goes with
the request to every replica it is tried on (a failover reuses it). A replica answering 401 has refused
before running anything: the token is exchanged anew and the request sent again to that replica, once
(:meth:`CallerToken.renew`); a replica that refuses a fresh token too is :class:`TokenRefused`.

A probe goes as the gateway itself (its client-credentials token). When no such token can be had (the
identity provider is down), it goes without one: a replica answering with its OAuth challenge (401,
`WWW-Authenticate: Bearer`) is alive and guarding itself (:class:`ChallengedWithoutToken`), one that
answers at all is judged by its answer, one that cannot be reached or answers 5xx is not alive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.types import Scope, Send

from mcp_middleware.core import Component, Outcome, RequestId, record_decision
from mcp_middleware.core.principal import Principal

from .credentials import BackendCredentials, ExchangeError, send_exchange_error

__all__ = ["CallerToken", "ChallengedWithoutToken", "TokenRefused", "bearer_challenge"]


class TokenRefused(ExchangeError):
    """A replica refused (401) a token exchanged for it just now: the replica's fault, not the caller's."""

    def __init__(self) -> None:
        super().__init__(502, "the backend refused the token exchanged for it")


class ChallengedWithoutToken(ExchangeError):
    """No token for the gateway could be had (`cause`); asked without one, the replica answered with its OAuth
    challenge: it is alive (an :class:`ExchangeError` still, for whoever wanted its answer)."""

    def __init__(self, cause: ExchangeError) -> None:
        super().__init__(cause.status, cause.reason, error=cause.error)
        self.cause = cause


def bearer_challenge(status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response is an OAuth bearer challenge (RFC 6750 §3: 401 with `WWW-Authenticate: Bearer …`)."""
    if status != 401:
        return False
    for key, value in headers:
        words = value.split(None, 1)
        if key.lower() == b"www-authenticate" and words and words[0].rstrip(b",").lower() == b"bearer":
            return True
    return False


class CallerToken:
    """One request's `Authorization` line for a pool's replicas (the caller's exchanged token)."""

    __slots__ = ("_line", "cached", "credentials", "principal", "renewals")

    def __init__(self, credentials: BackendCredentials, principal: Principal) -> None:
        self.credentials = credentials
        self.principal = principal
        self._line: bytes | None = None
        self.cached = False
        """Whether the token came from the cache (for the decision record)."""
        self.renewals = 0
        """Replicas that answered 401 (each costs one exchange)."""

    async def header(self) -> bytes:
        """`authorization: Bearer …\\r\\n`; raises :class:`ExchangeError`."""
        if self._line is None:
            token, self.cached = await self.credentials.token_for(self.principal)
            self._line = b"authorization: Bearer " + token.encode("ascii") + b"\r\n"
        return self._line

    async def had(self, scope: Scope, send: Send, backend: str, request_id: Callable[[], RequestId | None]) -> bool:
        """Have the token before any replica is picked: True, or False when the caller's refusal was sent
        (a JSON-RPC error with `request_id()`: never a replica's failure)."""
        try:
            await self.header()
        except ExchangeError as exc:
            await send_exchange_error(scope, send, exc, backend=backend, name=backend, request_id=request_id())
            return False
        record_decision(scope, Component.CREDENTIALS, Outcome.ALLOW, backend=backend, cached=self.cached)
        return True

    async def renew(self) -> bytes:
        """A replica answered 401: forget the cached token, exchange anew (raises :class:`ExchangeError`)."""
        self.credentials.forget(self.principal)
        self._line = None
        self.renewals += 1
        return await self.header()
