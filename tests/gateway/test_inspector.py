"""The MCP Inspector CLI (`@modelcontextprotocol/inspector`, a real client nobody here wrote) against the gateway.

The Inspector runs on node 22 (the one the conformance suite installs into .cache) and is
installed once, pinned, into .cache/inspector. Without npm the test is skipped locally and
fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from mcp_middleware.gateway.app import Gateway
from tests.conformance.suite import SuiteUnavailable, ensure_suite
from tests.conftest import Served
from tests.gateway.test_gateway import TOKEN, running_gateway
from tests.support import processes
from tests.support.install_lock import holding

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "inspector"
PACKAGE = "@modelcontextprotocol/inspector"
VERSION = "2.12.0"

pytestmark = pytest.mark.conformance


def _unavailable(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"the MCP Inspector is required in CI: {why}")
    pytest.skip(why)


def install_inspector() -> list[str]:
    """The command that runs the Inspector CLI, [node, mcp-inspector, --cli], installing it (pinned) if needed."""
    try:
        node = ensure_suite().node
    except SuiteUnavailable as exc:
        _unavailable(str(exc))
    with holding(CACHE):  # pytest-xdist: this module and test_sealed_scale_out.py may install at once
        _install_inspector()
    return [str(node), str(CACHE / "node_modules" / ".bin" / "mcp-inspector"), "--cli"]


def _install_inspector() -> None:
    cli = CACHE / "node_modules" / "@modelcontextprotocol" / "inspector" / "package.json"
    installed = cli.exists() and json.loads(cli.read_text()).get("version") == VERSION
    if not installed:
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is not on PATH")
        done = processes.run(
            [npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", "--save-exact", f"{PACKAGE}@{VERSION}"],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            _unavailable(f"npm install {PACKAGE}@{VERSION} failed: {done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def inspector() -> list[str]:
    """The command that runs the Inspector CLI: [node, mcp-inspector, --cli]."""
    return install_inspector()


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, Served]]:
    with running_gateway(tmp_path, monkeypatch) as running:
        yield running


def run(inspector: list[str], *args: str, token: str = TOKEN) -> dict:  # type: ignore[type-arg]
    done = processes.run(
        [*inspector, *args, "--header", f"Authorization: Bearer {token}"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
        env={**os.environ, "MCP_CATALOG_PATH": str(CACHE / "catalog.json")},
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_the_inspector_lists_and_calls_tools_through_the_aggregate(
    inspector: list[str], gateway: tuple[Gateway, Served]
) -> None:
    _, served = gateway
    url = f"{served.base}/mcp"
    listed = run(inspector, url, "--transport", "http", "--method", "tools/list")
    names = {tool["name"] for tool in listed["tools"]}
    assert {"local__echo", "remote__echo", "text__reverse"} <= names
    called = run(
        inspector,
        url,
        "--transport",
        "http",
        "--method",
        "tools/call",
        "--tool-name",
        "text__reverse",
        "--tool-arg",
        "text=inspector",
    )
    assert called["content"][0]["text"] == "rotcepsni"


def test_the_inspector_calls_a_path_mount(inspector: list[str], gateway: tuple[Gateway, Served]) -> None:
    _, served = gateway
    called = run(
        inspector,
        f"{served.base}/mcp/local",
        "--transport",
        "http",
        "--method",
        "tools/call",
        "--tool-name",
        "echo",
        "--tool-arg",
        "text=hello",
    )
    assert called["content"][0]["text"] == "hello"
