"""Where approval state lives when more than one process serves: spent nonces and callback answers.

Two things must be seen by every instance (and every `--workers` process) of a deployment:

* **spent 2026-07-28 nonces**: an approving retry opens its sealed state once; the nonce is spent
  (`SET NX` with the state's lifetime), so the same retry replayed at another instance is refused;
* **callback answers**: a webhook approver answers later by POSTing to the gateway's callback URL,
  and that POST may land on another instance than the one holding the call. The held call's nonce
  names a small record: `waiting` → `answered` (the answer, then `spent` once the held call took it)
  or `closed` (the call stopped waiting: timeout, disconnect) → `spent`. Every transition is atomic
  (a Lua script in Redis), so exactly one of "the callback" and "the timeout" decides.

:class:`MemoryApprovalStore` (the default) serves one process. :class:`RedisApprovalStore` is shared:
one pub/sub connection per process wakes the held calls (each (re)subscription has every waiting
call look at its record once, and a call also looks every `poll` seconds), the other commands use
a bounded pool (32 connections). When Redis cannot be reached the store raises :class:`ApprovalStoreUnavailable` and the
middleware refuses the call (`approval/deny`, `store_unavailable`): an outage never approves.

>>> store = approval_store_from_url("memory://")
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import orjson

from mcp_middleware.core.background import stop_task
from mcp_middleware.core.errors import McpMiddlewareError
from mcp_middleware.core.store_urls import parse_store_url, redis_client_name

__all__ = [
    "ApprovalStore",
    "ApprovalStoreUnavailable",
    "CallbackAnswer",
    "Delivery",
    "MemoryApprovalStore",
    "RedisApprovalStore",
    "approval_store_from_url",
]

logger = logging.getLogger("mcp_middleware.approval")


class ApprovalStoreUnavailable(McpMiddlewareError):
    """The shared store did not answer: the call is refused (never approved)."""


@dataclass(frozen=True, slots=True)
class CallbackAnswer:
    approved: bool
    reason: str = ""

    def encode(self) -> bytes:
        return orjson.dumps({"a": self.approved, "r": self.reason})

    @classmethod
    def decode(cls, raw: bytes | str) -> CallbackAnswer | None:
        try:
            found = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(found, dict) or not isinstance(found.get("a"), bool):
            return None
        reason = found.get("r")
        return cls(found["a"], reason if isinstance(reason, str) else "")


class Delivery(enum.Enum):
    """What became of a callback's answer."""

    ACCEPTED = "accepted"
    """The call was waiting: this answer decides it."""
    DECIDED = "decided"
    """The call had stopped waiting (timed out, its client left): refused already (409, once)."""
    UNKNOWN = "unknown"
    """No such call waits here, or it was answered already (404: the approver is not told which)."""


class ApprovalStore(Protocol):
    """The contract both stores keep. Every method may raise :class:`ApprovalStoreUnavailable`."""

    async def spend(self, nonce: str, ttl: float) -> bool:
        """True the first time `nonce` is spent (remembered `ttl` seconds), False after."""
        ...

    async def hold(self, nonce: str, ttl: float) -> None:
        """A call starts waiting for the callback answer under `nonce` (the record lives `ttl` seconds)."""
        ...

    async def deliver(self, nonce: str, answer: CallbackAnswer) -> Delivery:
        """A callback's answer for `nonce` (wakes the waiting call, wherever it is)."""
        ...

    async def wait(self, nonce: str, patience: float) -> None:
        """Return when an answer for `nonce` may have come, or after `patience` seconds."""
        ...

    async def release(self, nonce: str) -> CallbackAnswer | None:
        """The call stops waiting: the answer if one came (it is then spent), else None (a late answer gets 409)."""
        ...

    async def aclose(self) -> None:
        """Close what the store opened (its connections); call it once, at shutdown (the gateway does)."""
        ...


class MemoryApprovalStore:
    """One process's store: bounded, expiring; enough for one process, not for several."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._spent: OrderedDict[str, float] = OrderedDict()
        self._records: OrderedDict[str, tuple[str, CallbackAnswer | None, float]] = OrderedDict()
        self._events: dict[str, anyio.Event] = {}

    async def spend(self, nonce: str, ttl: float) -> bool:
        now = time.monotonic()
        _expire(self._spent, now, self.max_entries)
        if nonce in self._spent:
            return False
        self._spent[nonce] = now + ttl
        return True

    async def hold(self, nonce: str, ttl: float) -> None:
        now = time.monotonic()
        records = self._records
        while records:
            oldest, (_, _, until) = next(iter(records.items()))
            if until > now and len(records) < self.max_entries:
                break
            del records[oldest]
            self._events.pop(oldest, None)
        records[nonce] = ("waiting", None, now + ttl)
        self._events[nonce] = anyio.Event()

    async def deliver(self, nonce: str, answer: CallbackAnswer) -> Delivery:
        found = self._records.get(nonce)
        if found is None or found[2] <= time.monotonic():
            return Delivery.UNKNOWN
        state, _, until = found
        if state == "waiting":
            self._records[nonce] = ("answered", answer, until)
            event = self._events.get(nonce)
            if event is not None:
                event.set()
            return Delivery.ACCEPTED
        if state == "closed":
            self._records[nonce] = ("spent", None, until)
            return Delivery.DECIDED
        return Delivery.UNKNOWN

    async def wait(self, nonce: str, patience: float) -> None:
        event = self._events.get(nonce)
        if event is None:
            return
        with anyio.move_on_after(patience):
            await event.wait()

    async def release(self, nonce: str) -> CallbackAnswer | None:
        self._events.pop(nonce, None)
        found = self._records.get(nonce)
        if found is None:
            return None
        state, answer, until = found
        if state == "waiting":
            self._records[nonce] = ("closed", None, until)
            return None
        if state == "answered":
            self._records[nonce] = ("spent", None, until)
            return answer
        return None

    def waiting(self) -> int:
        """Calls waiting for a callback now (for tests: a cancelled call leaves none behind)."""
        return len(self._events)

    async def aclose(self) -> None:
        """Nothing to close: it is this process's memory."""


def _expire(entries: OrderedDict[str, float], now: float, bound: int) -> None:
    """Drop the oldest entries once expired, or when over `bound` (every entry has the same kind of lifetime)."""
    while entries:
        oldest, until = next(iter(entries.items()))
        if until > now and len(entries) < bound:
            return
        del entries[oldest]


# KEYS[1] the record; ARGV[1] the answer. 1 accepted (and published), 2 decided already, 0 unknown.
_DELIVER = """
local state = redis.call('GET', KEYS[1])
if state == 'w' then
  redis.call('SET', KEYS[1], 'a' .. ARGV[1], 'KEEPTTL')
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
if state == 'c' then
  redis.call('SET', KEYS[1], 's', 'KEEPTTL')
  return 2
end
return 0
"""

# KEYS[1] the record. The answer if one came (then spent); false otherwise (a waiting record is closed).
_RELEASE = """
local state = redis.call('GET', KEYS[1])
if state == 'w' then
  redis.call('SET', KEYS[1], 'c', 'KEEPTTL')
  return false
end
if state and string.sub(state, 1, 1) == 'a' then
  redis.call('SET', KEYS[1], 's', 'KEEPTTL')
  return string.sub(state, 2)
end
return false
"""


class RedisApprovalStore:
    """The shared store, in Redis (`redis.asyncio`): every instance sees every nonce and every answer.

    Keys share the hash tag `{prefix}` (one slot, as the scripts need on Redis Cluster). Each
    process holds one pub/sub connection (started with its first held call) that wakes its waiting
    calls; a waiting call also looks at its record every `poll` seconds (a safety net: a message
    published while the connection was down is caught when it resubscribes).

    >>> store = RedisApprovalStore("redis://127.0.0.1:6379/0")
    """

    def __init__(self, redis: Any, *, prefix: str = "mcp-approval", timeout: float = 2.0, poll: float = 5.0) -> None:
        if isinstance(redis, str):
            from redis.asyncio import BlockingConnectionPool, Redis  # optional dependency: the [redis] extra

            pool = BlockingConnectionPool.from_url(
                redis,
                max_connections=32,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                client_name=redis_client_name("approval"),
            )
            redis = Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it
        self.redis = redis
        self.timeout = timeout
        self.poll = poll
        self.prefix = "{" + prefix + "}:"
        self.channel = f"{self.prefix}answers"
        self._deliver = redis.register_script(_DELIVER)
        self._release = redis.register_script(_RELEASE)
        self._events: dict[str, anyio.Event] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False
        self.close_patience = 5.0
        """Seconds `aclose` waits for the answer channel to stop before it closes the client anyway."""

    def _record(self, nonce: str) -> str:
        return f"{self.prefix}cb:{nonce}"

    async def _call(self, what: str, command: Any) -> Any:
        try:
            with anyio.fail_after(self.timeout):
                return await command
        except Exception as exc:  # an outage (or a slow store) refuses the approval; never approves
            logger.warning("approval store: %s failed (%s: %s)", what, type(exc).__name__, exc)
            raise ApprovalStoreUnavailable(f"the approval store did not answer ({what})") from exc

    async def spend(self, nonce: str, ttl: float) -> bool:
        key = f"{self.prefix}spent:{nonce}"
        done = await self._call("spend", self.redis.set(key, b"1", nx=True, px=max(1, int(ttl * 1000))))
        return bool(done)

    async def hold(self, nonce: str, ttl: float) -> None:
        self._listen_once_running()
        await self._call("hold", self.redis.set(self._record(nonce), b"w", px=max(1, int(ttl * 1000))))
        self._events[nonce] = anyio.Event()
        with anyio.move_on_after(1.0):  # the first call of a process: its wake-ups start now (else: polling)
            await self._subscribed.wait()

    async def deliver(self, nonce: str, answer: CallbackAnswer) -> Delivery:
        found = await self._call(
            "deliver", self._deliver(keys=[self._record(nonce)], args=[answer.encode(), self.channel, nonce])
        )
        return {1: Delivery.ACCEPTED, 2: Delivery.DECIDED}.get(int(found or 0), Delivery.UNKNOWN)

    async def wait(self, nonce: str, patience: float) -> None:
        event = self._events.get(nonce)
        if event is None:
            return
        deadline = time.monotonic() + patience
        while (left := deadline - time.monotonic()) > 0:
            with anyio.move_on_after(min(left, self.poll)):
                await event.wait()
            if event.is_set():  # woken (an answer, or a reconnect): look again with a fresh event
                event = self._events[nonce] = anyio.Event()
            with contextlib.suppress(ApprovalStoreUnavailable):  # a failed look waits on; release decides
                state = await self._call("wait", self.redis.get(self._record(nonce)))
                if state is None or not bytes(state).startswith(b"w"):
                    return

    async def release(self, nonce: str) -> CallbackAnswer | None:
        self._events.pop(nonce, None)
        found = await self._call("release", self._release(keys=[self._record(nonce)], args=[]))
        return CallbackAnswer.decode(found) if found else None

    def _listen_once_running(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="mcp-approval-answers")

    async def _listen(self) -> None:
        """Wake the local call an answer is for (one connection per process, however many calls wait).

        Stops when cancelled, and also at the next turn once `aclose` began: redis-py may swallow a
        cancellation that meets the read's own timeout (redis/redis-py#2551)."""
        while not self._closing:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._subscribed.set()
                for waiting in list(self._events.values()):  # what was published before: every waiting call looks
                    waiting.set()
                while not self._closing:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    nonce = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
                    woken = self._events.get(nonce)
                    if woken is not None:
                        woken.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closing:  # the client closed under it (`aclose` did not wait longer): nothing failed
                    return
                logger.warning("approval store: the answer channel failed (%s); reconnecting", type(exc).__name__)
                self._subscribed.clear()
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def waiting(self) -> int:
        return len(self._events)

    async def aclose(self) -> None:
        """Stop the answer channel (its pub/sub connection) and close the client: built from a URL, every
        connection (named `mcp-middleware:approval`); a client passed in closes as it was made to."""
        self._closing = True
        await stop_task(self._listener, self.close_patience)
        await self.redis.aclose()


def approval_store_from_url(url: str) -> MemoryApprovalStore | RedisApprovalStore:
    """`memory://` or a Redis URL (`redis://`, `rediss://`, `redis+unix://`), as the other stores read them."""
    parsed = parse_store_url(url, "approval store")
    if parsed.kind == "memory":
        return MemoryApprovalStore()
    return RedisApprovalStore(parsed.redis_url)
