"""Approval rules written as policy rules: a call such a rule *forbids* is held for approval instead of refused.

The same CEL rule files the policy reads (`CelPolicyEngine`), with one meaning changed: in an
approval rule set, `effect = "forbid"` means "a person must approve this first". So "payments above
100 need a human" is the policy's own rule, given to the approval middleware instead:

    [[rules]]
    id = "big-payments"
    effect = "forbid"
    match = "tools/call:pay"
    when = "arguments.amount > 100"

A call no rule forbids is not held by the rules (selectors and annotations may still hold it); a
rule that cannot be evaluated holds (it fails closed, as the engine's denial names it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.types import Scope

from mcp_middleware.core import McpRequest, get_principal
from mcp_middleware.policy.engine import PolicyEngine, PolicyInput, principal_view

from .middleware import ApprovalRule

__all__ = ["policy_rule"]


def policy_rule(
    engine: PolicyEngine, *, backend: str = "", claims: Iterable[str] = (), role_claim: str | None = "roles"
) -> ApprovalRule:
    """An :data:`ApprovalRule` holding every call a rule of `engine` forbids.

    >>> from mcp_middleware.policy import CelPolicyEngine
    >>> engine = CelPolicyEngine.from_text(
    ...     '[[rules]]\\nid = "big"\\neffect = "forbid"\\nmatch = "tools/call:pay"\\nwhen = "arguments.amount > 100"')
    >>> # ApprovalMiddleware(app, rule=policy_rule(engine, backend="bank"), destructive=False)
    """
    named = tuple(claims)

    def rule(scope: Scope, request: McpRequest, annotations: Mapping[str, Any]) -> bool:
        params = request.params or {}
        arguments = params.get("arguments")
        view = principal_view(get_principal(scope), claims=named, role_claim=role_claim)
        decision = engine.evaluate(
            PolicyInput(
                view,
                backend,
                request.method or "",
                request.target,
                arguments if isinstance(arguments, dict) else {},
                annotations,
                "call",
            )
        )
        return not decision.allowed and decision.rule is not None

    return rule
