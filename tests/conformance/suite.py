"""The official conformance suite as a program we run: which versions and wires (`SUITE_RUNS`),
installing them (npm, once, into `.cache/conformance/<version>/`, Node 22 from npm `node@22` into
`.cache/conformance/node/`), listing their server scenarios and running them against a URL.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..support import processes
from ..support.install_lock import holding

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = PROJECT_ROOT / ".cache" / "conformance"
SUITE_PACKAGE = "@modelcontextprotocol/conformance"
SUITE_VERSION = "0.1.16"
"""The default suite version (`ensure_suite()` without one)."""
NODE_PACKAGE = "node@22"  # the system node may be too old; npm ships node as a package

INSTALL_TIMEOUT_S = 300
SUITE_TIMEOUT_S = 180  # one full suite run takes seconds (each scenario is bounded at 30 s); this stops a hang


@dataclass(frozen=True)
class SuiteRun:
    """One run of the suite: a pinned version, `--suite all`, and a wire (`--spec-version`) or its default."""

    version: str
    spec_version: str | None = None

    @property
    def name(self) -> str:
        return f"{self.version}@{self.spec_version}" if self.spec_version else self.version

    def selection(self) -> list[str]:
        return ["--suite", "all", *(["--spec-version", self.spec_version] if self.spec_version else [])]


SUITE_RUNS: tuple[SuiteRun, ...] = (
    SuiteRun("0.1.16"),
    SuiteRun("0.2.0-alpha.12", "2026-07-28"),
    SuiteRun("0.2.0-alpha.12", "2025-11-25"),
)


class SuiteUnavailable(RuntimeError):
    """The suite is not installed and cannot be (no npm, or the install failed)."""


# --- Installing the suite ---------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    node: Path
    cli: Path
    version: str = SUITE_VERSION

    def command(self, *args: str) -> list[str]:
        return [str(self.node), str(self.cli), *args]


def _installed_version(prefix: Path, package: str) -> str | None:
    manifest = prefix / "node_modules" / package / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _npm_install(prefix: Path, *packages: str) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SuiteUnavailable(
            f"npm is not on PATH: it is needed once to install {', '.join(packages)} into {prefix} "
            "(e.g. `apt-get install npm`)"
        )
    prefix.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact", *packages]
    print(f"installing {' '.join(packages)} into {prefix} ...", file=sys.stderr)
    try:
        done = processes.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise SuiteUnavailable(f"npm install timed out after {INSTALL_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        raise SuiteUnavailable(f"npm install failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def ensure_node(cache_dir: Path = CACHE_DIR) -> Path:
    """Node 22 from npm, installed once and shared by every suite version."""
    prefix = cache_dir / "node"
    node = prefix / "node_modules" / ".bin" / "node"
    with holding(prefix):  # pytest-xdist workers: one installs, the others wait and find it installed
        if _installed_version(prefix, "node") is None or not node.exists():
            _npm_install(prefix, NODE_PACKAGE)
            if not node.exists():
                raise SuiteUnavailable(f"npm installed {NODE_PACKAGE} but {node} is missing")
    return node


def ensure_suite(version: str = SUITE_VERSION, cache_dir: Path = CACHE_DIR) -> Suite:
    """Return the cached suite `version`, installing it (and Node 22) with npm if needed."""
    node = ensure_node(cache_dir)
    prefix = cache_dir / version
    cli = prefix / "node_modules" / SUITE_PACKAGE / "dist" / "index.js"
    with holding(prefix):
        if _installed_version(prefix, SUITE_PACKAGE) != version or not cli.exists():
            _npm_install(prefix, f"{SUITE_PACKAGE}@{version}")
            if _installed_version(prefix, SUITE_PACKAGE) != version or not cli.exists():
                raise SuiteUnavailable(f"npm install left no {SUITE_PACKAGE}@{version} in {prefix}")
    return Suite(node=node, cli=cli, version=version)


def list_scenarios(suite: Suite, spec_version: str | None = None) -> list[str]:
    """The suite's server scenarios, in the order `--suite all` runs them (at `spec_version`, if given)."""
    selection = ["--spec-version", spec_version] if spec_version else []
    listing = processes.run(
        suite.command("list", "--server", *selection), capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [m.group(1) for m in re.finditer(r"^\s+- (\S+)", listing, flags=re.MULTILINE)]


def run_suite(
    suite: Suite, url: str, output_dir: Path, scenario: str | None = None, *, spec_version: str | None = None
) -> str | None:
    """Run the suite against `url`, writing results under `output_dir`; return an error, if any.

    The suite's own exit code is ignored: it is non-zero whenever a check fails,
    and the checks are what we compare.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    selection = ["--scenario", scenario] if scenario else ["--suite", "all"]
    if spec_version:
        selection += ["--spec-version", spec_version]
    command = suite.command("server", "--url", url, *selection, "-o", str(output_dir))
    env = {**os.environ, "PATH": f"{suite.node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with (output_dir / "conformance.log").open("wb") as log:
        try:
            processes.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=SUITE_TIMEOUT_S,  # stops the suite, and what it started, when it runs out
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"suite timed out after {SUITE_TIMEOUT_S} s"
    return None
