"""Run the official MCP conformance suite against the conformance server, bare and
wrapped in this project's middlewares, and compare the results.

    .venv/bin/python -m tests.conformance.run [--variants bare,core] [--scenario NAME] [--output-dir DIR]

The suite (npm `@modelcontextprotocol/conformance`, pinned) and Node 22 (npm
`node@22`) are installed into `.cache/conformance/` on first use. Each variant is
served by its own uvicorn process on 127.0.0.1; the suite's per-scenario results
are read back from the `checks.json` files it writes. Exits non-zero when the bare
server fails a scenario or any other variant's results differ from bare's.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .server import MCP_PATH, VARIANT_PATHS, VARIANTS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = PROJECT_ROOT / ".cache" / "conformance"
SUITE_PACKAGE = "@modelcontextprotocol/conformance"
SUITE_VERSION = "0.1.16"
NODE_PACKAGE = "node@22"  # the system node may be too old; npm ships node as a package
BASELINE = "bare"
DEFAULT_VARIANTS = ("bare", "core", "stack", "gateway")

INSTALL_TIMEOUT_S = 300
SUITE_TIMEOUT_S = 600  # one full suite run takes a few seconds; this only stops a hang
SERVER_START_TIMEOUT_S = 30
SERVER_STOP_TIMEOUT_S = 10

# The suite writes one `server-<scenario>-<ISO timestamp>/checks.json` per scenario.
RESULT_DIR_RE = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


class SuiteUnavailable(RuntimeError):
    """The suite is not installed and cannot be (no npm, or the install failed)."""


class ServerStartError(RuntimeError):
    """A variant's server process did not come up."""


# --- Installing the suite ---------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    node: Path
    cli: Path

    def command(self, *args: str) -> list[str]:
        return [str(self.node), str(self.cli), *args]


def _installed_suite(cache_dir: Path) -> Suite | None:
    modules = cache_dir / "node_modules"
    node = modules / ".bin" / "node"
    cli = modules / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
    manifest = modules / "@modelcontextprotocol" / "conformance" / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    if version != SUITE_VERSION or not node.exists() or not cli.exists():
        return None
    return Suite(node=node, cli=cli)


def ensure_suite(cache_dir: Path = CACHE_DIR) -> Suite:
    """Return the cached suite, installing the pinned version with npm if needed."""
    suite = _installed_suite(cache_dir)
    if suite is not None:
        return suite
    npm = shutil.which("npm")
    if npm is None:
        raise SuiteUnavailable(
            f"npm is not on PATH: it is needed once to install {SUITE_PACKAGE}@{SUITE_VERSION} "
            f"and {NODE_PACKAGE} into {cache_dir} (e.g. `apt-get install npm`)"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [
        npm,
        "install",
        "--prefix",
        str(cache_dir),
        "--no-audit",
        "--no-fund",
        "--save-exact",
        f"{SUITE_PACKAGE}@{SUITE_VERSION}",
        NODE_PACKAGE,
    ]
    print(f"installing {SUITE_PACKAGE}@{SUITE_VERSION} and {NODE_PACKAGE} into {cache_dir} ...", file=sys.stderr)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise SuiteUnavailable(f"npm install timed out after {INSTALL_TIMEOUT_S} s") from exc
    suite = _installed_suite(cache_dir)
    if done.returncode != 0 or suite is None:
        raise SuiteUnavailable(f"npm install failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return suite


def list_scenarios(suite: Suite) -> list[str]:
    """The suite's server scenarios, in the order `--suite all` runs them."""
    listing = subprocess.run(
        suite.command("list", "--server"), capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [m.group(1) for m in re.finditer(r"^\s+- (\S+)", listing, flags=re.MULTILINE)]


# --- Serving one variant ----------------------------------------------------------


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for an HTTP answer: uvicorn accepts connections only after the app's lifespan started."""
    while True:
        if process.poll() is not None:
            raise ServerStartError(f"server exited with code {process.returncode} before serving")
        if time.monotonic() > deadline:
            raise ServerStartError(f"server did not answer within {SERVER_START_TIMEOUT_S} s")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        try:
            # Any status will do (an MCP app answers a bare GET with an error): it is alive.
            connection.request("GET", "/")
            connection.getresponse().read()
            return
        except OSError:  # not accepting yet (the socket queues us), or reset
            time.sleep(0.1)
        finally:
            connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop our server process by its own handle: SIGTERM (graceful, runs the lifespan's shutdown), then kill."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def serve_variant(variant: str, log_path: Path) -> Iterator[str]:
    """Serve `variant` in a child process on a free loopback port; yield its MCP URL."""
    # Bind here and hand the listening socket to the child: the port is known up front
    # and cannot be taken by anyone else in between.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener, log_path.open("wb") as log:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        command = [sys.executable, "-m", "tests.conformance.server", "--variant", variant, "--fd", str(fd)]
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_until_serving(port, process, time.monotonic() + SERVER_START_TIMEOUT_S)
            yield f"http://127.0.0.1:{port}{VARIANT_PATHS.get(variant, MCP_PATH)}"
        finally:
            _stop(process)


# --- Results ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioResult:
    """What the suite decided for one scenario. INFO checks are ignored: they only narrate."""

    checks: tuple[tuple[str, str, str], ...] = ()  # (check id, status, message), non-INFO only
    missing: bool = False  # the suite wrote no result (crash, timeout, server down)

    @property
    def passed(self) -> int:
        return sum(status == "SUCCESS" for _, status, _ in self.checks)

    @property
    def failed(self) -> int:
        return sum(status == "FAILURE" for _, status, _ in self.checks)

    @property
    def warnings(self) -> int:
        return sum(status == "WARNING" for _, status, _ in self.checks)

    @property
    def ok(self) -> bool:
        return not self.missing and self.failed == 0

    def signature(self) -> tuple[object, ...]:
        """Compared across variants: which checks ended how (messages may carry ports or times)."""
        return (self.missing, tuple(sorted((check, status) for check, status, _ in self.checks)))

    def cell(self) -> str:
        if self.missing:
            return "MISSING"
        label = "FAIL" if self.failed else "WARN" if self.warnings else "PASS"
        text = f"{label} {self.passed}/{self.passed + self.failed}"
        return f"{text} {self.warnings}w" if self.warnings else text


MISSING = ScenarioResult(missing=True)


def parse_results(output_dir: Path) -> dict[str, ScenarioResult]:
    """Read the suite's `server-<scenario>-<timestamp>/checks.json` files."""
    results: dict[str, ScenarioResult] = {}
    for checks_file in sorted(output_dir.glob("server-*/checks.json")):  # sorted: a rerun's later dir wins
        match = RESULT_DIR_RE.match(checks_file.parent.name)
        if match is None:
            continue
        checks = json.loads(checks_file.read_text())
        results[match["scenario"]] = ScenarioResult(
            checks=tuple(
                (check["id"], check["status"], check.get("errorMessage") or "")
                for check in checks
                if check["status"] != "INFO"
            )
        )
    return results


def run_suite(suite: Suite, url: str, output_dir: Path, scenario: str | None = None) -> str | None:
    """Run the suite against `url`, writing results under `output_dir`; return an error, if any.

    The suite's own exit code is ignored: it is non-zero whenever a check fails,
    and the checks are what we compare.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    selection = ["--scenario", scenario] if scenario else ["--suite", "all"]
    command = suite.command("server", "--url", url, *selection, "-o", str(output_dir))
    env = {**os.environ, "PATH": f"{suite.node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with (output_dir / "conformance.log").open("wb") as log:
        try:
            subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=SUITE_TIMEOUT_S,  # kills the suite process when it runs out
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"suite timed out after {SUITE_TIMEOUT_S} s"
    return None


@dataclass
class VariantRun:
    results: dict[str, ScenarioResult]
    seconds: float
    error: str | None = None


@dataclass
class Report:
    scenarios: list[str]
    runs: dict[str, VariantRun] = field(default_factory=dict)
    output_dir: Path | None = None

    def result(self, variant: str, scenario: str) -> ScenarioResult:
        return self.runs[variant].results.get(scenario, MISSING)

    def baseline_problems(self) -> list[str]:
        """Why the bare server is not fully conformant; empty when it passes every scenario."""
        run = self.runs[BASELINE]
        found = [f"{BASELINE}: {run.error}"] if run.error else []
        for scenario in self.scenarios:
            result = self.result(BASELINE, scenario)
            if not result.ok:
                found.append(f"{BASELINE} {scenario}: {result.cell()}")
                found.extend(
                    f"    {check}: {message}" for check, status, message in result.checks if status == "FAILURE"
                )
        return found

    def variant_problems(self, variant: str) -> list[str]:
        """Where `variant` differs from bare; empty when every scenario ended the same."""
        run = self.runs[variant]
        found = [f"{variant}: {run.error}"] if run.error else []
        for scenario in self.scenarios:
            result, baseline = self.result(variant, scenario), self.result(BASELINE, scenario)
            if result.signature() != baseline.signature():
                found.append(f"{variant} {scenario}: {result.cell()}, but {BASELINE} {baseline.cell()}")
                ours, theirs = set(result.checks), set(baseline.checks)
                found.extend(f"    {variant} only: {c}: {s} {m}".rstrip() for c, s, m in sorted(ours - theirs))
                found.extend(f"    {BASELINE} only: {c}: {s} {m}".rstrip() for c, s, m in sorted(theirs - ours))
        return found

    def problems(self) -> list[str]:
        """Why this report fails: bare is not fully conformant, or a variant differs from it."""
        found = self.baseline_problems()
        for variant in self.runs:
            if variant != BASELINE:
                found.extend(self.variant_problems(variant))
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()

    def render(self) -> str:
        variants = list(self.runs)
        rows = [["scenario", *variants]]
        rows += [[scenario, *(self.result(v, scenario).cell() for v in variants)] for scenario in self.scenarios]
        rows.append(["seconds", *(f"{self.runs[v].seconds:.1f}" for v in variants)])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        lines.append("")
        lines.append("cells: PASS|WARN|FAIL passed/(passed+failed) [warnings]")
        if self.output_dir is not None:
            lines.append(f"results: {self.output_dir}")
        problems = self.problems()
        lines.append("PROBLEMS:" if problems else f"OK: {BASELINE} passes every scenario, every variant matches it")
        lines.extend(f"  {problem}" for problem in problems)
        return "\n".join(lines)


def run_variant(suite: Suite, variant: str, output_dir: Path, scenario: str | None = None) -> VariantRun:
    """Serve `variant`, run the suite against it, and read back its results."""
    started = time.monotonic()
    output_dir.mkdir(parents=True, exist_ok=True)
    error: str | None
    try:
        with serve_variant(variant, output_dir / "mcp-server.log") as url:
            error = run_suite(suite, url, output_dir, scenario)
    except ServerStartError as exc:
        log = (output_dir / "mcp-server.log").read_text(errors="replace")
        error = f"{exc}; server log tail:\n{log[-3000:]}"
    return VariantRun(parse_results(output_dir), time.monotonic() - started, error)


def run_conformance(suite: Suite, variants: Sequence[str], output_dir: Path, scenario: str | None = None) -> Report:
    """Run the suite against each variant (bare always first, as the baseline)."""
    scenarios = list_scenarios(suite)
    if scenario is not None:
        if scenario not in scenarios:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(scenarios)}")
        scenarios = [scenario]
    report = Report(scenarios=scenarios, output_dir=output_dir)
    for variant in [BASELINE, *(v for v in variants if v != BASELINE)]:
        report.runs[variant] = run_variant(suite, variant, output_dir / variant, scenario)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)} (default: %(default)s; {BASELINE} always runs)",
    )
    parser.add_argument("--scenario", help="run only this scenario")
    parser.add_argument("--output-dir", type=Path, help="keep the suite's results here (default: a temp dir)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    try:
        suite = ensure_suite()
    except SuiteUnavailable as exc:
        print(f"conformance suite unavailable: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mcp-conformance-") as scratch:
        output_dir = args.output_dir.resolve() if args.output_dir else Path(scratch)
        report = run_conformance(suite, variants, output_dir, args.scenario)
        if args.output_dir is None:
            report.output_dir = None  # deleted on exit; nothing to point at
        print(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
