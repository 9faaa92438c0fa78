"""`PolicyMiddleware`: rules on who may see and run what, after authentication, with explained refusals."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.core import (
    ANSWERED,
    DEFAULT_CONFIG,
    Component,
    CoreConfig,
    ErrorCode,
    McpRequest,
    Outcome,
    Principal,
    RequestKind,
    SelectorMap,
    clip,
    get_principal,
    read_request,
    record_decision,
    send_error,
)
from mcp_middleware.core.list_filter import LIST_METHODS, ListFilter

from .catalog import ToolCatalog
from .changes import watch_changes
from .engine import DEFAULT_DENY, Phase, PolicyDecision, PolicyEngine, PolicyInput, principal_view, roles_of
from .fetch import fetcher_of
from .references import TEMPLATES_LIST, TemplateListFilter, completion_reference, listened_uris

__all__ = ["GUARDED_METHODS", "PolicyMiddleware"]

logger = logging.getLogger("mcp_middleware.policy")

GUARDED_METHODS = frozenset({"tools/call", "prompts/get", "resources/read", "resources/subscribe"})
"""The methods that use an item; each is decided at call time (lists are filtered with the same rules).
`completion/complete` and a `subscriptions/listen` filter's resources are decided too (`references.py`)."""

_ALLOW_BY_DEFAULT = PolicyDecision(True, None, "no rule applies; the default allows")
_MAX_REASON = 200
_VIEWS_SIZE = 1024


class PolicyMiddleware:
    """Decide each call, and trim each list, by rules on the principal, the backend, the tool and its arguments.

    - `engine`: a compiled :class:`PolicyEngine` (e.g. :class:`CelPolicyEngine`), or `None` for roles only;
    - `roles`: role → selectors it may use (`{"support": ["tools/call:crm_*"]}`), read from the
      principal's `role_claim` (a list, or a space-separated string): RBAC without writing rules;
    - `claims`: the token claims rules may read (`principal.claims.home`); others stay hidden;
    - `default`: what happens when no rule and no role applies (`"deny"`, the safe default);
    - `backend`: this backend's name, as rules read it (`backend == "crm"`);
    - `filter_lists`: hide from `tools/list`, `prompts/list`, `resources/list` and
      `resources/templates/list` what the caller could not use. A listed tool is callable with some
      arguments; a hidden one is refused. A completion is allowed exactly when its prompt or template
      is listed (whether or not lists are filtered).
    - `fetch_unknown`: a call to a tool whose annotations were never seen here first lists the
      backend's tools once (through the rest of the stack; see `fetch.py`), so rules on
      annotations hold whichever endpoint the call came through.

    A refusal is HTTP 403 with JSON-RPC error -32013 whose `data` names the `rule` and the `reason`.
    Place it inside authentication (it reads the principal auth sets).

    >>> from mcp.server.mcpserver import MCPServer
    >>> from mcp_middleware.policy import CelPolicyEngine
    >>> engine = CelPolicyEngine.from_text('[[rules]]\\nid = "all"\\neffect = "permit"')
    >>> app = PolicyMiddleware(MCPServer("demo").streamable_http_app(), engine=engine,
    ...                        roles={"support": ["tools/call:crm_*"]}, claims=["home"])
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        engine: PolicyEngine | None = None,
        roles: Mapping[str, Iterable[str]] | None = None,
        role_claim: str | None = "roles",
        claims: Iterable[str] = (),
        default: Literal["deny", "allow"] = "deny",
        backend: str = "",
        filter_lists: bool = True,
        catalog: ToolCatalog | None = None,
        fetch_unknown: bool = True,
        config: CoreConfig = DEFAULT_CONFIG,
    ) -> None:
        if default not in ("deny", "allow"):
            raise ValueError(f"default must be 'deny' or 'allow', not {default!r}")
        self.app = app
        self.engine = engine
        self.role_claim = role_claim
        self.claims = tuple(claims)
        self.default = default
        self.backend = backend
        self.filter_lists = filter_lists
        self.catalog = catalog if catalog is not None else ToolCatalog()
        self.fetch_unknown = fetch_unknown
        self.config = config
        self._roles: dict[str, SelectorMap[bool]] = {
            role: SelectorMap((text, True) for text in ([granted] if isinstance(granted, str) else granted))
            for role, granted in (roles or {}).items()
        }
        self._views: dict[int, tuple[Principal, dict[str, Any], object]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request, receive = await read_request(scope, receive, send, self.config)
        if request is None:
            return await self.app(scope, receive, send) if receive is not ANSWERED else None
        if request.kind is RequestKind.STREAM:
            return await self.app(scope, receive, watch_changes(scope, send, self.catalog))
        if request.kind is not RequestKind.REQUEST:
            return await self.app(scope, receive, send)
        method = request.method
        if method == "subscriptions/listen":
            refusal = self._listen_refusal(scope, request)
            if refusal is not None:
                await self._refuse(scope, send, request, refusal)
                return
            send = watch_changes(scope, send, self.catalog)
        elif method == "completion/complete":
            referred = completion_reference(request.params or {})
            if referred is not None:  # allowed exactly when the prompt or template is listed for the caller
                decision = self.evaluate(get_principal(scope), *referred, {}, {}, "list")
                if not decision.allowed:
                    await self._refuse(scope, send, request, decision, phase="complete")
                    return
                record_decision(scope, Component.POLICY, Outcome.ALLOW, rule=decision.rule or "", phase="complete")
        elif method in GUARDED_METHODS:
            target = request.target
            if method == "tools/call" and self.fetch_unknown and target is not None and self.catalog.needs_list(target):
                await fetcher_of(self.catalog).ensure(self.app, scope, target)
            decision = self.decide(scope, request)
            if not decision.allowed:
                await self._refuse(scope, send, request, decision)
                return
            record_decision(scope, Component.POLICY, Outcome.ALLOW, rule=decision.rule or "", phase="call")
        elif (method in LIST_METHODS or method == TEMPLATES_LIST) and self.filter_lists:
            send = self._filtered(scope, send, request)
        await self.app(scope, receive, send)

    def _listen_refusal(self, scope: Scope, request: McpRequest) -> PolicyDecision | None:
        """Why a listen filter may not name its resources (each decided as its `resources/subscribe`), or None."""
        uris = listened_uris(request.params or {})
        if uris is None:
            return PolicyDecision(False, None, "a listen filter naming too many resources")
        principal = get_principal(scope)
        for uri in uris:
            decision = self.evaluate(principal, "resources/subscribe", uri, {}, {}, "call")
            if not decision.allowed:
                return decision
        return None

    # --- deciding -----------------------------------------------------------------------------------

    def decide(self, scope: Scope, request: McpRequest) -> PolicyDecision:
        """The call-time decision for `request` (a guarded method)."""
        assert request.method is not None
        params = request.params or {}
        arguments = params.get("arguments") if request.method == "tools/call" else None
        annotations = self.catalog.annotations(request.target) if request.method == "tools/call" else None
        return self.evaluate(
            get_principal(scope),
            request.method,
            request.target,
            arguments if isinstance(arguments, dict) else {},
            annotations or {},
            "call",
        )

    def evaluate(
        self,
        principal: Principal,
        method: str,
        target: str | None,
        arguments: Mapping[str, Any],
        annotations: Mapping[str, Any],
        phase: Phase,
    ) -> PolicyDecision:
        """Rules, then roles, then the default: a forbid wins, a permit or a role allows."""
        decision = DEFAULT_DENY
        if self.engine is not None:
            view, key = self._view(principal)
            policy_input = PolicyInput(view, self.backend, method, target, arguments, annotations, phase, key)
            try:
                decision = self.engine.evaluate(policy_input)
            except Exception:  # a third-party engine's bug denies, it never lets through
                logger.exception("policy engine %r failed", self.engine)
                return PolicyDecision(False, None, "the policy could not be evaluated")
            if decision.allowed or decision.rule is not None:
                return decision
        if self._roles:
            for role in roles_of(principal, self.role_claim):
                grants = self._roles.get(role)
                if grants is not None and grants.lookup_parts(method, target):
                    return PolicyDecision(True, f"role:{role}", "")
        return _ALLOW_BY_DEFAULT if self.default == "allow" else decision

    def _view(self, principal: Principal) -> tuple[dict[str, Any], object]:
        """The principal as rules see it, and a key standing for it (the engine remembers decisions by it).

        Auth hands out one Principal object per verified token: its view is built once, not per request.
        The entry keeps the principal alive, so its id cannot be reused while the entry exists; the key
        is a new object per entry, so no two views ever share one.
        """
        entry = self._views.get(id(principal))
        if entry is not None and entry[0] is principal:
            return entry[1], entry[2]
        view = principal_view(principal, claims=self.claims, role_claim=self.role_claim)
        if len(self._views) >= _VIEWS_SIZE:
            self._views.clear()
        key = object()
        self._views[id(principal)] = (principal, view, key)
        return view, key

    def lists_changed(self, kinds: frozenset[str]) -> None:
        """The backend said these lists changed (the router's session heard it): annotations are learned again."""
        if "tools" in kinds:
            self.catalog.forget()

    def reload(self) -> None:
        """Compile the engine's files again (the live registry calls this); a bad file keeps the old rules."""
        if self.engine is not None:
            self.engine.reload()

    # --- lists --------------------------------------------------------------------------------------

    def _filtered(self, scope: Scope, send: Send, request: McpRequest) -> Send:
        assert request.method is not None
        principal = get_principal(scope)
        catalog = self.catalog
        learn = request.method == "tools/list"
        generation = catalog.generation  # a list_changed while this answer streams: what it lists is old

        def item_allowed(method: str, target: str, item: Mapping[str, Any]) -> bool:
            if learn:
                catalog.learn_one(item, generation=generation)
            annotations = item.get("annotations")
            return self.evaluate(
                principal, method, target, {}, annotations if isinstance(annotations, dict) else {}, "list"
            ).allowed

        kind = TemplateListFilter if request.method == TEMPLATES_LIST else ListFilter
        return kind(
            send,
            method=request.method,
            request_id=request.id,
            item_allowed=item_allowed,
            max_bytes=self.config.max_inspect_bytes,
            logger=logger,
        )

    @property
    def list_gate(self) -> Callable[[Scope, str, str], bool] | None:
        """What an aggregate asks of this backend's items when it lists them."""
        return self.visible if self.filter_lists else None

    def visible(self, scope: Scope, method: str, target: str) -> bool:
        """Whether the caller of `scope` may see `target` (annotations as last learned from a list)."""
        annotations = self.catalog.annotations(target) if method == "tools/call" else {}
        return self.evaluate(get_principal(scope), method, target, {}, annotations, "list").allowed

    # --- refusing -----------------------------------------------------------------------------------

    async def _refuse(
        self, scope: Scope, send: Send, request: McpRequest, decision: PolicyDecision, *, phase: str = "call"
    ) -> None:
        reason = clip(decision.reason or "denied by policy", _MAX_REASON)
        rule = decision.rule or "default"
        record_decision(scope, Component.POLICY, Outcome.DENY, rule=rule, reason=reason, phase=phase, status=403)
        data: dict[str, Any] = {"rule": rule, "reason": reason}
        if self.backend:
            data["backend"] = self.backend
        await send_error(
            send,
            status=403,
            code=ErrorCode.FORBIDDEN,
            message=clip(f"Forbidden by policy ({rule}): {reason}", _MAX_REASON + 80),
            request_id=request.id,
            data=data,
        )
