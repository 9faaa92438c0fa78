"""A backend's question to a 2025-11-25 client at the aggregate is answered through any instance.

Two gateway processes share a `session_key` and one remote backend that asks its caller
(`elicitation/create`, `sampling/createMessage`) in the middle of a call. The SDK's legacy client
starts the call at `g1`; its answer POST is steered to `g2` (as a balancer would send it). `g2`
continues the session from its sealed handle and delivers the answer into the client's own session at
the backend, where the question waits: the call completes. Before, `g2` knew nothing of the
question's id (`mcp-router-<n>` meant something only in `g1`) and the call hung until it timed out.
A made-up id reaches only the client's own backend session.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import Served, free_port, serve_app
from tests.gateway.sealed_backends import ALICE, config_text
from tests.gateway.test_sealed_aggregate import Steer
from tests.router.test_aggregate import legacy_asking_server
from tests.support import processes
from tests.support.requests import legacy_post, legacy_session

pytestmark = [
    pytest.mark.anyio,
    # the backend samples on purpose: a 2025-11-25 server-to-client request (deprecated in 2026-07-28)
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


class Counted(Steer):
    """A :class:`Steer` that counts the POSTs each instance received."""

    def __init__(self, ports: dict[str, int], target: str) -> None:
        super().__init__(ports, target)
        self.posts: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            self.posts[self.target] += 1
        return await super().handle_async_request(request)


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, int], Served]]:
    scratch = tmp_path_factory.mktemp("sealed-answers")
    gateways: list[Any] = []
    with serve_app(legacy_asking_server().streamable_http_app()) as backend:
        config = scratch / "gateway.toml"
        config.write_text(config_text({"asking": backend.mcp_url}), encoding="utf-8")
        ports = {"g1": free_port(), "g2": free_port()}
        try:
            for name, port in ports.items():
                env = {**os.environ, "MCP_GATEWAY_INSTANCE": name}
                gateways.append(processes.start_gateway(config, port, scratch / f"{name}.log", env=env))
            yield ports, backend
        finally:
            processes.stop_all(reversed(gateways), patience=15)


@contextlib.asynccontextmanager
async def client_at(ports: dict[str, int], **callbacks: Any) -> AsyncIterator[tuple[Client, Counted]]:
    steer = Counted(ports, "g1")
    async with httpx2.AsyncClient(transport=steer, headers=ALICE, timeout=60) as http:
        streams = streamable_http_client(f"http://127.0.0.1:{ports['g1']}/mcp", http_client=http)
        async with Client(streams, mode="legacy", cache=None, **callbacks) as client:
            yield client, steer


async def test_an_answer_posted_to_another_instance_reaches_the_backend_that_asked(
    two: tuple[dict[str, int], Served],
) -> None:
    ports, _ = two
    asked: list[str] = []
    steer_holder: list[Counted] = []

    async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        steer_holder[0].target = "g2"  # the answer's POST goes to the other instance
        return types.ElicitResult(action="accept", content={"ok": True})

    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params.messages[0].content.text)  # type: ignore[union-attr]
        steer_holder[0].target = "g1"  # and back: either way round
        return types.CreateMessageResult(role="assistant", content=types.TextContent(text="42"), model="test")

    async with client_at(ports, elicitation_callback=elicitation, sampling_callback=sampling) as (client, steer):
        steer_holder.append(steer)
        with anyio.fail_after(45):  # without the fix the question waits for an answer that never comes
            confirmed = await client.call_tool("asking__confirm", {"action": "deploy"})
            posts_at_g2 = steer.posts["g2"]
            sampled = await client.call_tool("asking__ask_model", {"question": "meaning of life?"})
    assert asked == ["Really deploy?", "meaning of life?"]
    assert confirmed.content[0].text == "deploy: accept True"  # type: ignore[union-attr]
    assert sampled.content[0].text == "model said 42"  # type: ignore[union-attr]
    assert posts_at_g2 >= 1  # the elicitation's answer went to g2 (and the client's own tools/list after it)
    assert steer.posts["g1"] >= 3  # initialize, the first call, and the sampling answer went to g1


async def test_a_made_up_answer_id_reaches_no_question_and_breaks_nothing(two: tuple[dict[str, int], Served]) -> None:
    """An id naming a backend and an id nobody asked with: the backend ignores it; the session goes on."""
    ports, _ = two
    async with httpx2.AsyncClient(timeout=30) as http:
        url = f"http://127.0.0.1:{ports['g1']}/mcp"
        handle = await legacy_session(http, url, **ALICE)
        for forged in ("mcp-router-1.WyJhc2tpbmciLDk5OV0", "mcp-router-1.WyJub3doZXJlIiwxXQ", "mcp-router-x.!!"):
            answer = await http.post(
                f"http://127.0.0.1:{ports['g2']}/mcp",
                json={"jsonrpc": "2.0", "id": forged, "result": {"action": "accept", "content": {"ok": True}}},
                headers={
                    **ALICE,
                    "mcp-session-id": handle,
                    "mcp-protocol-version": "2025-11-25",
                    "accept": "application/json, text/event-stream",
                },
            )
            assert answer.status_code in (200, 202), (forged, answer.status_code, answer.text)
        listed = await legacy_post(http, url, handle, "tools/list", 3, {}, **ALICE)
        assert listed.status_code == 200
        assert "asking__confirm" in listed.text
