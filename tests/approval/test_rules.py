"""Approval rules as CEL policy rules: what a rule forbids is held for a person (not refused), by arguments too."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import types

from mcp_middleware.approval import policy_rule
from mcp_middleware.policy import CelPolicyEngine
from tests.approval.conftest import Files, Setup, build, client_for
from tests.conftest import ERAS, Era

pytestmark = pytest.mark.anyio

RULES = """
[[rules]]
id = "secret-reads"
effect = "forbid"
match = "tools/call:read_file"
when = "arguments.path.startsWith('/secret/') && principal.subject != 'root'"
reason = "secrets are read with a witness"

[[rules]]
id = "broken"
effect = "forbid"
match = "tools/call:read_file"
when = "arguments.missing.field == 1 && arguments.path == '/explode'"
"""


@pytest.mark.parametrize("era", ERAS)
async def test_a_rule_holds_what_it_forbids(era: Era, serve: Any) -> None:
    engine = CelPolicyEngine.from_text(RULES)
    files = Files()
    # Only the rules choose here: no selector, no annotations.
    recorder = build(files, require=[], destructive=False, rule=policy_rule(engine, backend="files"))
    setup = Setup(serve(recorder).base, files, recorder)
    asked: list[str] = []

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"approve": True})

    async with client_for(setup.url("mount"), era, "alice", elicitation_callback=approve) as client:
        plain = await client.call_tool("read_file", {"path": "/public/a"})
        secret = await client.call_tool("read_file", {"path": "/secret/b"})
        exploded = await client.call_tool("read_file", {"path": "/explode"})  # the rule fails: held, not run blind
        deleted = await client.call_tool("delete_file", {"path": "/x"})  # destructive, but annotations are off here
    assert [r.content[0].text for r in (plain, secret, exploded, deleted)] == [  # type: ignore[union-attr]
        "contents of /public/a",
        "contents of /secret/b",
        "contents of /explode",
        "deleted /x",
    ]
    assert len(asked) == 2 and "/secret/b" in asked[0] and "/explode" in asked[1]
    assert [facts["why"] for outcome, facts in recorder.of("approval") if outcome == "required"] == ["rule", "rule"]
