"""Uvicorn in a background thread, for tests: started, or failed loudly with what the server said.

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on"))
    with serve_in_thread(server, name="uvicorn-x"):
        ...                                     # serving here; stopped when the block ends

A server that does not start (its lifespan raised or reported `lifespan.startup.failed`, the port
was taken, it hung) raises :class:`ServerDidNotStart` naming the cause: the lifespan's exception
and message (caught at the app, whatever uvicorn's log level), the records uvicorn's loggers emitted
from the server's thread, and what ended the thread. A hung server is stopped before the raise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["START_PATIENCE", "ServerDidNotStart", "said", "serve_in_thread"]

START_PATIENCE = 10.0
"""Seconds a server has to start (its lifespan's startup included)."""
_SHOWN = 4000
"""Characters of what the server said that a failure message carries (the end: the cause is last)."""
_UVICORN = "uvicorn"
"""The parent of uvicorn's loggers (`uvicorn.error` propagates to it)."""


def said(log: Path) -> str:
    """The end of a process's output file, for a message saying why it did not start."""
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(its output {log} cannot be read: {exc})"
    return text[-_SHOWN:].rstrip() or "(nothing)"


class ServerDidNotStart(RuntimeError):
    """The server did not start; the message says why, as far as the server said."""


class _Said:
    """What one server said while starting: its lifespan's failure, its log records, how its thread ended."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, text: str) -> None:
        self.lines.append(text.rstrip())

    def text(self) -> str:
        joined = "\n".join(self.lines) or "(nothing: no log record, no lifespan failure, no exception)"
        return joined[-_SHOWN:]


class _ThreadRecords(logging.Handler):
    """Keeps the uvicorn records emitted from one thread (several servers may run in one process)."""

    def __init__(self, thread: str, said: _Said) -> None:
        super().__init__(logging.DEBUG)
        self.thread = thread
        self.said = said

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != self.thread:
            return
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        self.said.add(text)


class _WatchedLifespan:
    """Passes everything through; keeps what the app's lifespan raised or reported as failed."""

    def __init__(self, app: ASGIApp, said: _Said) -> None:
        self.app = app
        self.said = said

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watched(message: Message) -> None:
            if message["type"].endswith(".failed"):
                self.said.add(f"{message['type']}: {message.get('message', '')}")
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except BaseException as exc:
            self.said.add("the lifespan raised:\n" + "".join(traceback.format_exception(exc)))
            raise


@contextlib.contextmanager
def serve_in_thread(server: uvicorn.Server, *, name: str, patience: float = START_PATIENCE) -> Iterator[None]:
    """Run `server` (not yet run) in a daemon thread called `name` until the block ends.

    Raises :class:`ServerDidNotStart` with what the server said if it is not serving within `patience` s.
    """
    said = _Said()
    server.config.app = _WatchedLifespan(server.config.app, said)  # the config loads (wraps) its app in run()
    records = _ThreadRecords(name, said)

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn ends a server that cannot bind with sys.exit(1)
            said.add(f"the server thread ended with {type(exc).__name__}: {exc!r}")
            said.add("".join(traceback.format_exception(exc)))

    thread = threading.Thread(target=run, name=name, daemon=True)
    logger = logging.getLogger(_UVICORN)
    logger.addHandler(records)
    try:
        thread.start()
        deadline = time.monotonic() + patience
        while not server.started:
            if not thread.is_alive():
                raise ServerDidNotStart(f"{name} did not start, it stopped; it said:\n{said.text()}")
            if time.monotonic() > deadline:
                server.should_exit = True
                thread.join(patience)
                raise ServerDidNotStart(
                    f"{name} did not start within {patience:g} s (stopped); it said:\n{said.text()}"
                )
            time.sleep(0.01)
    finally:
        logger.removeHandler(records)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
