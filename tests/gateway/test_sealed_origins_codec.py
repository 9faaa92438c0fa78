"""The issuer fingerprints a handle carries: what counts as the same server, keyed digests, the codec's field.

Property tests (hypothesis) on the codec with fingerprints, every bit of a handle carrying them
refused when flipped, a flipped fingerprint never matching its server, and format 1 (before
fingerprints) refused as an unknown session. The end-to-end proof is test_sealed_origins.py.
"""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.core.sealing import Sealer, SealError
from mcp_middleware.gateway.session_config import SESSION_PURPOSE
from mcp_middleware.gateway.session_handles import SessionHandles, SessionState, decode, encode
from mcp_middleware.router.backends import HttpBackend, InProcessBackend, StdioBackend
from mcp_middleware.router.origins import (
    NO_ORIGIN,
    ORIGIN_SIZE,
    Fingerprints,
    identity_of,
    identity_of_url,
    place_of,
)
from mcp_middleware.router.pool import PoolBackend
from tests.gateway import sealed_backends
from tests.gateway.test_sealed_handles import SDK_INIT, flip, owner

KEY = "the origin tests' session key, long enough to seal"
FINGERPRINTS = Fingerprints.from_secrets([KEY])
origins = st.one_of(st.none(), st.binary(min_size=ORIGIN_SIZE, max_size=ORIGIN_SIZE).filter(lambda b: b != NO_ORIGIN))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("http://tools.internal/mcp", "HTTP://Tools.Internal:80/mcp"),
        ("https://tools.internal/mcp", "https://tools.internal:443/mcp"),
        ("https://tools.internal", "https://tools.internal/"),
        ("http://user:secret@tools.internal/mcp", "http://tools.internal/mcp"),  # credentials name no server
        ("http://[::1]:9000/mcp#part", "http://[::1]:9000/mcp"),
    ],
)
def test_spellings_of_one_server_are_one_identity(one: str, other: str) -> None:
    assert identity_of_url(one) == identity_of_url(other)


@pytest.mark.parametrize(
    "other",
    [
        "https://tools.internal/mcp",  # scheme
        "http://tools.internal.evil/mcp",  # host
        "http://tools.internal:8080/mcp",  # port
        "http://tools.internal/mcp/",  # path
        "http://tools.internal/other",
        "http://tools.internal/mcp?tenant=b",  # query
        "http://127.0.0.1/mcp",
    ],
)
def test_another_server_is_another_identity_and_fingerprint(other: str) -> None:
    here = identity_of_url("http://tools.internal/mcp")
    assert identity_of_url(other) != here
    assert not FINGERPRINTS.match(FINGERPRINTS.of(here), identity_of_url(other))


def test_backends_are_identified_by_what_issues_their_sessions() -> None:
    url = identity_of(HttpBackend("http://127.0.0.1:9/mcp"))
    assert url == identity_of_url("http://127.0.0.1:9/mcp")
    assert identity_of(StdioBackend("python", ["a.py"])) != identity_of(StdioBackend("python", ["b.py"]))
    assert identity_of(InProcessBackend(lambda *_: None)) is None  # per process: never continued elsewhere
    pool = PoolBackend([HttpBackend("http://127.0.0.1:9/mcp"), HttpBackend("http://127.0.0.1:10/mcp")])
    assert identity_of(pool, "1") == identity_of_url("http://127.0.0.1:10/mcp")
    for label in ("2", "-1", "x", ""):  # a place that is not in the list now: no server at all
        assert identity_of(pool, label) is None
    assert not FINGERPRINTS.match(FINGERPRINTS.of(None), None)  # no issuer matches nothing


def test_a_pools_session_is_found_at_its_replica_wherever_the_list_now_has_it() -> None:
    a, b, c = (HttpBackend(f"http://127.0.0.1:{port}/mcp") for port in (9001, 9002, 9003))
    issued_by_b = FINGERPRINTS.of(identity_of(b))
    assert place_of(FINGERPRINTS, issued_by_b, [a, b]) == 1
    assert place_of(FINGERPRINTS, issued_by_b, [b, a]) == 0  # reordered: it follows its replica
    assert place_of(FINGERPRINTS, issued_by_b, [a, c]) is None  # replaced: nowhere
    assert place_of(FINGERPRINTS, None, [a, b]) is None
    assert place_of(Fingerprints.from_secrets(["another key, for another deployment!"]), issued_by_b, [b]) is None


def test_fingerprints_are_keyed_and_survive_a_rotation() -> None:
    here = identity_of_url("http://tools.internal/mcp")
    other = Fingerprints.from_secrets(["another gateway's session key, long enough"])
    assert other.of(here) != FINGERPRINTS.of(here)
    assert not other.match(FINGERPRINTS.of(here), here)  # without the key nobody picks a matching URL
    rotated = Fingerprints.from_secrets(["the newer session key, also long enough!", KEY])
    assert rotated.match(FINGERPRINTS.of(here), here)  # handles minted before the rotation still match
    assert rotated.of(here) != FINGERPRINTS.of(here) and rotated.match(rotated.of(here), here)
    assert len(FINGERPRINTS.of(here) or b"") == ORIGIN_SIZE


@given(
    ids=st.lists(st.one_of(st.uuids().map(lambda u: u.hex), st.text(min_size=1, max_size=40)), min_size=1, max_size=11),
    found=st.lists(origins, min_size=11, max_size=11),
)
def test_the_codec_gives_back_each_sessions_issuer(ids: list[str], found: list[bytes | None]) -> None:
    backends = tuple((f"server{index}", value) for index, value in enumerate(ids[1:]))
    pairs = tuple((name, origin) for (name, _), origin in zip(backends, found[1:], strict=False) if origin is not None)
    state = SessionState(owner("x"), "/mcp", ids[0], SDK_INIT, None, backends, 99, (), found[0], pairs)
    assert decode(encode(state)) == state


def _issuers_at(plain: bytes) -> int:
    """Where the fingerprints start in a format-2 plaintext (after the ids block)."""
    at = 2 + (32 if plain[1] & 1 else 0) + 4
    (length,) = struct.unpack_from(">H", plain, at)
    return at + 2 + length


@given(bit=st.integers(min_value=0, max_value=3 * ORIGIN_SIZE * 8 - 1))
def test_a_flipped_fingerprint_never_names_its_server(bit: int) -> None:
    servers = [identity_of_url(f"http://127.0.0.1:{port}/mcp") for port in (9001, 9002, 9003)]
    backends = (("b1", uuid.uuid4().hex), ("b2", uuid.uuid4().hex))
    state = SessionState(
        owner("x"), "/mcp", uuid.uuid4().hex, SDK_INIT, None, backends, 99, (), FINGERPRINTS.of(servers[0]),
        (("b1", FINGERPRINTS.of(servers[1]) or b""), ("b2", FINGERPRINTS.of(servers[2]) or b"")),
    )  # fmt: skip
    plain = bytearray(encode(state))
    plain[_issuers_at(bytes(plain)) + bit // 8] ^= 1 << (bit % 8)
    flipped = decode(bytes(plain))
    issuers = [flipped.origin, *(dict(flipped.origins).get(name) for name, _ in backends)]
    hit = bit // (8 * ORIGIN_SIZE)
    assert not FINGERPRINTS.match(issuers[hit], servers[hit])
    assert all(FINGERPRINTS.match(issuers[i], servers[i]) for i in range(3) if i != hit)


@given(bit=st.integers(min_value=0, max_value=8 * 600))
def test_any_bit_flip_of_a_handle_with_fingerprints_is_refused(bit: int) -> None:
    backends = tuple((f"server-{index}", uuid.uuid4().hex) for index in range(10))
    origin = FINGERPRINTS.of(identity_of_url("http://127.0.0.1:9/mcp")) or b""
    state = SessionState(owner("a"), "/mcp", uuid.uuid4().hex, SDK_INIT, None, backends, 0, (), origin)
    handle = SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).mint(state)
    with pytest.raises(SealError):
        SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).open(flip(handle, bit))


def test_ten_fingerprinted_backend_sessions_fit_in_512_bytes() -> None:
    backends = tuple((f"member{index:02d}", uuid.uuid4().hex) for index in range(10))
    pairs = tuple(
        (name, FINGERPRINTS.of(identity_of_url(f"http://10.0.0.{i}/mcp")) or b"")
        for i, (name, _) in enumerate(backends)
    )
    state = SessionState(owner("alice@example.com"), "/mcp", uuid.uuid4().hex, SDK_INIT, None, backends, origins=pairs)
    handles = SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE))
    handle = handles.mint(state)
    assert len(handle) < 512, len(handle)
    assert SessionHandles(Sealer([KEY], purpose=SESSION_PURPOSE)).open(handle).state.origins == pairs


def format_one(handle: str, key: str = sealed_backends.KEY) -> str:
    """`handle` (sealed under `key`) as the gateway minted it before fingerprints: format 1, no issuer field."""
    sealer = Sealer([key], purpose=SESSION_PURPOSE)
    plain = encode(SessionHandles(sealer).open(handle).state)
    at = _issuers_at(plain)
    count = len(decode(plain).backends) + 1
    old = b"\x01" + plain[1:at] + plain[at + count * ORIGIN_SIZE :]
    return sealer.seal(old, ttl=3600)


def test_a_format_one_handle_is_refused_as_malformed() -> None:
    sealer = Sealer([sealed_backends.KEY], purpose=SESSION_PURPOSE)
    handle = SessionHandles(sealer).mint(SessionState(owner("a"), "/mcp/a", uuid.uuid4().hex, SDK_INIT))
    with pytest.raises(SealError) as refused:
        SessionHandles(sealer).open(format_one(handle))
    assert refused.value.reason == "malformed"
