"""`mcp-gateway` / `python -m mcp_middleware.gateway`: commands, output and exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mcp_middleware.gateway.cli import EXIT_OK, EXIT_USAGE, main
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gateway" / "gateway.toml"


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(EXAMPLE)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "OK — 3 servers" in out and "auth, ratelimit, cache, breaker, tracing" in out


def test_check_config_names_each_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nport = 70000\n\n[[servers]]\nname = "a b"\nurl = "http://127.0.0.1:1/mcp"\n')
    assert main(["check-config", "-c", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "2 problems" in err
    assert "gateway.port (line 2): must be between 0 and 65535, not 70000" in err
    assert "servers[0].name (line 5): must match [A-Za-z0-9_-]{1,64}" in err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(tmp_path / "nope.toml")]) == EXIT_USAGE
    assert "cannot be read" in capsys.readouterr().err


def test_list_servers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list-servers", "-c", str(EXAMPLE)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "kind", "mount", "aggregate", "target"]
    assert lines[1].split()[:4] == ["demo", "app", "/mcp/demo", "aggregated"]
    assert lines[3].split()[:3] == ["text", "command", "/mcp/text"]


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == EXIT_USAGE


def test_module_entry_point_runs() -> None:
    done = processes.run(
        [sys.executable, "-m", "mcp_middleware.gateway", "check-config", "-c", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert "OK" in done.stdout
