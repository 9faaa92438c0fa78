"""Recording the decisions the middlewares make, as tracing observes them."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import Decision, observe_decisions

__all__ = ["DecisionRecorder"]


class DecisionRecorder:
    """An outer ASGI layer that keeps every decision made inside it, and the scope of every HTTP request.

    Pass `seen` to collect the decisions into a list of the test's own (several recorders can share one).
    The scopes let a test read what the layers inside left there (`get_decisions`, `get_principal`).
    """

    def __init__(self, app: ASGIApp, seen: list[Decision] | None = None) -> None:
        self.app = app
        self.decisions: list[Decision] = seen if seen is not None else []
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.scopes.append(scope)
            observe_decisions(scope, self.decisions.append)
        await self.app(scope, receive, send)

    def outcomes(self, component: str) -> list[str]:
        """The outcomes `component` recorded, in order."""
        return [d.outcome for d in self.decisions if d.component == component]

    def of(self, component: str) -> list[tuple[str, dict[str, Any]]]:
        """The outcome and attributes of each decision `component` recorded, in order."""
        return [(d.outcome, dict(d.attributes)) for d in self.decisions if d.component == component]
