"""`mcp-gateway serve` on first contact: the port is bound before anything starts, the banner prints once the
gateway listens and tells how to call it (with the `Authorization` header when auth is on, never a secret),
and `examples/gateway/try_it.py` against a gateway that is not there says so in one line."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.cli import EXIT_FAILED, _banner
from mcp_middleware.gateway.config import load_config
from tests.conftest import free_port
from tests.gateway.test_gateway import client
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-banner-token"

SERVERS = '[[servers]]\nname = "local"\napp = "tests.servers:build_server"\n'
STATIC = SERVERS + '[auth]\nmode = "static"\n[auth.tokens]\n"${env:CLI17_BANNER_TOKEN}" = ["mcp"]\n'
DEV = SERVERS + '[auth]\nmode = "dev"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def serve_command(config: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "mcp_middleware.gateway", "serve", "-c", str(config), "--port", str(port)]


def test_a_port_in_use_is_one_error_and_nothing_starts(tmp_path: Path) -> None:
    stdio = ROOT / "examples" / "gateway" / "stdio_server.py"
    config = write(tmp_path, SERVERS + f'[[servers]]\nname = "text"\ncommand = ["{{python}}", "{stdio}"]\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = processes.run(
            serve_command(config, port), capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
        )
    assert done.returncode == EXIT_FAILED
    assert done.stdout == ""  # no banner
    assert done.stderr.strip().splitlines() == [f"cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_the_banner_prints_once_the_gateway_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up log, then the banner; when the banner is read, the port already accepts connections.

    `--port 0`: the banner names the port the system gave (the gateway's URLs are built after the bind).
    """
    monkeypatch.setenv("CLI17_BANNER_TOKEN", SECRET)
    config = write(tmp_path, STATIC)
    process = processes.start(
        serve_command(config, 0), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    port = 0
    try:
        assert process.stdout is not None
        while not lines or not lines[-1].startswith("try it:"):
            line = process.stdout.readline()
            assert line, f"the gateway exited before its banner: {''.join(lines)}"
            lines.append(line.rstrip("\n"))
            if line.startswith("mcp-gateway on http://127.0.0.1:"):
                port = int(line.rsplit(":", 1)[1])
                with socket.create_connection(("127.0.0.1", port), timeout=1):  # at once: no retry
                    pass
    finally:
        processes.stop(process)
    text = "\n".join(lines)
    assert port > 0
    assert text.index("Application startup complete.") < text.index("mcp-gateway on")
    assert lines[-1] == (
        f"try it:  npx @modelcontextprotocol/inspector --cli http://127.0.0.1:{port}/mcp --transport http "
        '--method tools/list --header "Authorization: Bearer <one of [auth.tokens]>"'
    )
    assert SECRET not in text


def read_banner(process: subprocess.Popen[str]) -> list[str]:
    """The lines the gateway printed up to the end of its banner."""
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].lstrip().startswith("npx "):
        line = process.stdout.readline()
        assert line, f"the gateway exited before its banner: {lines}"
        lines.append(line.rstrip("\n"))
    return lines


@pytest.mark.anyio
async def test_make_runs_banner_command_gives_a_token_the_gateway_accepts() -> None:
    """`make run`, then exactly the command its banner prints, then the token with the SDK client."""
    example = "examples/gateway/gateway.toml"
    process = processes.start(
        [sys.executable, "-m", "mcp_middleware.gateway", "serve", "--config", example],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PORT": "0"},
    )
    try:
        lines = read_banner(process)
        (command,) = [m[1] for line in lines if (m := re.search(r"TOKEN=\$\((mcp-gateway token .*)\)$", line))]
        words = shlex.split(command)
        done = processes.run(
            [sys.executable, "-m", "mcp_middleware.gateway", *words[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        aggregate = next(line.split()[-1] for line in lines if line.strip().startswith("aggregate:"))
        async with client(aggregate, "modern", done.stdout.strip()) as session:
            result = await session.call_tool("demo__echo", {"text": "from the banner"})
            assert result.content[0].text == "from the banner"  # type: ignore[union-attr]
    finally:
        processes.stop(process)


def banner(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    config = write(tmp_path, text)
    _banner(build_gateway(load_config(config), port=8123), config)
    return capsys.readouterr().out.splitlines()


def test_the_dev_banner_tells_how_to_get_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = banner(tmp_path, DEV, capsys)
    config = tmp_path / "gateway.toml"
    assert lines[-3:] == [
        "try it:  .venv/bin/python examples/gateway/try_it.py http://127.0.0.1:8123/mcp",
        f"    or:  TOKEN=$(mcp-gateway token -c {config} --url http://127.0.0.1:8123 --subject alice)",
        "         npx @modelcontextprotocol/inspector --cli http://127.0.0.1:8123/mcp --transport http "
        '--method tools/list --header "Authorization: Bearer $TOKEN"',
    ]


def test_without_auth_the_banner_sends_no_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = banner(tmp_path, SERVERS, capsys)
    assert lines[-1].startswith("try it:  npx @modelcontextprotocol/inspector --cli http://127.0.0.1:8123/mcp ")
    assert "Authorization" not in "\n".join(lines)


def test_with_jwt_auth_the_banner_names_the_issuer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jwt = (
        SERVERS
        + '[auth]\nmode = "jwt"\nissuer = "https://login.example.com"\njwks_url = "https://login.example.com/jwks"\n'
    )
    lines = banner(tmp_path, jwt, capsys)
    assert lines[-1].endswith('--header "Authorization: Bearer <a token from https://login.example.com>"')


def test_try_it_against_no_gateway_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    done = processes.run(
        [sys.executable, str(ROOT / "examples" / "gateway" / "try_it.py"), url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"try_it.py: cannot reach the gateway at {url}: All connection attempts failed (is it running? `make run`)"
    ]
