"""Hostile requests against the whole stack (issue 15: "what held"), as a client with a real but small token.

bob holds a genuine token with `mcp:read` and wants to run `admin_reset`, which needs `admin`. He
tries every way of making the layer that authorizes and the server that executes read one request
differently: duplicate JSON keys, batches, `Mcp-Name`/`Mcp-Method` headers that disagree with the
body, method casing, look-alike tool names; a web page tries DNS rebinding and credentialed CORS;
and someone holding a token that differs from alice's by one character hopes for a cache hit.

Two doors, each a real server on loopback with a real JWKS: `stack()` around an `MCPServer`, and
the reference gateway (front door, path mount, every middleware) built from a config file. The
assertions are what a client sees (status, JSON-RPC code, id) and what ran (the backend's log).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from mcp import MCPError
from mcp.client.streamable_http import streamable_http_client

from mcp_middleware import BucketPolicy, stack
from mcp_middleware.core import ErrorCode
from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, connect, serve_app
from tests.security.idp import ISSUER, RESOURCE, RUNS, Idp, protected_backend, serve_idp
from tests.support.requests import ACCEPT_BOTH, ENVELOPE, legacy_session, modern_headers
from tests.support.sse import json_of

pytestmark = pytest.mark.anyio

SCOPES = {"tools/call:admin_*": ["admin"]}


@dataclass
class Door:
    name: str
    url: str
    idp: Idp

    def bearer(self, subject: str = "bob", scope: str = "mcp:read") -> dict[str, str]:
        return {"authorization": f"Bearer {self.idp.token(subject, scope)}"}

    async def post(self, body: bytes, headers: dict[str, str] | list[tuple[str, str]]) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=10) as http:
            return await http.post(self.url, content=body, headers=headers)

    def modern(self, method: str, name: str | None = None, **extra: str) -> list[tuple[str, str]]:
        return [*modern_headers(method, name).items(), *self.bearer().items(), *extra.items()]


GATEWAY_TOML = """
[gateway]
prefix = "/mcp"

[[servers]]
name = "sec"
app = "tests.security.idp:protected_backend"

[auth]
mode = "jwt"
issuer = "{issuer}"
jwks_url = "{jwks}"
audiences = ["{resource}"]
required_scopes = ["mcp:read"]
[auth.scopes]
"tools/call:admin_*" = ["admin"]

[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 1000
rate = 1000

[breaker]
[cache]
ttl = 30
[tracing]
access_log = false
"""


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    with serve_idp() as served:
        yield served


@pytest.fixture(scope="module", params=["stack", "gateway"])
def door(request: pytest.FixtureRequest, idp: Idp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    if request.param == "stack":
        app = stack(
            protected_backend().streamable_http_app(),
            tracing=True,
            auth={
                "verifier": idp.verifier(),
                "resource": RESOURCE,
                "authorization_servers": [ISSUER],
                "required_scopes": ["mcp:read"],
                "scopes": SCOPES,
            },
            ratelimit={"policies": [BucketPolicy("per-user", rate=1000.0, capacity=1000.0)]},
            cache=True,
            breaker=True,
        )
        with serve_app(app) as served:
            yield Door("stack", served.mcp_url, idp)
        return
    path: Path = tmp_path_factory.mktemp("gateway") / "gateway.toml"
    path.write_text(GATEWAY_TOML.format(issuer=ISSUER, jwks=idp.jwks_uri, resource=RESOURCE), encoding="utf-8")
    gateway = build_gateway(load_config(path))
    with serve_app(gateway.app) as served:
        yield Door("gateway", f"{served.base}/mcp/sec", idp)


@contextlib.contextmanager
def nothing_runs(tool: str = "admin_reset") -> Iterator[None]:
    before = RUNS.count(tool)
    yield
    assert RUNS.count(tool) == before, f"{tool} ran"


def call_body(request_id: Any, name: str, method: str = "tools/call", **params: Any) -> bytes:
    body = {"jsonrpc": "2.0", "id": request_id, "method": method}
    body["params"] = {"name": name, "arguments": {}, "_meta": ENVELOPE, **params}
    return orjson.dumps(body)


def assert_error(response: httpx2.Response, status: int, code: int, request_id: Any) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = orjson.loads(response.content)
    assert message["error"]["code"] == code, message
    assert message["id"] == request_id


@contextlib.asynccontextmanager
async def legacy(
    door: Door, subject: str = "bob", scope: str = "mcp:read"
) -> AsyncIterator[tuple[httpx2.AsyncClient, str]]:
    async with httpx2.AsyncClient(headers=door.bearer(subject, scope), timeout=10) as http:
        yield http, await legacy_session(http, door.url)


# --- one request, read two ways -----------------------------------------------------------------


async def test_duplicate_keys_are_read_alike_by_the_guard_and_the_server(door: Door) -> None:
    """JSON with a repeated key: whatever the authorizing layer read is what the server executes (last wins)."""
    smuggled = call_body(4, "echo")[:-2] + b',"name":"admin_reset"}}'  # ... "name":"echo", ..., "name":"admin_reset"
    with nothing_runs():
        # The header names what the attacker wants the guard to see; the body's last key is what would run.
        assert_error(await door.post(smuggled, door.modern("tools/call", "echo")), 400, -32020, 4)
        assert_error(await door.post(smuggled, door.modern("tools/call", "admin_reset")), 403, ErrorCode.FORBIDDEN, 4)
        async with legacy(door) as (http, session):
            body = smuggled.replace(orjson.dumps(ENVELOPE), b"{}")
            headers = {"content-type": "application/json", "accept": ACCEPT_BOTH, "mcp-session-id": session}
            headers["mcp-protocol-version"] = "2025-11-25"
            assert_error(await http.post(door.url, content=body, headers=headers), 403, ErrorCode.FORBIDDEN, 4)
    # The other way round both read `echo`, and `echo` is what runs.
    harmless = b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"admin_reset","name":"echo",'
    harmless += b'"arguments":{"text":"only echo"},"_meta":' + orjson.dumps(ENVELOPE) + b"}}"
    with nothing_runs():
        answer = await door.post(harmless, door.modern("tools/call", "echo"))
    assert answer.status_code == 200
    assert json_of(answer)["result"]["content"][0]["text"] == "only echo"


async def test_a_repeated_method_key_is_read_alike(door: Door) -> None:
    body = call_body(6, "admin_reset").replace(b'"method":"tools/call"', b'"method":"tools/list","method":"tools/call"')
    with nothing_runs():
        assert_error(await door.post(body, door.modern("tools/call", "admin_reset")), 403, ErrorCode.FORBIDDEN, 6)


@pytest.mark.parametrize("era", ERAS)
async def test_batches_are_refused_whole(door: Door, era: Era) -> None:
    batch = b"[" + call_body(1, "echo") + b"," + call_body(2, "admin_reset") + b"]"
    with nothing_runs(), nothing_runs("echo"):
        if era == "modern":
            response = await door.post(batch, door.modern("tools/call", "echo"))
        else:
            async with legacy(door) as (http, session):
                headers = {"content-type": "application/json", "accept": ACCEPT_BOTH, "mcp-session-id": session}
                response = await http.post(
                    door.url, content=batch, headers=headers | {"mcp-protocol-version": "2025-11-25"}
                )
        assert_error(response, 400, -32600, None)


async def test_routing_headers_that_disagree_with_the_body_are_refused(door: Door) -> None:
    body = call_body(7, "admin_reset")
    with nothing_runs():
        assert_error(await door.post(body, door.modern("tools/call", "echo")), 400, -32020, 7)
        assert_error(await door.post(body, door.modern("tools/list")), 400, -32020, 7)
        twice = [*door.modern("tools/call", "admin_reset"), ("mcp-name", "echo")]
        assert_error(await door.post(body, twice), 400, -32020, 7)


@pytest.mark.parametrize("method", ["Tools/Call", "TOOLS/CALL", "tools/Call", "tools//call", "tools/call\u0000"])
async def test_method_names_are_exact(door: Door, method: str) -> None:
    """Selectors and the server both compare methods exactly: a respelt method is no `tools/call` to either."""
    body = call_body(8, "admin_reset", method=method)
    header = method if method.isprintable() else "tools/call"
    with nothing_runs():
        response = await door.post(body, door.modern(header, "admin_reset"))
    assert 400 <= response.status_code < 500, response.text
    message = orjson.loads(response.content)
    assert message["id"] == 8
    assert message["error"]["code"] in (-32601, -32020, -32600)


LOOK_ALIKES = [
    "\u0430dmin_reset",  # Cyrillic small a
    "\uff41dmin_reset",  # fullwidth small a
    "admin\u200b_reset",  # zero-width space
    "admin_reset\u00a0",  # trailing no-break space
    "ADMIN_RESET",
    "admin_res\u0435t",  # Cyrillic small ie
]


@pytest.mark.parametrize("era", ERAS)
async def test_look_alike_tool_names_reach_no_tool(door: Door, era: Era) -> None:
    """A name the scope rule does not match (it is not `admin_*`) is also a name the server does not have."""
    async with (
        httpx2.AsyncClient(headers=door.bearer(), timeout=30) as http,
        connect(streamable_http_client(door.url, http_client=http), era) as client,  # type: ignore[arg-type]
    ):
        for name in LOOK_ALIKES:
            with nothing_runs():
                outcome = await _call(client, name)
            # Refused by the scope rule (`admin_reset\xa0` still matches `admin_*`), or unknown to the
            # server (a protocol error or a tool error, by era): never the tool's answer.
            assert outcome in (f"error {ErrorCode.FORBIDDEN}", "error -32602", "error -32601", "tool error"), (
                name,
                outcome,
            )
        with pytest.raises(MCPError) as refused:  # the real name, for contrast: refused for want of `admin`
            await client.call_tool("admin_reset", {})
        assert refused.value.code == ErrorCode.FORBIDDEN


async def _call(client: Any, name: str) -> str:
    try:
        result = await client.call_tool(name, {})
    except MCPError as refused:
        return f"error {refused.code}"
    return "tool error" if result.is_error else f"ran: {result.content}"


# --- the browser: DNS rebinding and CORS --------------------------------------------------------


async def test_a_dns_rebound_page_is_refused(door: Door) -> None:
    """A page on attacker.example rebinds its name to the server; even holding a token it gets nowhere."""
    port = door.url.split(":")[2].split("/")[0]
    body = call_body(9, "echo", arguments={"text": "x"})
    rebound_host = [*door.modern("tools/call", "echo"), ("host", f"attacker.example:{port}")]
    rebound_origin = [*door.modern("tools/call", "echo"), ("origin", f"http://attacker.example:{port}")]
    with nothing_runs("echo"):
        host = await door.post(body, rebound_host)
        origin = await door.post(body, rebound_origin)
    assert host.status_code == 421
    assert origin.status_code == 403
    if door.name == "gateway":  # the front door answers in JSON-RPC; the tap of tracing, outside it, adds the id
        assert_error(host, 421, ErrorCode.FORBIDDEN, 9)
        assert_error(origin, 403, ErrorCode.FORBIDDEN, 9)
    assert "access-control-allow-origin" not in origin.headers


async def test_cors_never_allows_credentials(door: Door) -> None:
    """Tokens travel in `Authorization`, never in cookies: no answer says `Access-Control-Allow-Credentials`."""
    port = door.url.split(":")[2].split("/")[0]
    own, evil = f"http://127.0.0.1:{port}", f"http://attacker.example:{port}"
    async with httpx2.AsyncClient(timeout=10) as http:
        answers = []
        for origin in (own, evil):
            preflight = {"origin": origin, "access-control-request-method": "POST"}
            preflight["access-control-request-headers"] = "authorization, content-type"
            answers.append(await http.options(door.url, headers=preflight))
        body = call_body(10, "echo", arguments={"text": "x"})
        answers.append(await door.post(body, [*door.modern("tools/call", "echo"), ("origin", own)]))
        base, _, path = door.url.partition("/mcp")
        metadata = f"{base}/.well-known/oauth-protected-resource/mcp{path}"
        answers.append(await http.get(metadata, headers={"origin": evil}))
    for answer in answers:
        assert "access-control-allow-credentials" not in answer.headers, answer.request.url
        assert answer.headers.get("access-control-allow-origin") != evil, "an arbitrary origin is never reflected"
    own_preflight, evil_preflight, call, document = answers
    if door.name == "gateway":  # the front door: CORS for the allowed origins only, every path
        assert own_preflight.status_code == 204
        assert own_preflight.headers["access-control-allow-origin"] == own
        assert (evil_preflight.status_code, document.status_code) == (403, 403)
        assert call.status_code == 200 and call.headers["access-control-allow-origin"] == own
    else:  # the protected-resource metadata is a public document: any page may read it, without credentials
        assert document.status_code == 200
        assert document.headers["access-control-allow-origin"] == "*"


# --- the token cache ------------------------------------------------------------------------------


async def test_a_token_one_character_off_is_no_cache_hit(door: Door) -> None:
    """Verified tokens are cached by digest: a near miss of alice's token is verified (and refused), never matched."""
    token = door.idp.token("alice", "mcp:read admin")
    header, payload, signature = token.split(".")
    body = call_body(11, "echo", arguments={"text": "x"})

    async def with_token(value: str) -> httpx2.Response:
        headers = [(k, v) for k, v in door.modern("tools/call", "echo") if k != "authorization"]
        return await door.post(body, [*headers, ("authorization", f"Bearer {value}")])

    assert (await with_token(token)).status_code == 200  # verified once: now in the cache
    flip = {"A": "B", "B": "A"}
    near_misses = [
        f"{header}.{payload[:-3]}{flip.get(payload[-3], 'A')}{payload[-2:]}.{signature}",  # one claim byte
        f"{header}.{payload}.{flip.get(signature[0], 'A')}{signature[1:]}",  # one signature byte
        token[:-1],  # one character short
        token + "A",  # one character more
        f"{header}.{payload}",  # no signature at all
    ]
    for near in near_misses:
        assert near != token
        response = await with_token(near)
        assert response.status_code == 401, near
        assert orjson.loads(response.content)["error"]["code"] == ErrorCode.UNAUTHORIZED
    assert (await with_token(token)).status_code == 200
