"""Attacker: holds an access token of a grant the dev authorization server has revoked (the code was
replayed, or a rotated refresh token reused: the token leaked). It must stop working at once, although
the gateway's auth middleware had already verified and cached it. And dev mode, whose login page takes
any user name, must not start on a public address without being told to.

Real gateway (`build_gateway`, dev mode, every mount behind `AuthMiddleware`) on loopback, real OAuth
(registration, PKCE, code exchange, refresh) over HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.cli import EXIT_USAGE, main
from mcp_middleware.gateway.config import ConfigError, parse_config
from tests.auth.conftest import post_mcp
from tests.auth.test_authorization_server import REDIRECT, pkce, query_of
from tests.conftest import Served, free_port, serve_app

pytestmark = pytest.mark.anyio

CONFIG = """
[gateway]
host = "127.0.0.1"
port = {port}

[[servers]]
name = "local"
app = "tests.servers:build_server"

[auth]
mode = "dev"
auto_approve = true
required_scopes = ["mcp"]
"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[Served]:
    port = free_port()
    built = build_gateway(parse_config(CONFIG.format(port=port)), port=port)
    with serve_app(built.app, port=port) as served:
        yield served


@dataclass
class Grant:
    client_id: str
    code: str
    verifier: str
    access_token: str
    refresh_token: str


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


async def log_in(http: httpx2.AsyncClient, base: str, resource: str) -> Grant:
    registered = await http.post(
        f"{base}/register",
        json={
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "victim",
        },
    )
    client_id = registered.json()["client_id"]
    verifier, challenge = pkce()
    authorized = await http.get(
        f"{base}/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "scope": "mcp",
            "resource": resource,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    code = query_of(authorized)["code"]
    tokens = await exchange(http, base, client_id, code, verifier, resource)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    return Grant(client_id, code, verifier, body["access_token"], body["refresh_token"])


async def exchange(
    http: httpx2.AsyncClient, base: str, client_id: str, code: str, verifier: str, resource: str
) -> httpx2.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "resource": resource,
    }
    return await http.post(f"{base}/token", data=form)


async def status_with(url: str, token: str) -> int:
    answer = await post_mcp(url, authorization=f"Bearer {token}", params={"name": "echo", "arguments": {"text": "x"}})
    return answer.status_code


async def test_a_replayed_code_kills_the_cached_access_token_at_once(gateway: Served, http: httpx2.AsyncClient) -> None:
    resource = f"{gateway.base}/mcp/local"
    grant = await log_in(http, gateway.base, resource)
    assert await status_with(resource, grant.access_token) == 200
    assert await status_with(resource, grant.access_token) == 200  # now served from the token cache

    replay = await exchange(http, gateway.base, grant.client_id, grant.code, grant.verifier, resource)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"

    refused = await post_mcp(resource, authorization=f"Bearer {grant.access_token}")
    assert refused.status_code == 401
    assert refused.json()["id"] == 7
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert "revoked" in refused.json()["error"]["data"]["error_description"]
    refresh = await http.post(
        f"{gateway.base}/token",
        data={"grant_type": "refresh_token", "refresh_token": grant.refresh_token, "client_id": grant.client_id},
    )
    assert refresh.status_code == 400, "the grant's refresh token died with it"


async def test_reusing_a_rotated_refresh_token_kills_every_access_token_of_the_grant(
    gateway: Served, http: httpx2.AsyncClient
) -> None:
    resource = f"{gateway.base}/mcp/local"
    grant = await log_in(http, gateway.base, resource)
    form = {"grant_type": "refresh_token", "refresh_token": grant.refresh_token, "client_id": grant.client_id}
    rotated = await http.post(f"{gateway.base}/token", data=form)
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["access_token"]
    assert [await status_with(resource, t) for t in (grant.access_token, second)] == [200, 200]  # both cached

    reused = await http.post(f"{gateway.base}/token", data=form)  # the attacker's copy of the old one
    assert reused.status_code == 400

    assert [await status_with(resource, t) for t in (grant.access_token, second)] == [401, 401]


async def test_another_grant_is_untouched(gateway: Served, http: httpx2.AsyncClient) -> None:
    resource = f"{gateway.base}/mcp/local"
    victim, bystander = await log_in(http, gateway.base, resource), await log_in(http, gateway.base, resource)
    assert await status_with(resource, bystander.access_token) == 200
    await exchange(http, gateway.base, victim.client_id, victim.code, victim.verifier, resource)  # replay
    assert await status_with(resource, victim.access_token) == 401
    assert await status_with(resource, bystander.access_token) == 200


# --- dev mode on a public address ------------------------------------------------------------------

MINIMAL = '[[servers]]\nname = "local"\napp = "tests.servers:build_server"\n'


@pytest.mark.parametrize(
    "gateway_table",
    [
        'host = "0.0.0.0"',
        'host = "::"',
        'host = "192.0.2.10"',
        'host = "mcp.example.com"',
        'public_url = "https://mcp.example.com"',
    ],
)
def test_dev_mode_on_a_public_address_is_a_config_error_naming_the_key(gateway_table: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(f'[gateway]\n{gateway_table}\n{MINIMAL}\n[auth]\nmode = "dev"\n')
    [problem] = refused.value.problems
    assert problem.path == "auth.allow_dev_on_public_host"
    assert problem.line == 8  # the line of `mode = "dev"`
    assert "any user name" in problem.message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_dev_mode_on_loopback_needs_nothing(host: str) -> None:
    assert parse_config(f'[gateway]\nhost = "{host}"\n{MINIMAL}\n[auth]\nmode = "dev"\n').auth.mode == "dev"


def test_the_explicit_setting_allows_it_and_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = f'[gateway]\nhost = "0.0.0.0"\n{MINIMAL}\n[auth]\nmode = "dev"\nallow_dev_on_public_host = {{}}\n'
    assert parse_config(text.format("true")).auth.allow_dev_on_public_host
    monkeypatch.setenv("GW_ALLOW_DEV", "true")
    assert parse_config(text.format('"${env:GW_ALLOW_DEV}"')).auth.allow_dev_on_public_host
    monkeypatch.setenv("GW_ALLOW_DEV", "perhaps")
    with pytest.raises(ConfigError, match=r"allow_dev_on_public_host .*must be true or false"):
        parse_config(text.format('"${env:GW_ALLOW_DEV}"'))


def test_serve_with_a_public_host_override_refuses_without_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check-config` passes (the file says loopback), but `serve --host 0.0.0.0` is checked again."""
    path = tmp_path / "gateway.toml"
    path.write_text(f'{MINIMAL}\n[auth]\nmode = "dev"\n', encoding="utf-8")
    assert main(["check-config", "-c", str(path)]) == 0
    assert main(["serve", "-c", str(path), "--host", "0.0.0.0", "--port", "1"]) == EXIT_USAGE
    assert "auth.allow_dev_on_public_host" in capsys.readouterr().err


def test_serve_on_a_public_host_with_the_setting_logs_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Serving is stopped right after the warning (uvicorn is replaced): the port is bound, never listened on."""
    import uvicorn

    path = tmp_path / "gateway.toml"
    path.write_text(f'{MINIMAL}\n[auth]\nmode = "dev"\nallow_dev_on_public_host = true\n', encoding="utf-8")

    class NoServer:
        started = True

        def __init__(self, config: Any) -> None:
            pass

        def run(self, sockets: Any = None) -> None:
            pass

    monkeypatch.setattr(uvicorn, "Server", NoServer)  # a test must not listen on every interface
    monkeypatch.setattr("mcp_middleware.gateway.cli.configure_logging", lambda *a, **k: None)  # pytest's logging stays
    with caplog.at_level(logging.WARNING, "mcp_middleware.gateway"):
        assert main(["serve", "-c", str(path), "--host", "0.0.0.0", "--port", str(free_port())]) == 0
    assert any("dev mode on host '0.0.0.0'" in r.getMessage() for r in caplog.records)


def test_build_gateway_with_a_public_host_override_refuses_dev_mode() -> None:
    config = parse_config(f'{MINIMAL}\n[auth]\nmode = "dev"\n')
    with pytest.raises(ConfigError, match="allow_dev_on_public_host"):
        build_gateway(config, host="0.0.0.0", port=free_port())
