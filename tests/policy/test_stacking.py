"""`stack(app, auth=…, policy=…, arguments=…)`: the policy and the validator in their place, sharing what they learn."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import MCPError

from mcp_middleware import stack
from mcp_middleware.auth import StaticTokenVerifier
from mcp_middleware.policy import CelPolicyEngine
from tests.auth.conftest import serve_late
from tests.conftest import ERAS, Era
from tests.policy.conftest import ROLES, RULES, TOKENS, bank_server, client_as

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", ERAS)
async def test_stack_puts_policy_and_arguments_after_auth(era: Era, serve: Any) -> None:
    mcp_app = bank_server().streamable_http_app()
    served, slot = serve_late(serve, mcp_app)
    built = stack(
        mcp_app,
        auth={"verifier": StaticTokenVerifier(TOKENS, resource=served.mcp_url), "resource": served.mcp_url},
        policy={"engine": CelPolicyEngine.from_text(RULES), "roles": ROLES, "claims": ["home"]},
        arguments=True,
        ratelimit=None,
        breaker=True,
    )
    slot.app = built
    assert repr(built) == "<McpStack auth → policy → arguments → breaker → app>"
    assert built.policy is not None and built.arguments is not None
    assert built.policy.catalog is built.arguments.catalog
    async with client_as(served.mcp_url, era, "ana") as client:
        with pytest.raises(MCPError) as by_rule:
            await client.call_tool("pay", {"amount": 1000, "to": "bob"})
        with pytest.raises(MCPError) as by_schema:
            await client.call_tool("pay", {"amount": 10})
        paid = await client.call_tool("pay", {"amount": 10, "to": "bob"})
    assert (by_rule.value.code, by_rule.value.data["rule"]) == (-32013, "payments-cap")
    assert (by_schema.value.code, by_schema.value.data["path"]) == (-32602, "$")
    assert paid.content[0].text == "paid 10.0 to bob"  # type: ignore[union-attr]
