"""The serverless profile's rules: what a cold start refuses (with key and line), what it warns about, and the
command that checks a config before deploying. The handler itself: test_serverless.py."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from mcp_middleware.gateway.cli import EXIT_OK, main
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from mcp_middleware.gateway.serverless_profile import serverless_problems
from tests.conftest import require
from tests.support import processes

require("mangum", "the serverless profile's Lambda adapter (the `lambda` extra)")

from mcp_middleware.gateway.serverless import build_handler  # noqa: E402
from tests.gateway.test_serverless import EXAMPLE, ROOT, config_text  # noqa: E402


def test_the_profile_refuses_what_cannot_work_serverless_with_key_and_line() -> None:
    """The embedded-defaults example has everything the profile refuses: each one is named at its line."""
    with pytest.raises(ConfigError) as raised:
        build_handler(ROOT / "examples" / "gateway" / "gateway.toml")
    found = {problem.path: problem for problem in raised.value.problems}
    assert set(found) == {"servers[2].command", "auth.mode", "gateway.public_url", "ratelimit.store"}
    assert all(problem.line is not None for problem in found.values())
    assert "stdio" in found["servers[2].command"].message
    assert "redis://" in found["ratelimit.store"].message


def test_the_profile_warns_about_what_only_degrades(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(extra='[cache]\nstore = "memory://"\n'), encoding="utf-8")
    problems, warnings = serverless_problems(load_config(path))
    assert problems == []
    assert {warning.path for warning in warnings} == {"gateway", "cache.store"}
    with caplog.at_level(logging.WARNING, logger="mcp_middleware.gateway"):
        build_handler(path).close()
    assert "session_key" in caplog.text


def test_the_example_config_passes_check_config_and_the_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(EXAMPLE)]) == EXIT_OK
    problems, warnings = serverless_problems(load_config(EXAMPLE))
    assert problems == []
    assert [warning.path for warning in warnings] == ["gateway"]  # legacy sessions: no session_key yet
    assert not any(server.kind == "command" for server in load_config(EXAMPLE).servers)


def test_the_profile_check_command_says_what_the_cold_start_would_refuse() -> None:
    """`python -m mcp_middleware.gateway.serverless CONFIG`: check-config's checks, then the profile's."""
    command = [sys.executable, "-m", "mcp_middleware.gateway.serverless"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    good = processes.run(
        [*command, "serverless.toml"], cwd=EXAMPLE.parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert good.returncode == 0, good.stderr
    assert "OK for the serverless profile" in good.stdout
    assert "session_key" in good.stderr  # the one warning: a warning, not a refusal
    bad = processes.run(
        [*command, "gateway.toml"], cwd=EXAMPLE.parent, env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2
    assert "4 problems" in bad.stderr
    assert "servers[2].command (line " in bad.stderr
    assert "Traceback" not in bad.stderr


BASE = """
[[servers]]
name = "demo"
app = "examples.gateway.demo:server"
"""


@pytest.mark.parametrize(
    ("text", "problems", "warnings"),
    [
        pytest.param(BASE, [], ["gateway"], id="modern-only, nothing shared: fine"),
        pytest.param(
            BASE + '[[servers.ratelimit_policies]]\nname = "tiny"\ncapacity = 1\nrate = 1\n',
            ["ratelimit.store"],
            ["gateway"],
            id="a server's own limits on memory",
        ),
        pytest.param(
            BASE + '[ratelimit]\nstore = "redis://127.0.0.1:6379/0"\n[[ratelimit.policies]]\nname = "p"\n'
            "capacity = 1\nrate = 1\n",
            [],
            ["gateway"],
            id="limits on redis",
        ),
        pytest.param(
            BASE + '[auth]\nmode = "static"\n[auth.tokens]\n"t" = ["s"]\n',
            ["gateway.public_url"],
            ["gateway"],
            id="auth without public_url",
        ),
        pytest.param(
            "[gateway]\nwatch_config = true\n"
            + BASE
            + '[audit]\nfile = "audit.jsonl"\n[tracing]\naccess_log = false\n',
            [],
            ["gateway", "gateway.watch_config", "audit.file", "tracing"],
            id="what only degrades",
        ),
    ],
)
def test_each_rule_names_its_key(text: str, problems: list[str], warnings: list[str]) -> None:
    found, warned = serverless_problems(parse_config(text))
    assert [problem.path for problem in found] == problems
    assert sorted(warning.path for warning in warned) == sorted(warnings)
