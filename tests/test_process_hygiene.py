"""No test leaves a process behind: the helper stops whole groups, and the session-end check of
tests/conftest.py fails a run that leaks, naming the process (proved on small pytest runs of their own)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import processes

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists() and not os.environ.get("CI"),
    reason="the check reads /proc (Linux); CI runs it",
)

LEAKY = """
import os
import subprocess

import pytest


def test_an_orphan_that_inherited_the_environment():
    # The shell exits at once; its background sleep is reparented to init, in pytest's own group.
    subprocess.run(["sh", "-c", "sleep 61 &"], stdout=subprocess.DEVNULL, check=True)


@pytest.fixture
def wrapper():
    # Issue 22's leak: a wrapper in a session of its own, with a clean environment, whose fixture
    # stops the wrapper and not what the wrapper started.
    process = subprocess.Popen(
        ["sh", "-c", "sleep 62 & echo forked; wait"],
        start_new_session=True,
        env={"PATH": os.environ["PATH"]},
        stdout=subprocess.PIPE,
    )
    assert process.stdout.readline() == b"forked\\n"  # killed before it forks (a loaded machine), it leaks nothing
    yield process
    process.kill()
    process.wait()


def test_a_fixture_that_stops_only_the_wrapper(wrapper):
    assert wrapper.poll() is None
"""

CLEAN = """
import subprocess
import threading
import time

import pytest

from tests.support import processes


@pytest.fixture(scope="session")
def shared():
    with processes.running(["sh", "-c", "sleep 63; :"]) as process:  # a wrapper with a child: both stopped
        yield process


def test_a_process_shared_by_the_session(shared):
    assert shared.poll() is None
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()  # threads are not processes


def test_a_command_run_to_completion():
    assert processes.run(["sh", "-c", "echo ok"], capture_output=True, text=True, timeout=30).stdout == "ok\\n"
"""


def inner_run(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """A pytest session of its own, with tests/conftest.py's hooks loaded as a plugin."""
    (tmp_path / "test_inner.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "test_inner.py"]
    return processes.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_run_that_leaks_fails_and_names_each_process(tmp_path: Path) -> None:
    done = inner_run(tmp_path, LEAKY)
    output = done.stdout + done.stderr
    assert "2 passed" in output, output  # the tests pass: only the check fails the run
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "processes left behind" in output
    # A child caught between fork and exec is still named by its shell's command line, which holds the sleep's.
    named = {int(pid): sleep for pid, sleep in re.findall(r"left behind: pid (\d+) [^\n]*?(sleep 6[12])", output)}
    assert sorted(named.values()) == ["sleep 61", "sleep 62"], output
    for pid in named:  # the check ended what it named
        assert not processes.alive(pid), f"{pid} ({named[pid]}) is still running"


def test_a_clean_run_passes_with_a_session_wide_process_and_threads(tmp_path: Path) -> None:
    done = inner_run(tmp_path, CLEAN)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.OK, output
    assert "left behind" not in output


def test_stop_ends_a_wrapper_and_what_it_started() -> None:
    with processes.running(["sh", "-c", "sleep 64 & sleep 65; :"]) as wrapper:
        deadline = time.monotonic() + 10
        while True:  # forked, then exec'd: wait until both children are the sleeps
            children = processes.descendants(wrapper.pid)
            if sorted(child.cmdline for child in children) == ["sleep 64", "sleep 65"]:
                break
            assert time.monotonic() < deadline, [child.describe() for child in children]
            time.sleep(0.02)
    assert not any(processes.alive(child.pid) for child in children)
    assert wrapper.returncode == -signal.SIGTERM


def test_stop_kills_a_group_that_ignores_sigterm() -> None:
    with processes.running(["sh", "-c", "trap '' TERM; sleep 66 & wait"], patience=0.5) as wrapper:
        deadline = time.monotonic() + 10
        while not (children := processes.descendants(wrapper.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
    assert time.monotonic() - started < 5  # SIGKILL after the bound, not a hang
    assert wrapper.returncode == -signal.SIGKILL
    assert children and not any(processes.alive(child.pid) for child in children)


def test_run_stops_the_whole_group_on_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run(["sh", "-c", "sleep 67 & sleep 68; :"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert not [proc for proc in processes.snapshot().values() if proc.cmdline in ("sleep 67", "sleep 68")]


STOPPED = """
import os
import time

import pytest

from tests.support import processes


@pytest.fixture
def started():
    with processes.running(["sleep", "66"]) as process:  # in a session of its own, as every test process
        yield process


def test_stopped_by_sigterm_while_it_runs(started):
    with open("started.pid", "w") as file:
        file.write(str(started.pid))
    time.sleep(60)
"""


def test_a_run_stopped_by_sigterm_stops_what_its_tests_started(tmp_path: Path) -> None:
    """A CI job's timeout or a `kill` of the run's group sends SIGTERM: the fixtures still stop their processes,
    which live in sessions of their own and would otherwise outlive the run."""
    (tmp_path / "test_inner.py").write_text(STOPPED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "test_inner.py"]
    marker = tmp_path / "started.pid"
    with processes.running(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as run:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert run.poll() is None and time.monotonic() < deadline, "the inner test did not start"
            time.sleep(0.05)
        sleep_pid = int(marker.read_text())
        assert processes.alive(sleep_pid)
        os.kill(run.pid, signal.SIGTERM)  # the run alone: its test's process is in another session
        try:
            run.wait(timeout=30)
            assert not processes.alive(sleep_pid), "the test's process outlived the run"
        finally:
            if processes.alive(sleep_pid):
                os.kill(sleep_pid, signal.SIGKILL)
    assert run.returncode == pytest.ExitCode.INTERRUPTED, run.stdout.read().decode() if run.stdout else ""
