"""The `receive` the breaker hands the inner app: the body once more for a retry, and whether the client left."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["Inbound", "answered_at_once"]


class Inbound:
    """The inner app's `receive` for one call: the body once more for a retry, and whether the client left.

    Apart from :class:`Call` on purpose: the SDK cancels its disconnect watcher, which waits in this
    `receive`, at the end of every request, and the cancellation's traceback leaves a reference cycle
    to the garbage collector. That cycle holds this frame and this small object; were it the call's
    method, it would hold the call and through it the request's scope, decisions and response state
    (≈ 27 more objects a request for the collector, measured).
    """

    __slots__ = ("_body", "_receive", "body_consumed", "client_gone", "completed", "replay")

    def __init__(self, receive: Receive, body: bytes) -> None:
        self._receive = receive
        self._body = body
        self.body_consumed = False
        self.client_gone = False
        self.completed = False
        """The response ended (set by the call): a disconnect after it is the server's, not the client's."""
        self.replay = False
        """A retry: the next `receive` gives the body once more."""

    async def __call__(self) -> Message:
        if self.replay:  # a retry: the body once more, then the real stream
            self.replay = False
            while not self.body_consumed:  # the first attempt may not have read it all
                self._observe(await self._receive())
            return {"type": "http.request", "body": self._body, "more_body": False}
        message = await self._receive()
        if message["type"] != "http.request" or message.get("more_body", False):
            self._observe(message)
        else:
            self.body_consumed = True
        return message

    def look(self) -> None:
        """The attempt ended without its response: ask the host once, without waiting, whether the client
        has gone (a host such as uvicorn answers every read after the client left at once), so that a
        client that left is known even when the inner app never read `receive` (the common path's app
        never reads this one: see :mod:`.fast`)."""
        if not self.client_gone:
            message = answered_at_once(self._receive)
            if message is not None:
                self._observe(message)

    def _observe(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_consumed = True
        elif kind == "http.disconnect":
            self.body_consumed = True
            # uvicorn also reports a disconnect once the response is complete; only an earlier one is the client's
            if not self.completed:
                self.client_gone = True


def answered_at_once(receive: Receive) -> Message | None:
    """What `receive()` returns if it returns without waiting, else `None` (it is then closed at its first wait).

    Only when nothing else reads `receive` (an attempt is over): the message is consumed.
    """
    step = receive().__await__()
    try:
        step.send(None)
    except StopIteration as done:
        return done.value if isinstance(done.value, dict) else None
    except Exception:  # a host that fails the read: nothing is known, as if nobody had read
        return None
    close = getattr(step, "close", None)
    if close is not None:
        close()
    return None
