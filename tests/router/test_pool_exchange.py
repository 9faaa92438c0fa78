"""Token exchange for a pool: each caller's requests carry the token exchanged for the pool, whichever replica serves.

Three replicas (SDK `MCPServer`s under uvicorn, `tests.router.pool_replica`) each accept only tokens the
loopback RFC 8693 endpoint (an authlib server) issued for the pool's audience, and record every
`Authorization` they see. The gateway authenticates two callers by static tokens and reaches the pool through
its path mount and the aggregate, in both eras. Proven at the replicas: one exchange per caller for many
calls, two callers never share a token, a stopped replica changes nothing (the cached token goes to the
next), a 401 from a replica costs one exchange and succeeds, and the caller's own token never arrives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.config import load_config
from mcp_middleware.router import HttpBackend, InProcessBackend, PoolBackend
from mcp_middleware.router.credentials import BackendCredentials, TokenExchange
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.router.pool_replica import build
from tests.support.requests import legacy_post, legacy_session, modern_body, modern_headers
from tests.support.token_exchange import GATEWAY_SECRET, GuardedBackend, IssuingServer, Seen

pytestmark = pytest.mark.anyio

AUDIENCE = "https://pool.test/mcp"
CALLERS = {"alice-token": "alice", "bob-token": "bob"}

CONFIG = """
[auth]
mode = "static"
[auth.tokens]
"alice-token" = {{ subject = "alice", scopes = [] }}
"bob-token" = {{ subject = "bob", scopes = [] }}

[[servers]]
name = "pooled"
url = [{urls}]
probe_interval = 0.5
probe_timeout = 5
[servers.auth.exchange]
token_endpoint = "{endpoint}"
audience = "{audience}"
client_id = "gateway"
client_secret = "${{env:GW_POOL_EXCHANGE_SECRET}}"
"""


class Pool:
    """The running parts: the token endpoint, the replicas (stoppable one by one) and the gateway."""

    def __init__(self, issuer: IssuingServer, replicas: list[GuardedBackend], stops: list[contextlib.ExitStack]):
        self.issuer = issuer
        self.replicas = replicas
        self._stops = stops
        self.gateway: Gateway | None = None
        self.served: Served | None = None

    def stop(self, index: int) -> None:
        self._stops[index].close()

    def seen(self) -> list[Seen]:
        return [seen for replica in self.replicas for seen in replica.seen]

    def calls(self) -> list[Seen]:
        return [seen for replica in self.replicas for seen in replica.calls()]


@contextlib.contextmanager
def running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, count: int = 3, endpoint: str | None = None, options: str = ""
) -> Iterator[Pool]:
    """The parts running; `endpoint` another token endpoint (a dead one), `options` more pool settings."""
    monkeypatch.setenv("GW_POOL_EXCHANGE_SECRET", GATEWAY_SECRET)
    issuer = IssuingServer(callers=CALLERS, audiences={AUDIENCE})
    replicas = [GuardedBackend(build(f"r{n}").streamable_http_app(), issuer, audience=AUDIENCE) for n in range(count)]
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(serve_app(issuer.app))
        stops = [contextlib.ExitStack() for _ in replicas]
        urls = [stops[n].enter_context(serve_app(replica)).mcp_url for n, replica in enumerate(replicas)]
        for each in stops:
            stack.enter_context(each)
        path = tmp_path / "gateway.toml"
        listed = ", ".join(f'"{url}"' for url in urls)
        text = CONFIG.format(urls=listed, endpoint=endpoint or f"{idp.base}/token", audience=AUDIENCE)
        path.write_text(text.replace("probe_timeout = 5\n", f"probe_timeout = 5\n{options}"))
        pool = Pool(issuer, replicas, stops)
        pool.gateway = build_gateway(load_config(path))
        pool.served = stack.enter_context(serve_app(pool.gateway.app))
        yield pool


def _where(endpoint: str) -> tuple[str, str]:
    return ("/mcp/pooled", "whoami") if endpoint == "mount" else ("/mcp", "pooled__whoami")


def _never_the_callers_token(pool: Pool) -> None:
    """At every replica, every request carried a token, and none was a caller's own."""
    assert pool.seen()
    for seen in pool.seen():
        assert seen.authorization is not None, seen
        assert not any(token in seen.authorization for token in CALLERS), seen


def _by_subject(pool: Pool) -> dict[str, set[str | None]]:
    found: dict[str, set[str | None]] = {}
    for seen in pool.calls():
        assert seen.issued is not None and seen.issued.grant == "exchange" and seen.issued.audience == AUDIENCE
        found.setdefault(str(seen.issued.subject), set()).add(seen.authorization)
    return found


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_calls_at_every_replica_carry_one_token_exchanged_per_caller(
    era: Era, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as pool:
        assert pool.served is not None
        path, tool = _where(endpoint)

        async def calls(token: str) -> None:
            async with client(f"{pool.served.base}{path}", era, token) as session:  # type: ignore[union-attr]
                for _ in range(6):
                    result = await session.call_tool(tool, {})
                    assert result.content[0].text in {"r0", "r1", "r2"}  # type: ignore[union-attr]

        async with anyio.create_task_group() as group:
            for _ in range(2):  # two sessions of each caller at once: still one exchange each
                group.start_soon(calls, "alice-token")
                group.start_soon(calls, "bob-token")
        assert pool.issuer.exchanges("alice") == 1 and pool.issuer.exchanges("bob") == 1
        assert len(pool.calls()) == 24
        tokens = _by_subject(pool)
        assert set(tokens) == {"alice", "bob"} and all(len(held) == 1 for held in tokens.values())
        assert tokens["alice"].isdisjoint(tokens["bob"])  # caller A's backend token never used for B
        if era == "modern":  # stateless: balanced over the replicas, the one token at each of them
            assert sum(1 for replica in pool.replicas if replica.calls()) >= 2
        # the pool's probes and the aggregate's own session: the gateway's client-credentials token
        for seen in pool.seen():
            assert seen.issued is not None, seen
            if seen.method != "tools/call":
                assert seen.issued.grant in ("client_credentials", "exchange"), seen
        own = [seen for seen in pool.seen() if seen.issued and seen.issued.grant == "client_credentials"]
        assert any(seen.method == "server/discover" for seen in own)  # the pool's probes
        assert not any(seen.method == "tools/call" for seen in own)  # a caller's call never goes as the gateway
        _never_the_callers_token(pool)


@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_a_stopped_replica_changes_nothing_the_cached_token_goes_to_the_next(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as pool:
        assert pool.served is not None
        path, tool = _where(endpoint)
        async with client(f"{pool.served.base}{path}", "modern", "alice-token") as session:
            for _ in range(3):
                await session.call_tool(tool, {})
            pool.stop(0)  # its connections close, new ones are refused: every call goes elsewhere
            answered = {str(r.content[0].text) for r in [await session.call_tool(tool, {}) for _ in range(8)]}  # type: ignore[union-attr]
        assert answered <= {"r1", "r2"} and answered
        assert pool.issuer.exchanges("alice") == 1  # failover reused the token
        assert len(_by_subject(pool)["alice"]) == 1
        _never_the_callers_token(pool)


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
async def test_a_replica_answering_401_costs_one_exchange_and_the_call_succeeds_there(
    era: Era, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch) as pool:
        assert pool.served is not None
        path, tool = _where(endpoint)
        async with client(f"{pool.served.base}{path}", era, "alice-token") as session:
            await session.call_tool(tool, {})
            held = pool.calls()[-1].authorization
            assert held is not None
            for replica in pool.replicas:  # the identity provider revoked it: every replica now answers 401
                replica.revoked.add(held.removeprefix("Bearer "))
            result = await session.call_tool(tool, {})
            assert pool.issuer.exchanges("alice") == 2
            for _ in range(3):  # the fresh token is cached for the pool
                await session.call_tool(tool, {})
        assert pool.issuer.exchanges("alice") == 2
        served_by = str(result.content[0].text)  # type: ignore[union-attr]
        replica = pool.replicas[int(served_by[1])]
        refused = [n for n, seen in enumerate(replica.calls()) if seen.authorization == held and seen.issued is None]
        assert len(refused) == 1, replica.calls()  # that replica refused it once ...
        retried = replica.calls()[refused[0] + 1]  # ... and got the call again, with a fresh token
        assert retried.authorization != held and retried.issued is not None and retried.issued.subject == "alice"
        _never_the_callers_token(pool)


async def _raw_call(served: Served, token: str, request_id: object) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as http:
        return await http.post(
            f"{served.base}/mcp/pooled",
            content=modern_body("tools/call", {"name": "record", "arguments": {"entry": "x"}}, request_id=request_id),
            headers={**modern_headers("tools/call", "record"), "authorization": f"Bearer {token}"},
        )


async def test_a_refused_exchange_is_the_callers_json_rpc_error_and_no_replica_sees_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch, count=2) as pool:
        assert pool.served is not None and pool.gateway is not None
        pool.issuer.refuse_subjects = True  # the identity provider revoked the caller's token
        for request_id in (41, "call-42"):
            response = await _raw_call(pool.served, "alice-token", request_id)
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
            answer = response.json()
            assert answer["id"] == request_id and answer["error"]["code"] == ErrorCode.UNAUTHORIZED
            assert answer["error"]["data"] == {"backend": "pooled", "mayHaveRun": False, "error": "invalid_grant"}
        assert pool.calls() == []
        pool.issuer.refuse_subjects = False
        pool.replicas[0].refuse_all = pool.replicas[1].refuse_all = True  # both refuse even a fresh token
        response = await _raw_call(pool.served, "bob-token", 43)
        assert response.status_code == 502
        answer = response.json()
        assert answer["id"] == 43 and answer["error"]["code"] == ErrorCode.BAD_GATEWAY
        assert "refused the token exchanged for it" in answer["error"]["message"]
        assert answer["error"]["data"]["mayHaveRun"] is False
        assert len(pool.calls()) == 2  # one replica, the token and a fresh one: both refused, nothing ran
        _never_the_callers_token(pool)


async def test_a_legacy_session_recreated_on_another_replica_is_opened_with_the_callers_exchanged_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch, options='on_replica_loss = "reinitialize"\n') as pool:
        assert pool.served is not None
        async with client(f"{pool.served.base}/mcp/pooled", "legacy", "alice-token") as session:
            first = str((await session.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
            lost = int(first[1])
            pool.stop(lost)
            second = str((await session.call_tool("whoami", {})).content[0].text)  # type: ignore[union-attr]
        assert second != first
        moved_to = pool.replicas[int(second[1])]
        opened = [seen for seen in moved_to.seen if seen.method == "initialize"]
        assert opened and all(seen.issued and seen.issued.subject == "alice" for seen in opened), opened
        assert pool.issuer.exchanges("alice") == 1
        _never_the_callers_token(pool)


async def test_an_unreachable_token_endpoint_is_the_callers_502_and_ejects_no_replica(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/token"
    with running(tmp_path, monkeypatch, count=2, endpoint=nowhere) as pool:
        assert pool.served is not None and pool.gateway is not None
        async with httpx2.AsyncClient(timeout=30) as http:
            for n in range(4):  # the pool's mount, and the aggregate (whose lists would open sessions to replicas)
                response = await _raw_call(pool.served, "alice-token", n)
                assert response.status_code == 502 and response.json()["id"] == n
                answer = response.json()["error"]
                assert answer["code"] == ErrorCode.BAD_GATEWAY and "token endpoint is unreachable" in answer["message"]
                assert answer["data"] == {"backend": "pooled", "mayHaveRun": False}
                listed = await http.post(
                    f"{pool.served.base}/mcp",
                    content=modern_body("tools/list", {}, request_id=f"list-{n}"),
                    headers={**modern_headers("tools/list"), "authorization": "Bearer alice-token"},
                )
                assert listed.status_code == 200 and listed.json()["id"] == f"list-{n}"
        await anyio.sleep(1.5)  # three more probe rounds, each with no token to probe with
        backend = pool.gateway.router.mounts["pooled"].backend
        assert isinstance(backend, PoolBackend)
        assert backend.state().up == 2  # no token for the gateway: probed without one, each answers its challenge
        assert pool.seen(), "no probe went"
        for seen in pool.seen():  # what went to a replica without a token: the pool's probes only
            assert seen.authorization is None and seen.method == "server/discover", seen


def test_a_pool_shares_one_credentials_object_and_refuses_others() -> None:
    exchange = TokenExchange("http://127.0.0.1:1/token", audience=AUDIENCE)
    shared = BackendCredentials(exchange, backend="pooled")
    pool = PoolBackend(
        [HttpBackend("http://127.0.0.1:1/mcp"), HttpBackend("http://127.0.0.1:2/mcp")], credentials=shared
    )
    assert all(isinstance(r, HttpBackend) and r.credentials is shared for r in pool.replicas)
    carried = PoolBackend([HttpBackend("http://127.0.0.1:1/mcp", credentials=shared)] * 2)
    assert carried.credentials is shared  # the one all replicas carry is the pool's
    other = BackendCredentials(exchange, backend="replica")
    with pytest.raises(ValueError, match="share"):
        PoolBackend([HttpBackend("http://127.0.0.1:1/mcp", credentials=other)], credentials=shared)
    with pytest.raises(ValueError, match="share"):
        PoolBackend([HttpBackend("http://127.0.0.1:1/mcp", credentials=other), HttpBackend("http://127.0.0.1:2/mcp")])
    with pytest.raises(TypeError, match="URL replicas"):
        PoolBackend([InProcessBackend(build("x").streamable_http_app())], credentials=shared)


async def test_another_caller_in_a_legacy_session_is_refused_and_no_replica_sees_its_token_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(tmp_path, monkeypatch, count=2) as pool:
        assert pool.served is not None
        url = f"{pool.served.base}/mcp/pooled"
        async with httpx2.AsyncClient(timeout=30) as http:
            session = await legacy_session(http, url, authorization="Bearer alice-token")
            mine = await legacy_post(
                http,
                url,
                session,
                "tools/call",
                1,
                {"name": "whoami", "arguments": {}},
                authorization="Bearer alice-token",
            )
            assert mine.status_code == 200
            theirs = await legacy_post(
                http, url, session, "tools/call", 2, {"name": "record", "arguments": {"entry": "x"}},
                authorization="Bearer bob-token",
            )  # fmt: skip
        assert theirs.status_code == 404 and theirs.json()["id"] == 2  # as an unknown session: nothing to learn
        assert not any(seen.issued and seen.issued.subject == "bob" for seen in pool.seen())  # it reached no replica
        assert pool.issuer.exchanges("bob") == 0  # and cost no exchange: the session is checked first
        assert {seen.issued.subject for seen in pool.calls() if seen.issued} == {"alice"}
        _never_the_callers_token(pool)
