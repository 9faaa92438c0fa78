"""`ServerGroup`: the group id a stdio command's shell records, and the ending of what is left of it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from mcp_middleware.router.process_group import ServerGroup
from tests.support import processes

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not Path("/proc/self/stat").exists() and not os.environ.get("CI"),
        reason="reads the process tree from /proc; CI runs it",
    ),
]


def members(pgid: int) -> list[processes.Proc]:
    return [proc for proc in processes.snapshot().values() if proc.pgid == pgid and not proc.zombie]


def started(group: ServerGroup, expected: int) -> subprocess.Popen[bytes]:
    """Start the wrapped command as the SDK does (a session of its own), wait for `expected` members."""
    process = processes.start([group.command, *group.args], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while len(members(process.pid)) < expected:
        assert time.monotonic() < deadline, [proc.describe() for proc in members(process.pid)]
        time.sleep(0.02)
    return process


async def test_the_shell_records_the_group_and_becomes_the_command() -> None:
    group = ServerGroup("sleep", ["30"])
    assert group.command == "/bin/sh" and group.args[-2:] == ["sleep", "30"]
    pidfile = Path(group.args[3])
    process = started(group, 1)
    try:
        deadline = time.monotonic() + 10
        while members(process.pid)[0].cmdline != "sleep 30":  # the shell has written the file and exec'd
            assert time.monotonic() < deadline
            await anyio.sleep(0.02)
        group.learn()
        assert group.pgid == process.pid  # exec'd: the server is the leader, no shell in between
        assert not await anyio.Path(pidfile).exists()
        await group.end()  # the leader is alive (the SDK has not closed it): not ours to judge
        assert processes.alive(process.pid)
    finally:
        processes.stop(process)


async def test_what_is_left_gets_sigterm_once_the_leader_is_gone() -> None:
    group = ServerGroup("sh", ["-c", "sleep 300 & exec sleep 301"])
    process = started(group, 2)
    os.kill(process.pid, signal.SIGKILL)  # the server dies; the wrapper's helper stays in the group
    process.wait(5)
    [helper] = members(process.pid)
    group.learn()
    await group.end()
    assert not processes.alive(helper.pid)
    processes.stop(process)


async def test_a_group_that_ignores_sigterm_is_killed_after_the_bound() -> None:
    group = ServerGroup("sh", ["-c", "trap '' TERM; sleep 302 & exec sleep 303"])
    process = started(group, 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)
    [helper] = members(process.pid)
    begun = anyio.current_time()
    await group.end(patience=0.5)
    assert 0.5 <= anyio.current_time() - begun < 3
    deadline = time.monotonic() + 5
    while processes.alive(helper.pid):
        assert time.monotonic() < deadline, helper.describe()
        await anyio.sleep(0.02)
    processes.stop(process)


async def test_ending_runs_to_the_end_under_cancellation() -> None:
    group = ServerGroup("sh", ["-c", "sleep 304 & exec sleep 305"])
    process = started(group, 2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(5)
    [helper] = members(process.pid)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await group.end()
    assert not processes.alive(helper.pid)
    processes.stop(process)
