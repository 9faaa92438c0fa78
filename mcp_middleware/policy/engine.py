"""The policy engine's contract: what a rule sees (:class:`PolicyInput`), what it answers (:class:`PolicyDecision`).

An engine is compiled once (from files or text) and then asked once per request, or once per
listed item. It is pure: the same input gives the same decision, so callers may memoise.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol, runtime_checkable

from mcp_middleware.core import McpMiddlewareError, Principal

__all__ = [
    "DEFAULT_DENY",
    "Phase",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyError",
    "PolicyInput",
    "PolicyProblem",
    "principal_view",
]

Phase = Literal["list", "call"]
"""`list`: may the caller see the item (arguments unknown); `call`: may it run this request."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """Everything a rule may read about one request (or one listed item).

    `principal` is a plain mapping (see :func:`principal_view`): `subject`, `client`, `issuer`,
    `scopes`, `roles` and the selected `claims`; never the token.
    """

    principal: Mapping[str, Any]
    backend: str
    method: str
    target: str | None = None
    """Tool or prompt name, or resource URI."""
    arguments: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    annotations: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    """The tool's annotations when known (`readOnlyHint`, `destructiveHint`, …); empty otherwise."""
    phase: Phase = "call"
    principal_key: Hashable | None = None
    """Stands for `principal` (equal keys, equal principals), letting an engine remember decisions
    that read no arguments; `None`: nothing is remembered."""

    def variables(self) -> dict[str, Any]:
        """The names a rule's expression reads (`principal.roles`, `arguments.amount`, `tool`, …)."""
        return {
            "principal": self.principal,
            "backend": self.backend,
            "method": self.method,
            "target": self.target or "",
            "tool": self.target or "",
            "arguments": self.arguments,
            "annotations": self.annotations,
            "phase": self.phase,
        }


class PolicyDecision(NamedTuple):
    """An engine's answer: allowed or not, the rule that decided (`None`: no rule applied) and why."""

    allowed: bool
    rule: str | None = None
    reason: str = ""


DEFAULT_DENY = PolicyDecision(False, None, "no rule permits this request")


@runtime_checkable
class PolicyEngine(Protocol):
    """A compiled set of rules. `evaluate` must not raise: an error in a rule fails closed (a denial naming it)."""

    def evaluate(self, request: PolicyInput, /) -> PolicyDecision: ...

    def reload(self) -> None:
        """Compile the sources again (files re-read); on a problem raise :class:`PolicyError`, keeping the old rules."""
        ...


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong in a policy source: which file, which line, what."""

    source: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}" + (f":{self.line}" if self.line else "") + f": {self.message}"


class PolicyError(McpMiddlewareError, ValueError):
    """Policies that cannot be compiled; `problems` names each file and line."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


def principal_view(
    principal: Principal, *, claims: Sequence[str] = (), role_claim: str | None = "roles"
) -> dict[str, Any]:
    """What rules see of a principal: identity, scopes, roles (from `role_claim`) and the `claims` named.

    A claim not named is not shown (tokens carry more than policies need); a claim named but
    absent is absent, so a rule reading it fails, and fails closed.

    >>> view = principal_view(Principal(subject="ana", claims={"roles": "support ops", "home": "/h/ana"}),
    ...                       claims=["home"])
    >>> view["roles"], view["claims"]
    (['support', 'ops'], {'home': '/h/ana'})
    """
    return {
        "subject": principal.subject or "",
        "client": principal.client_id or "",
        "issuer": principal.issuer or "",
        "authenticated": principal.authenticated,
        "scopes": sorted(principal.scopes),
        "roles": roles_of(principal, role_claim),
        "claims": {name: principal.claims[name] for name in claims if name in principal.claims},
    }


def roles_of(principal: Principal, role_claim: str | None) -> list[str]:
    """The principal's roles: the claim's strings (a list, or one space-separated string)."""
    if role_claim is None:
        return []
    value = principal.claims.get(role_claim)
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    return []
