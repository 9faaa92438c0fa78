"""Watching the config file for `[gateway] watch_config = true`, with `watchfiles` (inotify, FSEvents, …).

The file's folder is watched, not the file: editors save by writing a new file and renaming it over
the old one, and a Kubernetes ConfigMap volume swaps a `..data` symlink beside it; either way the
inode the gateway started with is gone. Every batch of changes in the folder calls `changed()`,
which compares the file's content with what was loaded last (so a touch reloads nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["watch_file"]

logger = logging.getLogger("mcp_middleware.gateway")

_DEBOUNCE_MS = 300
"""Changes within this many milliseconds are one batch (an editor's write, rename and chmod)."""


async def watch_file(path: Path, changed: Callable[[], None]) -> None:
    """Call `changed()` after each batch of changes in `path`'s folder, until cancelled."""
    from watchfiles import awatch

    folder = path.parent
    logger.info("watching %s for changes (watch_config)", path)
    try:
        async for _ in awatch(folder, recursive=False, debounce=_DEBOUNCE_MS, watch_filter=None):
            changed()
    except Exception as exc:  # the folder is gone, no watcher could start: the gateway serves on, SIGHUP works
        logger.warning("cannot watch %s (%s); reload with SIGHUP", path, exc)
