"""A stdio server's stderr, line by line, into the log with the server's name in front.

The SDK hands a stdio server's stderr to a file object (`errlog`, the gateway's own stderr by
default), so several servers' output arrives unprefixed and interleaved. Here the server writes
into a pipe instead; a task of the session reads it without blocking the event loop (the read
end is non-blocking and awaited with `anyio.wait_readable`) and logs each line as
`[name] line` on the logger `mcp_middleware.router.stdio` at INFO. When nothing is configured
to handle that logger (a library user who set up no logging), the prefixed line goes to this
process's stderr, as the unprefixed one did before.

>>> # async with logged_stderr("github") as errlog:
>>> #     async with Client(stdio_client(params, errlog=errlog.file)) as client:
>>> #         errlog.spawned()
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import TextIO

import anyio

__all__ = ["MAX_LINE", "StderrLines", "logged_stderr"]

logger = logging.getLogger("mcp_middleware.router.stdio")

MAX_LINE = 16 * 1024
"""Longer lines are logged in pieces of this many bytes (a server that never writes a newline must not
grow the buffer without bound)."""

_DRAIN = 1.0
"""Seconds to wait, once the session is over, for what the server wrote last."""


class StderrLines:
    """A pipe for a stdio server's stderr and the task that logs what arrives, prefixed by `name`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.file: TextIO = sys.stderr
        """What to give the SDK as `errlog` (the pipe's write end while open)."""
        self._done = anyio.Event()

    def spawned(self) -> None:
        """The server holds its copy of the write end now: drop ours, so its exit reads as the end."""
        if self.file is not sys.stderr and not self.file.closed:
            self.file.close()

    async def _pump(self, read: int) -> None:
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(read, 65536)
                except BlockingIOError:
                    await anyio.wait_readable(read)
                    continue
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line)
                while len(pending) > MAX_LINE:
                    self._emit(pending[:MAX_LINE])
                    pending = pending[MAX_LINE:]
            if pending:
                self._emit(pending)
        except OSError as exc:  # the pipe failed: say so once, lose the rest rather than the session
            logger.warning("[%s] stderr unreadable: %s", self.name, exc)
        finally:
            self._done.set()

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if logger.hasHandlers():
            logger.info("[%s] %s", self.name, line)
        else:  # nobody configured logging: keep the server's output visible, now with its name
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def logged_stderr(name: str) -> AsyncIterator[StderrLines]:
    """A :class:`StderrLines` whose pipe is read while the block runs; call `spawned()` once the
    process started. On the way out, what the server wrote last is read for up to a second."""
    lines = StderrLines(name)
    if sys.platform == "win32":  # no awaitable pipes on the proactor loop: the SDK's own handling
        yield lines
        return
    read, write = os.pipe()
    os.set_blocking(read, False)
    lines.file = os.fdopen(write, "w")
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(lines._pump, read)
            try:
                yield lines
            finally:
                lines.spawned()
                with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN):
                    await lines._done.wait()  # the server (and its group) ended: the pipe reaches its end
                group.cancel_scope.cancel()
    finally:
        lines.spawned()  # the block may have failed before the write end was handed over
        os.close(read)  # here, not in the reader: it may be cancelled before it ever ran
