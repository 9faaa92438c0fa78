"""A small HTTP/1.1 keep-alive client for the reverse proxy's one job: relay bytes to one origin.

Why not `httpx2` here: per proxied request it costs about as much CPU as the MCP
backend itself (request/response models, a pool that polls every idle connection,
separate writes for head and body). This client writes the request head and a
one-piece body in one `send`, reads the response head with one buffered scan,
and hands the body on as it arrives (content-length, chunked, or until close).
Idle connections are kept per origin (LIFO, bounded, dropped after `idle_timeout`
— shorter than uvicorn's 5 s keep-alive so a reused connection is not one the
server is closing).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_middleware.core.errors import McpMiddlewareError

__all__ = ["BROKEN_BODY", "HELD_BODY_BYTES", "UpstreamError", "UpstreamPool", "UpstreamResponse", "UpstreamUnreachable"]

_MAX_HEAD = 64 * 1024
HELD_BODY_BYTES = 64 * 1024
"""A body of declared length up to this is read whole before its head is passed on: an origin that dies
mid-answer then leaves nothing at the client, which gets a JSON-RPC error instead of a cut connection.
(A JSON answer is one message: nothing of it is usable before its end, so holding it delays nothing.)"""
BROKEN_BODY = (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError, ValueError)
"""What reading a response body raises when the origin goes away (or sends a malformed chunk)."""
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamError(McpMiddlewareError):
    """The origin could not be reached, or broke off before a complete response head."""


class UpstreamUnreachable(UpstreamError):
    """No connection to the origin could be opened: nothing of the request was sent."""


class _Connection:
    __slots__ = ("reader", "stream", "used_at")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.used_at = time.monotonic()


class UpstreamResponse:
    """Status, headers (lower-case names) and the body, read as it arrives."""

    __slots__ = ("_chunked", "_connection", "_done", "_length", "_pool", "_reusable", "headers", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        connection: _Connection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        *,
        length: int | None,
        chunked: bool,
        reusable: bool,
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status = status
        self.headers = headers
        self._length = length
        self._chunked = chunked
        self._reusable = reusable
        self._done = False

    async def body(self) -> AsyncIterator[bytes]:
        connection = self._connection
        assert connection is not None
        reader = connection.reader
        if self._chunked:
            while True:
                size_line = await reader.receive_until(b"\r\n", 1024)
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    while await reader.receive_until(b"\r\n", _MAX_HEAD):  # trailers, up to the empty line
                        pass
                    break
                yield await reader.receive_exactly(size)
                await reader.receive_exactly(2)
        elif self._length is not None:
            left = self._length
            while left > 0:
                chunk = await reader.receive(min(left, 65536))
                left -= len(chunk)
                yield chunk
        else:  # until the origin closes
            try:
                while True:
                    yield await reader.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
        self._done = True

    async def small_body(self) -> bytes | None:
        """The whole body, when its declared length is at most :data:`HELD_BODY_BYTES`; else None and
        nothing read. Raises one of :data:`BROKEN_BODY` when the origin breaks off before its end."""
        if self._chunked or self._length is None or self._length > HELD_BODY_BYTES:
            return None
        return b"".join([chunk async for chunk in self.body()])

    async def aclose(self) -> None:
        """Give the connection back if the body was read to its end, else close it."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if not (self._done and self._reusable and self._pool._release(connection)):
            await _close(connection)


class UpstreamPool:
    """Keep-alive connections to one origin (`http://host:port` or `https://…`).

    >>> pool = UpstreamPool("http://127.0.0.1:9000")
    >>> # response = await pool.request(b"POST", b"/mcp", headers, first_body, more_body)
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        max_idle: int = 100,
        idle_timeout: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = (443 if self.tls else 80) == self.port
        self.host_header = (parts.netloc.rsplit("@", 1)[-1] if not default_port else self.host).encode("idna")
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.ssl_context = (
            ssl_context if ssl_context is not None else (ssl.create_default_context() if self.tls else None)
        )
        self._idle: deque[_Connection] = deque()

    async def _connect(self) -> _Connection:
        try:
            with anyio.fail_after(self.connect_timeout):
                stream: anyio.abc.ByteStream
                if self.tls:
                    stream = await anyio.connect_tcp(
                        self.host, self.port, tls=True, ssl_context=self.ssl_context, tls_standard_compatible=False
                    )
                else:
                    stream = await anyio.connect_tcp(self.host, self.port)
        except TimeoutError as exc:
            raise TimeoutError(f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise UpstreamUnreachable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return _Connection(stream)

    def _release(self, connection: _Connection) -> bool:
        """Keep a connection whose exchange is complete; False when the pool is full (close it)."""
        if len(self._idle) >= self.max_idle:
            return False
        connection.used_at = time.monotonic()
        self._idle.append(connection)
        return True

    async def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely to be timed out
            if now - connection.used_at < self.idle_timeout and _still_open(connection, tls=self.tls):
                return connection
            await _close(connection)
        return None

    async def request(
        self, head: bytes, body: bytes, more: AsyncIterator[bytes] | None, *, chunked: bool
    ) -> UpstreamResponse:
        """Send `head` (request line and headers, ending in a blank line) and the body; read the response head.

        `body` is the part of the body already at hand (sent with the head in one write),
        `more` the rest as it arrives (None when `body` is all of it); `chunked` frames
        the body with chunked transfer coding.
        """
        reused = await self._take_idle()
        connection = reused if reused is not None else await self._connect()
        try:
            return await self._exchange(connection, head, body, more, chunked=chunked, fresh=reused is None)
        except _StaleConnection:
            # Writing to a reused connection failed: the origin had closed it, nothing was delivered,
            # so sending the request on a fresh connection cannot run it twice.
            await _close(connection)
            connection = await self._connect()
            try:
                return await self._exchange(connection, head, body, more, chunked=chunked, fresh=True)
            except BaseException:
                await _close(connection)
                raise
        except BaseException:
            await _close(connection)
            raise

    async def _exchange(
        self,
        connection: _Connection,
        head: bytes,
        body: bytes,
        more: AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        fresh: bool,
    ) -> UpstreamResponse:
        first = body if not chunked or not body else b"%x\r\n%s\r\n" % (len(body), body)
        if chunked and more is None:
            first += b"0\r\n\r\n"
        try:
            await connection.stream.send(head + first)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            if not fresh:
                raise _StaleConnection from exc
            raise UpstreamError(f"sending to {self.host}:{self.port} failed: {exc}") from exc
        if more is not None:
            async for chunk in more:
                if chunk:
                    await connection.stream.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if chunked:
                await connection.stream.send(b"0\r\n\r\n")
        try:
            raw = await connection.reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
            while raw[9:10] == b"1" and not raw.startswith(b"HTTP/1.1 101"):  # 1xx: the real head follows
                raw = await connection.reader.receive_until(b"\r\n\r\n", _MAX_HEAD)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError) as exc:
            # Not retried: the origin may have received the request (a tool call must not run twice).
            raise UpstreamError(f"{self.host}:{self.port} closed the connection before answering") from exc
        except anyio.DelimiterNotFound as exc:
            raise UpstreamError("response head too large") from exc
        return self._response(connection, raw, head)

    def _response(self, connection: _Connection, raw: bytes, request_head: bytes) -> UpstreamResponse:
        lines = raw.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise UpstreamError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
        status = int(status_line[1])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        reusable = status_line[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection" and b"close" in value.lower():
                reusable = False
            headers.append((name, value))
        if status in _NO_BODY_STATUS or request_head.startswith(b"HEAD "):
            length, chunked = 0, False
        elif chunked:
            length = None
        elif length is None:
            reusable = False  # the body ends when the connection does
        return UpstreamResponse(self, connection, status, headers, length=length, chunked=chunked, reusable=reusable)

    async def aclose(self) -> None:
        while self._idle:
            await _close(self._idle.pop())


class _StaleConnection(Exception):
    pass


def _still_open(connection: _Connection, *, tls: bool) -> bool:
    """Whether an idle connection is still open: EOF (or, in plain HTTP, stray bytes) means drop it."""
    if connection.reader.buffer:
        return False
    raw = connection.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if raw is None:
        return True  # trust the idle timeout
    try:
        probe = socket.socket(fileno=raw.fileno())  # the event loop's wrapper cannot peek; this one can
    except OSError:
        return False
    try:
        peeked = probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True  # nothing to read: open and idle
    except OSError:
        return False
    finally:
        probe.detach()  # the descriptor stays the stream's
    return bool(peeked) and tls  # TLS may carry records (session tickets) while idle; plain HTTP carries nothing


async def _close(connection: _Connection) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(OSError, anyio.BrokenResourceError):
        await connection.stream.aclose()
