"""A legacy client's standalone stream at the aggregate, fed by its backends' standalone streams.

A handshake-era server talks to its client outside any request on the client's
GET stream: requests (sampling, elicitation, roots) and notifications (resource
updates, logs). For each backend session the relay opened for a client, a pump
holds that backend's GET stream open and moves every message onto the client's
one stream at the aggregate (requests under public ids, URIs under public
names); the aggregate's own list_changed goes there too. The client's stream is
an outbox: messages wait (bounded) while the client has no stream open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_middleware.core import JsonRpcCode, SseParser, send_error
from mcp_middleware.core.protocol import DEFAULT_MAX_BODY_SIZE

from .rewrite import rename_uris
from .sessions import ClientSession

__all__ = ["pump_backend_stream", "serve_client_stream"]

logger = logging.getLogger("mcp_middleware.router")

_MAX_EVENT = DEFAULT_MAX_BODY_SIZE
_DROPPED = frozenset(
    {
        # The aggregate announces its merged lists' changes itself (debounced, once for all backends).
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
    }
)


async def serve_client_stream(session: ClientSession, receive: Receive, send: Send, request_id: object) -> None:
    """Answer the client's GET: its outbox as an SSE stream until the client leaves."""
    outbox = session.outbox
    if outbox.reading:
        await send_error(send, status=409, code=JsonRpcCode.INVALID_REQUEST, message="Only one stream per session")
        return
    outbox.reading = True
    try:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b": stream open\r\n\r\n", "more_body": True})
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(watch)
            while True:
                message = await outbox.receive.receive()
                event = b"event: message\r\ndata: " + message + b"\r\n\r\n"
                await send({"type": "http.response.body", "body": event, "more_body": True})
    except (anyio.EndOfStream, OSError):
        pass
    finally:
        outbox.reading = False


async def pump_backend_stream(
    stack: ASGIApp,
    scope: Scope,
    session: ClientSession,
    server: str,
    public_uri: Callable[[str], str] | None,
    ready: anyio.Event,
) -> None:
    """Hold `server`'s GET stream for this client's session and move its messages to the client's outbox.

    `ready` is set once the backend answered the GET (from then on nothing it sends the client is lost)."""
    parser = SseParser(_MAX_EVENT)
    stop = anyio.Event()

    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await stop.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            ready.set()
            if message["status"] != 200:  # the backend keeps no stream (405): nothing to relay
                stop.set()
            return
        if message["type"] != "http.response.body":
            return
        for _, data in parser.feed(message.get("body", b""), final=not message.get("more_body", False)):
            forwarded = _forwarded(data, session, server, public_uri)
            if forwarded is not None:
                session.outbox.put(forwarded)

    try:
        await stack(scope, receive, send)
    except Exception as exc:  # the backend or its session is gone: the client re-initializes when it must
        logger.debug("standalone stream of %s for session %s ended: %r", server, session.id[:8], exc)
    finally:
        stop.set()
        ready.set()


def _forwarded(
    data: bytes, session: ClientSession, server: str, public_uri: Callable[[str], str] | None
) -> bytes | None:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("method") in _DROPPED:
        return None
    if "method" in message and "id" in message:  # the backend asks the client: a public id, answered back
        message["id"] = session.server_request(server, message["id"])
    if public_uri is not None:
        rename_uris(message, public_uri)
    return orjson.dumps(message)
