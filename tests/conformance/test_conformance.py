"""The official MCP conformance suite, end to end: in every suite run (`SUITE_RUNS`: 0.1.16, and
0.2.0-alpha.12 at the 2026-07-28 and the 2025-11-25 wire) the bare conformance server must pass
every scenario, and the server behind each middleware stack in `VARIANTS` must end every scenario
exactly as the bare one does.

One matrix run (every variant served once, in parallel, meeting the three runs) is shared by the
tests. Needs the suites in `.cache/conformance/` or npm to install them: without both the tests
are skipped, or fail when `CI` is set.
"""

import os
from pathlib import Path

import pytest

from .run import BASELINE, Matrix, run_matrix
from .suite import INSTALL_TIMEOUT_S, SUITE_RUNS, SUITE_TIMEOUT_S, SuiteUnavailable, ensure_suite
from .variants import VARIANTS

# Each run bounds itself (install, server start, suite); pytest's bound is a backstop.
pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(INSTALL_TIMEOUT_S * len(SUITE_RUNS) + SUITE_TIMEOUT_S * len(SUITE_RUNS)),
]

KNOWN_DIFFERENCES: dict[tuple[str, str], dict[str, str]] = {}
"""Where a variant is known to end scenarios unlike bare, and why (none: the aggregate matches bare since issue 14).

Pinned exactly: a new difference fails, and so does a fixed one (remove it here)."""


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    try:
        for run in SUITE_RUNS:
            ensure_suite(run.version)
    except SuiteUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"conformance suite unavailable in CI: {exc}")
        pytest.skip(f"conformance suite unavailable: {exc}")
    output: Path = tmp_path_factory.mktemp("conformance")
    return run_matrix(list(VARIANTS), output)


@pytest.mark.parametrize("run", [run.name for run in SUITE_RUNS])
def test_bare_server_passes_every_scenario(run: str, matrix: Matrix) -> None:
    report = matrix.reports[run]
    assert report.scenarios, "the suite listed no server scenarios"
    assert not report.baseline_problems(), report.render()


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name != BASELINE])
@pytest.mark.parametrize("run", [run.name for run in SUITE_RUNS])
def test_variant_matches_bare(run: str, variant: str, matrix: Matrix) -> None:
    report = matrix.reports[run]
    known = KNOWN_DIFFERENCES.get((run, variant), {})
    if not known:
        assert not report.variant_problems(variant), report.render()
        return
    assert report.runs[variant].error is None, report.render()
    assert sorted(report.differing(variant)) == sorted(known), (
        f"{variant}'s known differences from {BASELINE} changed; update KNOWN_DIFFERENCES\n{report.render()}"
    )
    pytest.xfail("; ".join(f"{scenario}: {why}" for scenario, why in known.items()))
