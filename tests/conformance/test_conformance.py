"""The official MCP conformance suite, end to end: the bare conformance server must
pass every scenario, and the server behind each middleware stack in `VARIANTS`
must end every scenario exactly as the bare one does.

Needs the suite in `.cache/conformance/` or npm to install it: without both the
test is skipped, or fails when `CI` is set.
"""

import os
from pathlib import Path

import pytest

from .run import (
    BASELINE,
    INSTALL_TIMEOUT_S,
    SUITE_TIMEOUT_S,
    Report,
    Suite,
    SuiteUnavailable,
    ensure_suite,
    run_conformance,
    run_variant,
)
from .server import VARIANTS

# Each run bounds itself (install, server start, suite); pytest's bound is a backstop.
pytestmark = [pytest.mark.conformance, pytest.mark.timeout(INSTALL_TIMEOUT_S + 2 * SUITE_TIMEOUT_S)]


@pytest.fixture(scope="module")
def suite() -> Suite:
    try:
        return ensure_suite()
    except SuiteUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"conformance suite unavailable in CI: {exc}")
        pytest.skip(f"conformance suite unavailable: {exc}")


@pytest.fixture(scope="module")
def baseline(suite: Suite, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """One run of the whole suite against the bare server, shared by every comparison."""
    return run_conformance(suite, [BASELINE], tmp_path_factory.mktemp("conformance"))


def test_bare_server_passes_every_scenario(baseline: Report) -> None:
    assert baseline.scenarios, "the suite listed no server scenarios"
    assert not baseline.baseline_problems(), baseline.render()


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name != BASELINE])
def test_variant_matches_bare(variant: str, suite: Suite, baseline: Report, tmp_path: Path) -> None:
    report = Report(scenarios=baseline.scenarios, runs=dict(baseline.runs), output_dir=tmp_path)
    report.runs[variant] = run_variant(suite, variant, tmp_path / variant)
    assert not report.variant_problems(variant), report.render()
