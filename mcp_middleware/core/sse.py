"""An incremental `text/event-stream` parser with a size bound (the response tap's, the cache's, the breaker's)."""

from __future__ import annotations

__all__ = ["SseParser"]


class SseParser:
    """Incremental `text/event-stream` parser (WHATWG rules) with a size bound.

    Accepts CRLF, LF or CR line endings split anywhere across chunks, ignores
    comments and unknown fields, and concatenates `data:` lines. A line or an
    event longer than `max_bytes` is dropped and `truncated` is set. A line that
    arrives in many chunks is joined once, when its end arrives; complete lines
    are split by `bytes.splitlines` (which breaks at exactly CRLF, LF and CR).
    """

    __slots__ = (
        "_after_cr",
        "_data",
        "_event",
        "_max",
        "_pending",
        "_pending_size",
        "_size",
        "_skip_event",
        "_skip_line",
        "truncated",
    )

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._after_cr = False
        self._data: list[bytes] = []
        self._size = 0
        self._event = b""
        self._skip_line = False
        self._skip_event = False
        self.truncated = False

    def feed(self, chunk: bytes, *, final: bool = False) -> list[tuple[str, bytes]]:
        """Add bytes; return the `(event type, data)` of every event completed by them.

        At the end of the stream (`final`), an unterminated line and an event without
        its blank line are discarded, as the WHATWG rules say.
        """
        events: list[tuple[str, bytes]] = []
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":  # the second half of a CRLF split across chunks
                chunk = chunk[1:]
        last = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if last == -1:
            if not final:
                self._hold(chunk)  # the middle of a (long) line
            return events
        head = chunk[: last + 1]
        if self._pending:
            head = b"".join((*self._pending, head))
            self._pending, self._pending_size = [], 0
        self._after_cr = last == len(chunk) - 1 and chunk[last] == 13
        if not final and last + 1 < len(chunk):
            self._hold(chunk[last + 1 :])
        self._lines(head.splitlines(), events)
        return events

    def _hold(self, part: bytes) -> None:
        if self._skip_line:
            return
        self._pending_size += len(part)
        if self._pending_size > self._max:
            self._pending, self._pending_size = [], 0
            self._skip_line = self._skip_event = self.truncated = True
        else:
            self._pending.append(part)

    def _lines(self, lines: list[bytes], events: list[tuple[str, bytes]]) -> None:
        # One loop with local state: this runs for every line of every streamed response.
        if self._skip_line:
            self._skip_line = False
            lines = lines[1:]  # the rest of a line that was too long
        data, size, event, skip, limit = self._data, self._size, self._event, self._skip_event, self._max
        for line in lines:
            if not line:
                if data and not skip:
                    events.append((event.decode("utf-8", "replace") or "message", b"\n".join(data)))
                data, size, event, skip = [], 0, b"", False
            elif line[0] == 58:  # ":" comment (pings)
                continue
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                size += len(value) + 1
                if size > limit:
                    skip = self.truncated = True
                    data = []
                elif not skip:
                    data.append(value)
            elif line == b"data":
                size += 1
                if not skip:
                    data.append(b"")
            elif line[:6] == b"event:":
                event = line[7:] if line[6:7] == b" " else line[6:]
            elif line == b"event":
                event = b""
        self._data, self._size, self._event, self._skip_event = data, size, event, skip
