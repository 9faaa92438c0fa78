"""Reading a `text/event-stream` body as the JSON-RPC messages it carries."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["sse_messages"]


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON messages of an SSE body, in order: one per event whose `data:` lines are not empty.

    Events are split on blank lines (`\\n` or `\\r\\n`), the `data:` lines of one event joined with
    `\\n` as the SSE spec says; events without data (priming events, comments) are skipped.
    """
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
        if data.strip():
            messages.append(orjson.loads(data))
    return messages
