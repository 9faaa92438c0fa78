"""Auth takes the core's `Authorization` value (`_Replay.authorization`) instead of reading the headers again,
only while the scope's header list still equals the copy the core took in the same pass; anything else is read
by auth itself, as before.

Each test runs the same traffic through the shortcut (a layer of ours read the request before auth) and through
the exact path (the `receive` auth gets is not the core's, so it reads the headers itself), with layers between
the core and auth that rewrite, append, swap or mutate headers in place, and compares what the client and the
decision observers see: status, challenge and body byte for byte, decisions, principals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import CoreConfig, get_decisions, get_principal, read_request
from mcp_middleware.core.headers import RequestHeaders
from mcp_middleware.core.kernel import _Replay
from mcp_middleware.router import McpRouter
from tests.router.servers import team_server
from tests.servers import build_server
from tests.support.decisions import DecisionRecorder
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

_RESOURCE = "http://127.0.0.1/mcp"
_TOKENS = {"alice-token": ["mcp"], "bob-token": ["mcp"]}
Rewrite = Callable[[Scope], None]


def _swap_in_place(scope: Scope) -> None:
    """The Authorization pair replaced where it stands (same list, same length): bob's token instead."""
    headers = scope["headers"]
    for index, (name, _) in enumerate(headers):
        if name == b"authorization":
            headers[index] = (b"authorization", b"Bearer bob-token")


def _mutable_headers(scope: Scope) -> None:
    """Starlette's way: `MutableHeaders(scope=...)` sets the value (it puts a new list in the scope)."""
    MutableHeaders(scope=scope)["authorization"] = "Bearer bob-token"


def _append_second(scope: Scope) -> None:
    """A second Authorization header appended to the same list."""
    scope["headers"].append((b"authorization", b"Bearer bob-token"))


def _drop_and_append(scope: Scope) -> None:
    """The same length as the core saw: the last header dropped, a second Authorization header added."""
    headers = scope["headers"]
    del headers[-1]
    headers.append((b"authorization", b"Bearer bob-token"))


def _turn_other_into_authorization(scope: Scope) -> None:
    """Another pair of the same list becomes an Authorization header, where it stands."""
    headers = scope["headers"]
    index = next(i for i, (name, _) in enumerate(headers) if name == b"x-note")
    headers[index] = (b"authorization", b"Bearer bob-token")


def _remove(scope: Scope) -> None:
    scope["headers"] = [pair for pair in scope["headers"] if pair[0] != b"authorization"]


def _untouched(scope: Scope) -> None:
    return None


REWRITES: dict[str, Rewrite] = {
    "untouched": _untouched,
    "swap_in_place": _swap_in_place,
    "mutable_headers": _mutable_headers,
    "append_second": _append_second,
    "drop_and_append": _drop_and_append,
    "other_into_authorization": _turn_other_into_authorization,
    "remove": _remove,
}


class _Reader:
    """An outer layer of ours that reads the request first (as tracing or a gateway layer does)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _, receive = await read_request(scope, receive, send)
        await self.app(scope, receive, send)


class _Between:
    """A layer between the core and auth that rewrites the headers; `exact` also hides the core's `receive`
    (auth then reads the headers itself: the exact path)."""

    def __init__(self, app: ASGIApp, rewrite: Rewrite, *, exact: bool) -> None:
        self.app = app
        self.rewrite = rewrite
        self.exact = exact
        self.handed: list[type] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if (b"x-note", b"rewrite") in scope["headers"]:
                self.rewrite(scope)
            self.handed.append(type(receive))
            if self.exact:
                inner = receive

                async def receive() -> Any:
                    return await inner()

        await self.app(scope, receive, send)


def _stack(rewrite: Rewrite, *, exact: bool) -> tuple[DecisionRecorder, _Between, AuthMiddleware]:
    auth = AuthMiddleware(
        build_server().streamable_http_app(),
        verifier=StaticTokenVerifier(_TOKENS, resource=_RESOURCE),
        resource=_RESOURCE,
    )
    between = _Between(auth, rewrite, exact=exact)
    return DecisionRecorder(_Reader(between)), between, auth


async def _traffic(http: httpx2.AsyncClient, url: str) -> list[tuple[int, str | None, bytes]]:
    """Alice and Bob verified and remembered first (unmarked: no layer touches those), then the marked requests
    the layer between rewrites: each would find its own header remembered."""
    base = [(key.encode(), value.encode()) for key, value in modern_headers("tools/call", "echo").items()]
    answers = []
    tokens = (b"alice-token", b"bob-token")
    for marked, token in [(False, t) for t in tokens * 2] + [(True, t) for t in (*tokens, b"mallory-token", *tokens)]:
        body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 7)
        note = (b"x-note", b"rewrite" if marked else b"keep")
        headers = [*base, note, (b"authorization", b"Bearer " + token), (b"user-agent", b"test")]
        response = await http.post(url, content=body, headers=headers)
        answers.append((response.status_code, response.headers.get("www-authenticate"), response.content))
    return answers


def _seen(recorder: DecisionRecorder) -> list[tuple[Any, list[tuple[str, dict[str, Any]]]]]:
    return [
        (
            get_principal(scope),
            [(str(d.outcome), dict(d.attributes)) for d in get_decisions(scope) if d.component == "auth"],
        )
        for scope in recorder.scopes
    ]


@pytest.mark.parametrize("name", list(REWRITES))
async def test_a_layer_between_the_core_and_auth_gets_the_answer_of_the_exact_path(serve: Any, name: str) -> None:
    rewrite = REWRITES[name]
    results = {}
    for exact in (False, True):
        recorder, between, _ = _stack(rewrite, exact=exact)
        served = serve(recorder)
        async with httpx2.AsyncClient(timeout=10) as http:  # one connection: each request follows the last one
            results[exact] = (await _traffic(http, served.mcp_url), _seen(recorder))
        assert set(between.handed) == {_Replay}  # the core read every request before the layer
    assert results[False] == results[True]
    statuses = [status for status, _, _ in results[False][0]]
    rewritten = {
        "untouched": [200, 200, 401, 200, 200],
        "remove": [401] * 5,
        "swap_in_place": [200] * 5,  # every marked request is Bob's now
        "mutable_headers": [200] * 5,
    }.get(name, [400] * 5)
    assert statuses == [200] * 4 + rewritten
    if name in ("swap_in_place", "mutable_headers"):
        principals = [principal for principal, _ in results[False][1]]
        assert principals[4:] == [principals[1]] * 5  # Bob's, though Alice's header was remembered


async def test_each_request_of_one_connection_is_its_own_callers(serve: Any) -> None:
    """Alternating principals on one keep-alive connection, through the shortcut: each request its own."""
    recorder, _, auth = _stack(_untouched, exact=False)
    served = serve(recorder)
    base = [(key.encode(), value.encode()) for key, value in modern_headers("tools/call", "echo").items()]
    order = [b"alice-token", b"bob-token"] * 4
    async with httpx2.AsyncClient(timeout=10) as http:
        for token in order:
            body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 3)
            response = await http.post(
                served.mcp_url, content=body, headers=[*base, (b"authorization", b"Bearer " + token)]
            )
            assert response.status_code == 200
    assert len(auth._keys) == 2  # both remembered: the later requests took the shortcut
    subjects = [get_principal(scope).subject for scope in recorder.scopes]
    assert subjects[0] != subjects[1] and subjects == [subjects[0], subjects[1]] * 4


def test_the_core_reads_one_authorization_value_or_none() -> None:
    one = RequestHeaders([(b"host", b"h"), (b"authorization", b"Bearer a")])
    assert one.authorization == b"Bearer a"
    assert RequestHeaders([(b"host", b"h")]).authorization is None
    twice = RequestHeaders([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")])
    assert twice.authorization is None  # no one value: auth reads the list itself (and refuses it)
    other_repeated = RequestHeaders([(b"x", b"1"), (b"authorization", b"Bearer a"), (b"x", b"2")])
    assert other_repeated.authorization == b"Bearer a"


async def test_the_core_takes_no_copy_of_pairs_that_can_change_in_place() -> None:
    """A server that gives lists of lists (Mangum behind API Gateway): no copy, auth reads the list itself."""
    body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 1)
    base = [[key.encode(), value.encode()] for key, value in modern_headers("tools/call", "echo").items()]
    for pairs, copied in (
        ([*base, [b"authorization", b"Bearer a"]], False),
        ([*map(tuple, base), (b"authorization", b"Bearer a")], True),
        ([*map(tuple, base)], False),  # no Authorization header: nothing to copy it for
    ):
        scope = {"type": "http", "method": "POST", "path": "/mcp", "root_path": "", "headers": pairs}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive(messages: list[Any] = messages) -> Any:
            return messages.pop(0)

        async def send(message: Any) -> None:
            raise AssertionError(message)

        request, replay = await read_request(scope, receive, send)
        assert request is not None and isinstance(replay, _Replay)
        assert (replay.headers_seen is not None) is copied
        if copied:
            assert replay.headers_seen == pairs and replay.headers_seen is not pairs
            assert replay.authorization == b"Bearer a"


async def test_a_list_pair_among_tuples_changed_in_place_is_not_taken_for_the_one_the_core_read() -> None:
    """Tuples first, then a list pair a layer can change where it stands: the snapshot holds what the core read, so
    the changed list no longer equals it (auth reads the headers itself)."""
    body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 1)
    pairs: list[Any] = [(key.encode(), value.encode()) for key, value in modern_headers("tools/call", "echo").items()]
    pairs.append([b"authorization", b"Bearer alice-token"])
    scope = {"type": "http", "method": "POST", "path": "/mcp", "root_path": "", "headers": pairs}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        raise AssertionError(message)

    request, replay = await read_request(scope, receive, send)
    assert request is not None and isinstance(replay, _Replay)
    assert replay.authorization == b"Bearer alice-token"
    pairs[-1][1] = b"Bearer bob-token"  # a layer between changes the list pair in place
    assert replay.headers_seen is not None and scope["headers"] != replay.headers_seen


async def test_a_backends_auth_behind_an_aggregate_door_authorizes_the_doors_caller(serve: Any) -> None:
    """The door authenticates with its own verifier; the backend's auth, handed the core's replay with the client's
    `Authorization` value, only authorizes (it must not authenticate that value against its own verifier, which
    does not know it). Directly at the backend's own mount, the backend's verifier decides."""
    every_path = CoreConfig(paths=("*",))
    backend_auth = Middleware(
        AuthMiddleware,
        verifier=StaticTokenVerifier({"backend-token": ["mcp", "tickets:create"]}),
        resource="http://127.0.0.1/mcp/tickets",
        required_scopes=["mcp"],
        scopes={"tools/call:create": ["tickets:create"]},
        require_audience=False,
        config=every_path,
    )
    door = Middleware(
        AuthMiddleware,
        verifier=StaticTokenVerifier({"agent": ["mcp"], "creator": ["mcp", "tickets:create"]}),
        resource="http://127.0.0.1/support",
        required_scopes=["mcp"],
        require_audience=False,
        config=every_path,
    )
    router = McpRouter()
    router.mount(
        "tickets", team_server("tickets", ("create", "close")).streamable_http_app(), middleware=[backend_auth]
    )
    router.virtual_server("support", tools=["tickets:*"], path="/support", middleware=[door])
    base = serve(router).base

    async def call(path: str, tool: str, token: str) -> tuple[int, Any]:
        body = modern_body("tools/call", {"name": tool, "arguments": {"query": "q"}}, 5)
        headers = {**modern_headers("tools/call", tool), "Authorization": f"Bearer {token}"}
        response = await http.post(f"{base}{path}", content=body, headers=headers)
        return response.status_code, response.json() if response.content else None

    async with httpx2.AsyncClient(timeout=30) as http:
        for _ in range(2):  # verified, then remembered: the second round takes the shortcuts
            closed = await call("/support", "tickets__close", "agent")
            assert closed[0] == 200 and "tickets:close:q" in str(closed[1])
            refused = await call("/support", "tickets__create", "agent")  # the backend's own scope rule
            assert refused[0] == 403
            created = await call("/support", "tickets__create", "creator")
            assert created[0] == 200 and "tickets:create:q" in str(created[1])
            assert (await call("/support", "tickets__close", "backend-token"))[0] == 401  # the door's verifier
            assert (await call("/mcp/tickets", "close", "agent"))[0] == 401  # the backend's verifier
            assert (await call("/mcp/tickets", "create", "backend-token"))[0] == 200
