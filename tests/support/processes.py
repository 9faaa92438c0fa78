"""Processes started by tests: each in a session of its own, stopped with its whole process group.

Every test or fixture that starts a process goes through this module, so that a wrapper (`npx`,
`sh -c`, `uvicorn --reload`, a gateway with stdio children) never leaves its children behind:

    with running([sys.executable, "-m", "mcp_middleware.gateway", "serve", ...]) as gateway:
        ...                                     # gateway.pid is also its process group id
    done = run([npx, "-y", "some-cli"], capture_output=True, text=True, timeout=60)

`start` puts the process in a new session (its pid is its group id) and remembers the group; `stop`
sends SIGTERM to the group, waits until the process and every member are gone, and sends SIGKILL
after the bound. `run` is `subprocess.run` with the same guarantee, also for what the command left
running after it exited.

The session-end check in tests/conftest.py calls `begin_run()` first and `leftovers()` last: the
processes of this run still alive (descendants of pytest, members of a group or session one of its
processes created, anything that inherited this run's environment tag). Linux /proc only; elsewhere
it finds nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "start_gateway",
    "wait_listening",
    "KILL_PATIENCE",
    "TERM_PATIENCE",
    "Proc",
    "alive",
    "begin_run",
    "descendants",
    "end",
    "leftovers",
    "remember_descendant_groups",
    "run",
    "running",
    "snapshot",
    "start",
    "stop",
    "stop_all",
]

TERM_PATIENCE = 10.0
"""Seconds a stopped group has after SIGTERM before SIGKILL (a gateway lets in-flight requests finish)."""
KILL_PATIENCE = 5.0
"""Seconds to wait for the group to disappear after SIGKILL."""
RUN_TAG = "MCP_MIDDLEWARE_TEST_RUN"
"""Environment variable carrying the tokens of the test runs a process descends from (colon-separated)."""

WATCH_INTERVAL = 0.5
"""Seconds between two looks at pytest's descendants while the run goes on."""

_PROC = Path("/proc")
_POLL = 0.02
_groups: set[int] = set()
"""Process groups and sessions created by this run's processes that may still have members."""
_groups_lock = threading.Lock()
_token = f"{os.getpid()}-{secrets.token_hex(4)}"
_run_over = threading.Event()


# --- /proc ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    started: int
    """Start time in clock ticks since boot: a process of this run started after pytest did."""

    @property
    def cmdline(self) -> str:
        try:
            raw = (_PROC / str(self.pid) / "cmdline").read_bytes()
        except OSError:
            return "?"
        return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or "?"

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    def describe(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, pgid {self.pgid}, sid {self.sid}): {self.cmdline}"


def _read(pid: int) -> Proc | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name before ")" may hold spaces and parentheses
    state, ppid, pgid, sid = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    return Proc(pid, ppid, pgid, sid, state, int(fields[19]))


def snapshot() -> dict[int, Proc]:
    """Every process /proc lists (thread ids are not listed, so pytest's threads never appear)."""
    table: dict[int, Proc] = {}
    with contextlib.suppress(OSError):
        for entry in os.listdir(_PROC):
            if entry.isdigit() and (proc := _read(int(entry))) is not None:
                table[proc.pid] = proc
    return table


def descendants(pid: int, table: dict[int, Proc] | None = None) -> list[Proc]:
    """The live processes below `pid` (children, grandchildren, ...), by parent pid."""
    table = snapshot() if table is None else table
    children: dict[int, list[Proc]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid != pid and not child.zombie:
                found.append(child)
                todo.append(child.pid)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has exited: only its exit status is left)."""
    proc = _read(pid)
    return proc is not None and not proc.zombie


def _tags(pid: int) -> set[str]:
    try:
        environ = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return set()
    prefix = RUN_TAG.encode() + b"="
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return set(item[len(prefix) :].decode(errors="replace").split(":"))
    return set()


# --- process groups ------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not _PROC.is_dir():
        return True
    # Zombies answer signal 0 too; an orphan's zombie waits for init, which need not reap promptly.
    return any(proc.pgid == pgid and not proc.zombie for proc in snapshot().values())


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _wait_gone(process: subprocess.Popen[Any], patience: float) -> bool:
    deadline = time.monotonic() + patience
    while True:
        process.poll()  # reaps the leader: a zombie leader would keep its group looking alive
        if process.returncode is not None and not _group_alive(process.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def remember_descendant_groups(root: int | None = None) -> None:
    """Note the groups and sessions of `root`'s descendants (pytest's by default), and forget dead ones.

    A process that moved itself to a session of its own (a gateway's stdio child, say) is no longer
    in the group `stop` signals: if it outlives its parent, the session-end check still finds it.
    """
    with _groups_lock:
        known = set(_groups)
    table = snapshot()
    me = table.get(os.getpid())
    if me is None:
        return
    own = {me.pgid, me.sid}
    seen = {ident for proc in descendants(me.pid if root is None else root, table) for ident in (proc.pgid, proc.sid)}
    populated = {ident for proc in table.values() if not proc.zombie for ident in (proc.pgid, proc.sid)}
    with _groups_lock:
        _groups.update(seen - own)
        _groups.difference_update(known - populated)  # only what was known before the look: no race with `start`


def start(args: Sequence[str | os.PathLike[str]], **popen: Any) -> subprocess.Popen[Any]:
    """`subprocess.Popen(args, **popen)` in a new session: its pid is the group `stop` ends."""
    if popen.pop("start_new_session", True) is not True or "process_group" in popen:
        raise ValueError("a test process always gets a session of its own")
    process: subprocess.Popen[Any] = subprocess.Popen(args, start_new_session=True, **popen)
    with _groups_lock:
        _groups.add(process.pid)
    return process


def stop(process: subprocess.Popen[Any], patience: float = TERM_PATIENCE) -> int | None:
    """SIGTERM the process's group; SIGKILL it if the process or any member is left after `patience` s.

    Returns the exit code (negative: the signal), None only if even SIGKILL did not end it.
    """
    stop_all([process], patience)
    return process.returncode


def stop_all(started: Iterable[subprocess.Popen[Any]], patience: float = TERM_PATIENCE) -> None:
    """`stop` for several processes at once: every group gets SIGTERM before any is waited for."""
    started = list(started)
    pending = []
    for process in started:
        process.poll()
        if process.returncode is None or _group_alive(process.pid):
            remember_descendant_groups(process.pid)
            _signal_group(process.pid, signal.SIGTERM)
            pending.append(process)
    deadline = time.monotonic() + patience
    stubborn = [process for process in pending if not _wait_gone(process, deadline - time.monotonic())]
    for process in stubborn:
        _signal_group(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_PATIENCE
    for process in stubborn:
        _wait_gone(process, deadline - time.monotonic())
    gone = {process.pid for process in started if not _group_alive(process.pid)}
    with _groups_lock:
        _groups.difference_update(gone)


@contextlib.contextmanager
def running(
    args: Sequence[str | os.PathLike[str]], *, patience: float = TERM_PATIENCE, **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """`start` on entry, `stop` (and pipes closed) on exit, however the block ends."""
    process = start(args, **popen)
    try:
        yield process
    finally:
        stop(process, patience)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    input: Any = None,
    capture_output: bool = False,
    check: bool = False,
    **popen: Any,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run` whose command runs in a group of its own: on timeout the whole group is stopped
    (not just the command), and whatever the command left running after it exited is stopped too."""
    if capture_output:
        popen["stdout"] = popen["stderr"] = subprocess.PIPE
    if input is not None:
        popen.setdefault("stdin", subprocess.PIPE)
    process = start(args, **popen)
    try:
        stdout, stderr = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process, KILL_PATIENCE)
        stdout = stderr = None
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
            stdout, stderr = process.communicate(timeout=KILL_PATIENCE)
        raise subprocess.TimeoutExpired(process.args, timeout, output=stdout, stderr=stderr) from None
    finally:
        stop(process, KILL_PATIENCE)
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if check:
        completed.check_returncode()
    return completed


# --- the run as a whole --------------------------------------------------------------------------


def begin_run() -> None:
    """Start watching this run's processes (call once, before any test starts one).

    Tags this process's environment: every process started from it inherits the tag (and keeps it
    when orphaned to init). A process started with a clean environment (the SDK's stdio client
    starts servers so) carries no tag: a thread notes the sessions and groups of pytest's
    descendants every `WATCH_INTERVAL` s, so one orphaned later in such a session is still found.
    """
    tokens = [token for token in os.environ.get(RUN_TAG, "").split(":") if token]
    if _token in tokens:
        return  # already begun
    os.environ[RUN_TAG] = ":".join([*tokens, _token])
    threading.Thread(target=_watch, name="test-process-watch", daemon=True).start()


def _watch() -> None:
    while not _run_over.wait(WATCH_INTERVAL):
        remember_descendant_groups()


def leftovers() -> list[Proc]:
    """The processes of this run that are still alive: descendants of pytest, members of a group or
    session a process of this run created, and orphans that inherited this run's environment tag.
    Ends the watching `begin_run` started."""
    _run_over.set()
    table = snapshot()
    me = table.get(os.getpid())
    if me is None:
        return []
    own = {me.pgid, me.sid}
    found = {proc.pid: proc for proc in descendants(me.pid, table)}
    for proc in table.values():
        if proc.pid == me.pid or proc.pid in found or proc.zombie or proc.started < me.started:
            continue  # started before pytest: not ours, whatever its group id says (pids are reused)
        with _groups_lock:
            ours = bool(({proc.pgid, proc.sid} - own) & _groups)
        if ours or _token in _tags(proc.pid):
            found[proc.pid] = proc
    return sorted(found.values(), key=lambda proc: proc.pid)


def end(procs: Iterable[Proc], patience: float = KILL_PATIENCE) -> None:
    """SIGTERM these processes by pid, SIGKILL those left after `patience` s."""
    pids = [proc.pid for proc in procs]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        deadline = time.monotonic() + patience
        while (pids := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if not pids:
            return


def wait_listening(port: int, process: subprocess.Popen[Any], log: Path, patience: float = 30.0) -> None:
    """Wait until `process` accepts connections on 127.0.0.1:`port`; if it exits or `patience` runs out,
    raise with the tail of its `log` (the caller stops it)."""
    deadline = time.monotonic() + patience
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {process.returncode}" if process.poll() is not None else f"not listening on {port}"
            raise RuntimeError(f"{state}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def start_gateway(config: Path, port: int, log: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`mcp-gateway serve` in a group of its own, its output in `log`, returned once it listens (stopped if it never
    does); the caller stops it."""
    command = [sys.executable, "-m", "mcp_middleware.gateway", "serve", "-c", str(config), "--port", str(port)]
    root = Path(__file__).resolve().parents[2]
    process = start(command, cwd=root, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        wait_listening(port, process, log)
    except RuntimeError:
        stop(process)
        raise
    return process
