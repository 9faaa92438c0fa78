"""Private results stay with their principal; public ones are shared. Principals come from a TEST-ONLY
middleware (`PrincipalFromHeader`, see backends.py) that calls `set_principal`, as the auth middleware does."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp import types

from mcp_middleware.cache import ANONYMOUS_PARTITION, partition_of
from mcp_middleware.core import Principal
from tests.cache.backends import ISSUER, build_backend, connect_as
from tests.cache.helpers import cached_stack, modern_post
from tests.conftest import ERAS, Era

pytestmark = pytest.mark.anyio


def text(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("era", ERAS)
async def test_user_b_never_receives_user_a_private_result(era: Era, serve: Any) -> None:
    """Adversarial: Bob asks exactly what Alice asked, right after her, many times; he only ever sees himself."""
    stack = cached_stack(serve, rules={"tools/call:whoami": 60})
    async with connect_as(stack.url, era, "alice") as alice, connect_as(stack.url, era, "bob") as bob:
        await alice.list_tools()
        await bob.list_tools()
        assert text(await alice.call_tool("whoami", {})) == "alice"
        for _ in range(3):
            assert text(await bob.call_tool("whoami", {})) == "bob"
            assert text(await alice.call_tool("whoami", {})) == "alice"
        # a private resource read, too (resources/read is cacheScope private on this backend)
        first = await alice.read_resource("demo://counter")
        await bob.call_tool("lookup", {"key": "bump"})  # changes what the backend would say
        assert await bob.read_resource("demo://counter") != first
    assert stack.calls["tools/call:whoami"] == 2  # one per principal, then hits
    assert stack.calls["resources/read"] == 2


async def test_same_subject_from_another_issuer_or_client_is_another_partition() -> None:
    alice = Principal(subject="alice", issuer=ISSUER, client_id="app")
    others = [
        Principal(subject="alice", issuer="https://other-idp", client_id="app"),
        Principal(subject="alice", issuer=ISSUER, client_id="other-app"),
        Principal(subject="bob", issuer=ISSUER, client_id="app"),
    ]
    assert len({partition_of(p) for p in [alice, *others]}) == 4
    # the partition is the identity, never the credential: a new token for the same principal shares it
    assert partition_of(alice) == partition_of(Principal(subject="alice", issuer=ISSUER, client_id="app", token="t2"))
    assert "alice" not in partition_of(alice) and partition_of(Principal()) == ANONYMOUS_PARTITION


async def test_public_results_are_shared_between_principals(serve: Any) -> None:
    stack = cached_stack(serve)  # this backend marks lists cacheScope public
    for user in ("alice", "bob", None):
        async with connect_as(stack.url, "modern", user) as client:
            await client.list_tools()
    assert stack.calls["tools/list"] == 1
    assert [d.attributes.get("public") for d in stack.log.decisions if d.outcome == "hit"] == [True] * 4  # + discover


async def test_upstream_private_scope_is_partitioned_and_beats_a_public_rule(serve: Any) -> None:
    from mcp_middleware.cache import CachePolicy

    stack = cached_stack(serve, build_backend(scope="private"), rules={"tools/list": CachePolicy(60, "public")})
    async with httpx2.AsyncClient() as http:
        for user in ("alice", "bob", "alice", "bob"):
            assert (await modern_post(http, stack.url, "tools/list", 1, user=user)).status_code == 200
    assert stack.calls["tools/list"] == 2


async def test_legacy_results_are_private_unless_configured(serve: Any) -> None:
    private, public = cached_stack(serve), cached_stack(serve, legacy_scope="public")
    for stack in (private, public):
        for user in ("alice", "bob", "alice"):
            async with connect_as(stack.url, "legacy", user) as client:
                await client.list_prompts()
    assert private.calls["prompts/list"] == 2
    assert public.calls["prompts/list"] == 1
