"""The common path (`breaker/fast.py`) judges, answers and counts exactly as the `Call` path.

Every test runs the same inputs twice, once with `fast_path` on (the default where it applies) and
once forced onto the `Call` path, and compares what each recorded: the breaker's window counts,
its decisions (outcome, reason, attempt) and every message the client got. The scripted backends
are driven in process (what is under test is the breaker's reading of arbitrary response bytes and
endings, which real servers do not produce on purpose); the real servers, both eras, run under
uvicorn at the end of the file.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx2
import pytest
from mcp import MCPError
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.breaker import BreakerPolicy, BreakerState, CircuitBreakerMiddleware, FailureClassifier
from mcp_middleware.breaker import call as call_module
from mcp_middleware.core import CoreConfig, McpCoreMiddleware, read_request
from mcp_middleware.core.kernel import _Replay
from tests.conftest import ERAS, Era, Served, connect
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers
from tests.support.waiting import held_within

from .backends import BackendLog, FaultInjector, always, build_backend, modern_call, post_scope, settled
from .test_watch import CASES, OK, PROGRESS, REQUEST_ID, response, rpc, sse

ENDINGS = ("return", "raise", "hang", "wait_for_disconnect")
"""What the scripted backend does after its messages: return, raise, wait forever, or read `receive`
until the client has gone (as the SDK's disconnect watcher does) and return."""


class Scripted:
    def __init__(self, messages: list[Message], ending: str) -> None:
        self.messages = messages
        self.ending = ending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if self.ending == "answer_after_disconnect":  # the client left first; the app answers all the same
            while (await receive())["type"] != "http.disconnect":
                pass
        for message in self.messages:
            await send(message)
        if self.ending == "raise":
            raise ConnectionResetError("backend went away")
        if self.ending == "hang":
            await asyncio.Event().wait()
        if self.ending == "wait_for_disconnect":
            while (await receive())["type"] != "http.disconnect":
                pass


class HandsOn:
    """A layer in front of the breaker that parses the request and hands on a `receive` of its own (`claimed`:
    the core's replay, already noting a disconnect for someone else, as an outer breaker leaves it)."""

    def __init__(self, app: Any, *, claimed: bool) -> None:
        self.app = app
        self.claimed = claimed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _, receive = await read_request(scope, receive, send)
        if self.claimed:
            assert type(receive) is _Replay and receive.disconnected is None
            receive.disconnected = False
            return await self.app(scope, receive, send)
        replay = receive

        async def own() -> Message:
            return await replay()

        await self.app(scope, own, send)


def _scope(body: bytes) -> Scope:
    return post_scope(body, modern_headers("tools/call", "t"))


async def judge(
    messages: list[Message],
    *,
    fast: bool,
    ending: str = "return",
    client_leaves: bool = False,
    disconnect_once: bool = False,
    outer_tap: bool = False,
    timeouts: dict[str, float | None] | None = None,
    limit: int = 4096,
    half_open: bool = False,
    classifier: FailureClassifier | None = None,
    handed: str = "replay",
) -> tuple[Any, ...]:
    """What one request leaves behind: `(window calls, failures, state, decisions, messages sent, what was raised)`.

    `handed`: the `receive` the breaker is given: the core's replay (its own parse, or the outer tap's), or
    (see `HandsOn`) another layer's `receive` ("foreign"), or a replay another layer already notes with ("claimed").
    """
    breaker = CircuitBreakerMiddleware(
        Scripted(messages, ending),
        policy=BreakerPolicy(consecutive_failures=100, failure_rate=None),
        timeouts={"*": 0.2} if timeouts is None else timeouts,
        classifier=classifier,
        config=CoreConfig(max_inspect_bytes=limit),
    )
    assert breaker.fast_path  # the default: no retry, the default classifier
    breaker.fast_path = fast
    if half_open:
        breaker.registry.get("/mcp").force_open(0.0)
    inner: Any = breaker if handed == "replay" else HandsOn(breaker, claimed=handed == "claimed")
    inner = McpCoreMiddleware(inner, on_outcome=lambda request, outcome: None) if outer_tap else inner
    app = DecisionRecorder(inner)
    body = modern_body("tools/call", {"name": "t", "arguments": {}}, REQUEST_ID)
    delivered = disconnected = False
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal delivered, disconnected
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        if client_leaves and not (disconnect_once and disconnected):  # uvicorn: every read after it answers at once
            disconnected = True
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    raised = None
    try:
        await app(_scope(body), receive, send)
    except Exception as exc:  # a JSON body that broke off: the connection drops (both ways alike)
        raised = type(exc).__name__
    snapshot = breaker.registry.snapshot()["/mcp"]
    verdicts = [
        (d.outcome, d.attributes.get("reason"), d.attributes.get("attempt"), d.attributes.get("state"))
        for d in app.decisions
        if d.component == "breaker"
    ]
    return snapshot.window_calls, snapshot.window_failures, snapshot.state, verdicts, sent, raised


def both_ways(messages: list[Message], **options: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    async def run() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        return await judge(messages, fast=True, **options), await judge(messages, fast=False, **options)

    return asyncio.run(run())


MORE_CASES = {
    **CASES,
    "json that starts then breaks": [
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]},
        {"type": "http.response.body", "body": b'{"jsonrpc": "2.0", ', "more_body": True},
    ],
    "a JSON start and no body": [
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    ],
    "nothing at all": [],
    "a tool error": response(200, b"application/json", [rpc(id=REQUEST_ID, result={"isError": True})]),
    "a client error in a 200": response(200, b"application/json", [rpc(id=REQUEST_ID, error={"code": -32602})]),
    "a neutral server code": response(200, b"application/json", [rpc(id=REQUEST_ID, error={"code": -32001})]),
    "a malformed error code": response(200, b"application/json", [rpc(id=REQUEST_ID, error={"code": "x"})]),
    "sse answer": response(200, b"text/event-stream", [sse(PROGRESS), sse(OK)]),
    "sse that breaks": [
        response(200, b"text/event-stream", [])[0],
        {"type": "http.response.body", "body": sse(PROGRESS), "more_body": True},
    ],
    "a 502 plain": response(502, b"text/plain", [b"bad gateway"]),
}


@pytest.mark.parametrize(
    ("case", "ending", "client_leaves", "outer_tap"),
    [
        (case, ending, leaves, tap)
        for case, ending, leaves, tap in itertools.product(MORE_CASES, ENDINGS, (False, True), (False, True))
        if not (ending == "wait_for_disconnect" and not leaves)  # that one would wait for its timeout: see below
    ],
)
def test_the_same_verdict_answer_and_counts_on_both_paths(
    case: str, ending: str, client_leaves: bool, outer_tap: bool
) -> None:
    fast, call = both_ways(MORE_CASES[case], ending=ending, client_leaves=client_leaves, outer_tap=outer_tap)
    assert fast == call


@pytest.mark.parametrize("case", ["sse answer", "sse that breaks", "json that starts then breaks", "json result"])
def test_a_client_that_left_is_known_from_what_the_app_read(case: str) -> None:
    """A host (the router's relay, say) that reports the disconnect once: only the app's read of it tells."""
    fast, call = both_ways(MORE_CASES[case], ending="wait_for_disconnect", client_leaves=True, disconnect_once=True)
    assert fast == call
    if case == "sse that breaks":
        assert fast[:2] == (0, 0)  # the client left: the broken stream says nothing about the backend


@pytest.mark.parametrize("case", ["json result", "json internal error", "sse answer", "nothing at all"])
@pytest.mark.parametrize("ending", ["return", "raise"])
def test_the_same_without_a_timeout(case: str, ending: str) -> None:
    fast, call = both_ways(MORE_CASES[case], ending=ending, timeouts={})
    assert fast == call


@pytest.mark.parametrize("case", ["json result", "a JSON start and no body", "nothing at all", "sse that breaks"])
def test_a_timeout_firing_on_the_common_path_is_counted_and_answered_as_before(case: str) -> None:
    fast, call = both_ways(MORE_CASES[case], ending="hang", timeouts={"*": 0.05})
    assert fast == call
    calls, failures, _, verdicts, sent, _ = fast
    if case == "json result":  # answered before it hung: a success, the hang is the app's own business
        assert (calls, failures) == (1, 0)
        return
    assert (calls, failures) == (1, 1)
    assert ("timeout", None, None, None) in verdicts and ("failure", "timeout", 1, None) in verdicts
    if case == "nothing at all":
        assert sent[0]["status"] == 504


@pytest.mark.parametrize("case", ["json result", "json internal error", "sse answer", "nothing at all"])
def test_a_half_open_circuit_takes_the_probe_path_on_both(case: str) -> None:
    fast, call = both_ways(MORE_CASES[case], half_open=True)
    assert fast == call
    assert fast[3][0] == ("probe", None, None, "half_open")


@pytest.mark.parametrize("count_tool_errors", [False, True])
@pytest.mark.parametrize("case", ["a tool error", "json internal error", "a neutral server code"])
def test_a_configured_default_classifier_keeps_the_common_path(case: str, count_tool_errors: bool) -> None:
    classifier = FailureClassifier(count_tool_errors=count_tool_errors, extra_failure_codes=(-32001,))
    fast, call = both_ways(MORE_CASES[case], classifier=classifier)
    assert fast == call


@pytest.mark.parametrize("limit", [16, 100, 4096])
@pytest.mark.parametrize("case", ["json result", "json internal error", "json result in three chunks"])
def test_the_inspection_bound_is_the_same(case: str, limit: int) -> None:
    fast, call = both_ways(MORE_CASES[case], limit=limit)
    assert fast == call


def test_the_common_path_is_the_one_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """No `Call` for one JSON body from a closed circuit; one as soon as anything else happens."""
    made: list[int] = []
    original = call_module.Call.__init__

    def counting(self: call_module.Call, *args: Any, **kwargs: Any) -> None:
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(call_module.Call, "__init__", counting)
    expected = [
        ("json result", "return", False, 0),
        ("json internal error", "return", False, 0),
        ("json result", "return", True, 0),  # the outer tap's outcome is read
        ("sse answer", "return", False, 1),
        ("500 with a JSON-RPC error, null id", "return", False, 1),
        ("json that starts then breaks", "raise", False, 1),
        ("nothing at all", "raise", False, 1),
    ]
    for case, ending, outer_tap, calls in expected:
        made.clear()
        asyncio.run(judge(MORE_CASES[case], fast=True, ending=ending, outer_tap=outer_tap))
        assert len(made) == calls, case


def test_cancellation_from_outside_mid_call_leaves_no_verdict_on_either_path() -> None:
    async def cancelled(fast: bool) -> tuple[Any, ...]:
        started = asyncio.Event()

        class Waits:
            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                await receive()
                await send(response(200, b"application/json", [OK])[0])
                started.set()
                await asyncio.Event().wait()

        app = CircuitBreakerMiddleware(Waits(), timeouts={"*": 30.0})
        app.fast_path = fast
        recorder = DecisionRecorder(app)
        body = modern_body("tools/call", {"name": "t", "arguments": {}}, REQUEST_ID)
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> Message:
            message = next(messages, None)
            if message is None:
                await asyncio.Event().wait()
            assert message is not None
            return message

        async def send(message: Message) -> None:
            return None

        task = asyncio.ensure_future(recorder(_scope(body), receive, send))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        snapshot = app.registry.snapshot()["/mcp"]
        breaker = app.registry.get("/mcp")
        waiting = sum(len(slot) for slot in app.deadlines._slots.values())  # the deadline was taken back
        return snapshot.window_calls, breaker.state, recorder.outcomes("breaker"), waiting

    async def run() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        return await cancelled(True), await cancelled(False)

    fast, call = asyncio.run(run())
    assert fast == call == (0, BreakerState.CLOSED, ["allow"], 0)


# --- real servers, both eras, under uvicorn ----------------------------------------------------------------


async def _exercise(served: Served, era: Era) -> None:
    async with connect(served.mcp_url, era) as client:
        await client.list_tools()
        await client.call_tool("echo", {"text": "x"})
        assert (await client.call_tool("failing", {"reason": "r"})).is_error  # a tool error: neutral to the backend
        with pytest.raises(MCPError):
            await client.call_tool("flaky", {"text": "x"})  # -32603: a failure
        with pytest.raises(MCPError):
            await client.get_prompt("no_such_prompt")
        with pytest.raises(MCPError):
            await client.call_tool("stream_fail", {}, progress_callback=_ignore)  # -32603 inside SSE
        with pytest.raises(MCPError):
            await client.call_tool("boom", {})  # the app raises before answering: a 502
        await client.call_tool("stream", {"steps": 2}, progress_callback=_ignore)


async def _ignore(progress: float, total: float | None, message: str | None) -> None:
    return None


@pytest.mark.anyio
@pytest.mark.parametrize("era", ERAS)
async def test_real_servers_in_both_eras_are_judged_alike(era: Era, serve: Any) -> None:
    results = []
    for fast in (True, False):
        log = BackendLog(fail_times=1000)
        app = CircuitBreakerMiddleware(
            FaultInjector(build_backend(log).streamable_http_app(), {"boom": always("raise")}),
            policy=BreakerPolicy(consecutive_failures=100, failure_rate=None),
        )
        app.fast_path = fast
        recorder = DecisionRecorder(app)
        served: Served = serve(recorder)
        await _exercise(served, era)
        await settled(app.registry, 9 if era == "modern" else 8)  # (legacy: the unknown prompt is neutral)
        snapshot = app.registry.snapshot()["/mcp"]
        verdicts = [(o, a.get("reason")) for o, a in recorder.of("breaker") if o != "allow"]
        results.append((snapshot.window_calls, snapshot.window_failures, sorted(verdicts, key=str)))
    assert results[0] == results[1]
    assert results[0][1] == (4 if era == "modern" else 3)  # flaky, stream_fail, boom (modern: the prompt too)


@pytest.mark.anyio
async def test_a_client_that_leaves_a_hung_call_counts_nothing_on_the_common_path(serve: Any) -> None:
    log = BackendLog()
    app = CircuitBreakerMiddleware(
        build_backend(log).streamable_http_app(),
        policy=BreakerPolicy(consecutive_failures=1, failure_rate=None),
        timeouts={"*": 5.0},
    )
    assert app.fast_path
    served: Served = serve(app)
    async with httpx2.AsyncClient(timeout=0.5) as http:  # the client gives up (and closes) long before the 5 s
        with pytest.raises(httpx2.ReadTimeout):
            await http.post(served.mcp_url, **modern_call("quiet_hang", {}))
    assert await held_within(lambda: "quiet_hang cancelled" in log.events), log.events
    snapshot = app.registry.snapshot()["/mcp"]
    assert snapshot.state is BreakerState.CLOSED and snapshot.window_calls == 0


@pytest.mark.anyio
async def test_a_hung_call_times_out_on_the_common_path_with_a_504(serve: Any) -> None:
    log = BackendLog()
    app = CircuitBreakerMiddleware(
        build_backend(log).streamable_http_app(),
        policy=BreakerPolicy(consecutive_failures=1, failure_rate=None),
        timeouts={"*": 0.3},
    )
    served: Served = serve(app)
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(served.mcp_url, **modern_call("quiet_hang", {}))
    assert answer.status_code == 504 and answer.json()["error"]["data"] == {"timeoutMs": 300}
    assert await held_within(lambda: app.registry.get("/mcp").state is BreakerState.OPEN)
