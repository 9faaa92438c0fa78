"""The webhook answers 202 and a person decides minutes later through the callback URL the gateway serves.

A real approver on loopback (uvicorn) is POSTed the held call with its `callback` URL, answers 202,
then POSTs the decision there; the SDK client in both eras, at the mount and the aggregate, waits
for it. Then everything an attacker can do with (or without) that URL.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import anyio
import httpx2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import MCPError
from mcp.shared.inbound import encode_header_value

from mcp_middleware.approval import CALLBACK_PATH, MemoryApprovalStore, WebhookApprover
from mcp_middleware.approval.callback import CallbackTokens
from mcp_middleware.core.sealing import Sealer
from tests.approval.callback_approver import CallbackApprover, sign
from tests.approval.conftest import ENDPOINTS, SECRET, Endpoint, Files, Setup, build, client_for, public
from tests.approval.test_legacy_answers import calling, open_session
from tests.conftest import ERAS, Era
from tests.support.requests import ACCEPT_BOTH, LEGACY, legacy_headers, modern_body, modern_headers
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

SIGNING = "callback signing secret"


def hooked(serve: Any, approver: CallbackApprover, *, timeout: float = 20.0, **options: Any) -> tuple[Setup, Any]:
    hook = serve(approver.app())
    files = Files()
    store = MemoryApprovalStore()
    webhook = WebhookApprover(
        f"{hook.base}/hook",
        timeout=timeout,
        signing_secret=approver.signing_secret,
        callback=True,
        secrets=[SECRET],
        store=store,
        **options,
    )
    recorder = build(files, approver=webhook, keepalive=0.2)
    served = serve(webhook.endpoint(recorder))
    return Setup(served.base, files, recorder), store


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_the_callback_approves(era: Era, endpoint: Endpoint, serve: Any) -> None:
    approver = CallbackApprover("approve", delay=0.5, signing_secret=SIGNING)
    setup, store = hooked(serve, approver)
    async with client_for(setup.url(endpoint), era, "alice") as client:  # no elicitation: the webhook decides
        result = await client.call_tool(public(endpoint, "delete_file"), {"path": "/srv/a"})
    assert result.content[0].text == "deleted /srv/a"  # type: ignore[union-attr]
    await until(lambda: approver.statuses == [200])  # (its own answer may come after the client's)
    facts = approver.seen[0]
    assert facts["callback"].startswith(f"{setup.base}{CALLBACK_PATH}")  # the request's own (checked) origin
    assert isinstance(facts["expires"], int) and facts["tool"] == "delete_file"
    digest = facts["digest"][:16]
    assert setup.recorder.of("approval") == [
        ("required", {"tool": "delete_file", "digest": digest, "why": "destructive", "approver": "webhook"}),
        (
            "approved",
            {"tool": "delete_file", "digest": digest, "why": "destructive", "approver": "webhook", "via": "callback"},
        ),
    ]
    assert store.waiting() == 0


@pytest.mark.parametrize("era", ERAS)
async def test_the_callback_declines(era: Era, serve: Any) -> None:
    approver = CallbackApprover("decline", delay=0.3)
    setup, _ = hooked(serve, approver)
    async with client_for(setup.url("aggregate"), era, "alice") as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool(public("aggregate", "delete_file"), {"path": "/srv/b"})
    assert raised.value.code == -32013
    assert raised.value.data["approval"] == "declined" and raised.value.data["detail"] == "ticket OPS-42"
    assert setup.files.calls == []
    await until(lambda: approver.statuses == [200])  # (its own answer may come after the client's)
    assert setup.recorder.of("approval")[-1][1]["via"] == "callback"


@pytest.mark.parametrize("era", ERAS)
async def test_no_callback_is_a_timeout_and_a_late_one_is_told_409(era: Era, serve: Any) -> None:
    approver = CallbackApprover("late", delay=3.0)
    setup, store = hooked(serve, approver, timeout=1.5)
    async with client_for(setup.url("mount"), era, "alice") as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("delete_file", {"path": "/srv/c"})
    assert raised.value.data["approval"] == "timeout"
    await until(lambda: approver.statuses, patience=30)  # (the approver runs in uvicorn's thread: polled)
    assert approver.statuses == [409]  # the call was refused already: the approver is told so
    assert setup.files.calls == [] and store.waiting() == 0
    assert setup.recorder.outcomes("approval")[-1] == "timeout"


@pytest.mark.parametrize("era", ERAS)
async def test_a_synchronous_answer_still_decides(era: Era, serve: Any) -> None:
    approver = CallbackApprover("sync")
    setup, _ = hooked(serve, approver)
    async with client_for(setup.url("mount"), era, "alice") as client:
        result = await client.call_tool("delete_file", {"path": "/srv/d"})
    assert result.content[0].text == "deleted /srv/d"  # type: ignore[union-attr]
    assert "via" not in setup.recorder.of("approval")[-1][1]
    callback = approver.seen[0]["callback"]
    async with httpx2.AsyncClient(timeout=30) as http:  # the record closed with the 200: its token decides nothing
        late = await http.post(callback, json={"approved": True})
    assert late.status_code == 409


def held_call(setup: Setup, tool: str, path: str) -> tuple[str, bytes, dict[str, str]]:
    body = modern_body("tools/call", {"name": tool, "arguments": {"path": path}})
    headers = modern_headers("tools/call", encode_header_value(tool), authorization="Bearer alice")
    return setup.url("mount"), body, headers


async def test_hostile_callbacks_are_refused(serve: Any) -> None:
    approver = CallbackApprover("never", signing_secret=SIGNING)
    setup, store = hooked(serve, approver, timeout=60)
    answers: dict[str, int] = {}
    async with httpx2.AsyncClient(timeout=60) as http, anyio.create_task_group() as group:

        async def hold(path: str) -> None:
            url, body, headers = held_call(setup, "delete_file", path)
            response = await http.post(url, content=body, headers=headers)
            answers[path] = response.status_code

        group.start_soon(hold, "/srv/one")
        group.start_soon(hold, "/srv/two")
        await until(lambda: len(approver.seen) == 2 and store.waiting() == 2, patience=30)
        one = next(f["callback"] for f in approver.seen if "/srv/one" in f["summary"])
        token = one.rsplit("/", 1)[1]
        yes = orjson.dumps({"approved": True})
        signed = {"content-type": "application/json", "x-mcp-approval-signature": sign(SIGNING, yes)}

        async def post(url: str, content: bytes = yes, headers: dict[str, str] = signed) -> int:
            return (await http.post(url, content=content, headers=headers)).status_code

        base = f"{setup.base}{CALLBACK_PATH}"
        flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
        other_purpose = Sealer([SECRET], purpose="mcp-approval").seal(orjson.dumps({"d": "x", "n": "y"}))
        huge = b'{"approved": true, "reason": "' + b"x" * 70_000 + b'"}'
        assert await post(base) == 404  # no token
        assert await post(f"{base}not-a-token") == 404
        assert await post(f"{base}{flipped}") == 404  # tampered
        assert await post(f"{base}{other_purpose}") == 404  # sealed with the same secret for another use
        assert await post(one, headers={"content-type": "application/json"}) == 401  # unsigned
        assert await post(one, headers={**signed, "x-mcp-approval-signature": sign("wrong", yes)}) == 401
        assert await post(one, content=huge, headers={**signed, "x-mcp-approval-signature": sign(SIGNING, huge)}) == 413
        bad = b'{"approved": "yes"}'
        assert await post(one, content=bad, headers={**signed, "x-mcp-approval-signature": sign(SIGNING, bad)}) == 400
        assert (await http.get(one)).status_code == 405
        assert setup.files.calls == []  # none of that approved anything
        assert await post(one) == 200  # the real answer, once
        assert await post(one) == 404  # replayed: spent
        await until(lambda: "/srv/one" in answers, patience=30)
        assert "/srv/two" not in answers  # one's token did not move the other call
        two = next(f["callback"] for f in approver.seen if "/srv/two" in f["summary"])
        no = orjson.dumps({"approved": False})
        assert await post(two, content=no, headers={**signed, "x-mcp-approval-signature": sign(SIGNING, no)}) == 200
    assert answers == {"/srv/one": 200, "/srv/two": 403}
    assert setup.files.ran("delete_file") == [{"path": "/srv/one"}]


async def test_a_client_that_leaves_removes_its_wait(serve: Any) -> None:
    approver = CallbackApprover("never")
    setup, store = hooked(serve, approver, timeout=30)
    url, body, headers = held_call(setup, "delete_file", "/srv/gone")
    async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as group:
        group.start_soon(partial(http.post, url, content=body, headers=headers))
        # the client leaves once the approver was asked (not before: then nothing would be waiting yet)
        await until(lambda: store.waiting() == 1 and len(approver.seen) == 1, patience=30)
        group.cancel_scope.cancel()
    await until(lambda: store.waiting() == 0, patience=30)
    async with httpx2.AsyncClient(timeout=30) as http:
        late = await http.post(approver.seen[0]["callback"], json={"approved": True})
    assert late.status_code == 409 and setup.files.calls == []
    assert setup.recorder.of("approval")[-1] == (
        "deny",
        {**setup.recorder.of("approval")[0][1], "reason": "disconnected"},
    )


async def test_a_legacy_stream_keeps_alive_while_it_waits(serve: Any) -> None:
    approver = CallbackApprover("never")
    setup, _ = hooked(serve, approver, timeout=1.5)
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "delete_file", "arguments": {"path": "/x"}},
        }
    )
    headers = {
        "content-type": "application/json",
        "accept": ACCEPT_BOTH,
        "mcp-protocol-version": LEGACY,
        "authorization": "Bearer alice",
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(setup.url("mount"), content=body, headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert ": waiting for approval" in response.text  # keep-alives before the answer (keepalive = 0.2 s)
    last = orjson.loads(response.text.rstrip().rsplit("data: ", 1)[1])
    assert last["id"] == 7 and last["error"]["code"] == -32013 and last["error"]["data"]["approval"] == "timeout"


def test_a_callback_needs_an_origin_it_can_trust() -> None:
    with pytest.raises(ValueError, match="public_url"):
        WebhookApprover("https://hook.example/h", callback=True, public_url="javascript:alert(1)")
    hook = WebhookApprover("https://hook.example/h", callback=True, secrets=[SECRET])
    spoofed = {"type": "http", "scheme": "http", "headers": [(b"host", b"evil.example/phish?x=")]}
    assert hook.callback_url(spoofed, "d", "n", ttl=5) is None  # a Host that is not host[:port] is not used
    fixed = WebhookApprover("https://hook.example/h", callback=True, public_url="https://gw.example/", secrets=[SECRET])
    assert fixed.callback_url(spoofed, "d", "n", ttl=5).startswith(f"https://gw.example{CALLBACK_PATH}")  # type: ignore[union-attr]


TOKENS = CallbackTokens([SECRET])
TOKEN = TOKENS.seal("a" * 64, "0123456789abcdef", ttl=600)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(base64.urlsafe_b64decode(TOKEN + "==")) * 8 - 1))
def test_any_bit_flip_in_a_token_is_refused(bit: int) -> None:
    raw = bytearray(base64.urlsafe_b64decode(TOKEN + "=="))
    raw[bit // 8] ^= 1 << (bit % 8)
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert TOKENS.open(TOKEN) == ("a" * 64, "0123456789abcdef")
    assert TOKENS.open(flipped) is None


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=len(TOKEN) - 1), st.sampled_from("AQgw_-09azZ"))
def test_any_changed_character_is_refused(position: int, char: str) -> None:
    changed = TOKEN[:position] + char + TOKEN[position + 1 :]
    if changed != TOKEN:
        assert TOKENS.open(changed) is None


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_cancelled_legacy_call_stops_waiting(endpoint: Endpoint, serve: Any) -> None:
    approver = CallbackApprover("never")
    setup, store = hooked(serve, approver, timeout=30)
    url = setup.url(endpoint)
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await open_session(http, url, "alice", {})
        async with calling(http, url, session, "alice", public(endpoint, "delete_file"), {"path": "/c"}) as stream:
            # the wait is registered before the webhook's POST arrives (the approver runs in uvicorn's thread)
            await until(lambda: store.waiting() == 1 and len(approver.seen) == 1, patience=30)
            body = orjson.dumps(
                {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "no"}}
            )
            bob = await http.post(url, content=body, headers=legacy_headers(session, authorization="Bearer bob"))
            assert bob.status_code in (202, 403, 404)  # another principal's cancel withdraws nothing
            assert store.waiting() == 1
            done = await http.post(url, content=body, headers=legacy_headers(session, authorization="Bearer alice"))
            assert done.status_code == 202
            refused = await stream.next_message()
        late = await http.post(approver.seen[0]["callback"], json={"approved": True})
    assert refused["id"] == 7 and refused["error"]["data"]["approval"] == "cancelled"
    assert store.waiting() == 0 and late.status_code == 409 and setup.files.calls == []
