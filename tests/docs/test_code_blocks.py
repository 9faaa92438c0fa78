"""Every fenced code block of docs/*.md and README.md is run by this test, or marked as a fragment.

How a block is checked, by its language (markers: tests/docs/blocks.py):

- `python`: executed (tests/docs/run_python.py, one process per file, blocks in order, a fresh
  namespace each unless `<!-- continue -->`, 20 s each). A block binding `app` is served under
  uvicorn and must answer one real 2026-07-28 `tools/list` with a JSON-RPC message (`<!-- mcp-path:
  /x -->` if its MCP endpoint is not `/mcp`). `uvicorn.run(...)` is neutralised only under
  `<!-- run: import-only -->`.
- `toml`: validated by the gateway's own loader (`parse_config`, the checks `check-config` starts
  with). A block with no `[[servers]]` is a section of a config and is validated with one placeholder
  server added; `${env:NAME}` without a default reads a placeholder value. `<!-- toml: syntax-only -->`
  (TOML that is no gateway config): parsed with `tomllib` only.
- `json`: one JSON document, or JSON Lines.
- `bash`/`sh`/`shell`/`console`: must be a fragment, unless every command in it is `mcp-gateway
  check-config …` (in `console`, the lines after `$ `): then each runs from the repository's root and
  must exit 0; in a `console` block the other lines are output the command must print.
- `text`, `http` and unlabelled blocks are diagrams, transcripts and output: not code, not run.

A `<!-- fragment -->` block is not run, whatever its language; write why when it is not obvious
(`<!-- fragment: needs a live identity provider -->`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from mcp_middleware.gateway.config import parse_config
from tests.conftest import child_port_band
from tests.docs.blocks import KNOWN_MARKERS, ROOT, Block, all_blocks
from tests.support import processes

NOT_CODE = {"", "text", "http"}
SHELLS = {"bash", "sh", "shell", "console"}
CHECKED = {"python", "toml", "json", *SHELLS}
BLOCKS = all_blocks()


def _checked(lang: str | set[str]) -> list[pytest.param]:  # type: ignore[valid-type]
    langs = {lang} if isinstance(lang, str) else lang
    return [pytest.param(b, id=b.where) for b in BLOCKS if b.lang in langs and not b.fragment]


def test_every_block_has_a_rule_and_known_markers() -> None:
    for block in BLOCKS:
        assert block.lang in CHECKED | NOT_CODE, f"{block.where}: no rule for ```{block.lang} blocks (add one here)"
        unknown = set(block.markers) - KNOWN_MARKERS
        assert not unknown, f"{block.where}: unknown marker(s) {sorted(unknown)}; known: {sorted(KNOWN_MARKERS)}"
        python_only = {"continue", "run", "mcp-path"} & set(block.markers)
        assert not python_only or block.lang == "python", f"{block.where}: {sorted(python_only)} is for python blocks"
        assert "toml" not in block.markers or block.lang == "toml", f"{block.where}: toml marker on ```{block.lang}"


def test_the_collector_sees_markers_and_indented_blocks() -> None:
    """The rules above hold only if the collector finds what they talk about."""
    text = (
        "<!-- fragment: why -->\n```python\nundefined_name\n```\n\n"
        "- item\n\n  <!-- continue -->\n  ```python\n  x = 1\n  ```\n"
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "doc.md"
        path.write_text(text)
        from tests.docs.blocks import blocks_of

        first, second = blocks_of(path)
    assert first.fragment and first.markers["fragment"] == "why" and first.line == 2
    assert second.markers == {"continue": ""} and second.code == "x = 1\n" and second.line == 9


# --- python ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Worked:
    """What the worker for one document reported: a result per block line, and its own output."""

    results: dict[int, dict[str, str]]
    output: str


@cache
def _python_results() -> dict[Path, Worked]:
    """Run every document's python blocks, one process per document, all at once."""
    documents = sorted({b.path for b in BLOCKS if b.lang == "python" and not b.fragment})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    found: dict[Path, Worked] = {}
    with tempfile.TemporaryDirectory(prefix="docs-blocks-") as directory:
        out = Path(directory)
        started = []
        for index, document in enumerate(documents):
            results, log = out / f"{index}.json", out / f"{index}.log"
            command = [sys.executable, "-m", "tests.docs.run_python", str(document), str(results)]
            with log.open("wb") as sink:  # the child has its own copy of the descriptor
                own = {**env, **child_port_band(index, len(documents))}  # all run at once: ports of its own
                process = processes.start(command, cwd=ROOT, env=own, stdout=sink, stderr=subprocess.STDOUT)
            started.append((document, process, results, log))
        for document, process, results, log in started:
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                pass  # the blocks that finished are in the results file; the others are reported missing
            finally:
                processes.stop(process)
            answered = json.loads(results.read_text()) if results.exists() else {}
            output = log.read_text(errors="replace")[-3000:]
            found[document] = Worked({int(line): result for line, result in answered.items()}, output)
    return found


@pytest.mark.timeout(180)
@pytest.mark.xdist_group("docs-python")  # `_python_results` runs every document once per process: one xdist worker
@pytest.mark.parametrize("block", _checked("python"))
def test_python_block_runs(block: Block) -> None:
    worked = _python_results()[block.path]
    result = worked.results.get(block.line)
    assert result is not None, f"{block.where} never finished; the worker's output:\n{worked.output}"
    assert result["status"] == "ok", f"{block.where} failed:\n{result['detail']}"


# --- toml -----------------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
PLACEHOLDER_SERVER = '\n[[servers]]\nname = "docs-placeholder"\nurl = "http://127.0.0.1:9/mcp"\n'


@pytest.mark.parametrize("block", _checked("toml"))
def test_toml_block_is_a_valid_gateway_config(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = tomllib.loads(block.code)
    if block.markers.get("toml") == "syntax-only":
        return
    assert "toml" not in block.markers, f"{block.where}: unknown toml marker {block.markers['toml']!r}"
    for name in _ENV.findall(block.code):
        monkeypatch.setenv(name, f"placeholder-{name.lower()}-long-enough-to-be-a-signing-key")
    text = block.code if "servers" in parsed else block.code + PLACEHOLDER_SERVER
    parse_config(text)  # raises ConfigError listing every problem, with key and line


# --- json -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", _checked("json"))
def test_json_block_parses(block: Block) -> None:
    try:
        json.loads(block.code)
    except json.JSONDecodeError:
        for number, line in enumerate(block.code.splitlines(), start=block.line + 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as exc:
                    pytest.fail(f"{block.where}: neither one JSON document nor JSON Lines (line {number}: {exc})")


# --- shell ----------------------------------------------------------------------------------------


def _commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each command of the block."""
    if block.lang != "console":
        lines = [line.split(" #")[0].strip() for line in block.code.splitlines()]
        return [(line, []) for line in lines if line and not line.startswith("#")]
    commands: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:].split(" #")[0].strip(), []))
        elif line.strip() and commands:
            commands[-1][1].append(line.strip())
    return commands


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", _checked(SHELLS))
def test_shell_block_is_a_fragment_or_a_config_check(block: Block) -> None:
    commands = _commands(block)
    assert commands, f"{block.where}: no command in the block"
    for command, expected in commands:
        words = shlex.split(command)
        env = dict(os.environ)
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():  # `NAME=value mcp-gateway …`
            name, value = words.pop(0).split("=", 1)
            env[name] = value
        assert words[:2] == ["mcp-gateway", "check-config"], (
            f"{block.where}: `{command}` is neither `mcp-gateway check-config …` nor marked <!-- fragment -->"
        )
        done = processes.run(
            [sys.executable, "-m", "mcp_middleware.gateway", *words[1:]],
            cwd=ROOT,
            env=env,
            timeout=90,
            capture_output=True,
            text=True,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{block.where}: `{command}` exited {done.returncode}:\n{output}"
        for line in expected:
            assert line in output, f"{block.where}: `{command}` did not print {line!r}:\n{output}"


# --- the checks themselves can fail ---------------------------------------------------------------

WORKER_PROBE = """
```python
x = 1
```

<!-- continue -->
```python
assert x == 1
```

```python
raise ValueError("a broken example")
```

<!-- run: import-only -->
```python
import uvicorn
from starlette.responses import PlainTextResponse

app = PlainTextResponse("not MCP")
uvicorn.run(app, host="127.0.0.1", port=1)
```

```python
from starlette.applications import Starlette

app = Starlette()  # no routes: 404 at /mcp
```

<!-- continue -->
```python
assert "x" not in globals()
```
"""


@pytest.mark.timeout(120)
def test_the_worker_reports_each_block_and_fails_what_is_broken(tmp_path: Path) -> None:
    document, results = tmp_path / "probe.md", tmp_path / "results.json"
    document.write_text(WORKER_PROBE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "tests.docs.run_python", str(document), str(results)]
    processes.run(command, cwd=ROOT, env=env, timeout=90, capture_output=True)
    found = {int(line): result for line, result in json.loads(results.read_text()).items()}
    assert [found[line]["status"] for line in sorted(found)] == ["ok", "ok", "failed", "ok", "failed", "ok"]
    details = [found[line]["detail"] for line in sorted(found)]
    assert "ValueError: a broken example" in details[2]
    assert details[3] == "import-only: uvicorn.run called 1 time(s)"  # nothing served, nothing bound on port 1
    assert "404" in details[4]  # an app that does not answer MCP at /mcp fails its block
