"""A sealed session id reaches only the server that issued it, whatever the name points at now.

With `[gateway] session_key` a handle carries backend session ids. After a reload (a real gateway
process, SIGHUP) or on another instance with another config, a name may point at another server:
the old id must never be sent there. Every backend here records each `Mcp-Session-Id` it receives
(`Recorded.carried`), and each test ends on the one rule: a server only ever receives ids it issued.
A mount answers the old handle 404 (the client initializes again); an aggregate opens that member's
session anew and continues the others; a pool never adopts a session at a place now holding another replica.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp_middleware.core import Component, Outcome
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import Served, free_port, serve_app
from tests.gateway.sealed_backends import ALICE, IN_PROCESS, Recorded, config_text, sealed_state
from tests.gateway.test_sealed_origins_codec import format_one
from tests.support import processes
from tests.support.decisions import DecisionRecorder
from tests.support.requests import legacy_headers, legacy_post, legacy_session
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio

PATIENCE = 60.0
"""Seconds a test waits for a gateway process to reload (a loaded machine is slow)."""


def only_their_own(*servers: Recorded) -> None:
    """The rule: every session id a server received is one it issued (none of another server's)."""
    for server in servers:
        foreign = set(server.received) - set(server.issued)
        assert not foreign, f"{server.name} received session ids it never issued: {foreign}"


async def count(http: httpx2.AsyncClient, url: str, handle: str, tool: str = "count", request_id: int = 5) -> str:
    """Call `tool` (a `Recorded` server's per-session counter) in the session `handle`; its answer."""
    answer = await legacy_post(http, url, handle, "tools/call", request_id, {"name": tool, "arguments": {}}, **ALICE)
    assert answer.status_code == 200, answer.text
    result = json_of(answer)["result"]
    assert not result.get("isError"), result
    return str(result["content"][0]["text"])


async def unknown_session(http: httpx2.AsyncClient, url: str, handle: str) -> None:
    """`handle` is an unknown session at `url`: the SDK's 404 and JSON-RPC error, with the request's id."""
    answer = await legacy_post(http, url, handle, "tools/call", 41, {"name": "count", "arguments": {}}, **ALICE)
    assert answer.status_code == 404, answer.text
    body = answer.json()
    assert body["id"] == 41 and body["error"]["code"] == -32600 and "not found" in body["error"]["message"].lower()


def write(path: Path, text: str) -> None:
    """Replace the file as editors do (a new file renamed over the old one)."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text, encoding="utf-8")
    os.replace(fresh, path)


@contextlib.asynccontextmanager
async def gateway_process(tmp_path: Path, text: str) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`mcp-gateway serve` on `text`: (process, base URL, config file)."""
    path, log, port = tmp_path / "gateway.toml", tmp_path / "gateway.log", free_port()
    write(path, text)
    process = await anyio.to_thread.run_sync(processes.start_gateway, path, port, log)
    try:
        yield process, f"http://127.0.0.1:{port}", path
    finally:
        await anyio.to_thread.run_sync(processes.stop, process)


async def reload(process: subprocess.Popen[bytes], path: Path, text: str) -> None:
    """Write `text` over the config, SIGHUP, and wait until the gateway logged the reload."""
    log = path.parent / "gateway.log"
    before = log.read_text(errors="replace").count("config reloaded")
    write(path, text)
    os.kill(process.pid, signal.SIGHUP)
    with anyio.fail_after(PATIENCE):
        while log.read_text(errors="replace").count("config reloaded") <= before:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            await anyio.sleep(0.1)


async def test_a_reload_that_moves_a_name_never_sends_its_old_sessions_to_the_new_server(tmp_path: Path) -> None:
    old, new, stays = Recorded("old"), Recorded("new"), Recorded("stays")
    with serve_app(old) as at_old, serve_app(new) as at_new, serve_app(stays) as at_stays:
        before = config_text({"a": at_old.mcp_url, "b": at_stays.mcp_url})
        after = config_text({"a": at_new.mcp_url, "b": at_stays.mcp_url})
        async with gateway_process(tmp_path, before) as (process, base, path), httpx2.AsyncClient(timeout=60) as http:
            mounted = await legacy_session(http, base + "/mcp/a", **ALICE)
            aggregate = await legacy_session(http, base + "/mcp", **ALICE)
            assert await count(http, base + "/mcp/a", mounted) == "1"
            assert await count(http, base + "/mcp", aggregate, "a__count") == "1"
            assert await count(http, base + "/mcp", aggregate, "b__count") == "1"
            assert len(old.issued) == 2 and not new.issued

            await reload(process, path, after)
            await unknown_session(http, base + "/mcp/a", mounted)  # the mount: 404, the client initializes again
            assert await count(http, base + "/mcp", aggregate, "a__count") == "1"  # a new session at the new server
            assert await count(http, base + "/mcp", aggregate, "b__count") == "2"  # the other member's goes on
            again = await legacy_session(http, base + "/mcp/a", **ALICE)
            assert await count(http, base + "/mcp/a", again) == "1"
    assert new.initializes == 2 and stays.initializes == 1  # the aggregate's and the re-initialized mount's
    assert not set(old.issued) & set(new.carried)
    only_their_own(old, new, stays)


@contextlib.contextmanager
def gateway(
    tmp_path: Path, name: str, urls: dict[str, str | list[str]], tail: str = ""
) -> Iterator[tuple[Served, DecisionRecorder]]:
    """A gateway (in this process, under uvicorn) on its own config (`tail`: more of it); what it decided."""
    path = tmp_path / f"{name}.toml"
    path.write_text(config_text(urls) + tail, encoding="utf-8")
    recorder = DecisionRecorder(build_gateway(load_config(path)).app)
    with serve_app(recorder) as served:
        yield served, recorder


async def test_an_instance_where_the_name_is_another_server_never_sends_it_the_old_sessions(tmp_path: Path) -> None:
    first, other, shared = Recorded("first"), Recorded("other"), Recorded("shared")
    with contextlib.ExitStack() as stack:
        a, b, c = (stack.enter_context(serve_app(server)).mcp_url for server in (first, other, shared))
        one, _ = stack.enter_context(gateway(tmp_path, "one", {"a": a, "b": c}))
        two, decided = stack.enter_context(gateway(tmp_path, "two", {"a": b, "b": c}))  # a newer config: `a` moved
        async with httpx2.AsyncClient(timeout=60) as http:
            at_a = await legacy_session(http, one.base + "/mcp/a", **ALICE)
            at_b = await legacy_session(http, one.base + "/mcp/b", **ALICE)
            aggregate = await legacy_session(http, one.base + "/mcp", **ALICE)
            assert {name for name, _ in sealed_state(aggregate).backends} == {"a", "b"}
            assert await count(http, one.base + "/mcp/a", at_a) == "1"
            assert await count(http, one.base + "/mcp", aggregate, "a__count") == "1"

            await unknown_session(http, two.base + "/mcp/a", at_a)  # another server's session: unknown here
            async with http.stream("GET", two.base + "/mcp/a", headers=legacy_headers(at_a, **ALICE)) as stream:
                streamed = stream.status_code  # its GET stream (the head only: a stream that opened stays open)
            ended = await http.delete(two.base + "/mcp/a", headers=legacy_headers(at_a, **ALICE))  # and its end
            assert (streamed, ended.status_code) == (404, 404), ended.text
            assert await count(http, two.base + "/mcp/b", at_b) == "1"  # the same server: its session goes on
            assert await count(http, two.base + "/mcp/b", at_b) == "2"
            assert await count(http, two.base + "/mcp", aggregate, "a__count") == "1"  # opened anew at `other`
            assert await count(http, two.base + "/mcp", aggregate, "b__count") == "1"  # continued at `shared`
            assert await count(http, one.base + "/mcp", aggregate, "b__count") == "2"  # (one session, two gateways)
    assert other.initializes == 1 and shared.initializes == 2  # `other`: the aggregate's, opened on first use
    # the moved member was left out when the aggregate session was taken up, not sent and refused (404, re-open)
    reopened = [data for outcome, data in decided.of(Component.SESSION) if outcome == Outcome.REOPENED]
    assert reopened == [{}]  # the aggregate's own session (in-process) only: no member's
    refused = [data for outcome, data in decided.of(Component.ROUTER) if outcome == Outcome.SESSION_REFUSED]
    assert refused and all(data == {"reason": "moved"} for data in refused), (
        refused
    )  # the old handle: why, for the operator
    only_their_own(first, other, shared)


async def test_a_pools_session_follows_its_replica_in_the_list_and_is_never_handed_to_another(tmp_path: Path) -> None:
    replicas = [Recorded(f"r{index}") for index in range(4)]
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(serve_app(replica)).mcp_url for replica in replicas]
        one, _ = stack.enter_context(gateway(tmp_path, "one", {"pooled": urls[:2]}))
        swapped, _ = stack.enter_context(gateway(tmp_path, "swapped", {"pooled": urls[1::-1]}))  # the two, reordered
        replaced, _ = stack.enter_context(gateway(tmp_path, "replaced", {"pooled": urls[2:]}))  # two other servers
        async with httpx2.AsyncClient(timeout=60) as http:
            mounted = await legacy_session(http, one.base + "/mcp/pooled", **ALICE)
            aggregate = await legacy_session(http, one.base + "/mcp", **ALICE)
            assert sealed_state(mounted).replica is not None and sealed_state(aggregate).replicas
            assert await count(http, one.base + "/mcp/pooled", mounted) == "1"
            assert await count(http, one.base + "/mcp", aggregate, "pooled__count") == "1"
            issued = sum(len(replica.issued) for replica in replicas)

            # Reordered: the handle's place names the other replica now; the session is found at its own server.
            assert await count(http, swapped.base + "/mcp/pooled", mounted) == "2"
            assert await count(http, swapped.base + "/mcp", aggregate, "pooled__count") == "2"
            assert sum(len(replica.issued) for replica in replicas) == issued  # continued, nothing opened
            # Replaced: no replica is the server that issued it. A new session, at a server that issued it.
            assert await count(http, replaced.base + "/mcp/pooled", mounted) == "1"
            assert await count(http, replaced.base + "/mcp", aggregate, "pooled__count") == "1"
            assert await count(http, one.base + "/mcp/pooled", mounted) == "3"  # where it was: it goes on
    assert sum(replica.initializes for replica in replicas[:2]) == 2  # `one`'s two sessions, nothing more
    assert sum(replica.initializes for replica in replicas[2:]) == 2  # `replaced`'s own two
    only_their_own(*replicas)


async def test_a_remote_servers_session_never_reaches_an_in_process_app_and_back(tmp_path: Path) -> None:
    remote = Recorded("remote")
    in_process = '[[servers]]\nname = "a"\napp = "tests.gateway.sealed_backends:recorded_in_process"\n'
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve_app(remote)).mcp_url
        one, _ = stack.enter_context(gateway(tmp_path, "one", {"a": url}))
        made = len(IN_PROCESS)
        two, _ = stack.enter_context(gateway(tmp_path, "two", {}, in_process))  # `a` is an in-process app there
        [local] = IN_PROCESS[made:]
        async with httpx2.AsyncClient(timeout=60) as http:
            at_remote = await legacy_session(http, one.base + "/mcp/a", **ALICE)
            at_local = await legacy_session(http, two.base + "/mcp/a", **ALICE)
            assert await count(http, one.base + "/mcp/a", at_remote) == "1"
            assert await count(http, two.base + "/mcp/a", at_local) == "1"
            await unknown_session(http, two.base + "/mcp/a", at_remote)
            await unknown_session(http, one.base + "/mcp/a", at_local)
            assert await count(http, two.base + "/mcp/a", at_local) == "2"  # each goes on where it was opened
            assert await count(http, one.base + "/mcp/a", at_remote) == "2"
    assert remote.initializes == 1 and local.initializes == 1
    only_their_own(remote, local)


async def test_a_handle_from_before_fingerprints_is_an_unknown_session(tmp_path: Path) -> None:
    backend = Recorded("backend")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve_app(backend)).mcp_url
        one, _ = stack.enter_context(gateway(tmp_path, "one", {"a": url}))
        async with httpx2.AsyncClient(timeout=60) as http:
            handle = await legacy_session(http, one.base + "/mcp/a", **ALICE)
            await unknown_session(http, one.base + "/mcp/a", format_one(handle))
    assert backend.carried.count(backend.issued[0]) == 1  # its `initialized` only: the old handle reached nothing
    only_their_own(backend)
