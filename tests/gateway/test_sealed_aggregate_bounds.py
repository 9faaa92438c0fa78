"""The sealed aggregate's bounds and choices, with gateways in this process (see test_sealed_aggregate.py).

Ten backend sessions per handle (in config order, under 512 bytes), the eleventh lazy; a backend
down or hung at `initialize` left out of the handle (the `initialize` goes on); a session opened
ahead of use pumps its stream on first use (a subscription's update arrives); forgetting a client
here never ends its sealed backend sessions, the client's DELETE does; the codec keeps replicas.
"""

from __future__ import annotations

import uuid
import warnings
from pathlib import Path

import anyio
import httpx2
import mcp_types as types
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.types import Receive, Scope, Send

from mcp_middleware.gateway.session_handles import SessionState, decode, encode
from tests.conftest import free_port, serve_app
from tests.gateway.sealed_backends import ALICE, Recorded, built_gateway, config_text, sealed_state, serve_gateway
from tests.gateway.test_sealed_handles import SDK_INIT, owner
from tests.router.test_resource_updates import notes_server
from tests.support.requests import legacy_headers, legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio


async def test_a_handle_carries_ten_backend_sessions_in_config_order_under_512_bytes(tmp_path: Path) -> None:
    counter = Recorded("many")
    names = [f"member{index:02d}" for index in range(11)]
    port = free_port()
    text = config_text(dict.fromkeys(names, f"http://127.0.0.1:{port}/mcp"))
    with serve_app(counter, port), serve_gateway(tmp_path / "many.toml", text) as gateway:
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, gateway.base + "/mcp", **ALICE)
            assert len(handle) < 512, len(handle)
            state = sealed_state(handle)
            assert [name for name, _ in state.backends] == names[:10]  # the first ten; the in-process one lazy
            assert counter.initializes == 10 and {value for _, value in state.backends} == set(counter.issued)
            for tool, expected in (("member10__count", 11), ("member03__count", 11)):
                params = {"name": tool, "arguments": {}}
                answer = await legacy_post(http, gateway.base + "/mcp", handle, "tools/call", 3, params, **ALICE)
                assert answer.status_code == 200, answer.text
                assert counter.initializes == expected  # the eleventh opened on first use; the fourth continued
    assert set(counter.carried) <= set(counter.issued)


async def test_a_backend_down_at_initialize_is_left_out_and_the_initialize_goes_on(tmp_path: Path) -> None:
    counter = Recorded("up")
    down = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    port = free_port()
    text = config_text({"down": down, "up": f"http://127.0.0.1:{port}/mcp"})
    with serve_app(counter, port), serve_gateway(tmp_path / "down.toml", text) as gateway:
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, gateway.base + "/mcp", **ALICE)
            state = sealed_state(handle)
            assert [name for name, _ in state.backends] == ["up"]
            params = {"name": "up__count", "arguments": {}}
            answer = await legacy_post(http, gateway.base + "/mcp", handle, "tools/call", 4, params, **ALICE)
            assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"


class NeverInitializes:
    """A remote backend that accepts connections and never answers an `initialize` (hung, overloaded)."""

    def __init__(self) -> None:
        self.asked = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.asked += 1
        await anyio.sleep(120)  # cancelled when the gateway gives up on it (or the server stops)


async def test_a_hung_backend_is_given_up_after_its_timeout_and_the_initialize_goes_on(tmp_path: Path) -> None:
    counter, hung = Recorded("up"), NeverInitializes()
    port = free_port()
    with serve_app(hung) as stuck:
        text = config_text({"up": f"http://127.0.0.1:{port}/mcp"})
        text += f'[[servers]]\nname = "hung"\nurl = "{stuck.mcp_url}"\ntimeout = 1\n'
        with serve_app(counter, port), serve_gateway(tmp_path / "hung.toml", text) as gateway:
            async with httpx2.AsyncClient(timeout=60) as http:
                with anyio.fail_after(30):  # bounded: the hung backend's 1 s, never its 120 s
                    handle = await legacy_session(http, gateway.base + "/mcp", **ALICE)
                state = sealed_state(handle)
                assert [name for name, _ in state.backends] == ["up"] and hung.asked >= 1
                params = {"name": "up__count", "arguments": {}}
                answer = await legacy_post(http, gateway.base + "/mcp", handle, "tools/call", 5, params, **ALICE)
                assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"


async def test_a_subscription_at_a_session_opened_ahead_of_use_reaches_the_client(tmp_path: Path) -> None:
    updates: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            arrived.set()

    port = free_port()
    with (
        serve_app(notes_server().streamable_http_app(), port),
        serve_gateway(tmp_path / "notes.toml", config_text({"notes": f"http://127.0.0.1:{port}/mcp"})) as gateway,
    ):
        async with httpx2.AsyncClient(headers=ALICE, timeout=60) as http:
            streams = streamable_http_client(gateway.base + "/mcp", http_client=http)
            async with Client(streams, mode="legacy", cache=None, message_handler=on_message) as client:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await client.subscribe_resource("notes+notes://today")  # its first use: the stream now
                await anyio.sleep(0.3)
                await client.call_tool("notes__touch", {"uri": "notes://today"})
                with anyio.fail_after(10):
                    await arrived.wait()
    assert updates == ["notes+notes://today"]


async def test_a_sealed_backend_session_outlives_this_instance_forgetting_the_client(tmp_path: Path) -> None:
    counter = Recorded("kept")
    port = free_port()
    text = config_text({"kept": f"http://127.0.0.1:{port}/mcp"})
    with (
        serve_app(counter, port),
        built_gateway(tmp_path / "one.toml", text) as (one, built),
        serve_gateway(tmp_path / "two.toml", text) as two,
    ):
        relay = built.router.aggregate.relay if built.router.aggregate is not None else None
        assert relay is not None
        relay.sessions.max_sessions = 1  # the next session evicts the first here
        params = {"name": "kept__count", "arguments": {}}
        async with httpx2.AsyncClient(timeout=60) as http:
            first = await legacy_session(http, one.base + "/mcp", **ALICE)
            await legacy_session(http, one.base + "/mcp", **ALICE)  # evicts the first session at `one`
            await anyio.sleep(0.5)  # an eviction's DELETEs would have gone by now
            assert not counter.deleted
            answer = await legacy_post(http, two.base + "/mcp", first, "tools/call", 6, params, **ALICE)
            assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"
    assert counter.initializes == 2  # the first session's backend session was continued at `two`


@given(
    ids=st.lists(st.uuids().map(lambda u: u.hex), min_size=1, max_size=10),
    labels=st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=10, max_size=10),
)
def test_the_codec_gives_back_each_backends_replica(ids: list[str], labels: list[str | None]) -> None:
    backends = tuple((f"b{index}", value) for index, value in enumerate(ids))
    replicas = tuple((name, label) for (name, _), label in zip(backends, labels, strict=False) if label is not None)
    state = SessionState(owner("x"), "/mcp", uuid.uuid4().hex, SDK_INIT, None, backends, 1234567, replicas)
    assert decode(encode(state)) == state
    if not replicas:  # without pools, the plaintext is the one earlier releases of format 1 wrote
        assert encode(state) == encode(
            SessionState(owner("x"), "/mcp", state.session_id, SDK_INIT, None, backends, 1234567)
        )


async def test_the_clients_delete_on_another_instance_ends_the_sealed_backend_session(tmp_path: Path) -> None:
    counter = Recorded("ended")
    port = free_port()
    text = config_text({"ended": f"http://127.0.0.1:{port}/mcp"})
    with (
        serve_app(counter, port),
        serve_gateway(tmp_path / "one.toml", text) as one,
        serve_gateway(tmp_path / "two.toml", text) as two,
    ):
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, one.base + "/mcp", **ALICE)
            params = {"name": "ended__count", "arguments": {}}
            answer = await legacy_post(http, two.base + "/mcp", handle, "tools/call", 7, params, **ALICE)
            assert answer.status_code == 200 and json_of(answer)["result"]["content"][0]["text"] == "1"
            deleted = await http.delete(two.base + "/mcp", headers=legacy_headers(handle, **ALICE))
            assert deleted.status_code in (200, 204), deleted.text
            for _ in range(100):  # ended through its stack, in the background (within 5 s)
                if counter.deleted:
                    break
                await anyio.sleep(0.05)
    assert counter.deleted == 1 and counter.initializes == 1  # the one sealed session, ended where it was deleted
