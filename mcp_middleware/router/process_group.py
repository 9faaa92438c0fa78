"""A stdio server's process group, known from its start and ended whole when its session closes.

The `mcp` SDK starts a stdio server in a session of its own and, when the session closes, shuts its
stdin and waits; it signals the whole group only if the server itself has not exited within 2 s.
A wrapper that does exit in time (`sh -c`, `npx`, `uvx`, a script) leaves running whatever else it
started: a background helper, a child that ignores the end of its input. A supervised backend that
crashes and restarts would leave one more each time. So the command starts through
`/bin/sh -c 'echo $$ >FILE; exec "$@"'`: the shell writes its pid, which is the id of the session and
group the SDK made for it, then becomes the command (same pid, nothing stays in between). When the
session is over, what is left of the group gets SIGTERM, then SIGKILL after `GROUP_PATIENCE` s.

On Windows the SDK puts the server in a Job Object, which ends the whole tree: nothing to add there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

__all__ = ["GROUP_PATIENCE", "ServerGroup"]

logger = logging.getLogger("mcp_middleware.router")

GROUP_PATIENCE = 2.0
"""Seconds between SIGTERM and SIGKILL for what is left of a group (the SDK's own bound)."""

_SHELL = "/bin/sh"
_RECORD_AND_EXEC = 'echo $$ >"$1"; shift; exec "$@"'
_POLL = 0.02


class ServerGroup:
    """The command line that records the server's group, and the ending of that group.

    >>> group = ServerGroup("npx", ["-y", "@modelcontextprotocol/server-everything"])
    >>> # StdioServerParameters(command=group.command, args=group.args); once connected: group.learn();
    >>> # when the session has closed: await group.end()
    """

    def __init__(self, command: str, args: Sequence[str]) -> None:
        self.command, self.args = command, list(args)
        self._shown = " ".join([command, *args])
        self.pgid: int | None = None
        self._pidfile: str | None = None
        if sys.platform == "win32" or not os.access(_SHELL, os.X_OK):
            return  # Windows, or no shell (a distroless image): the SDK's own handling only
        try:
            fd, self._pidfile = tempfile.mkstemp(prefix="mcp-stdio-", suffix=".pid")
        except OSError as exc:
            logger.warning("cannot record the process group of %s (%s): its children may outlive it", command, exc)
            return
        os.close(fd)
        self.command = _SHELL
        self.args = ["-c", _RECORD_AND_EXEC, "mcp-stdio", self._pidfile, command, *args]

    def learn(self) -> None:
        """Read the group id the shell recorded (it has, once the server answered) and drop the file."""
        if self._pidfile is None:
            return
        pidfile, self._pidfile = self._pidfile, None
        with contextlib.suppress(OSError):
            text = Path(pidfile).read_text().strip()
            if text.isdigit() and int(text) > 1 and int(text) not in (os.getpid(), os.getpgrp()):
                self.pgid = int(text)
        with contextlib.suppress(OSError):
            os.unlink(pidfile)

    async def end(self, patience: float = GROUP_PATIENCE) -> None:
        """SIGTERM what is left of the group, SIGKILL it after `patience` s; returns once it is gone or
        killed. Runs to the end even when the caller is being cancelled."""
        with anyio.CancelScope(shield=True):
            self.learn()
            if self.pgid is None or _exists(self.pgid):
                # Once the SDK has closed, the leader is gone unless even its SIGKILL failed; a live
                # process with that pid may be someone else's by now. While any member of the group is
                # left, its id cannot be handed out again: signalling it reaches only what we started.
                return
            if not _signal(self.pgid, signal.SIGTERM):
                return  # the server and everything it started are gone already: the usual case
            logger.info("%s left processes in its group %d after its session: terminating them", self._shown, self.pgid)
            with anyio.move_on_after(patience):
                while _signal(self.pgid, 0):  # noqa: ASYNC110 (no event tells when a group is gone)
                    await anyio.sleep(_POLL)
                return
            logger.warning("%s: group %d ignored SIGTERM for %.1f s: killing it", self._shown, self.pgid, patience)
            _signal(self.pgid, signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgid: int, signum: int) -> bool:
    """Signal the group; False once it has no member left (EPERM proves nothing: keep counting it)."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
