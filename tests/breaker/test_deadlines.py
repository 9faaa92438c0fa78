"""Timeouts without a cancel scope per request: a call past its deadline is cancelled the way anyio's
cancel scopes cancel (shielded clean-up runs to the end, a swallowed cancellation comes again), the
client gets -32016/504, and a cancellation that is not the deadline's is never mistaken for one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp import MCPError
from mcp.server.mcpserver import MCPServer
from starlette.types import Receive, Scope, Send

from mcp_middleware.breaker import CircuitBreakerMiddleware
from mcp_middleware.breaker import timeouts as timeouts_module
from mcp_middleware.core import ErrorCode
from tests.conftest import ERAS, Era, Served, connect
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import held_within

from .backends import post_scope

pytestmark = pytest.mark.anyio

TIMEOUT = 0.3
SHIELD = 0.8


class RawBackend:
    """An ASGI app below the SDK: its request task itself shields, swallows or hangs, as a test asks."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await receive()
        try:
            if self.behaviour == "shield":
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(SHIELD)  # past the deadline: must run to its end
                self.events.append("shield done")
            elif self.behaviour == "swallow":
                try:
                    await anyio.sleep(3600)
                except asyncio.CancelledError:
                    self.events.append("swallowed")  # a handler that ignores one cancellation
            elif self.behaviour == "task_group":
                async with anyio.create_task_group() as group:
                    group.start_soon(self._child)
            await anyio.sleep(3600)
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":1,"result":{}}'})

    async def _child(self) -> None:
        try:
            await anyio.sleep(3600)
        except asyncio.CancelledError:
            self.events.append("child cancelled")
            raise


def call(request_id: int = 1) -> dict[str, Any]:
    params = {"name": "slow", "arguments": {}}
    return {"content": modern_body("tools/call", params, request_id), "headers": modern_headers("tools/call", "slow")}


def timeout_answer(request_id: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {
            "code": ErrorCode.TIMEOUT,
            "message": f"Backend did not answer within {TIMEOUT:g} s",
            "data": {"timeoutMs": int(TIMEOUT * 1000)},
        },
    }


async def test_shielded_work_in_the_request_runs_to_its_end_before_the_timeout_cancels(serve: Any) -> None:
    backend = RawBackend("shield")
    app = CircuitBreakerMiddleware(backend, timeouts={"*": TIMEOUT})
    served: Served = serve(app)
    started = time.perf_counter()
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, **call(7))
    elapsed = time.perf_counter() - started
    assert response.status_code == 504
    assert response.json() == timeout_answer(7)
    assert backend.events == ["shield done", "cancelled"]  # the shield held; the cancellation came after it
    assert elapsed >= SHIELD
    assert app.registry.snapshot()["/mcp"].window_failures == 1


async def test_a_swallowed_cancellation_is_delivered_again(serve: Any) -> None:
    backend = RawBackend("swallow")
    served: Served = serve(CircuitBreakerMiddleware(backend, timeouts={"*": TIMEOUT}))
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, **call(3))
    assert response.status_code == 504
    assert response.json() == timeout_answer(3)
    assert backend.events == ["swallowed", "cancelled"]


async def test_the_timeout_reaches_the_tasks_the_request_started(serve: Any) -> None:
    backend = RawBackend("task_group")
    served: Served = serve(CircuitBreakerMiddleware(backend, timeouts={"*": TIMEOUT}))
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, **call(4))
    assert response.status_code == 504
    assert sorted(backend.events) == ["cancelled", "child cancelled"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_shielded_tool_finishes_its_clean_up_then_times_out(era: Era, serve: Any) -> None:
    events: list[str] = []
    server = MCPServer("shielded")

    @server.tool()
    async def slow() -> str:
        try:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(SHIELD)
            events.append("shield done")
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            events.append("cancelled")
            raise
        return "unreachable"

    app = CircuitBreakerMiddleware(server.streamable_http_app(), timeouts={"*": 5.0, "tools/call": TIMEOUT})
    served: Served = serve(app)
    async with connect(served.mcp_url, era) as client:
        with pytest.raises(MCPError) as timed_out:
            await client.call_tool("slow", {})
        assert timed_out.value.code == ErrorCode.TIMEOUT
        assert await held_within(lambda: events == ["shield done", "cancelled"]), events
        assert (await client.list_tools()).tools[0].name == "slow"  # the session goes on


async def _drive(app: Any, request_id: int) -> list[dict[str, Any]]:
    """One request straight into the ASGI app (in process: the test needs the request's own task)."""
    body, headers = call(request_id)["content"], call(request_id)["headers"]
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = post_scope(body, headers)
    await app(scope, receive, send)
    return sent


async def test_the_task_is_left_as_it_was_after_a_timeout() -> None:
    """In process (no server): the timeout takes back its own cancellation, nothing else is left pending."""
    app = CircuitBreakerMiddleware(RawBackend("hang"), timeouts={"*": TIMEOUT})
    task = asyncio.current_task()
    assert task is not None
    before = task.cancelling()
    sent = await _drive(app, 5)
    assert task.cancelling() == before
    assert sent[0]["status"] == 504 and orjson.loads(sent[1]["body"]) == timeout_answer(5)
    await anyio.sleep(0.05)  # and the task is not cancelled later by a stale delivery
    assert task.cancelling() == before


async def test_a_cancellation_from_outside_is_not_a_timeout() -> None:
    """An outer scope (shutdown, a caller's own timeout) cancels first: it propagates, no 504, no verdict."""
    backend = RawBackend("hang")
    app = CircuitBreakerMiddleware(backend, timeouts={"*": 5.0})
    with anyio.move_on_after(0.2) as outer:
        await _drive(app, 6)
        raise AssertionError("the outer cancellation must reach the caller")
    assert outer.cancelled_caught
    assert backend.events == ["cancelled"]
    snapshot = app.registry.snapshot()["/mcp"]
    assert snapshot.window_calls == 0 and snapshot.consecutive_failures == 0


async def test_an_outer_cancellation_at_the_deadline_still_propagates() -> None:
    """Both at once: the deadline's cancellation is taken back, the outer one still ends the caller."""
    backend = RawBackend("hang")
    app = CircuitBreakerMiddleware(backend, timeouts={"*": 0.2})
    with anyio.move_on_after(0.2) as outer:
        await _drive(app, 8)
        # (the deadline may win by a tick: then the call was answered and the outer scope cancels later)
        await anyio.sleep(3600)
    assert outer.cancelled_caught
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_without_anyio_task_states_each_call_gets_a_deadline_scope(
    monkeypatch: pytest.MonkeyPatch, serve: Any
) -> None:
    """The fallback (trio, or an anyio whose internals moved): the same answer through a cancel scope."""
    monkeypatch.setattr(timeouts_module, "_anyio_task_states", None)
    backend = RawBackend("hang")
    app = CircuitBreakerMiddleware(backend, timeouts={"*": TIMEOUT})
    assert app.deadlines.start(1.0) is None
    served: Served = serve(app)
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(served.mcp_url, **call(2))
    assert response.status_code == 504
    assert response.json() == timeout_answer(2)
    assert backend.events == ["cancelled"]


async def test_deadlines_never_fire_early_and_leave_nothing_behind() -> None:
    """The wheel itself: each overdue task is cancelled no sooner than its deadline; finished calls and swept
    slots leave no bucket, heap entry or pending cancellation behind."""
    from mcp_middleware.breaker.timeouts import Deadlines

    deadlines = Deadlines(tick=0.01)
    loop = asyncio.get_running_loop()
    cancelled_at: dict[float, float] = {}

    async def overdue(seconds: float) -> None:
        started = loop.time()
        deadline = deadlines.start(seconds)
        assert deadline is not None
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled_at[seconds] = loop.time() - started
        finally:
            deadline.finish()
        assert deadline.expired and not deadline.cancelled_elsewhere

    async def quick() -> None:
        deadline = deadlines.start(0.05)
        assert deadline is not None
        await asyncio.sleep(0)
        deadline.finish()
        assert not deadline.expired

    await asyncio.gather(*(quick() for _ in range(200)), overdue(0.15), overdue(0.05), overdue(0.1))
    assert sorted(cancelled_at) == [0.05, 0.1, 0.15]
    assert all(elapsed >= seconds - 1e-6 for seconds, elapsed in cancelled_at.items()), cancelled_at
    await asyncio.sleep(0.1)  # every slot has fallen due
    assert deadlines._slots == {} and deadlines._due == [] and deadlines._handle is None


def test_the_wheel_reads_anyio_internals_only_where_it_finds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed anyio has what the wheel reads; one that moved a piece gets a deadline scope per call."""
    import anyio._backends._asyncio as anyio_asyncio

    assert timeouts_module._anyio_internals() is anyio_asyncio._task_states

    class MovedTaskState:  # a future anyio whose task state no longer holds `cancel_scope`
        __slots__ = ("parent_id",)

    monkeypatch.setattr(anyio_asyncio, "TaskState", MovedTaskState)
    assert timeouts_module._anyio_internals() is None
