"""Run the official MCP conformance suite against the conformance server, bare and
wrapped in this project's middlewares, and compare the results.

    .venv/bin/python -m tests.conformance.run [--variants bare,core] [--runs 0.1.16] [--scenario NAME]
                                              [--jobs N] [--output-dir DIR]

Three suite runs (`SUITE_RUNS`): 0.1.16 `--suite all`, and 0.2.0-alpha.12 `--suite all` at each
wire (`--spec-version 2026-07-28`: stateless, per-request `_meta`; `--spec-version 2025-11-25`:
the handshake). Each pinned suite is installed into `.cache/conformance/<version>/`, Node 22
(npm `node@22`) once into `.cache/conformance/node/`. Each variant is served once, by its own
uvicorn process on 127.0.0.1, and meets the three runs in order; variants run in parallel
(`--jobs`). The suite's per-scenario results are read back from the `checks.json` files it
writes. Exits non-zero when the bare server fails a scenario or any variant ends a scenario
differently from bare in the same run.
"""

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .suite import SUITE_RUNS, Suite, SuiteRun, SuiteUnavailable, ensure_suite, list_scenarios, run_suite
from .variants import VARIANTS, ServerStartError, serve_in_process

BASELINE = "bare"
DEFAULT_JOBS = 3

# The suite writes one `server-<scenario>-<ISO timestamp>/checks.json` per scenario.
RESULT_DIR_RE = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


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


@dataclass
class VariantRun:
    results: dict[str, ScenarioResult]
    seconds: float
    error: str | None = None


@dataclass
class Report:
    """One suite run (`title`): each variant's results, compared with bare's."""

    scenarios: list[str]
    runs: dict[str, VariantRun] = field(default_factory=dict)
    output_dir: Path | None = None
    title: str = ""

    def result(self, variant: str, scenario: str) -> ScenarioResult:
        return self.runs[variant].results.get(scenario, MISSING)

    def _label(self, variant: str) -> str:
        return f"[{self.title}] {variant}" if self.title else variant

    def baseline_problems(self) -> list[str]:
        """Why the bare server is not fully conformant; empty when it passes every scenario."""
        run = self.runs[BASELINE]
        found = [f"{self._label(BASELINE)}: {run.error}"] if run.error else []
        for scenario in self.scenarios:
            result = self.result(BASELINE, scenario)
            if not result.ok:
                found.append(f"{self._label(BASELINE)} {scenario}: {result.cell()}")
                found.extend(
                    f"    {check}: {message}" for check, status, message in result.checks if status == "FAILURE"
                )
        return found

    def variant_problems(self, variant: str) -> list[str]:
        """Where `variant` differs from bare; empty when every scenario ended the same."""
        run = self.runs[variant]
        found = [f"{self._label(variant)}: {run.error}"] if run.error else []
        for scenario in self.differing(variant):
            result, baseline = self.result(variant, scenario), self.result(BASELINE, scenario)
            found.append(f"{self._label(variant)} {scenario}: {result.cell()}, but {BASELINE} {baseline.cell()}")
            ours, theirs = set(result.checks), set(baseline.checks)
            # Same check and status with another message (a port, a time) is no difference.
            ours_keys = {(c, s) for c, s, _ in ours}
            theirs_keys = {(c, s) for c, s, _ in theirs}
            found.extend(
                f"    {variant} only: {c}: {s} {m}".rstrip() for c, s, m in sorted(ours) if (c, s) not in theirs_keys
            )
            found.extend(
                f"    {BASELINE} only: {c}: {s} {m}".rstrip() for c, s, m in sorted(theirs) if (c, s) not in ours_keys
            )
        return found

    def differing(self, variant: str) -> list[str]:
        """The scenarios `variant` ended differently from bare."""
        return [
            scenario
            for scenario in self.scenarios
            if self.result(variant, scenario).signature() != self.result(BASELINE, scenario).signature()
        ]

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

    def totals(self, variant: str) -> tuple[int, int, int, int]:
        """(scenarios passed, scenarios, checks failed, scenarios differing from bare) for the summary."""
        results = [self.result(variant, scenario) for scenario in self.scenarios]
        differing = len(self.differing(variant)) if variant != BASELINE else 0
        return sum(r.ok for r in results), len(results), sum(r.failed for r in results), differing

    def render(self) -> str:
        variants = list(self.runs)
        rows = [["scenario", *variants]]
        rows += [[scenario, *(self.result(v, scenario).cell() for v in variants)] for scenario in self.scenarios]
        rows.append(["seconds", *(f"{self.runs[v].seconds:.1f}" for v in variants)])
        lines = [f"== {self.title}"] if self.title else []
        lines += _table(rows)
        problems = self.problems()
        lines.append("PROBLEMS:" if problems else f"OK: {BASELINE} passes every scenario, every variant matches it")
        lines.extend(f"  {problem}" for problem in problems)
        return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


@dataclass
class Matrix:
    """Every suite run's report, over the same variants."""

    reports: dict[str, Report]
    variants: list[str]
    seconds: float = 0.0
    output_dir: Path | None = None

    def problems(self) -> list[str]:
        return [problem for report in self.reports.values() for problem in report.problems()]

    @property
    def ok(self) -> bool:
        return not self.problems()

    def render(self) -> str:
        blocks = [report.render() for report in self.reports.values()]
        rows = [["variant", *self.reports]]
        for variant in self.variants:
            cells = []
            for report in self.reports.values():
                passed, total, failed, differing = report.totals(variant)
                cells.append(f"{passed}/{total} ok, {failed} failed checks, {differing} differ")
            rows.append([variant, *cells])
        summary = ["== summary (scenarios passed/run, failed checks, scenarios ending unlike bare)", *_table(rows)]
        summary.append(f"wall time: {self.seconds:.1f} s")
        summary.append("cells: PASS|WARN|FAIL passed/(passed+failed) [warnings]")
        if self.output_dir is not None:
            summary.append(f"results: {self.output_dir}")
        summary.append("OK" if self.ok else f"{len(self.problems())} problem line(s) above")
        return "\n\n".join([*blocks, "\n".join(summary)])


def _run_variant(
    variant: str, runs: Sequence[tuple[SuiteRun, Suite]], output_dir: Path, scenario: str | None
) -> dict[str, VariantRun]:
    """Serve `variant` once and run each suite run against it, in order."""
    found: dict[str, VariantRun] = {}
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / f"{variant}.server.log"
    started = time.monotonic()
    try:
        with log_path.open("wb") as log, serve_in_process(variant, log) as url:
            for run, suite in runs:
                began = time.monotonic()
                where = output_dir / run.name / variant
                error = run_suite(suite, url, where, scenario, spec_version=run.spec_version)
                found[run.name] = VariantRun(parse_results(where), time.monotonic() - began, error)
    except ServerStartError as exc:
        tail = log_path.read_text(errors="replace")[-3000:]
        error = f"{exc}; server log tail:\n{tail}"
        for run, _ in runs:
            found.setdefault(run.name, VariantRun({}, time.monotonic() - started, error))
    return found


def run_matrix(
    variants: Sequence[str],
    output_dir: Path,
    *,
    runs: Sequence[SuiteRun] = SUITE_RUNS,
    scenario: str | None = None,
    jobs: int = DEFAULT_JOBS,
) -> Matrix:
    """Run every suite run against every variant (bare always included, as the baseline).

    Variants run in parallel (`jobs` at a time), each against a server of its own.
    """
    started = time.monotonic()
    suites = [(run, ensure_suite(run.version)) for run in runs]
    reports: dict[str, Report] = {}
    for run, suite in suites:
        scenarios = list_scenarios(suite, run.spec_version)
        if scenario is not None:
            scenarios = [scenario] if scenario in scenarios else []
        reports[run.name] = Report(scenarios=scenarios, output_dir=output_dir / run.name, title=run.name)
    if scenario is not None and not any(report.scenarios for report in reports.values()):
        raise ValueError(f"unknown scenario {scenario!r} in runs {', '.join(reports)}")
    # A run that does not have the one scenario asked for is not run at all.
    suites = [(run, suite) for run, suite in suites if reports[run.name].scenarios]
    reports = {name: report for name, report in reports.items() if report.scenarios}
    ordered = [BASELINE, *(v for v in variants if v != BASELINE)]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {v: pool.submit(_run_variant, v, suites, output_dir, scenario) for v in ordered}
        for variant, future in futures.items():
            for name, result in future.result().items():
                reports[name].runs[variant] = result
    return Matrix(reports, ordered, time.monotonic() - started, output_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all; {BASELINE} always runs)",
    )
    known_runs = {run.name: run for run in SUITE_RUNS}
    parser.add_argument(
        "--runs", default=",".join(known_runs), help="comma-separated suite runs (default: %(default)s)"
    )
    parser.add_argument("--scenario", help="run only this scenario")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="variants served at once (%(default)s)")
    parser.add_argument("--output-dir", type=Path, help="keep the suite's results here (default: a temp dir)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    chosen = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in chosen if r not in known_runs]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; known: {', '.join(known_runs)}")

    with tempfile.TemporaryDirectory(prefix="mcp-conformance-") as scratch:
        output_dir = args.output_dir.resolve() if args.output_dir else Path(scratch)
        try:
            matrix = run_matrix(
                variants, output_dir, runs=[known_runs[r] for r in chosen], scenario=args.scenario, jobs=args.jobs
            )
        except SuiteUnavailable as exc:
            print(f"conformance suite unavailable: {exc}", file=sys.stderr)
            return 2
        if args.output_dir is None:
            matrix.output_dir = None  # deleted on exit; nothing to point at
        print(matrix.render())
    return 0 if matrix.ok else 1


if __name__ == "__main__":
    sys.exit(main())
