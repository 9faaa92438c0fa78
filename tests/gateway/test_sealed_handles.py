"""Sealed session handles as values: any bit flip is refused, nothing is readable, ten backends fit in 512.

Property tests (hypothesis) on the codec, and the bit flips once more over HTTP through the layer
around a real SDK server under uvicorn: a flipped handle is an unknown session (404 with the
request's id), never a 500 and never another session.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Iterator

import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from mcp_middleware.core.sealing import Sealer, SealError
from mcp_middleware.gateway.sealed_sessions import SealedSessionMiddleware
from mcp_middleware.gateway.session_handles import SessionHandles, SessionState, decode, encode
from tests.conftest import Served, serve_app
from tests.servers import build_server
from tests.support.requests import initialize_body, legacy_body, legacy_headers

KEY = "the handle tests' session key, long enough to seal"
SEALER = Sealer([KEY], purpose="mcp-session")
SDK_INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {"listChanged": True}},
    "clientInfo": {"name": "mcp", "version": "2.3.0"},
}


def owner(subject: str) -> str:
    return hashlib.sha256(subject.encode()).hexdigest()


def fresh() -> SessionHandles:
    """Handles with nothing cached: every open is a real one."""
    return SessionHandles(SEALER)


def flip(handle: str, bit: int) -> str:
    """`handle` with one bit of its sealed bytes flipped, spelled canonically (a valid header value)."""
    raw = bytearray(base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4)))
    raw[bit // 8 % len(raw)] ^= 1 << (bit % 8)
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


HANDLE = SessionHandles(SEALER).mint(SessionState(owner("alice"), "/mcp", uuid.uuid4().hex, SDK_INIT))


@given(st.integers(min_value=0, max_value=8 * 1024))
def test_any_bit_flip_of_the_sealed_bytes_is_refused(bit: int) -> None:
    with pytest.raises(SealError):
        fresh().open(flip(HANDLE, bit))


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_bit_flip_of_the_text_is_refused(position: int, bit: int) -> None:
    text = bytearray(HANDLE.encode())
    text[position % len(text)] ^= 1 << bit
    with pytest.raises(SealError):
        fresh().open(text.decode("latin-1"))


@given(
    subject=st.text(min_size=1, max_size=40),
    client=st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")), min_size=6, max_size=40),
    inner=st.one_of(st.uuids().map(lambda u: u.hex), st.text(st.characters(codec="ascii"), min_size=6, max_size=60)),
    path=st.sampled_from(["/mcp", "/mcp/github", "/mcp/a-b_c"]),
)
@settings(max_examples=150)
def test_a_handle_never_shows_what_it_carries(subject: str, client: str, inner: str, path: str) -> None:
    digest = owner(subject)
    init = {**SDK_INIT, "clientInfo": {"name": client, "version": "1"}}
    handle = fresh().mint(SessionState(digest, path, inner, init))
    sealed = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
    for secret in (digest, digest[:16], client, inner, inner.encode().hex()):
        assert secret not in handle and secret.encode() not in sealed
    assert bytes.fromhex(digest)[:8] not in sealed  # nor packed as bytes (the plaintext packs them so)
    packed_id = inner if len(inner) == 32 and set(inner) <= set("0123456789abcdef") else None
    if packed_id is not None:
        assert bytes.fromhex(packed_id)[:8] not in sealed
    opened = fresh().open(handle)
    assert (opened.state.owner, opened.state.session_id, opened.state.initialize) == (digest, inner, init)


@given(
    ids=st.lists(st.one_of(st.uuids().map(lambda u: u.hex), st.text(min_size=1, max_size=80)), min_size=1, max_size=12),
    replica=st.one_of(st.none(), st.text(max_size=30)),
)
def test_the_codec_gives_back_what_it_was_given(ids: list[str], replica: str | None) -> None:
    backends = tuple((f"server{index}", value) for index, value in enumerate(ids[1:]))
    state = SessionState(owner("x"), "/mcp", ids[0], SDK_INIT, replica, backends, 1234567)
    assert decode(encode(state)) == state


def test_ten_backend_sessions_fit_in_512_bytes() -> None:
    backends = tuple((f"server-{index}", uuid.uuid4().hex) for index in range(10))
    state = SessionState(owner("alice@example.com"), "/mcp", uuid.uuid4().hex, SDK_INIT, None, backends)
    handle = fresh().mint(state)
    assert len(handle) < 512, len(handle)
    assert fresh().open(handle).state.backends == backends
    one = fresh().mint(SessionState(owner("alice@example.com"), "/mcp/github", uuid.uuid4().hex, SDK_INIT))
    assert len(one) < 200, len(one)  # the usual handle: one session id


def test_a_handle_opens_for_its_own_purpose_and_keys_only() -> None:
    assert fresh().open(HANDLE).state.path == "/mcp"
    rotated = SessionHandles(Sealer(["a newer key, also long enough to seal", KEY], purpose="mcp-session"))
    assert rotated.open(HANDLE).state.path == "/mcp"  # the previous key still opens (rotation)
    for other in (Sealer([KEY], purpose="approval"), Sealer(["x" * 40], purpose="mcp-session")):
        with pytest.raises(SealError):
            SessionHandles(other).open(HANDLE)


@pytest.fixture(scope="module")
def layered() -> Iterator[tuple[Served, SessionHandles]]:
    handles = SessionHandles(SEALER)
    with serve_app(SealedSessionMiddleware(build_server().streamable_http_app(), handles=handles)) as served:
        yield served, handles


@given(bit=st.integers(min_value=0, max_value=8 * 200))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_over_http_a_flipped_handle_is_an_unknown_session(layered: tuple[Served, SessionHandles], bit: int) -> None:
    served, _ = layered
    with httpx2.Client(timeout=30) as http:
        opened = http.post(served.mcp_url, content=initialize_body(), headers=legacy_headers())
        handle = opened.headers["mcp-session-id"]
        flipped = flip(handle, bit)
        answer = http.post(served.mcp_url, content=legacy_body("ping", None, 77), headers=legacy_headers(flipped))
        assert answer.status_code == 404, answer.text
        assert answer.json() == {"jsonrpc": "2.0", "id": 77, "error": {"code": -32600, "message": "Session not found"}}
        ping = http.post(served.mcp_url, content=legacy_body("ping", None, 78), headers=legacy_headers(handle))
        assert ping.status_code == 200  # the real one still works


def hostile_backend(session_id: bytes) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A backend that hands out `session_id` (any length) and answers every request in its session."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = (await receive()).get("body", b"")
        request_id = orjson.loads(body).get("id") if body else None
        answer = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "result": {"sid": len(dict(scope["headers"]).get(b"mcp-session-id", b""))},
            }
        )
        headers = [(b"content-type", b"application/json"), (b"mcp-session-id", session_id)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    return app


@pytest.mark.parametrize("length", [33, 200, 1024])
def test_a_backends_long_session_id_is_sealed_and_given_back(length: int) -> None:
    inner = ("s" * length).encode()
    with serve_app(SealedSessionMiddleware(hostile_backend(inner), handles=fresh())) as served, httpx2.Client() as http:
        opened = http.post(served.mcp_url, content=initialize_body(), headers=legacy_headers())
        handle = opened.headers["mcp-session-id"]
        # (16 in a row: a sealed handle is random base64, where "sss" turns up by chance in about 1 run of 200)
        assert handle.encode() != inner and "s" * 16 not in handle
        ping = http.post(served.mcp_url, content=legacy_body("ping", None, 2), headers=legacy_headers(handle))
        assert ping.status_code == 200 and ping.json()["result"]["sid"] == length  # the backend got its own id
        assert ping.headers["mcp-session-id"] == handle


def test_a_session_id_too_long_to_seal_is_withheld_not_leaked() -> None:
    inner = ("s" * 5000).encode()
    with serve_app(SealedSessionMiddleware(hostile_backend(inner), handles=fresh())) as served, httpx2.Client() as http:
        opened = http.post(served.mcp_url, content=initialize_body(), headers=legacy_headers())
        assert opened.status_code == 200 and "mcp-session-id" not in opened.headers


def test_the_clients_icons_stay_out_of_the_handle() -> None:
    icon = {"src": "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 40).decode(), "sizes": ["48x48"]}
    params = {**SDK_INIT, "clientInfo": {"name": "ide", "version": "9", "icons": [icon] * 3}}
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})
    handles = fresh()
    with serve_app(SealedSessionMiddleware(hostile_backend(b"ab" * 16), handles=handles)) as served:
        opened = httpx2.post(served.mcp_url, content=body, headers=legacy_headers())
    handle = opened.headers["mcp-session-id"]
    assert len(handle) < 300
    assert fresh().open(handle).state.initialize["clientInfo"] == {"name": "ide", "version": "9"}
