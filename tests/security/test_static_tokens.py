"""Attacker: holds one valid static token of a gateway in `static` mode and wants what belongs to the
holders of the others: their rate-limit budget and their legacy sessions. Each token must be its own
principal, and a token's derived subject must not be the token (subjects are logged and traced).

A real gateway (`build_gateway`, tokens from the environment as the docs say) on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import MCPServer

from mcp_middleware.auth import StaticTokenVerifier, static_subject
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from tests.auth.conftest import post_mcp
from tests.conftest import Served, serve_app
from tests.support.requests import legacy_body, legacy_headers, legacy_session

pytestmark = pytest.mark.anyio

ALICE, MALLORY, CI = "alice-7d0c2f9a1b", "mallory-40e8c3", "ci-token-51aa90"


def whoami_server() -> MCPServer:
    """The backend: tells who the token says is calling (subject and client id)."""
    server = MCPServer("whoami")

    @server.tool()
    def whoami() -> str:
        token = get_access_token()
        return f"{token.subject} via {token.client_id}" if token else "nobody"

    return server


CONFIG = """
[[servers]]
name = "private"
app = "tests.security.test_static_tokens:whoami_server"

[auth]
mode = "static"
[auth.tokens]
"${env:SEC_ALICE}" = ["mcp"]
"${env:SEC_MALLORY}" = ["mcp"]
"${env:SEC_CI}" = { subject = "ci", client_id = "ci-bot", scopes = ["mcp"] }

[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 5
rate = 0.001
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in (("SEC_ALICE", ALICE), ("SEC_MALLORY", MALLORY), ("SEC_CI", CI)):
            env.setenv(name, value)
        path: Path = tmp_path_factory.mktemp("gw") / "gateway.toml"
        path.write_text(CONFIG, encoding="utf-8")
        built = build_gateway(load_config(path))
    with serve_app(built.app) as served:
        yield served


def text_of(answer: httpx2.Response) -> str:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return str(body["result"]["content"][0]["text"])


WHOAMI = {"name": "whoami", "arguments": {}}


async def test_each_token_is_its_own_principal_and_its_subject_is_not_the_token(gateway: Served) -> None:
    url = f"{gateway.base}/mcp/private"
    alice = text_of(await post_mcp(url, authorization=f"Bearer {ALICE}", params=WHOAMI))
    mallory = text_of(await post_mcp(url, authorization=f"Bearer {MALLORY}", params=WHOAMI))
    ci = text_of(await post_mcp(url, authorization=f"Bearer {CI}", params=WHOAMI))
    assert alice == f"{static_subject(ALICE)} via {static_subject(ALICE)}"
    assert mallory == f"{static_subject(MALLORY)} via {static_subject(MALLORY)}"
    assert ci == "ci via ci-bot"
    assert ALICE not in alice and ALICE[:8] not in alice, "no part of the token is in the identity"
    assert len({alice, mallory, ci}) == 3


async def test_one_token_cannot_spend_anothers_budget(gateway: Served) -> None:
    url = f"{gateway.base}/mcp/private"
    statuses = [(await post_mcp(url, authorization=f"Bearer {MALLORY}", params=WHOAMI)).status_code for _ in range(7)]
    assert statuses.count(429) >= 2, "mallory ran out of her own budget"
    assert (await post_mcp(url, authorization=f"Bearer {CI}", params=WHOAMI)).status_code == 200, "ci has its own"


async def test_one_token_cannot_drive_anothers_legacy_session(gateway: Served) -> None:
    url = f"{gateway.base}/mcp/private"
    call = legacy_body("tools/call", WHOAMI, 2)
    async with httpx2.AsyncClient(timeout=10) as http:
        session = await legacy_session(http, url, authorization=f"Bearer {CI}")
        hijack = await http.post(url, content=call, headers=legacy_headers(session, authorization=f"Bearer {ALICE}"))
        owner = await http.post(url, content=call, headers=legacy_headers(session, authorization=f"Bearer {CI}"))
    assert hijack.status_code == 404, hijack.text
    assert "ci via" not in hijack.text
    assert owner.status_code == 200 and "ci via ci-bot" in owner.text


def test_the_verifier_refuses_bad_entries_without_naming_the_token() -> None:
    with pytest.raises(ValueError, match="unknown field") as refused:
        StaticTokenVerifier({"s3cret-value": {"subject": "x", "scope": ["typo"]}})
    assert "s3cret-value" not in str(refused.value)
    with pytest.raises(ValueError, match="non-empty"):
        StaticTokenVerifier({"t": {"subject": ""}})
    with pytest.raises(ValueError, match="list of strings"):
        StaticTokenVerifier({"t": "mcp"})  # type: ignore[dict-item]


def test_config_problems_name_a_literal_token_by_its_digest_only(tmp_path: Path) -> None:
    text = CONFIG.replace('"${env:SEC_CI}" = {', '"literal-s3cret" = { colour = "blue",')
    with pytest.raises(ConfigError) as refused:
        parse_config(text.replace("${env:SEC_ALICE}", "a").replace("${env:SEC_MALLORY}", "m"))
    [problem] = refused.value.problems
    assert problem.path == f"auth.tokens[{static_subject('literal-s3cret')}].colour"
    assert problem.line == 11 and problem.message == "is not a known setting"
    assert "literal-s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"t" = [1, 2]', "must be a list of scopes or a table"),
        ('"t" = "mcp"', "must be a list of scopes or a table"),
        ('"t" = { subject = "", scopes = [] }', "must not be empty"),
        ('"t" = { subject = "ci", scopes = "mcp" }', "must be a list of strings"),
        ('"" = ["mcp"]', "is an empty token"),
    ],
)
def test_token_entries_are_validated(entry: str, message: str) -> None:
    text = f'[[servers]]\nname = "a"\napp = "a:b"\n[auth]\nmode = "static"\n[auth.tokens]\n{entry}\n'
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    [problem] = refused.value.problems
    assert message in problem.message and problem.line == 7
    assert problem.path.startswith("auth.tokens[static:")


def test_both_forms_reach_the_verifier(monkeypatch: Any) -> None:
    config = parse_config(
        '[[servers]]\nname = "a"\napp = "a:b"\n[auth]\nmode = "static"\n[auth.tokens]\n'
        '"plain" = ["r"]\n"named" = { subject = "ci", scopes = ["r", "w"] }\n'
    )
    entries = {token: entry.verifier_entry() for token, entry in config.auth.tokens.items()}
    assert entries == {"plain": ("r",), "named": {"subject": "ci", "scopes": ["r", "w"]}}
