"""Reading an answer as the JSON-RPC messages it carries, whether it came as JSON or as an event stream."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson

__all__ = ["json_of", "sse_messages"]


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


def json_of(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response of an answer: its JSON body, or the one response in its event stream."""
    if response.headers["content-type"].startswith("text/event-stream"):
        messages = [m for m in sse_messages(response.text) if "id" in m and "method" not in m]
        assert len(messages) == 1, response.text
        return messages[0]
    parsed: dict[str, Any] = response.json()
    return parsed
