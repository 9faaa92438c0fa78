"""Sealed tokens: only the holder of the secret reads or makes them, and nothing else opens as one."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_middleware.core.sealing import MAX_TOKEN_LENGTH, Sealer, SealError

SECRET = "s" * 32 + "-current"
OLD = "o" * 32 + "-retired"
SEALER = Sealer([SECRET], purpose="test")


def test_round_trip_and_visible_ascii() -> None:
    token = SEALER.seal(b'{"owner": "alice"}')
    assert SEALER.open(token) == b'{"owner": "alice"}'
    assert all(0x21 <= ord(c) <= 0x7E for c in token)  # a valid Mcp-Session-Id / header value


def test_two_seals_of_one_value_differ() -> None:
    assert SEALER.seal(b"same") != SEALER.seal(b"same")  # a fresh nonce each time: equal contents do not show


@given(st.binary(max_size=300))
def test_never_reveals_its_contents(plaintext: bytes) -> None:
    token = SEALER.seal(plaintext)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    if len(plaintext) >= 4:
        assert plaintext not in raw and plaintext not in token.encode()
    assert len(raw) == len(plaintext) + 37  # a fixed overhead: header 9, nonce 12, tag 16


@given(st.binary(min_size=0, max_size=120), st.data())
def test_any_bit_flip_is_refused(plaintext: bytes, data: st.DataObject) -> None:
    token = SEALER.seal(plaintext).encode()
    position = data.draw(st.integers(0, len(token) * 8 - 1))
    flipped = bytearray(token)
    flipped[position // 8] ^= 1 << (position % 8)
    with pytest.raises(SealError):
        SEALER.open(bytes(flipped))


def test_spare_base64_bits_do_not_make_a_second_token() -> None:
    # 37 + 1 bytes: the last character carries 4 spare bits that plain base64 decoding ignores.
    token = SEALER.seal(b"x")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    others = [alphabet[last ^ bit] for bit in (1, 2, 4, 8)]
    for other in others:
        with pytest.raises(SealError) as refused:
            SEALER.open(token[:-1] + other)
        assert refused.value.reason in {"malformed", "tampered"}


def test_rotation_opens_old_tokens_and_seals_with_the_newest() -> None:
    old = Sealer([OLD], purpose="test").seal(b"before rotation")
    rotated = Sealer([SECRET, OLD], purpose="test")
    assert rotated.open(old) == b"before rotation"
    assert SEALER.open(rotated.seal(b"after")) == b"after"  # sealed with the newest key
    with pytest.raises(SealError) as refused:
        SEALER.open(old)  # the old key retired
    assert refused.value.reason == "unknown_key"


def test_purposes_never_open_each_other() -> None:
    token = Sealer([SECRET], purpose="session").seal(b"handle")
    with pytest.raises(SealError) as refused:
        Sealer([SECRET], purpose="approval").open(token)
    assert refused.value.reason == "unknown_key"


def test_expiry() -> None:
    token = SEALER.seal(b"short lived", ttl=60, now=1_000_000)
    assert SEALER.open(token, now=1_000_030) == b"short lived"
    with pytest.raises(SealError) as refused:
        SEALER.open(token, now=1_000_062)
    assert refused.value.reason == "expired"


@pytest.mark.parametrize(
    "hostile",
    ["", "=", "not base64 at all!", "A" * (MAX_TOKEN_LENGTH + 1), "AAAA", "é" * 40, "\x00" * 64, "AQ" + "A" * 60],
)
def test_hostile_input_is_a_seal_error(hostile: str) -> None:
    with pytest.raises(SealError) as refused:
        SEALER.open(hostile)
    assert refused.value.reason in {"malformed", "unknown_key", "tampered"}


def test_weak_or_missing_secrets_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        Sealer(["short"], purpose="test")
    with pytest.raises(ValueError, match="at least one secret"):
        Sealer([], purpose="test")
    with pytest.raises(ValueError, match="purpose"):
        Sealer([SECRET], purpose="")
