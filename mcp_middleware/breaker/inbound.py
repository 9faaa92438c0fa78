"""The `receive` the breaker hands the inner app: the body once more for a retry, and whether the client left."""

from __future__ import annotations

from typing import Protocol

from starlette.types import Message, Receive

__all__ = ["Inbound", "Noted"]


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

    @property
    def disconnected(self) -> bool:
        """The app was told the client left (on the common path, where nobody sets `completed`, = `client_gone`)."""
        return self.client_gone

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


class Noted:
    """What a :class:`Call` taking over from the common path (:mod:`.fast`) reads instead of its `Inbound`.

    There the app reads the core's replay (or, without one, an :class:`Inbound` nobody marks completed),
    which notes whether it told the app the client left (`disconnected`); whether that happened before
    the response completed is this object's to remember, as :class:`Inbound` does for a call of its own.
    """

    __slots__ = ("_gone", "_source")

    def __init__(self, source: Noting, gone: bool | None) -> None:
        self._source = source
        self._gone = gone
        """Whether the client had left when the response completed (`None`: not completed yet)."""

    @property
    def completed(self) -> bool:
        return self._gone is not None

    @completed.setter
    def completed(self, value: bool) -> None:
        if value and self._gone is None:
            self._gone = self._source.disconnected is True

    @property
    def client_gone(self) -> bool:
        gone = self._gone
        return gone if gone is not None else self._source.disconnected is True


class Noting(Protocol):
    """A `receive` that notes whether it told the app the client left: the core's replay, or an :class:`Inbound`."""

    @property
    def disconnected(self) -> bool | None: ...
