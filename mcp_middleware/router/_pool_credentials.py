"""A pool's backend credentials: one RFC 8693 exchange per caller for the whole pool, whichever replica serves.

The pool is one backend: one audience, one :class:`~mcp_middleware.router.credentials.BackendCredentials`
(one cache) shared by its replicas. A request's token is had once, before any replica is picked
(:meth:`CallerToken.header`: a refusal is the caller's answer, never a replica's failure), and goes with
the request to every replica it is tried on (a failover reuses it). A replica answering 401 has refused
before running anything: the token is exchanged anew and the request sent again to that replica, once
(:meth:`CallerToken.renew`); a replica that refuses a fresh token too is :class:`TokenRefused`.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope, Send

from mcp_middleware.core import Component, Outcome, RequestId, record_decision
from mcp_middleware.core.principal import Principal

from .credentials import BackendCredentials, ExchangeError, send_exchange_error

__all__ = ["CallerToken", "TokenRefused"]


class TokenRefused(ExchangeError):
    """A replica refused (401) a token exchanged for it just now: the replica's fault, not the caller's."""

    def __init__(self) -> None:
        super().__init__(502, "the backend refused the token exchanged for it")


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
