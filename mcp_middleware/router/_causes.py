"""What an exception was raised from: the SDK and the task groups wrap the error that says why."""

from __future__ import annotations

__all__ = ["causes"]


def causes(exc: BaseException) -> list[BaseException]:
    """`exc`, its causes and contexts, and the members of exception groups among them (bounded, each once)."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if any(current is known for known in seen):
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return seen
