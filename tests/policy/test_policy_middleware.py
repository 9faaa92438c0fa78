"""PolicyMiddleware behind real auth, a real SDK server and the SDK client in both eras: each rule kind,
roles, lists trimmed to what is callable, and refusals a client can read."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import Component
from mcp_middleware.policy import CelPolicyEngine, PolicyMiddleware
from tests.conftest import ERAS, Era
from tests.policy.conftest import ROLES, RULES, TOKENS, client_as, protected, token
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio


def policy_layer(**options: Any) -> Any:
    engine = CelPolicyEngine.from_text(RULES)
    return lambda app: PolicyMiddleware(app, engine=engine, roles=ROLES, claims=["home"], backend="bank", **options)


async def refusal(client: Any, tool: str, arguments: dict[str, Any]) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await client.call_tool(tool, arguments)
    return raised.value


@pytest.mark.parametrize("era", ERAS)
async def test_argument_rules_decide_each_call(era: Era, serve: Any) -> None:
    url = protected(serve, policy_layer())
    async with client_as(url, era, "ana") as client:
        paid = await client.call_tool("pay", {"amount": 100, "to": "bob"})
        too_much = await refusal(client, "pay", {"amount": 100.5, "to": "bob"})
        own = await client.call_tool("read_file", {"path": "/home/ana/notes.txt"})
        foreign = await refusal(client, "read_file", {"path": "/home/sam/secrets.txt"})
    assert paid.content[0].text == "paid 100.0 to bob"  # type: ignore[union-attr]
    assert own.content[0].text == "contents of /home/ana/notes.txt"  # type: ignore[union-attr]
    assert too_much.code == -32013
    assert too_much.data == {"rule": "payments-cap", "reason": "payments above 100 need a human", "backend": "bank"}
    assert foreign.code == -32013
    assert foreign.data["rule"] == "files-in-home"
    assert "payments-cap" in str(too_much)  # the message names the rule too


@pytest.mark.parametrize("era", ERAS)
async def test_roles_map_to_selectors(era: Era, serve: Any) -> None:
    url = protected(serve, policy_layer())
    async with client_as(url, era, "sam") as support:
        found = await support.call_tool("crm_search", {"query": "acme"})
        paying = await refusal(support, "pay", {"amount": 1, "to": "bob"})
        deleting = await refusal(support, "crm_delete", {"customer": 7})  # granted by role, forbidden by a rule
    async with client_as(url, era, "root") as admin:
        deleted = await admin.call_tool("crm_delete", {"customer": 7})
    assert found.content[0].text == "customer matching acme"  # type: ignore[union-attr]
    assert paying.data == {"rule": "default", "reason": "no rule permits this request", "backend": "bank"}
    # crm_delete's destructiveHint came from the list the client fetched before calling (the SDK does).
    assert deleting.data["rule"] == "destructive-needs-admin"
    assert deleted.content[0].text == "deleted 7"  # type: ignore[union-attr]


@pytest.mark.parametrize("era", ERAS)
async def test_lists_show_what_the_caller_can_call(era: Era, serve: Any) -> None:
    url = protected(serve, policy_layer())
    seen: dict[str, list[str]] = {}
    for who in ("ana", "sam", "root", "nobody"):
        async with client_as(url, era, who) as client:
            seen[who] = sorted(tool.name for tool in (await client.list_tools()).tools)
            if who == "nobody":
                prompts = [prompt.name for prompt in (await client.list_prompts()).prompts]
                resources = [str(resource.uri) for resource in (await client.list_resources()).resources]
    assert seen["ana"] == ["echo", "pay", "read_file"]  # pay is listed: some amounts pass
    assert seen["sam"] == ["crm_search", "echo"]  # crm_delete: the destructive rule hides it
    assert seen["root"] == ["crm_delete", "crm_search", "echo", "pay", "read_file"]
    assert seen["nobody"] == ["echo"]
    assert prompts == ["greet"] and resources == ["bank://rates"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_missing_claim_fails_closed(era: Era, serve: Any) -> None:
    url = protected(serve, policy_layer())
    async with client_as(url, era, "homeless") as client:
        refused = await refusal(client, "read_file", {"path": "/home/anything"})
        paid = await client.call_tool("pay", {"amount": 5, "to": "bob"})  # rules not reading the claim still work
    assert refused.code == -32013
    assert refused.data["rule"] == "files-in-home"
    assert "could not be evaluated" in refused.data["reason"]
    assert paid.content[0].text == "paid 5.0 to bob"  # type: ignore[union-attr]


async def test_the_refusal_is_a_403_with_the_request_id_and_a_decision(serve: Any) -> None:
    recorder_slot: list[DecisionRecorder] = []

    def layer(app: Any) -> Any:
        recorder_slot.append(DecisionRecorder(policy_layer()(app)))
        return recorder_slot[0]

    url = protected(serve, layer)
    body = modern_body("tools/call", {"name": "pay", "arguments": {"amount": 1000, "to": "x"}}, request_id="req-7")
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            url, content=body, headers=modern_headers("tools/call", "pay", authorization="Bearer ana")
        )
    assert response.status_code == 403
    answer = response.json()
    assert answer["id"] == "req-7"
    assert answer["error"]["code"] == -32013
    assert answer["error"]["data"]["rule"] == "payments-cap"
    decisions = [d for d in recorder_slot[0].decisions if d.component is Component.POLICY]
    assert [(str(d.outcome), d.attributes["rule"]) for d in decisions] == [("deny", "payments-cap")]


async def test_a_principal_of_another_audience_never_reaches_the_policy(serve: Any) -> None:
    other = token("ana", ["teller", "admin"], home="/")
    other = other.model_copy(update={"resource": "http://127.0.0.1:1/mcp"})  # issued for another server
    url = protected(serve, policy_layer(), tokens={**TOKENS, "elsewhere": other})
    body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            url, content=body, headers=modern_headers("tools/call", "echo", authorization="Bearer elsewhere")
        )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == -32012


@pytest.mark.parametrize("era", ERAS)
async def test_huge_and_deep_arguments_are_judged_within_bounds(era: Era, serve: Any) -> None:
    url = protected(serve, policy_layer())
    async with client_as(url, era, "ana") as client:
        huge = await refusal(client, "pay", {"amount": 10**30, "to": "x" * 1_000_000})
        wrong_type = await refusal(client, "pay", {"amount": "lots", "to": "bob"})
    assert huge.data["rule"] == "payments-cap" and len(str(huge.data)) < 600
    assert wrong_type.data["rule"] == "payments-cap"  # a comparison CEL cannot make fails closed
    assert "could not be evaluated" in wrong_type.data["reason"]


@pytest.mark.parametrize("depth", [200, 5000])
async def test_deeply_nested_arguments_never_crash_the_policy(depth: int, serve: Any) -> None:
    # The SDK client cannot even send this; an attacker writes the bytes. Deeper than the parser takes: -32700.
    url = protected(serve, policy_layer())
    deep = '{"d":' * depth + '"leaf"' + "}" * depth
    body = (
        '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"pay","arguments":'
        '{"amount":101,"to":"bob","deep":' + deep + '},"_meta":{"io.modelcontextprotocol/protocolVersion":'
        '"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'
    )
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            url, content=body, headers=modern_headers("tools/call", "pay", authorization="Bearer ana")
        )
    error = response.json()["error"]
    if depth == 200:
        assert (response.status_code, error["code"], error["data"]["rule"]) == (403, -32013, "payments-cap")
    else:
        assert (response.status_code, error["code"]) == (400, -32700)


async def test_default_allow_lets_unruled_calls_through_but_not_forbidden_ones(serve: Any) -> None:
    url = protected(serve, policy_layer(default="allow"))
    async with client_as(url, "modern", "nobody") as client:
        found = await client.call_tool("crm_search", {"query": "q"})
        refused = await refusal(client, "crm_delete", {"customer": 1})
    assert found.content[0].text == "customer matching q"  # type: ignore[union-attr]
    assert refused.data["rule"] == "destructive-needs-admin"


async def test_a_duplicated_argument_is_judged_as_the_server_reads_it(serve: Any) -> None:
    # `{"amount": 50, "amount": 500}`: the core's parser and the SDK's both keep the last value, so the
    # rule judges the amount the tool would be paid.
    url = protected(serve, policy_layer())
    body = (
        b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"pay","arguments":'
        b'{"amount":50,"to":"bob","amount":500},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
        b'"io.modelcontextprotocol/clientCapabilities":{}}}}'
    )
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            url, content=body, headers=modern_headers("tools/call", "pay", authorization="Bearer ana")
        )
    assert response.status_code == 403
    assert response.json()["error"]["data"]["rule"] == "payments-cap"
