"""Async context managers held open each by a task of its own (a backend's lifespan, a stdio bridge).

The router enters every backend's lifespan through :class:`HeldContexts`, so one backend can be closed
while the others run on (:mod:`.registry` retires replaced backends this way).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Hashable

import anyio
import anyio.abc

__all__ = ["HeldContexts", "single"]

logger = logging.getLogger("mcp_middleware.router")


class HeldContexts:
    """Async context managers each held open by a task of its own, so that any one can be left alone.

    (anyio cancel scopes must be left by the task that entered them: a backend entered by the
    router's lifespan task could otherwise only be closed with all the others.)
    """

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        self._held: dict[Hashable, tuple[anyio.Event, anyio.Event]] = {}
        self._failures: list[BaseException] = []

    def __contains__(self, key: Hashable) -> bool:
        return key in self._held

    async def enter(self, key: Hashable, context: contextlib.AbstractAsyncContextManager[object]) -> None:
        """Enter `context` in a task of its own; its failure to enter is raised here."""
        await self._group.start(self._hold, key, context)

    async def exit(self, key: Hashable) -> None:
        """Leave the context held under `key` (nothing when there is none) and wait until it is left."""
        held = self._held.pop(key, None)
        if held is not None:
            held[0].set()
            await held[1].wait()

    async def close(self) -> None:
        """Leave every held context, the last entered first; raise the first failure to leave one."""
        for key in reversed(list(self._held)):
            await self.exit(key)
        if self._failures:
            raise self._failures[0]

    async def _hold(
        self,
        key: Hashable,
        context: contextlib.AbstractAsyncContextManager[object],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        stop, left = anyio.Event(), anyio.Event()
        entered = False
        try:
            async with context:
                entered = True
                self._held[key] = (stop, left)
                task_status.started()
                await stop.wait()
        except Exception as exc:
            if not entered:
                raise  # `enter` raises it
            logger.warning("closing %r failed: %s", key, exc)  # a retired backend's trouble stays its own
            self._failures.append(exc)
        finally:
            left.set()


def single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) one-member groups (a backend's lifespan runs in task groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
