"""The conformance runner's own rules, without npm: what it reads from the suite's output, what
counts as a difference from bare, and what it says when the suite cannot be installed."""

import json
from pathlib import Path

import pytest

from .run import BASELINE, Report, ScenarioResult, VariantRun, parse_results
from .suite import SUITE_RUNS, SuiteRun, SuiteUnavailable, ensure_suite


def _write_checks(output: Path, scenario: str, stamp: str, checks: list[dict[str, str]]) -> None:
    folder = output / f"server-{scenario}-2026-12-04T18-{stamp}-000Z"
    folder.mkdir(parents=True)
    (folder / "checks.json").write_text(json.dumps(checks))


def test_parse_results_ignores_info_and_lets_a_rerun_win(tmp_path: Path) -> None:
    _write_checks(tmp_path, "tools-list", "00-00", [{"id": "a", "status": "FAILURE", "errorMessage": "old"}])
    _write_checks(
        tmp_path,
        "tools-list",
        "00-01",
        [{"id": "narration", "status": "INFO"}, {"id": "a", "status": "SUCCESS"}],
    )
    _write_checks(tmp_path, "server-sse-polling", "00-00", [{"id": "b", "status": "WARNING", "errorMessage": "w"}])
    (tmp_path / "conformance.log").write_text("not a result")

    results = parse_results(tmp_path)

    assert results == {
        "tools-list": ScenarioResult(checks=(("a", "SUCCESS", ""),)),
        "server-sse-polling": ScenarioResult(checks=(("b", "WARNING", "w"),)),
    }
    assert results["server-sse-polling"].ok
    assert results["server-sse-polling"].cell() == "WARN 0/0 1w"


def _report(variant_checks: tuple[tuple[str, str, str], ...] | None) -> Report:
    baseline = {"s": ScenarioResult(checks=(("c", "SUCCESS", "port 1234"), ("d", "WARNING", "SHOULD")))}
    variant = {} if variant_checks is None else {"s": ScenarioResult(checks=variant_checks)}
    return Report(
        scenarios=["s"],
        runs={BASELINE: VariantRun(baseline, 1.0), "v": VariantRun(variant, 1.0)},
        title="0.2.0-alpha.12@2026-07-28",
    )


def test_another_message_for_the_same_outcome_is_no_difference() -> None:
    report = _report((("c", "SUCCESS", "port 5678"), ("d", "WARNING", "SHOULD, said otherwise")))
    assert report.differing("v") == []
    assert report.ok


def test_another_status_is_a_difference_named_with_its_message() -> None:
    report = _report((("c", "FAILURE", "Expected -32021"), ("d", "WARNING", "SHOULD")))
    assert report.differing("v") == ["s"]
    problems = report.variant_problems("v")
    assert problems[0] == "[0.2.0-alpha.12@2026-07-28] v s: FAIL 0/1 1w, but bare WARN 1/1 1w"
    assert "    v only: c: FAILURE Expected -32021" in problems
    assert "    bare only: c: SUCCESS port 1234" in problems
    assert not any("d:" in line for line in problems)  # the same WARNING on both sides is no difference


def test_a_missing_result_is_a_difference() -> None:
    report = _report(None)
    assert report.differing("v") == ["s"]
    assert report.totals("v") == (0, 1, 0, 1)


def test_suite_runs_name_their_wire() -> None:
    modern = SuiteRun("0.2.0-alpha.12", "2026-07-28")
    assert modern.name == "0.2.0-alpha.12@2026-07-28"
    assert modern.selection() == ["--suite", "all", "--spec-version", "2026-07-28"]
    assert SuiteRun("0.1.16").selection() == ["--suite", "all"]
    assert {r.name for r in SUITE_RUNS} == {"0.1.16", modern.name, "0.2.0-alpha.12@2025-11-25"}


def test_without_npm_the_suite_is_unavailable_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.conformance.suite.shutil.which", lambda _: None)
    with pytest.raises(SuiteUnavailable, match="npm is not on PATH"):
        ensure_suite("0.2.0-alpha.12", cache_dir=tmp_path)
