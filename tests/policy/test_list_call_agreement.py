"""Property: under any policy, list time and call time agree. A tool the caller is shown can be called
with some arguments; a tool it is not shown is refused whatever the arguments (a real server, raw
2026-07-28 requests as any client sends them, the policy swapped between examples). Likewise a prompt or
a resource template is listed exactly when its completion is allowed, and a resource exactly when it
can be read.

Argument rules are constraints (forbids): a permit on arguments is counted as possible at list time,
and two argument rules can contradict each other (permit when amount > 100, forbid when amount > 100);
telling that apart is a satisfiability problem, so such a tool is listed and refused: docs/governance.md
says so, and `test_cel_rules` pins it. What never happens is a hidden tool that can be called."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_middleware.policy import CelPolicyEngine, PolicyMiddleware
from tests.conftest import serve_app
from tests.policy.conftest import ROLES, protected
from tests.support.requests import modern_body, modern_headers

PERMITS = [
    "true",
    "'teller' in principal.roles",
    "'support' in principal.roles",
    "principal.subject == 'ana'",
    "has(annotations.destructiveHint)",
    "principal.claims.department == 'x'",  # a claim no one has: the permit never holds
]
FORBIDS = [
    "true",
    "has(arguments.amount) && arguments.amount > 100",
    "has(arguments.path) && !arguments.path.startsWith(principal.claims.home)",
    "'support' in principal.roles",
    "has(annotations.destructiveHint) && annotations.destructiveHint",
    "principal.claims.department == 'x'",  # fails closed, at both times
]
SELECTORS = [
    "*",
    "tools/call:*",
    "tools/call:crm_*",
    "tools/call:pay",
    "tools/call:read_file",
    "tools/call:echo",
    "prompts/get:*",
    "resources/read:*",
    "resources/read:bank://vault/*",
    "resources/read:bank://rates",
]
WHO = ["ana", "sam", "root", "nobody"]


def candidates(tool: str, subject: str) -> list[dict[str, Any]]:
    """Argument sets to try: each argument rule of the pools is met by one of them (extra arguments are
    arguments too: a rule on `amount` matched to `echo` can be met by sending `echo` an amount)."""
    home = {"ana": "/home/ana/", "sam": "/home/sam/", "root": "/root/", "nobody": "/home/nobody/"}[subject]
    base = VALID[tool]
    return [{**base, "amount": amount, "path": path} for amount in (50, 150) for path in (f"{home}notes", "/etc/x")]


VALID: dict[str, dict[str, Any]] = {
    "echo": {"text": "hi"},
    "pay": {"to": "bob"},
    "read_file": {},
    "crm_search": {"query": "q"},
    "crm_delete": {"customer": 1},
}


rule = st.tuples(st.sampled_from(["permit", "forbid"]), st.sampled_from(SELECTORS), st.integers(0, 100))


def rules_text(rules: list[tuple[str, str, int]]) -> str:
    parts = []
    for index, (effect, selector, pick) in enumerate(rules):
        pool = PERMITS if effect == "permit" else FORBIDS
        when = pool[pick % len(pool)]
        parts.append(f'[[rules]]\nid = "r{index}"\neffect = "{effect}"\nmatch = "{selector}"\nwhen = "{when}"\n')
    return "\n".join(parts)


@pytest.fixture(scope="module")
def bank() -> Any:
    holder: dict[str, PolicyMiddleware] = {}

    def layer(app: Any) -> Any:
        holder["policy"] = PolicyMiddleware(app, engine=None, roles=ROLES, claims=["home", "department"])
        return holder["policy"]

    with serve_app_late() as serve:
        url = protected(serve, layer)
        yield url, holder["policy"]


class serve_app_late:
    def __enter__(self) -> Any:
        import contextlib

        self._stack = contextlib.ExitStack()
        return lambda app: self._stack.enter_context(serve_app(app))

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def post(http: httpx2.Client, url: str, who: str, method: str, params: dict[str, Any], name: str | None) -> Any:
    headers = modern_headers(method, name, authorization=f"Bearer {who}")
    response = http.post(url, content=modern_body(method, params), headers=headers)
    assert response.status_code in (200, 403), response.text
    return response.json()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rules=st.lists(rule, max_size=6),
    default=st.sampled_from(["deny", "allow"]),
    who=st.sampled_from(WHO),
)
def test_list_time_and_call_time_never_disagree(
    bank: Any, rules: list[tuple[str, str, int]], default: str, who: str
) -> None:
    url, policy = bank
    policy.engine = CelPolicyEngine.from_text(rules_text(rules))
    policy.default = default
    with httpx2.Client(timeout=30) as http:
        listed = {tool["name"] for tool in post(http, url, who, "tools/list", {}, None)["result"]["tools"]}
        for tool in ("echo", "pay", "read_file", "crm_search", "crm_delete"):
            outcomes = []
            for arguments in candidates(tool, who):
                answer = post(http, url, who, "tools/call", {"name": tool, "arguments": arguments}, tool)
                refused = "error" in answer
                if refused:
                    assert answer["error"]["code"] == -32013 and "rule" in answer["error"]["data"]
                outcomes.append(not refused)
            assert (tool in listed) == any(outcomes), (tool, who, default, rules_text(rules), outcomes)
        others_agree(http, url, who, (default, rules_text(rules)))


COMPLETIONS = {
    "greet": {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": ""}},
    "bank://accounts/{number}": {
        "ref": {"type": "ref/resource", "uri": "bank://accounts/{number}"},
        "argument": {"name": "number", "value": ""},
    },
    "bank://vault/{box}": {
        "ref": {"type": "ref/resource", "uri": "bank://vault/{box}"},
        "argument": {"name": "box", "value": ""},
    },
}


def others_agree(http: httpx2.Client, url: str, who: str, policy: object) -> None:
    """Prompts and templates: listed exactly when their completion is allowed; resources: when readable."""
    prompts = {p["name"] for p in post(http, url, who, "prompts/list", {}, None)["result"]["prompts"]}
    templates_list = post(http, url, who, "resources/templates/list", {}, None)["result"]["resourceTemplates"]
    templates = {t["uriTemplate"] for t in templates_list}
    resources = {r["uri"] for r in post(http, url, who, "resources/list", {}, None)["result"]["resources"]}
    for item, params in COMPLETIONS.items():
        answer = post(http, url, who, "completion/complete", params, None)
        allowed = "error" not in answer
        if not allowed:
            assert answer["error"]["code"] == -32013 and "rule" in answer["error"]["data"]
        assert (item in prompts or item in templates) == allowed, (item, who, policy)
    read = post(http, url, who, "resources/read", {"uri": "bank://rates"}, "bank://rates")
    assert ("bank://rates" in resources) == ("error" not in read), (who, policy)
