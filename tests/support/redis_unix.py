"""A real `redis-server` listening on a Unix socket only (for `redis+unix://` store URLs)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import processes
from .serving import said

__all__ = ["redis_on_unix_socket"]


@contextlib.contextmanager
def redis_on_unix_socket(binary: str, patience: float = 10.0) -> Iterator[Path]:
    """Start `binary` with no TCP port and a socket in a short temporary directory; yield the socket's path."""
    directory = Path(tempfile.mkdtemp(prefix="mcpmw-redis-"))  # short: socket paths are limited to ~108 bytes
    path = directory / "redis.sock"
    command = [binary, "--port", "0", "--unixsocket", str(path), "--save", "", "--appendonly", "no"]
    command += ["--dir", str(directory), "--loglevel", "warning"]
    log = directory / "redis-server.log"
    with log.open("wb") as output:  # what it says goes to a file: a failure to start quotes it
        process = processes.start(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + patience
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}; it said:\n{said(log)}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.2)
                sock.connect(str(path))
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on its Unix socket; it said:\n{said(log)}")
            time.sleep(0.02)
        yield path
    finally:
        processes.stop(process, patience=5)
        shutil.rmtree(directory, ignore_errors=True)
