"""The governed surface from the config file: curation per server and `[[virtual_servers]]`.

Validation names every problem's key and line (with "did you mean"); a running gateway (dev
authorization server, real uvicorn, the SDK client in both eras) applies the curation at the
path mount and the aggregate, and serves the virtual server behind its own audience while each
backend's stack still authorizes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import MCPError

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from mcp_middleware.router.curation import Override
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client

CONFIG = """
[[servers]]
name = "crm"
app = "tests.router.curated_servers:build_crm"
hidden_refusal = "forbidden"
[servers.tools]
allow = ["search_*", "create"]
deny = ["*_admin"]
rename = { search_docs = "search" }
[servers.tools.override.search]
description = "Search the documentation"
annotations = { destructiveHint = true }
[servers.prompts]
deny = ["secret_*"]
[servers.resources]
allow = ["crm://public/"]
[servers.scopes]
"tools/call:search_docs" = ["crm:search"]

[[servers]]
name = "tickets"
app = "tests.router.curated_servers:build_tickets"

[[virtual_servers]]
name = "support"
tools = ["crm:search*", "tickets:create"]
resources = ["tickets:tickets://public/"]

[auth]
mode = "dev"
"""


def test_curation_is_read_into_the_routers_types() -> None:
    config = parse_config(CONFIG)
    crm = config.servers[0].curation
    assert crm is not None and crm.refusal == "forbidden"
    assert crm.tools.allow == ("search_*", "create") and crm.tools.rename == {"search_docs": "search"}
    assert crm.tools.override == {
        "search": Override(description="Search the documentation", annotations={"destructiveHint": True})
    }
    assert crm.prompts.deny == ("secret_*",) and crm.resources.allow == ("crm://public/",)
    assert config.servers[1].curation is None
    (support,) = config.virtual_servers
    assert (support.name, support.tools, support.resources, support.path) == (
        "support",
        ("crm:search*", "tickets:create"),
        ("tickets:tickets://public/",),
        None,
    )


BAD = """
[[servers]]
name = "crm"
app = "tests.router.curated_servers:build_crm"
hidden_refusal = "loud"
[servers.tools]
alow = ["search_*"]
deny = ["*_admin"]
rename = { search_admin = "admin", create = "new tool" }
[servers.tools.override.create]
annotations = { destructivehint = true, readOnlyHint = "yes" }
[servers.prompts.override.summarize]
annotations = { title = "x" }
[servers.resources]
allow = ["crm://public/*"]

[[virtual_servers]]
name = "crm"
tools = ["crmm:*", "search_*"]

[[virtual_servers]]
name = "empty"
"""


def test_every_problem_names_its_key_and_line() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(BAD)
    found: dict[tuple[str, int | None], str] = {}
    for problem in raised.value.problems:  # one key may have several problems
        found[(problem.path, problem.line)] = found.get((problem.path, problem.line), "") + problem.message + "\n"
    expected = {
        ("servers[0].hidden_refusal", 5): "must be one of 'unknown', 'forbidden'",
        ("servers[0].tools.alow", 7): "did you mean 'allow'?",
        ("servers[0].tools.rename", 9): "'new tool' must match",
        ("servers[0].tools.override.create.annotations.destructivehint", 11): "did you mean 'destructiveHint'?",
        ("servers[0].tools.override.create.annotations.readOnlyHint", 11): "must be true or false",
        ("servers[0].prompts.override.summarize.annotations", 13): "only tools have annotations",
        ("servers[0].resources.allow", 15): "URI prefixes, not globs",
        ("virtual_servers[0].name", 18): "already the name of a server",
        ("virtual_servers[0].tools", 19): "did you mean 'crm'?",
        ("virtual_servers[1]", 21): "selects nothing",
    }
    for (path, line), fragment in expected.items():
        assert (path, line) in found, (path, line, sorted(found))
        assert fragment in found[(path, line)], (path, found[(path, line)])
    assert "'search_*' must be 'server:glob'" in found[("virtual_servers[0].tools", 19)]


def test_a_rename_of_a_hidden_tool_is_a_problem() -> None:
    with pytest.raises(ConfigError, match=r"servers\[0\].tools.rename.search_admin.*hidden \(tools.deny: \*_admin\)"):
        parse_config(BAD.replace('hidden_refusal = "loud"', "").replace("alow", "allow"))


@contextlib.contextmanager
def running(tmp_path: Path) -> Iterator[tuple[Gateway, Served]]:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    port = free_port()
    gateway = build_gateway(load_config(path), port=port)
    with serve_app(gateway.app, port=port) as served:
        yield gateway, served


def token(gateway: Gateway, endpoint: str, scope: str = "") -> str:
    assert gateway.authorization_server is not None
    issued, _ = gateway.authorization_server.issue_access_token(
        subject="curation-user", client_id="curation", scope=scope, resource=f"{gateway.base_url}{endpoint}"
    )
    return str(issued)


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_the_gateway_curates_at_the_mount_and_the_aggregate(era: Era, tmp_path: Path) -> None:
    with running(tmp_path) as (gateway, served):
        for path, prefix in (("/mcp/crm", ""), ("/mcp", "crm__")):
            async with client(f"{served.base}{path}", era, token(gateway, path, "crm:search")) as session:
                tools = {tool.name: tool for tool in (await session.list_tools()).tools}
                assert sorted(n for n in tools if not n.startswith("tickets__")) == [
                    f"{prefix}{name}" for name in ("create", "search", "search_people")
                ]
                assert tools[f"{prefix}search"].description == "Search the documentation"
                found = await session.call_tool(f"{prefix}search", {"query": "q"})
                assert found.content[0].text == "crm:search_docs:q"  # type: ignore[union-attr]
                with pytest.raises(MCPError) as refused:
                    await session.call_tool(f"{prefix}search_admin", {})
                assert refused.value.code == ErrorCode.FORBIDDEN
                assert refused.value.data == {"rule": "tools.deny: *_admin"}


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_the_virtual_server_has_its_own_audience_and_the_backend_authorizes(era: Era, tmp_path: Path) -> None:
    with running(tmp_path) as (gateway, served):
        async with httpx2.AsyncClient(timeout=30) as http:
            metadata = await http.get(f"{served.base}/.well-known/oauth-protected-resource/mcp/support")
            wrong = await http.post(
                f"{served.base}/mcp/support",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"authorization": f"Bearer {token(gateway, '/mcp/crm')}"},  # another endpoint's audience
            )
        assert metadata.status_code == 200
        assert metadata.json()["resource"] == f"{gateway.base_url}/mcp/support"
        assert wrong.status_code == 401
        async with client(f"{served.base}/mcp/support", era, token(gateway, "/mcp/support")) as session:
            names = sorted(tool.name for tool in (await session.list_tools()).tools)
            assert names == ["crm__search", "crm__search_people", "tickets__create"]
            created = await session.call_tool("tickets__create", {"query": "t"})
            assert created.content[0].text == "tickets:create:t"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as scoped:  # crm's own scope rule, in its own names, holds here too
                await session.call_tool("crm__search", {"query": "q"})
            assert scoped.value.code == ErrorCode.FORBIDDEN
            with pytest.raises(MCPError):
                await session.call_tool("tickets__delete", {})
        async with client(f"{served.base}/mcp/support", era, token(gateway, "/mcp/support", "crm:search")) as session:
            found = await session.call_tool("crm__search", {"query": "q"})
            assert found.content[0].text == "crm:search_docs:q"  # type: ignore[union-attr]


def test_two_virtual_servers_cannot_share_a_path() -> None:
    text = CONFIG + '\n[[virtual_servers]]\nname = "other"\npath = "/mcp/support"\ntools = ["tickets:*"]\n'
    with pytest.raises(ConfigError, match=r"virtual_servers\[1\].path.*already the path of another virtual server"):
        parse_config(text)
