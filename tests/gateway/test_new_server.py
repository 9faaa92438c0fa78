"""`mcp-gateway new-server NAME`: a package whose own test passes as generated, and an entry the gateway serves.

The generated package is checked as its author would: `pytest` in a fresh process in its folder
(without this repository on the path), `ruff` and `mypy --strict` on it, then `check-config --probe`
and `health-check` on a gateway.toml holding the entry the command printed. NAMEs that would write
elsewhere, not import, shadow a module or overwrite something are refused with one line and nothing written.
"""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from mcp_middleware.gateway.cli import EXIT_OK, EXIT_USAGE, main
from tests.support import processes

ROOT = Path(__file__).resolve().parents[2]


def python(*args: str, cwd: Path, pythonpath: list[Path], timeout: float = 180) -> tuple[int, str]:
    """Run `python args…` in `cwd` with exactly `pythonpath` (none of the caller's): (exit code, output)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(path) for path in pythonpath)
    done = processes.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done.returncode, done.stdout + done.stderr


def generate(name: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["new-server", name, "--dir", str(folder)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert err == ""
    return out


def test_the_generated_server_passes_its_own_test_and_the_gateway_serves_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = generate("weather", tmp_path, capsys)
    package = tmp_path / "weather"
    assert sorted(path.name for path in package.iterdir()) == ["__init__.py", "server.py", "test_server.py"]
    entry = out[out.index("[[servers]]") :]
    assert entry == '[[servers]]\nname = "weather"\napp = "weather.server:server"\n'

    code, output = python("-m", "pytest", "-q", "-p", "no:cacheprovider", "weather", cwd=tmp_path, pythonpath=[])
    assert code == 0, output
    assert "3 passed" in output, output

    # what the generated test may import: the SDK, pytest, and the package itself; never this repo's tests/
    imported = set()
    for file in package.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert imported == {"mcp", "pytest", "weather"}

    rules = "E,F,W,I,B,UP,SIM,RUF,ASYNC,PT"
    assert python("-m", "ruff", "check", "--isolated", "--select", rules, "weather", cwd=tmp_path, pythonpath=[]) == (
        0,
        "All checks passed!\n",
    )
    code, output = python("-m", "ruff", "format", "--isolated", "--check", "weather", cwd=tmp_path, pythonpath=[])
    assert code == 0, output
    code, output = python("-m", "mypy", "--strict", "--no-incremental", "weather", cwd=tmp_path, pythonpath=[])
    assert code == 0, output

    # the printed entry, in a gateway.toml elsewhere, with the package's folder on PYTHONPATH
    elsewhere = tmp_path / "gateway"
    elsewhere.mkdir()
    config = elsewhere / "gateway.toml"
    config.write_text(entry)
    paths = [tmp_path, ROOT]
    gateway = ["-m", "mcp_middleware.gateway"]
    code, output = python(*gateway, "check-config", "--probe", "-c", str(config), cwd=elsewhere, pythonpath=paths)
    assert (code, output.splitlines()[-1]) == (EXIT_OK, f"{config}: OK — 1 servers; middlewares: none"), output
    code, output = python(*gateway, "health-check", "--json", "-c", str(config), cwd=elsewhere, pythonpath=paths)
    assert code == EXIT_OK, output
    [server] = json.loads(output)["servers"]
    assert (server["name"], server["kind"], server["state"], server["tools"]) == ("weather", "app", "healthy", ["add"])


def test_the_package_can_be_written_here_and_read_from_the_config_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `--dir`: written in the current folder, which a gateway.toml beside it imports from."""
    monkeypatch.chdir(tmp_path)
    out = generate("inventory_h18", Path(), capsys)
    assert out.splitlines()[:2] == [
        "created inventory_h18/ (__init__.py, server.py, test_server.py)",
        "test it:  python -m pytest inventory_h18",
    ]
    (tmp_path / "gateway.toml").write_text(out[out.index("[[servers]]") :])
    code, output = python("-m", "mcp_middleware.gateway", "check-config", "--probe", cwd=tmp_path, pythonpath=[ROOT])
    assert code == EXIT_OK, output


REFUSED = {
    "../x": "is not a package name",
    "/tmp/x": "is not a package name",
    "a-b": "is not a package name",
    "a b": "is not a package name",
    "": "is not a package name",
    "9lives": "is not a package name",
    "café": "is not a package name",  # a Python identifier, but no gateway server name
    "x" * 65: "is not a package name",
    "x\n": "is not a package name",
    "class": "is a Python keyword",
    "None": "is a Python keyword",
    "json": "is already an importable module",
    "mcp": "is already an importable module",
    "mcp_middleware": "is already an importable module",
}


@pytest.mark.parametrize("name", sorted(REFUSED), ids=repr)
def test_a_name_that_is_no_safe_package_is_refused_and_nothing_written(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-server", name, "--dir", str(tmp_path)]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"mcp-gateway new-server: {name!r} {REFUSED[name]}" + err.split(REFUSED[name], 1)[1]
    assert err.count("\n") == 1  # one line
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("kind", ["folder", "file", "dangling link"])
def test_what_exists_is_never_overwritten(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "weather"
    if kind == "folder":
        target.mkdir()
        (target / "server.py").write_text("mine\n")
    elif kind == "file":
        target.write_text("mine\n")
    else:
        target.symlink_to(tmp_path / "nowhere")
    assert main(["new-server", "weather", "--dir", str(tmp_path)]) == EXIT_USAGE
    assert capsys.readouterr().err == f"mcp-gateway new-server: {str(target)!r} already exists: nothing was written\n"
    assert [path.name for path in tmp_path.iterdir()] == ["weather"]
    if kind == "folder":
        assert [path.name for path in target.iterdir()] == ["server.py"]
        assert (target / "server.py").read_text() == "mine\n"
    elif kind == "file":
        assert target.read_text() == "mine\n"
    else:
        assert target.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_dir_that_is_not_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    assert main(["new-server", "weather", "--dir", str(missing)]) == EXIT_USAGE
    assert capsys.readouterr().err == f"mcp-gateway new-server: {str(missing)!r} is not a directory\n"
    assert not missing.exists()
