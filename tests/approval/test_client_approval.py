"""The calling user approves through the SDK client, in both eras, at the mount and through the aggregate.

2025-11-25: an `elicitation/create` arrives on the call's own stream and the client's answer is a
POST in its session. 2026-07-28: an `input_required` result, answered by a retry the SDK client
drives itself. Either way a refused or unanswered call never reaches the backend.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import MCPError, types

from mcp_middleware.core import JsonRpcCode
from tests.approval.conftest import ENDPOINTS, Endpoint, Files, Setup, build, client_for, public
from tests.conftest import ERAS, Era

pytestmark = pytest.mark.anyio


def answering(action: str, approve: bool = True, asked: list[str] | None = None) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        if asked is not None:
            asked.append(params.message)
        content = {"approve": approve} if action == "accept" else None
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return callback


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_an_approved_destructive_call_runs(era: Era, endpoint: Endpoint, setup: Setup) -> None:
    asked: list[str] = []
    async with client_for(
        setup.url(endpoint), era, "alice", elicitation_callback=answering("accept", asked=asked)
    ) as c:
        result = await c.call_tool(public(endpoint, "delete_file"), {"path": "/srv/a.txt", "token": "hunter2"})
        purged = await c.call_tool(public(endpoint, "purge_cache"), {"region": "eu"})  # chosen by selector
        read = await c.call_tool(public(endpoint, "read_file"), {"path": "/srv/a.txt"})  # not held: never asked
    assert result.content[0].text == "deleted /srv/a.txt"  # type: ignore[union-attr]
    assert purged.content[0].text == "purged eu"  # type: ignore[union-attr]
    assert read.content[0].text == "contents of /srv/a.txt"  # type: ignore[union-attr]
    assert len(asked) == 2
    assert "'delete_file' on files" in asked[0] and "path='/srv/a.txt'" in asked[0]
    assert "hunter2" not in asked[0] and "token=[redacted]" in asked[0]  # a credential-like argument is not shown
    assert setup.files.ran("delete_file") == [{"path": "/srv/a.txt"}]
    assert setup.recorder.outcomes("approval") == ["required", "approved", "required", "approved"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize(
    ("action", "approve", "word"),
    [("decline", True, "declined"), ("cancel", True, "cancelled"), ("accept", False, "declined")],
)
async def test_a_refused_call_is_an_error_naming_the_refusal(
    era: Era, endpoint: Endpoint, action: str, approve: bool, word: str, setup: Setup
) -> None:
    async with client_for(setup.url(endpoint), era, "alice", elicitation_callback=answering(action, approve)) as c:
        with pytest.raises(MCPError) as raised:
            await c.call_tool(public(endpoint, "delete_file"), {"path": "/srv/b.txt"})
    assert raised.value.code == -32013
    assert raised.value.data["approval"] == word
    assert raised.value.data["tool"] == "delete_file"  # the backend's own name, whichever endpoint
    assert word in str(raised.value)
    assert setup.files.ran("delete_file") == []
    assert setup.recorder.outcomes("approval") == ["required", "deny"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_an_unanswered_question_times_out(endpoint: Endpoint, setup: Setup) -> None:
    async def never(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        await anyio.sleep(30)  # the person walked away (the test's timeout is 2 s)
        raise AssertionError("unreachable")

    async with client_for(setup.url(endpoint), "legacy", "alice", elicitation_callback=never) as c:
        with pytest.raises(MCPError) as raised:
            await c.call_tool(public(endpoint, "delete_file"), {"path": "/srv/c.txt"})
    assert raised.value.code == -32013
    assert raised.value.data["approval"] == "timeout"
    assert "No approval came within 2 s" in str(raised.value)
    assert setup.files.ran("delete_file") == []
    assert setup.recorder.outcomes("approval") == ["required", "timeout"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_client_that_cannot_be_asked_gets_the_capability_error(
    era: Era, endpoint: Endpoint, setup: Setup
) -> None:
    async with client_for(setup.url(endpoint), era, "alice") as c:  # no elicitation callback: none declared
        with pytest.raises(MCPError) as raised:
            await c.call_tool(public(endpoint, "delete_file"), {"path": "/srv/d.txt"})
        read = await c.call_tool(public(endpoint, "read_file"), {"path": "/srv/d.txt"})
    assert raised.value.code == JsonRpcCode.MISSING_REQUIRED_CLIENT_CAPABILITY
    assert raised.value.data["requiredCapabilities"] == {"elicitation": {"form": {}}}
    assert "elicitation capability" in str(raised.value)
    assert read.content[0].text == "contents of /srv/d.txt"  # type: ignore[union-attr]
    assert setup.files.ran("delete_file") == []
    assert setup.recorder.of("approval")[0][1]["reason"] == "missing_capability"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_an_approved_call_streams_its_progress(era: Era, endpoint: Endpoint, setup: Setup) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, message))

    async with client_for(setup.url(endpoint), era, "alice", elicitation_callback=answering("accept")) as c:
        result = await c.call_tool(public(endpoint, "wipe_disk"), {"disk": "sdb"}, progress_callback=on_progress)
    assert result.content[0].text == "wiped sdb"  # type: ignore[union-attr]
    assert progress == [(1, "wiping 1/3"), (2, "wiping 2/3"), (3, "wiping 3/3")]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_a_backend_that_asks_its_own_question_completes(era: Era, endpoint: Endpoint, setup: Setup) -> None:
    asked: list[str] = []

    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        if params.message.startswith("How many copies"):  # the backend's own question
            return types.ElicitResult(action="accept", content={"copies": 3})
        return types.ElicitResult(action="accept", content={"approve": True})

    async with client_for(setup.url(endpoint), era, "alice", elicitation_callback=callback) as c:
        result = await c.call_tool(public(endpoint, "shred"), {"path": "/srv/s"})
    assert result.content[0].text == "shredded /srv/s: 3"  # type: ignore[union-attr]
    assert setup.files.ran("shred") == [{"path": "/srv/s"}]
    if era == "legacy":  # one approval; the backend asks on the same stream
        assert [q.split(" ")[0] for q in asked] == ["Approve", "How"]
    else:  # the backend's round is carried through a second approval (each round is approved anew)
        assert [q.split(" ")[0] for q in asked] == ["Approve", "How", "Approve"]
        assert setup.recorder.of("approval")[2][1]["reason"] == "backend_round"


async def test_a_backend_known_only_from_its_clients_lists(serve: Any) -> None:
    files = Files()
    recorder = build(files, legacy_only=True)  # the middleware cannot fetch this backend's tools itself
    setup = Setup(serve(recorder).base, files, recorder)
    asked: list[str] = []
    async with client_for(
        setup.url("mount"), "legacy", "alice", elicitation_callback=answering("accept", asked=asked)
    ) as c:
        before = await c.call_tool("read_file", {"path": "/a"})  # no list has named it: held
        await c.list_tools()  # the client's own list passes through: its annotations are learnt
        after = await c.call_tool("read_file", {"path": "/b"})  # read-only: not held
        deleted = await c.call_tool("delete_file", {"path": "/c"})  # destructive: held
    assert [r.content[0].text for r in (before, after, deleted)] == [  # type: ignore[union-attr]
        "contents of /a",
        "contents of /b",
        "deleted /c",
    ]
    whys = [facts["why"] for outcome, facts in recorder.of("approval") if outcome == "required"]
    assert whys == ["unlisted", "destructive"]
