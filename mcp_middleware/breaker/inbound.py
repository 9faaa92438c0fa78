"""The `receive` the breaker hands the inner app: the body once more for a retry, and whether the client left."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["Inbound"]


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
