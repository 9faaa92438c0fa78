"""Bad input through the reference gateway with every middleware on, sent as an attacker would.

The attacker holds a valid token (anonymous callers are refused with 401 before any backend
answers) and sends the whole malformed corpus of tests/core to each kind of endpoint: an
in-process path mount, a proxied path mount and the aggregate. Each answer is compared with the
bare SDK server's answer to the same bytes: never a 5xx, always a JSON-RPC error, the request's
id wherever the SDK gave it or the body did, and the SDK's status and code unless the corpus
says why ours is better. A body over the bound cannot give its id (it is never read): 413 with
`id: null` is the documented answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import orjson
import pytest

from mcp_middleware.core import ErrorCode
from tests.core.bad_input_corpus import CASES, JSON, LEGACY, answer, assert_never_worse, send

from .hostile_gateway import BODY_LIMIT, TOKEN, HostileGateway, hostile_gateway

pytestmark = pytest.mark.anyio

TARGETS = ("local", "remote", "aggregate")
BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileGateway]:
    with hostile_gateway(tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", CASES)
async def test_bad_input_through_the_gateway_is_never_answered_worse_than_by_the_bare_sdk(
    name: str, target: str, running: HostileGateway, http: httpx2.AsyncClient
) -> None:
    case = CASES[name]
    bare = await http.send(send(http, running.bare.mcp_url, case))
    ours = await http.send(send(http, running.url(target), case, BEARER))
    assert_never_worse(case, bare, ours)
    mine = answer(ours)
    assert mine is not None
    if case.request_id is not None:  # the body gave the id: the answer carries it, whoever refused
        assert mine["id"] == case.request_id, (target, ours.status_code, mine)
    assert (ours.status_code, mine["error"]["code"]) == (case.status, case.code), mine  # as the core alone answers


@pytest.mark.parametrize("target", TARGETS)
async def test_anonymous_bad_input_is_refused_without_a_5xx(
    target: str, running: HostileGateway, http: httpx2.AsyncClient
) -> None:
    """Without a token every case ends in a JSON-RPC error, bad input first (the core runs before auth)."""
    for case in CASES.values():
        ours = await http.send(send(http, running.url(target), case))
        mine = answer(ours)
        assert ours.status_code < 500 and mine is not None and isinstance(mine.get("error"), dict), ours.text
        if case.request_id is not None:
            assert mine["id"] == case.request_id, (case, mine)


@pytest.mark.parametrize("target", TARGETS)
async def test_a_body_over_the_bound_is_413_without_an_id_it_never_read(
    target: str, running: HostileGateway, http: httpx2.AsyncClient
) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"a" * BODY_LIMIT + b'"}}'

    async def chunks() -> AsyncIterator[bytes]:
        yield body[: BODY_LIMIT // 2]
        yield body[BODY_LIMIT // 2 :]

    declared = await http.post(running.url(target), content=body, headers={**JSON, **BEARER})
    streamed = await http.post(running.url(target), content=chunks(), headers={**JSON, **BEARER})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert orjson.loads(response.content) == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": ErrorCode.PAYLOAD_TOO_LARGE,
                "message": f"Request body exceeds {BODY_LIMIT} bytes",
                "data": {"maxBytes": BODY_LIMIT},
            },
        }


async def test_the_gateway_still_serves_after_the_corpus(running: HostileGateway, http: httpx2.AsyncClient) -> None:
    for target in TARGETS:
        for case in CASES.values():
            await http.send(send(http, running.url(target), case, BEARER))
    opened = await http.post(
        running.url("local"),
        content=orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "x", "version": "1"},
                },
            }
        ),
        headers={**LEGACY, **BEARER},
    )
    assert opened.status_code == 200 and "mcp-session-id" in opened.headers
    health = await http.get(f"{running.served.base}/healthz")
    assert health.status_code == 200
