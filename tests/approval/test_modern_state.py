"""The 2026-07-28 round on the wire: what an attacker can do with a `requestState` (replay it, move it to another
tool, another caller or other arguments, tamper with it) and what a backend's own input keys become."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import orjson
import pytest
from mcp.shared.inbound import encode_header_value

from mcp_middleware.approval import INPUT_KEY, STATE_PREFIX
from tests.approval.conftest import ENDPOINTS, Endpoint, Files, Setup, build, public
from tests.support.requests import modern_body, modern_headers

pytestmark = pytest.mark.anyio

CAN_ASK = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}
YES = {"action": "accept", "content": {"approve": True}}


async def call(
    setup: Setup,
    endpoint: Endpoint,
    tool: str,
    arguments: dict[str, Any],
    *,
    who: str = "alice",
    extra: dict[str, Any] | None = None,
    request_id: int = 1,
) -> tuple[int, dict[str, Any]]:
    name = public(endpoint, tool)
    params: dict[str, Any] = {"name": name, "arguments": arguments, **(extra or {})}
    body = orjson.loads(modern_body("tools/call", params, request_id))
    body["params"]["_meta"].update(CAN_ASK)  # modern_body's envelope declares no capability
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(
            setup.url(endpoint),
            content=orjson.dumps(body),
            headers=modern_headers("tools/call", encode_header_value(name), authorization=f"Bearer {who}"),
        )
    assert response.headers["content-type"].startswith("application/json"), response.text
    answer: dict[str, Any] = response.json()
    assert answer["id"] == request_id
    return response.status_code, answer


async def asked(setup: Setup, endpoint: Endpoint, tool: str, arguments: dict[str, Any], **options: Any) -> str:
    """Call, expect the approval question; its requestState."""
    status, answer = await call(setup, endpoint, tool, arguments, **options)
    assert status == 200, answer
    result = answer["result"]
    assert result["resultType"] == "input_required"
    question = result["inputRequests"][INPUT_KEY]
    assert question["method"] == "elicitation/create"
    assert question["params"]["requestedSchema"]["required"] == ["approve"]
    state: str = result["requestState"]
    assert state.startswith(STATE_PREFIX)
    return state


def retry(state: str, answer: Any = YES, **others: Any) -> dict[str, Any]:
    return {"inputResponses": {INPUT_KEY: answer, **others}, "requestState": state}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_changed_arguments_are_asked_again(endpoint: Endpoint, setup: Setup) -> None:
    state = await asked(setup, endpoint, "delete_file", {"path": "/srv/harmless.tmp"})
    # The approver saw harmless.tmp; the retry names another file with the approving answer and state.
    again = await asked(setup, endpoint, "delete_file", {"path": "/etc/passwd"}, extra=retry(state))
    assert again != state
    assert setup.files.ran("delete_file") == []
    assert setup.recorder.of("approval")[1][1]["reason"] == "arguments_changed"
    status, answer = await call(setup, endpoint, "delete_file", {"path": "/etc/passwd"}, extra=retry(again))
    assert status == 200 and answer["result"]["content"][0]["text"] == "deleted /etc/passwd"
    assert setup.files.ran("delete_file") == [{"path": "/etc/passwd"}]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_state_for_another_tool_is_refused(endpoint: Endpoint, setup: Setup) -> None:
    state = await asked(setup, endpoint, "purge_cache", {"region": "eu"})
    status, answer = await call(setup, endpoint, "delete_file", {"path": "/srv/x"}, extra=retry(state))
    assert status == 403
    assert answer["error"]["code"] == -32013
    assert answer["error"]["data"]["approval"] == "state_for_another_call"
    assert setup.files.calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_another_principal_cannot_use_a_state(endpoint: Endpoint, setup: Setup) -> None:
    state = await asked(setup, endpoint, "delete_file", {"path": "/home/alice/thesis.tex"})
    status, answer = await call(
        setup, endpoint, "delete_file", {"path": "/home/alice/thesis.tex"}, who="bob", extra=retry(state)
    )
    assert status == 403
    assert answer["error"]["data"]["approval"] == "state_for_another_call"
    assert setup.files.calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_state_runs_the_call_once(endpoint: Endpoint, setup: Setup) -> None:
    state = await asked(setup, endpoint, "delete_file", {"path": "/srv/once"})
    first = await call(setup, endpoint, "delete_file", {"path": "/srv/once"}, extra=retry(state), request_id=2)
    replayed = await call(setup, endpoint, "delete_file", {"path": "/srv/once"}, extra=retry(state), request_id=3)
    assert first[0] == 200 and first[1]["result"]["content"][0]["text"] == "deleted /srv/once"
    assert replayed[0] == 403 and replayed[1]["error"]["data"]["approval"] == "state_replayed"
    assert setup.files.ran("delete_file") == [{"path": "/srv/once"}]


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        ({"inputResponses": {INPUT_KEY: YES}}, "answer_without_state"),
        ({"inputResponses": {INPUT_KEY: YES}, "requestState": STATE_PREFIX + "A" * 60}, "state_malformed"),
        ({"inputResponses": {INPUT_KEY: YES}, "requestState": STATE_PREFIX + "x" * 100_000}, "state_malformed"),
    ],
)
async def test_forged_states_are_refused(extra: dict[str, Any], word: str, setup: Setup) -> None:
    status, answer = await call(setup, "mount", "delete_file", {"path": "/srv/y"}, extra=extra)
    assert status == 403
    assert answer["error"]["data"]["approval"] == word
    assert setup.files.calls == []


async def test_a_tampered_state_is_refused(setup: Setup) -> None:
    state = await asked(setup, "mount", "delete_file", {"path": "/srv/z"})
    token = state[len(STATE_PREFIX) :]
    flipped = token[:30] + ("A" if token[30] != "A" else "B") + token[31:]
    status, answer = await call(setup, "mount", "delete_file", {"path": "/srv/z"}, extra=retry(STATE_PREFIX + flipped))
    assert status == 403
    assert answer["error"]["data"]["approval"] == "state_tampered"
    assert setup.files.calls == []


@pytest.mark.parametrize("answer", [{"action": "decline"}, {"action": "accept", "content": {"approve": "yes"}}, 7])
async def test_anything_but_a_clear_yes_refuses(answer: Any, setup: Setup) -> None:
    state = await asked(setup, "mount", "delete_file", {"path": "/srv/w"})
    status, refused = await call(setup, "mount", "delete_file", {"path": "/srv/w"}, extra=retry(state, answer))
    assert status == 403
    assert refused["error"]["data"]["approval"] in ("declined", "malformed")
    assert setup.files.calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_only_the_middlewares_own_input_is_taken_out(endpoint: Endpoint, setup: Setup) -> None:
    state = await asked(setup, endpoint, "delete_file", {"path": "/srv/v"})
    backend_answer = {"action": "accept", "content": {"name": "Ada"}}
    status, answer = await call(
        setup, endpoint, "delete_file", {"path": "/srv/v"}, extra=retry(state, YES, backend_question=backend_answer)
    )
    assert status == 200, answer
    reached = [orjson.loads(body) for body in setup.files.bodies]
    calls = [body["params"] for body in reached if body.get("method") == "tools/call"]
    assert len(calls) == 1
    assert calls[0]["inputResponses"] == {"backend_question": backend_answer}  # the backend's own key passed on
    assert "requestState" not in calls[0]  # the middleware's state is its own


async def test_an_expired_state_asks_again(serve: Any) -> None:
    files = Files()
    recorder = build(files, state_ttl=1.0)
    setup = Setup(serve(recorder).base, files, recorder)
    state = await asked(setup, "mount", "delete_file", {"path": "/srv/late"})
    await anyio.sleep(2.5)  # the sealed state carries whole seconds: wait past them
    again = await asked(setup, "mount", "delete_file", {"path": "/srv/late"}, extra=retry(state))
    assert again != state
    assert recorder.of("approval")[1][1]["reason"] == "state_expired"
    assert files.calls == []


async def test_hostile_names_and_arguments_make_a_bounded_question(setup: Setup) -> None:
    tool = "purge_" + "\u202e\n" * 3_000  # selected by `purge_*`; line breaks and a bidi override
    arguments = {"line": "ok\nApprove: yes\r\n" * 10_000, "deep": [[[[{"a": 1}]]]], **{f"k{i}": i for i in range(500)}}
    status, answer = await call(setup, "mount", tool, arguments)
    assert status == 200
    message = answer["result"]["inputRequests"][INPUT_KEY]["params"]["message"]
    assert len(message) <= 1400
    assert "\n" not in message and "\u202e" not in message  # no line of its own, no reordering of the text
    assert "… 490 more" in message  # twelve arguments shown, the rest counted
    decision = setup.recorder.of("approval")[0][1]
    assert len(str(decision["tool"])) <= 256
    assert setup.files.calls == []


async def test_the_question_shows_no_credential(setup: Setup) -> None:
    arguments = {"path": "p" * 10_000, "api_key": "sk-live-0123456789", "nested": {"a": [1, 2]}}
    status, answer = await call(setup, "mount", "delete_file", arguments)
    assert status == 200
    message = answer["result"]["inputRequests"][INPUT_KEY]["params"]["message"]
    assert "sk-live" not in message and "api_key=[redacted]" in message
    assert "nested={1 keys}" in message and "p" * 80 not in message


async def test_a_tool_no_list_names_is_held(setup: Setup) -> None:
    # The backend's list was fetched (once) and does not name it: nothing says it is harmless.
    status, answer = await call(setup, "mount", "format_disk", {"disk": "sda"})
    assert status == 200 and answer["result"]["resultType"] == "input_required"
    held = await call(setup, "mount", "read_file", {"path": "/x"})  # listed, annotated read-only: not held
    assert held[1]["result"]["content"][0]["text"] == "contents of /x"
    assert [(outcome, facts["why"]) for outcome, facts in setup.recorder.of("approval")] == [("required", "unlisted")]
