"""One installer at a time per install prefix under the project's `.cache/` (npm packages, node 22).

Under pytest-xdist several workers may want the same install at once (the conformance suite, the
Inspector, the TypeScript SDK): two `npm install` runs writing into one prefix can leave it half
written. `holding(prefix)` takes an exclusive `fcntl.flock` on `<prefix>.lock` around the
check-and-install, so the second worker waits, then finds the install done:

    with holding(prefix):
        if not installed(prefix):
            install(prefix)

The lock is released when the block ends or the process dies (the kernel drops a dead holder's lock).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

__all__ = ["holding"]


@contextlib.contextmanager
def holding(prefix: Path) -> Iterator[None]:
    """Hold the exclusive lock of install prefix `prefix` (the file `<prefix>.lock` beside it) for the block."""
    lock = prefix.with_name(prefix.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another process installs; its install is bounded
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
