"""What a lane keeps for every request of one route to one breaker, and the common path's success test.

A lane holds what the common path used to rebuild per request (the `allow` decision, the timeout, the
classifier's `judge`, the inspection bound): setting the middleware's `classifier` or `config` forgets the
lanes, and a `key` function (the gateway's) gets lanes of its own, never one whose breaker the registry
forgot. The common path calls a result to the request a success without asking `judge` (its status is
below 400: `watchable`); hostile bodies must get the same verdict that way as on the `Call` path.
A success on a closed circuit is counted into one attribute, folded into its bucket when the window is read.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from mcp_middleware.breaker import (
    BreakerPolicy,
    BreakerRegistry,
    CircuitBreaker,
    CircuitBreakerMiddleware,
    Classification,
    FailureClassifier,
)
from mcp_middleware.core import CoreConfig
from mcp_middleware.core.kernel import EVERY_PATH
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

from .backends import post_scope, scripted_receive
from .test_fast_path import both_ways
from .test_lanes import _requests
from .test_watch import INTERNAL, REQUEST_ID, response, rpc

HOSTILE = {
    "a result": rpc(id=REQUEST_ID, result={}),
    "a tool error": rpc(id=REQUEST_ID, result={"isError": True}),
    "isError as a string": rpc(id=REQUEST_ID, result={"isError": "true"}),
    "isError given twice, true last": b'{"jsonrpc":"2.0","id":41,"result":{"isError":false,"isError":true}}',
    "isError given twice, false last": b'{"jsonrpc":"2.0","id":41,"result":{"isError":true,"isError":false}}',
    "an escaped isError key": b'{"jsonrpc":"2.0","id":41,"result":{"\\u0069sError":true}}',
    "an escaped result key": b'{"jsonrpc":"2.0","id":41,"\\u0072esult":{}}',
    "result given twice, null last": b'{"jsonrpc":"2.0","id":41,"result":{},"result":null}',
    "result given twice, an object last": b'{"jsonrpc":"2.0","id":41,"result":null,"result":{}}',
    "id given twice, another last": b'{"jsonrpc":"2.0","id":41,"result":{},"id":42}',
    "id given twice, ours last": b'{"jsonrpc":"2.0","id":42,"result":{},"id":41}',
    "id as a string": rpc(id=str(REQUEST_ID), result={}),
    "id as a float": b'{"jsonrpc":"2.0","id":41.0,"result":{}}',
    "a result that is a list": rpc(id=REQUEST_ID, result=[]),
    "a result and an error": rpc(id=REQUEST_ID, result={}, error={"code": -32603, "message": "x"}),
    "a result with a method": rpc(id=REQUEST_ID, result={}, method="tools/call"),
    "an error after a null result": rpc(id=REQUEST_ID, result=None, error={"code": -32603, "message": "x"}),
    "a result to another request": rpc(id=REQUEST_ID + 1, result={}),
    "a result then garbage": rpc(id=REQUEST_ID, result={}) + b"x",
    "a lone surrogate in the result": b'{"jsonrpc":"2.0","id":41,"result":{"t":"\\ud800"}}',
    "not an object": b"[41]",
    "empty": b"",
}


@pytest.mark.parametrize("count_tool_errors", [False, True])
@pytest.mark.parametrize("case", HOSTILE)
def test_the_success_shortcut_judges_hostile_bodies_as_the_call_path_does(case: str, count_tool_errors: bool) -> None:
    classifier = FailureClassifier(count_tool_errors=count_tool_errors)
    for status in (200, 202):
        fast, call = both_ways(response(status, b"application/json", [HOSTILE[case]]), classifier=classifier)
        assert fast == call


def test_the_shortcut_is_taken_for_a_result_and_judge_is_asked_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[Any] = []
    judge = FailureClassifier.judge

    def spy(self: FailureClassifier, *parts: Any) -> Classification:
        asked.append(parts[-2:])
        return judge(self, *parts)

    monkeypatch.setattr(FailureClassifier, "judge", spy)
    fast, _ = both_ways(response(200, b"application/json", [HOSTILE["a result"]]))
    assert fast[:2] == (1, 0) and asked == [({}, None)]  # the Call path asked; the common path did not
    asked.clear()
    fast, _ = both_ways(response(200, b"application/json", [INTERNAL]))
    assert fast[:2] == (1, 1) and len(asked) == 2


def _request_to(app: Any, path: str = "/mcp") -> None:
    _requests(app, [path])


def _answering(body: bytes) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        for message in response(200, b"application/json", [body]):
            await send(message)

    return app


def _counts(registry: BreakerRegistry) -> dict[str, tuple[int, int]]:
    return {key: (s.window_calls, s.window_failures) for key, s in registry.snapshot().items()}


@pytest.mark.parametrize("fast", [True, False])
def test_a_classifier_set_after_the_first_request_judges_the_next_one(fast: bool) -> None:
    app = CircuitBreakerMiddleware(_answering(HOSTILE["a tool error"]))
    app.fast_path = fast
    _request_to(app)  # (a lane now holds the first classifier's `judge`)
    app.classifier = FailureClassifier(count_tool_errors=True)
    _request_to(app)
    assert _counts(app.registry) == {"/mcp": (2, 1)}


@pytest.mark.parametrize("fast", [True, False])
def test_a_config_set_after_the_first_request_bounds_the_next_one(fast: bool) -> None:
    app = CircuitBreakerMiddleware(_answering(INTERNAL), config=CoreConfig(max_inspect_bytes=4096))
    app.fast_path = fast
    recorder = DecisionRecorder(app)
    _request_to(recorder)
    app.config = CoreConfig(max_inspect_bytes=8)  # too large to look at now: the status is trusted
    _request_to(recorder)
    assert _counts(app.registry) == {"/mcp": (2, 1)}
    assert [d.outcome for d in recorder.decisions] == ["allow", "failure", "allow"]


@pytest.mark.parametrize("fast", [True, False])
def test_a_key_function_never_counts_into_a_breaker_the_registry_forgot(fast: bool) -> None:
    """The gateway's case: its lanes are keyed after the `key` call and checked against the registry's breaker."""
    registry = BreakerRegistry(max_breakers=2)
    app = CircuitBreakerMiddleware(
        _answering(HOSTILE["a result"]), registry=registry, config=EVERY_PATH, key=lambda scope, request: scope["path"]
    )
    app.fast_path = fast
    for path in ["/a", "/a", "/b", "/a", "/c"]:  # /a used last before /c: /b is the one forgotten
        _request_to(app, path)
    assert _counts(registry) == {"/a": (3, 0), "/c": (1, 0)}
    for path in ["/b", "/d", "/a"]:  # /a and /c forgotten, then /a made anew: never the old one counted into
        _request_to(app, path)
    assert _counts(registry) == {"/d": (1, 0), "/a": (1, 0)}
    assert app._lanes == {}  # (a key function: lanes keyed after its call, forgotten with any breaker)
    assert {backend: lane.breaker.key for lanes in app._keyed_lanes.values() for backend, lane in lanes.items()} == {
        "/a": "/a"
    }


def test_a_registry_does_not_keep_a_middleware_it_tells_about_forgotten_breakers() -> None:
    registry = BreakerRegistry(max_breakers=1)
    kept = CircuitBreakerMiddleware(_answering(HOSTILE["a result"]), registry=registry, config=EVERY_PATH)
    dropped = CircuitBreakerMiddleware(_answering(HOSTILE["a result"]), registry=registry, config=EVERY_PATH)
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None
    for _ in range(3):  # (middlewares made and dropped, as a reloading host may: the registry keeps none of them)
        CircuitBreakerMiddleware(_answering(HOSTILE["a result"]), registry=registry)
    gc.collect()
    assert len(registry._forgetters) <= 2
    _request_to(kept, "/a")
    _request_to(kept, "/b")  # forgets /a: the live middleware's lanes go with it
    assert list(kept._lanes) == [("tools/call", None, "/b")]


def test_a_success_counted_before_the_circuit_was_forced_open_is_gone_once_it_closes() -> None:
    """A success on a closed circuit waits in one attribute until the window is read; closing starts afresh."""
    now = [0.5]
    breaker = CircuitBreaker(
        "k",
        BreakerPolicy(window=10.0, window_buckets=10, open_for=5.0, jitter=0.0, probes_to_close=1),
        clock=lambda: now[0],
    )
    breaker.record(breaker.acquire(), Classification.SUCCESS)  # counted into its bucket
    now[0] = 0.6
    breaker.succeeded(breaker.acquire())  # (pending)
    breaker.force_open(5.0)
    now[0] = 5.7
    probe = breaker.acquire()
    assert probe is not None
    breaker.succeeded(probe)  # closes: a fresh window
    assert breaker.window_counts() == (0, 0)
    now[0] = 6.5
    breaker.succeeded(breaker.acquire())
    assert breaker.window_counts() == (1, 0)


@pytest.mark.parametrize("exclude", [["tools/call:skip", "ping"], ["ping"]])
@pytest.mark.parametrize("fast", [True, False])
def test_the_key_function_is_asked_once_a_guarded_request_and_never_for_an_excluded_one(
    fast: bool, exclude: list[str]
) -> None:
    asked: list[str] = []

    def key(scope: Scope, request: Any) -> str:
        asked.append(request.method)
        return "tenant-a" if len(asked) % 2 else "tenant-b"  # (not the path's: one path, two backends in turn)

    app = CircuitBreakerMiddleware(_answering(HOSTILE["a result"]), key=key, exclude=exclude)
    app.fast_path = fast
    for _ in range(4):
        _request_to(app)
    assert asked == ["tools/call"] * 4 and _counts(app.registry) == {"tenant-a": (2, 0), "tenant-b": (2, 0)}

    async def excluded(method: str, params: dict[str, Any]) -> None:
        body = modern_body(method, params, REQUEST_ID)
        name = params.get("name")
        scope = post_scope(body, modern_headers(method, name) if name else modern_headers(method))
        receive = scripted_receive([{"type": "http.request", "body": body, "more_body": False}])

        async def send(message: Message) -> None:
            pass

        await app(scope, receive, send)

    async def run() -> None:
        for _ in range(2):
            await excluded("ping", {})
            if len(exclude) == 2:  # (a selector names a tool: lanes keep the target)
                await excluded("tools/call", {"name": "skip", "arguments": {}})

    asyncio.run(run())
    assert asked == ["tools/call"] * 4


class _EveryAnswerFails:
    """A classifier of the user's own (not the default's type): every answer is a failure."""

    def __call__(self, request: Any, outcome: Any, fault: Any) -> Classification:
        return Classification.FAILURE


def test_a_classifier_of_the_users_own_set_after_construction_takes_the_call_path() -> None:
    """The common path judges with the default classifier only: a custom one set later must not reach it."""
    app = CircuitBreakerMiddleware(_answering(HOSTILE["a result"]))
    assert app.fast_path
    _request_to(app)  # a lane made with the default classifier
    app.classifier = _EveryAnswerFails()  # type: ignore[assignment]
    assert not app.fast_path
    _request_to(app)
    assert _counts(app.registry) == {"/mcp": (2, 1)}
    app.classifier = FailureClassifier()  # the default's type again: the common path may be taken again
    assert app.fast_path
