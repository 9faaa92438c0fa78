"""`mcp-gateway token`: a dev token from a running dev-mode gateway, used as curl and the Inspector use it.

The gateway runs under uvicorn on a config like `make run`'s (dev authorization server, the example's
demo server); the command runs as a user runs it, in a subprocess; the SDK `Client` uses the token in
both eras.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.gateway.test_inspector import inspector  # noqa: F401 (the fixture)
from tests.gateway.test_inspector import run as run_inspector
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]

DEV_CONFIG = """
[[servers]]
name = "demo"
app = "examples.gateway.demo:server"

[[servers]]
name = "other"
app = "tests.servers:build_server"

[auth]
mode = "dev"
auto_approve = {auto_approve}
required_scopes = ["mcp"]
[auth.scopes]
"tools/call:countdown" = ["demo:slow"]
"""

PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def write_config(folder: Path, *, auto_approve: bool = False) -> Path:
    text = DEV_CONFIG.replace("{auto_approve}", str(auto_approve).lower())
    if auto_approve:  # a second gateway in this process: a fresh server, not the example's module-level one
        text = text.replace('app = "examples.gateway.demo:server"', 'app = "tests.servers:build_server"')
    path = folder / ("auto.toml" if auto_approve else "gateway.toml")
    path.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def running(config: Path) -> Iterator[Served]:
    port = free_port()
    with serve_app(build_gateway(load_config(config), port=port).app, port=port) as served:
        yield served


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Served]]:
    config = write_config(tmp_path_factory.mktemp("dev"))
    with running(config) as served:
        yield config, served


def token_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return processes.run(
        [sys.executable, "-m", "mcp_middleware.gateway", "token", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def mint(config: Path, served: Served, *args: str) -> str:
    done = token_command(config, "--port", served.base.rsplit(":", 1)[1], *args)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert "\n" not in token and token.count(".") == 2  # stdout is the token alone: TOKEN=$(…) works
    return token


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def aggregate_token(dev: tuple[Path, Served]) -> str:
    return mint(*dev, "--subject", "alice", "--scope", "mcp")


@pytest.fixture(scope="module")
def mount_token(dev: tuple[Path, Served]) -> str:
    return mint(*dev, "--subject", "bob", "--scope", "mcp", "--resource", "demo")


async def ping(url: str, token: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(url, json=PING, headers={**HEADERS, "authorization": f"Bearer {token}"})


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_the_token_opens_the_aggregate(dev: tuple[Path, Served], aggregate_token: str, era: Era) -> None:
    _, served = dev
    issued = claims(aggregate_token)
    assert (issued["sub"], issued["aud"], issued["scope"]) == ("alice", f"{served.base}/mcp", "mcp")
    async with client(f"{served.base}/mcp", era, aggregate_token) as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert {"demo__echo", "other__echo"} <= names
        result = await session.call_tool("demo__echo", {"text": "with a CLI token"})
        assert result.content[0].text == "with a CLI token"  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_a_token_for_a_mount_opens_that_mount(dev: tuple[Path, Served], mount_token: str, era: Era) -> None:
    _, served = dev
    assert claims(mount_token)["aud"] == f"{served.base}/mcp/demo"
    async with client(f"{served.base}/mcp/demo", era, mount_token) as session:
        result = await session.call_tool("add", {"a": 40, "b": 2})
        assert result.content[0].text == "42"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_each_token_is_refused_where_its_audience_is_not(
    dev: tuple[Path, Served], aggregate_token: str, mount_token: str
) -> None:
    """RFC 8707: the aggregate's token opens no mount, a mount's token opens neither the aggregate nor another mount."""
    _, served = dev
    for url, token in [
        (f"{served.base}/mcp/demo", aggregate_token),
        (f"{served.base}/mcp/other", aggregate_token),
        (f"{served.base}/mcp", mount_token),
        (f"{served.base}/mcp/other", mount_token),
    ]:
        refused = await ping(url, token)
        assert refused.status_code == 401, url
        assert 'error="invalid_token"' in refused.headers["www-authenticate"]
        assert refused.json()["id"] == 7


@pytest.mark.anyio
async def test_the_token_carries_only_the_scopes_asked_for(dev: tuple[Path, Served]) -> None:
    config, served = dev
    token = mint(config, served, "--subject", "carol", "--scope", "demo:slow")
    assert claims(token)["scope"] == "demo:slow"
    refused = await ping(f"{served.base}/mcp", token)  # the gateway requires `mcp`
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def test_without_options_the_token_has_every_scope_and_the_default_user(dev: tuple[Path, Served]) -> None:
    issued = claims(mint(*dev))
    assert issued["sub"] == "dev-user" and set(issued["scope"].split()) == {"mcp", "demo:slow"}


def test_a_scope_the_gateway_does_not_offer_is_one_line(dev: tuple[Path, Served]) -> None:
    config, served = dev
    done = token_command(config, "--port", served.base.rsplit(":", 1)[1], "--scope", "admin")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "no token: scope 'admin' is not offered by this gateway; it offers: demo:slow mcp"
    ]


def test_an_empty_subject_is_a_usage_error(dev: tuple[Path, Served]) -> None:
    config, served = dev
    done = token_command(config, "--url", served.base, "--subject", "  ")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "--subject must name a user"


def test_a_name_that_is_no_mount_is_a_usage_error(dev: tuple[Path, Served]) -> None:
    config, served = dev
    done = token_command(config, "--url", served.base, "--resource", "nope")
    assert done.returncode == 2
    assert "--resource 'nope' is neither a URL nor a mounted server; servers: demo, other" in done.stderr


def test_a_gateway_not_in_dev_mode_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Locally, by its config; and remotely, when the gateway at the URL runs no dev authorization server."""
    static = tmp_path / "static.toml"
    static.write_text(
        '[[servers]]\nname = "other"\napp = "tests.servers:build_server"\n'
        '[auth]\nmode = "static"\n[auth.tokens]\n"${env:CLI17_TOKEN}" = ["mcp"]\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("CLI17_TOKEN", "s3cret-static-token")
    done = token_command(static)
    assert done.returncode == 2 and done.stdout == ""
    assert "[auth] mode is 'static'" in done.stderr and 'mode = "dev"' in done.stderr

    with running(static) as served:  # a dev config pointed at it: the running gateway is what counts
        done = token_command(write_config(tmp_path), "--url", served.base)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"no token: {served.base} runs no development authorization server "
        "(/.well-known/oauth-authorization-server answered 404): "
        '`mcp-gateway token` needs a gateway with [auth] mode = "dev"'
    ]


def test_an_unreachable_gateway_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    done = token_command(write_config(tmp_path), "--port", str(port))
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"no token: cannot reach the gateway at http://127.0.0.1:{port}")


def test_an_auto_approving_gateway_cannot_mint_for_another_subject(tmp_path: Path) -> None:
    """`auto_approve` logs everyone in as the default user: the command says so rather than mislabel a token."""
    config = write_config(tmp_path, auto_approve=True)
    with running(config) as served:
        port = served.base.rsplit(":", 1)[1]
        refused = token_command(config, "--port", port, "--subject", "alice")
        granted = token_command(config, "--port", port)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "approves every login as 'dev-user' ([auth] auto_approve = true), not as 'alice'" in refused.stderr
    assert granted.returncode == 0 and claims(granted.stdout.strip())["sub"] == "dev-user"


@pytest.mark.conformance
def test_the_inspector_cli_uses_the_token(
    inspector: list[str],  # noqa: F811 (the fixture imported above)
    dev: tuple[Path, Served],
    aggregate_token: str,
) -> None:
    """The command the docs and the banner show: the Inspector CLI with `--header "Authorization: Bearer $TOKEN"`."""
    _, served = dev
    listed = run_inspector(
        inspector, f"{served.base}/mcp", "--transport", "http", "--method", "tools/list", token=aggregate_token
    )
    assert "demo__echo" in {tool["name"] for tool in listed["tools"]}
