"""One pooled request's way through the replicas (:class:`Turn`), and the request as a session's replica sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import Scope, Send

from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE

from ._pool_forward import Failure, Resumed
from ._pool_request import PoolCall
from .pool_health import Replica
from .pool_sessions import Sticky

if TYPE_CHECKING:
    from .pool_proxy import PoolProxy

__all__ = ["SESSION_HEADER", "Turn", "as_backend"]

SESSION_HEADER = b"mcp-session-id"


class Turn:
    """One request's way through the replicas: which were tried, what may have run, whether its answer began."""

    __slots__ = ("call", "may_have_run", "no_resume", "proxy", "resumed", "sse", "tried")

    def __init__(self, proxy: PoolProxy, call: PoolCall, *, no_resume: bool) -> None:
        self.proxy = proxy
        self.call = call
        self.no_resume = no_resume
        """A request that may open a session (its head carried the id) or ends one: never continued elsewhere."""
        self.tried: list[Replica] = []
        self.may_have_run = False
        self.resumed = False
        self.sse = False

    def send(self, send: Send) -> Send:
        return Resumed(send, DEFAULT_MAX_BODY_SIZE) if self.resumed else send

    def goes_on(self, failure: Failure) -> bool:
        """Whether the request may be sent to another replica after `failure` (safety is asked only now)."""
        self.may_have_run = self.may_have_run or failure.may_have_run
        if failure.started and not self.resumed:
            self.resumed, self.sse = True, failure.sse
        if failure.may_have_run and not self.proxy.safe(self.call):
            return False
        return not (self.resumed and (not self.sse or self.no_resume))


def as_backend(scope: Scope, sticky: Sticky, session_id: str) -> Scope:
    """The request as the session's replica must see it: its own session id (and no other replica's event id)."""
    if sticky.backend_id == session_id:
        return scope
    backend_id = sticky.backend_id.encode("latin-1")
    headers = [(k, backend_id if k == SESSION_HEADER else v) for k, v in scope["headers"] if k != b"last-event-id"]
    return {**scope, "headers": headers}
