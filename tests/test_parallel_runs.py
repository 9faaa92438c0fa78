"""The suite under pytest-xdist (`make test`: `-n 3 --dist loadgroup`): the tests of a module sharing a
module-scoped fixture run in one worker (the fixture is built once), the `SIGNALS` tests run in one worker,
a process a worker leaves behind still fails the run, and installs into `.cache/` never overlap (proved on
pytest runs and processes of their own)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.install_lock import holding
from tests.test_process_hygiene import LEAKY

ROOT = Path(__file__).resolve().parents[1]

SHARED = """
import os
from pathlib import Path

import pytest

from tests.conftest import SIGNALS

LOG = Path(os.environ["INNER_LOG"])


def note(kind):
    with LOG.open("a") as log:
        log.write(f"{kind} {os.environ.get('PYTEST_XDIST_WORKER', 'main')}\\n")


@pytest.fixture(scope="module")
def cluster():
    note("built")
    return "cluster"


@pytest.mark.parametrize("n", range(8))
def test_uses_the_module_fixture(cluster, n):
    note("shared")


@pytest.mark.parametrize("n", range(8))
@pytest.mark.xdist_group(SIGNALS)
def test_times_a_signal(n):
    note("signals")


@pytest.mark.parametrize("n", range(8))
def test_stands_alone(tmp_path, n):
    note("alone")
"""

GROUPS = """
import pytest


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        print("GROUP", item.name, mark.args[0] if mark else None)
"""


def inner_run(
    tmp_path: Path, *args: str, source: str = SHARED
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
    """A pytest session of its own over `source` with tests/conftest.py's hooks: its result, what its tests noted."""
    (tmp_path / "test_inner.py").write_text(source)
    (tmp_path / "inner_groups.py").write_text(GROUPS)
    log = tmp_path / "inner.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "INNER_LOG": str(log)}
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-s", *args]
    done = processes.run(
        [*command, "test_inner.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    lines = log.read_text().splitlines() if log.exists() else []
    noted = [(kind, worker) for kind, worker in (line.split() for line in lines)]
    return done, noted


def test_module_fixture_tests_are_grouped_by_module_and_signal_tests_keep_their_group(tmp_path: Path) -> None:
    done, _ = inner_run(tmp_path, "-p", "no:xdist", "-p", "inner_groups")  # also: strict markers without xdist
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.OK, output
    groups = dict(line.split(" ", 2)[1:] for line in done.stdout.splitlines() if line.startswith("GROUP "))
    assert len(groups) == 24, output
    expected = {"test_uses_the_module_fixture": "test_inner.py", "test_times_a_signal": "signals"}
    for name, group in groups.items():
        assert group == expected.get(name.split("[")[0], "None"), (name, group)


def test_under_xdist_each_group_runs_in_one_worker_and_the_fixture_is_built_once(tmp_path: Path) -> None:
    done, noted = inner_run(tmp_path, "-n", "2", "--dist", "loadgroup")
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.OK, output
    assert "24 passed" in output, output
    workers = {kind: {worker for k, worker in noted if k == kind} for kind in ("built", "shared", "signals", "alone")}
    assert workers["built"] == workers["shared"] and len(workers["shared"]) == 1, noted
    assert [kind for kind, _ in noted].count("built") == 1, noted
    assert len(workers["signals"]) == 1, noted
    assert workers["alone"] <= {"gw0", "gw1"} and workers["alone"], noted  # the run really had xdist workers


def test_a_process_left_behind_in_a_worker_fails_the_run_and_is_named(tmp_path: Path) -> None:
    """A worker's own output is not shown and its exit status is not the run's: the controller reports it."""
    done, _ = inner_run(tmp_path, "-n", "2", source=LEAKY)
    output = done.stdout + done.stderr
    assert "2 passed" in output, output
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "processes left behind" in output and "2 process(es) outlived the test run" in output, output
    named = {int(pid): sleep for pid, sleep in re.findall(r"left behind: pid (\d+) [^\n]*?(sleep 6[12])", output)}
    assert sorted(named.values()) == ["sleep 61", "sleep 62"], output
    assert not any(processes.alive(pid) for pid in named)


HOLDER = """
import sys, time
from pathlib import Path
from tests.support.install_lock import holding
from tests.test_process_hygiene import LEAKY

prefix, log = Path(sys.argv[1]), Path(sys.argv[2])
with holding(prefix):
    with log.open("a") as out:
        out.write(f"in {sys.argv[3]}\\n")
    if sys.argv[3] == "forever":
        print("holding", flush=True)
        time.sleep(600)
    time.sleep(0.3)  # a second holder arriving now must wait: its line comes after "out"
    with log.open("a") as out:
        out.write(f"out {sys.argv[3]}\\n")
"""


def test_installs_into_one_prefix_take_turns(tmp_path: Path) -> None:
    script, log, prefix = tmp_path / "holder.py", tmp_path / "turns.log", tmp_path / "cache" / "suite"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = [processes.start([sys.executable, str(script), str(prefix), str(log), name], env=env) for name in "abcd"]
    try:
        assert [process.wait(60) for process in started] == [0, 0, 0, 0]
    finally:
        processes.stop_all(started)
    lines = log.read_text().splitlines()
    assert len(lines) == 8, lines
    for index in range(0, 8, 2):  # never two inside at once: every "in x" is followed by its own "out x"
        assert lines[index].startswith("in ") and lines[index + 1] == "out " + lines[index][3:], lines


def test_a_holder_killed_mid_install_releases_the_lock(tmp_path: Path) -> None:
    script, log, prefix = tmp_path / "holder.py", tmp_path / "turns.log", tmp_path / "cache" / "suite"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with processes.running(
        [sys.executable, str(script), str(prefix), str(log), "forever"], env=env, stdout=subprocess.PIPE
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        entered = threading.Event()

        def wait_for_the_lock() -> None:
            with holding(prefix):
                entered.set()

        waiter = threading.Thread(target=wait_for_the_lock, daemon=True)
        waiter.start()
        assert not entered.wait(0.5)  # held by the other process
        os.kill(holder.pid, signal.SIGKILL)  # an install killed half way (a timeout, a crash)
        assert entered.wait(30), "the lock of a dead holder was never released"
        waiter.join(30)
