"""Where the common path learns that the client left: the core's replay, or (without one) an `Inbound`.

The common path hands the app the `receive` it was given when that is the core's replay, which then
notes a disconnect it passes on; behind a layer that hands on a `receive` of its own, or a replay
another layer already notes with (an outer breaker), the app gets an `Inbound`. Every ending is run
each way and compared with the `Call` path (`fast_path = False`): window counts, decisions, messages.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.breaker import BreakerPolicy, CircuitBreakerMiddleware
from mcp_middleware.breaker.inbound import Inbound
from mcp_middleware.core.kernel import _Replay, replay
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

from .backends import post_scope, scripted_receive
from .test_fast_path import ENDINGS, MORE_CASES, HandsOn, both_ways
from .test_watch import OK, REQUEST_ID, response, rpc

HANDED = ("foreign", "claimed")
SHORT_CASES = (
    "json result",
    "json internal error",
    "sse answer",
    "sse that breaks",
    "json that starts then breaks",
    "nothing at all",
    "a 502 plain",
)


@pytest.mark.parametrize(
    ("case", "ending", "client_leaves", "handed"),
    [
        (case, ending, leaves, handed)
        for case, ending, leaves, handed in itertools.product(SHORT_CASES, ENDINGS, (False, True), HANDED)
        if not (ending == "wait_for_disconnect" and not leaves)  # that one would wait for its timeout
    ],
)
def test_without_the_cores_replay_the_same_verdict_answer_and_counts(
    case: str, ending: str, client_leaves: bool, handed: str
) -> None:
    fast, call = both_ways(MORE_CASES[case], ending=ending, client_leaves=client_leaves, handed=handed)
    assert fast == call


@pytest.mark.parametrize("handed", ["replay", *HANDED])
@pytest.mark.parametrize("case", ["sse answer", "sse that breaks", "json that starts then breaks", "json result"])
def test_a_disconnect_reported_once_is_noted_whoever_hands_it_on(case: str, handed: str) -> None:
    fast, call = both_ways(
        MORE_CASES[case], ending="wait_for_disconnect", client_leaves=True, disconnect_once=True, handed=handed
    )
    assert fast == call
    if case == "sse that breaks":
        assert fast[:2] == (0, 0)  # the client left: the broken stream says nothing about the backend


@pytest.mark.parametrize("handed", ["replay", *HANDED])
def test_a_timeout_with_each_receive(handed: str) -> None:
    fast, call = both_ways(MORE_CASES["nothing at all"], ending="hang", timeouts={"*": 0.05}, handed=handed)
    assert fast == call
    assert fast[:2] == (1, 1) and fast[4][0]["status"] == 504


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("handed", ["replay", *HANDED])
def test_the_app_reads_the_replay_itself_only_on_the_common_path_and_when_it_is_the_cores_and_unclaimed(
    handed: str, fast: bool
) -> None:
    read: list[type] = []

    class Reads:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            read.append(type(receive))
            await receive()
            for message in response(200, b"application/json", [OK]):
                await send(message)

    async def run() -> None:
        breaker = CircuitBreakerMiddleware(Reads())
        breaker.fast_path = fast
        app: Any = breaker if handed == "replay" else HandsOn(breaker, claimed=handed == "claimed")
        body = modern_body("tools/call", {"name": "t", "arguments": {}}, REQUEST_ID)
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> Message:
            return next(messages)

        async def send(message: Message) -> None:
            pass

        await app(post_scope(body, modern_headers("tools/call", "t")), receive, send)

    asyncio.run(run())
    assert read == [_Replay if fast and handed == "replay" else Inbound]


def test_nested_breakers_both_judge_a_client_that_left_as_the_call_path_does() -> None:
    """An outer breaker notes with the replay; the inner one (same request) gets an `Inbound` of its own."""

    async def run(fast: bool) -> tuple[Any, ...]:
        class Leaves:
            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                await receive()
                await send(response(200, b"text/event-stream", [])[0])
                while (await receive())["type"] != "http.disconnect":
                    pass

        policy = BreakerPolicy(consecutive_failures=100, failure_rate=None)
        inner = CircuitBreakerMiddleware(Leaves(), policy=policy, key=lambda scope, request: "inner")
        outer = CircuitBreakerMiddleware(inner, policy=policy, key=lambda scope, request: "outer")
        inner.fast_path = outer.fast_path = fast
        app = DecisionRecorder(outer)
        body = modern_body("tools/call", {"name": "t", "arguments": {}}, REQUEST_ID)
        receive = scripted_receive(
            [{"type": "http.request", "body": body, "more_body": False}, {"type": "http.disconnect"}]
        )
        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        await app(post_scope(body, modern_headers("tools/call", "t")), receive, send)
        snapshot = outer.registry.snapshot()
        counts = {key: (s.window_calls, s.window_failures) for key, s in snapshot.items()}
        inner_counts = {key: (s.window_calls, s.window_failures) for key, s in inner.registry.snapshot().items()}
        verdicts = [(d.outcome, d.attributes.get("key"), d.attributes.get("reason")) for d in app.decisions]
        return counts, inner_counts, verdicts, sent

    fast, call = asyncio.run(run(True)), asyncio.run(run(False))
    assert fast == call
    assert fast[0] == {"outer": (0, 0)} and fast[1] == {"inner": (0, 0)}  # the client left: neutral for both


def test_the_cores_replay_notes_nothing_unless_asked() -> None:
    """Unasked, a `receive` after the body is the host's own awaitable (no frame of ours waits in it)."""

    async def run() -> None:
        async def host() -> Message:
            return {"type": "http.disconnect"}

        unasked = replay(b"{}", host)
        assert (await unasked())["type"] == "http.request"
        awaitable = unasked()
        assert awaitable.cr_code is host.__code__  # type: ignore[attr-defined]
        assert (await awaitable)["type"] == "http.disconnect"
        assert type(unasked) is _Replay and unasked.disconnected is None

        asked = replay(b"{}", host)
        assert type(asked) is _Replay
        asked.disconnected = False
        await asked()  # the body: not a disconnect
        assert asked.disconnected is False
        assert (await asked())["type"] == "http.disconnect"
        assert asked.disconnected is True

    asyncio.run(run())


@pytest.mark.parametrize("handed", ["replay", *HANDED])
@pytest.mark.parametrize(
    "case", ["json result", "json internal error", "json result for another id", "a tool error", "sse answer"]
)
def test_an_answer_completed_after_the_client_left_is_judged_as_abandoned(case: str, handed: str) -> None:
    """What decides is whether the disconnect came before the response completed, not after."""
    messages = MORE_CASES.get(case) or response(200, b"application/json", [rpc(id=REQUEST_ID + 1, result={})])
    fast, call = both_ways(messages, ending="answer_after_disconnect", client_leaves=True, handed=handed)
    assert fast == call
    if case == "json result for another id":  # not the response, and the client left: neutral, not a failure
        assert fast[:2] == (0, 0)
