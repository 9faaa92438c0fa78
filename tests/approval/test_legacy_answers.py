"""The 2025-11-25 round on the wire: the question on the call's stream, and who may answer it.

An answer is taken only from the session the question was asked in and from the principal who
called; anyone else's POST with the question's id is an answer to nothing (404), and the call
still waits for its own caller.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import orjson
import pytest

from tests.approval.conftest import ENDPOINTS, Endpoint, Files, Setup, build, public
from tests.support.requests import ACCEPT_BOTH, LEGACY, legacy_body, legacy_headers
from tests.support.sse import sse_messages
from tests.support.waiting import until

pytestmark = pytest.mark.anyio


async def open_session(http: httpx2.AsyncClient, url: str, who: str, capabilities: dict[str, Any]) -> str:
    params = {"protocolVersion": LEGACY, "capabilities": capabilities, "clientInfo": {"name": "raw", "version": "1"}}
    headers = {"content-type": "application/json", "accept": ACCEPT_BOTH, "authorization": f"Bearer {who}"}
    response = await http.post(url, content=legacy_body("initialize", params, 0), headers=headers)
    assert response.status_code == 200, response.text
    session = response.headers["mcp-session-id"]
    done = await http.post(
        url,
        content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
        headers=legacy_headers(session, authorization=f"Bearer {who}"),
    )
    assert done.status_code == 202
    return session


class Stream:
    """A call's event stream, read event by event."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def next_message(self) -> dict[str, Any]:
        block: list[str] = []
        async for line in self.lines:
            if line:
                block.append(line)
                continue
            messages = sse_messages("\n".join(block) + "\n\n")
            block = []
            if messages:
                return messages[0]
        raise AssertionError("the stream ended")


@asynccontextmanager
async def calling(
    http: httpx2.AsyncClient,
    url: str,
    session: str,
    who: str,
    tool: str,
    arguments: dict[str, Any],
    request_id: int = 7,
) -> AsyncIterator[Stream]:
    body = legacy_body("tools/call", {"name": tool, "arguments": arguments}, request_id)
    headers = legacy_headers(session, authorization=f"Bearer {who}")
    async with http.stream("POST", url, content=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


async def answer(http: httpx2.AsyncClient, url: str, session: str, who: str, question: str, result: Any) -> int:
    body = orjson.dumps({"jsonrpc": "2.0", "id": question, "result": result})
    response = await http.post(url, content=body, headers=legacy_headers(session, authorization=f"Bearer {who}"))
    return response.status_code


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_only_the_caller_in_its_session_can_answer(endpoint: Endpoint, setup: Setup) -> None:
    url = setup.url(endpoint)
    yes = {"action": "accept", "content": {"approve": True}}
    no = {"action": "decline"}
    async with httpx2.AsyncClient(timeout=30) as http:
        alice = await open_session(http, url, "alice", {"elicitation": {}})
        alice_other = await open_session(http, url, "alice", {"elicitation": {}})
        bob = await open_session(http, url, "bob", {"elicitation": {}})
        async with calling(http, url, alice, "alice", public(endpoint, "delete_file"), {"path": "/a"}) as stream:
            question = await stream.next_message()
            assert question["method"] == "elicitation/create"
            assert "'delete_file'" in question["params"]["message"]
            ask = question["id"]
            # bob, with his own token, in alice's session or in his own; alice in another of her sessions. At the
            # mount the middleware answers 404; the aggregate routes only ids it handed to that very session, so
            # elsewhere its own server takes the answer to nothing (202). None of them is taken: alice's "no" is.
            strangers = [(alice, "bob"), (bob, "bob"), (alice_other, "alice")]
            statuses = [await answer(http, url, session, who, ask, yes) for session, who in strangers]
            assert statuses[0] in (403, 404)  # bob in alice's session: the session is not his
            assert all(status in ((202, 404) if endpoint == "aggregate" else (404,)) for status in statuses[1:])
            assert await answer(http, url, alice, "alice", ask, no) == 202
            refused = await stream.next_message()
    assert refused["id"] == 7
    assert refused["error"]["code"] == -32013 and refused["error"]["data"]["approval"] == "declined"
    assert setup.files.calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_session_that_declared_only_url_elicitation_cannot_be_asked(endpoint: Endpoint, setup: Setup) -> None:
    url = setup.url(endpoint)
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {"url": {}}})
        body = legacy_body("tools/call", {"name": public(endpoint, "delete_file"), "arguments": {"path": "/b"}}, 9)
        response = await http.post(url, content=body, headers=legacy_headers(session, authorization="Bearer alice"))
    assert response.status_code == 400
    assert response.json()["id"] == 9
    assert response.json()["error"]["code"] == -32021
    assert setup.files.calls == []


async def test_the_answer_must_be_a_clear_yes(setup: Setup) -> None:
    url = setup.url("mount")
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {"form": {}}})
        async with calling(http, url, session, "alice", "delete_file", {"path": "/c"}) as stream:
            question = await stream.next_message()
            maybe = {"action": "accept", "content": {"approve": "true"}}  # a string is not a yes
            assert await answer(http, url, session, "alice", question["id"], maybe) == 202
            refused = await stream.next_message()
            # the question is closed: a second answer finds nothing
            assert await answer(http, url, session, "alice", question["id"], maybe) == 404
    assert refused["error"]["data"]["approval"] == "declined"
    assert setup.files.calls == []


async def test_a_client_error_as_the_answer_refuses(setup: Setup) -> None:
    url = setup.url("mount")
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {}})
        async with calling(http, url, session, "alice", "delete_file", {"path": "/d"}) as stream:
            question = await stream.next_message()
            body = orjson.dumps({"jsonrpc": "2.0", "id": question["id"], "error": {"code": -1, "message": "no UI"}})
            response = await http.post(url, content=body, headers=legacy_headers(session, authorization="Bearer alice"))
            assert response.status_code == 202
            refused = await stream.next_message()
    assert refused["error"]["data"]["approval"] == "client_error"
    assert setup.files.calls == []


async def test_a_client_that_leaves_is_not_waited_for(setup: Setup) -> None:
    url = setup.url("mount")
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {}})
        async with calling(http, url, session, "alice", "delete_file", {"path": "/e"}) as stream:
            await stream.next_message()
        # the stream is closed: the middleware hears the disconnect and gives the question up
        await until(lambda: "deny" in setup.recorder.outcomes("approval"), 10)
    assert setup.recorder.of("approval")[-1][1]["reason"] == "disconnected"
    assert setup.files.calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_json_answer_becomes_one_event_of_the_stream(endpoint: Endpoint, serve: Any) -> None:
    files = Files()
    recorder = build(files, json_response=True)  # the backend answers every request with one JSON body
    setup = Setup(serve(recorder).base, files, recorder)
    url = setup.url(endpoint)
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {}})
        async with calling(http, url, session, "alice", public(endpoint, "delete_file"), {"path": "/j"}) as stream:
            question = await stream.next_message()
            yes = {"action": "accept", "content": {"approve": True}}
            assert await answer(http, url, session, "alice", question["id"], yes) == 202
            result = await stream.next_message()
            rest = [line async for line in stream.lines]
    assert result["id"] == 7
    assert result["result"]["content"][0]["text"] == "deleted /j"
    assert [line for line in rest if line.strip()] == []  # one event, then the stream ended
    assert files.ran("delete_file") == [{"path": "/j"}]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_cancelling_the_held_call_withdraws_the_question(endpoint: Endpoint, setup: Setup) -> None:
    url = setup.url(endpoint)

    def cancel(request_id: int) -> bytes:
        return orjson.dumps(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
        )

    yes = {"action": "accept", "content": {"approve": True}}
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {}})
        bob = await open_session(http, url, "bob", {"elicitation": {}})
        as_alice = legacy_headers(session, authorization="Bearer alice")
        tool = public(endpoint, "delete_file")
        async with calling(http, url, session, "alice", tool, {"path": "/k1"}, request_id=8) as stream:
            question = await stream.next_message()
            # bob cancelling "his" request 8 withdraws nothing of alice's: her yes still counts
            bob_cancels = await http.post(
                url, content=cancel(8), headers=legacy_headers(bob, authorization="Bearer bob")
            )
            assert bob_cancels.status_code == 202
            assert await answer(http, url, session, "alice", question["id"], yes) == 202
            ran = await stream.next_message()
        # (a new id, as clients number their requests: the aggregate tracks calls in flight by id)
        async with calling(http, url, session, "alice", tool, {"path": "/k2"}, request_id=9) as stream:
            await stream.next_message()
            assert (await http.post(url, content=cancel(9), headers=as_alice)).status_code == 202
            ended = await stream.next_message()
    assert ran["result"]["content"][0]["text"] == "deleted /k1"
    assert ended["id"] == 9 and ended["error"]["data"]["approval"] == "cancelled"
    assert setup.files.ran("delete_file") == [{"path": "/k1"}]
    assert setup.recorder.of("approval")[-1][1]["reason"] == "cancelled"


async def test_a_waiting_stream_is_kept_alive(serve: Any) -> None:
    files = Files()
    recorder = build(files, keepalive=0.2)
    url = Setup(serve(recorder).base, files, recorder).url("mount")
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {"elicitation": {}})
        async with calling(http, url, session, "alice", "delete_file", {"path": "/ka"}) as stream:
            await stream.next_message()
            comments = []
            async for line in stream.lines:
                if line.startswith(":"):
                    comments.append(line)
                if len(comments) == 2:
                    break
    assert comments == [": waiting for approval"] * 2  # comments, which clients skip, until the answer or the timeout
