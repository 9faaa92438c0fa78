"""`make bench`'s CPU ruler of issue 17's targets (tests/benchmarks/bench_cpu.py) measures what it says."""

from __future__ import annotations

import pytest

from tests.benchmarks import bench_cpu, profile_requests


def test_a_rounds_ratio_is_bare_over_the_app_in_that_round() -> None:
    found = {"bare": [300.0, 330.0, 310.0], "full_stack": [330.0, 330.0, 400.0]}
    assert bench_cpu.paired_ratios(found, "full_stack") == [300 / 330, 1.0, 310 / 400]
    assert bench_cpu.APPS == ("bare", "full_stack", "gateway")  # the baseline first, then the targets' stacks


@pytest.mark.timeout(300)
def test_each_app_is_measured_in_a_process_of_its_own_once_a_round() -> None:
    found = profile_requests.cpu(["bare", "bare_token"], rounds=2, measured=60)
    assert set(found) == {"bare", "bare_token"}
    for runs in found.values():
        assert len(runs) == 2 and all(20 < run < 100_000 for run in runs), found  # µs a request: a real request's
