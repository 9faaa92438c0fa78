"""Sealed tokens: small values a client carries and only the gateway can read or forge.

A sealed token is authenticated encryption (AES-256-GCM from `cryptography`) of bytes the
caller chooses, under a key derived once (HKDF-SHA256) from an operator's secret and a
*purpose*, so a token sealed for one use (a session handle) never opens as another (an
approval's request state). Rotation: a :class:`Sealer` takes several secrets, newest first;
it seals with the first and opens with any. The token is URL-safe base64 without padding,
visible ASCII (a valid header value), and its header is authenticated with the ciphertext:

    version (1) | key id (4) | expires (4, Unix seconds, 0 = never) | nonce (12) | ciphertext + tag (16)

Every way a token can be wrong raises :class:`SealError` with a short machine reason
(`malformed`, `unknown_key`, `tampered`, `expired`), never the plaintext or a stack trace to
the client: the caller answers as if the token named nothing (a session not found, an
approval not given). Opening costs a few microseconds (one AES-GCM pass over a few hundred
bytes); deriving a key costs more, which is why it happens in the constructor only.

>>> sealer = Sealer(["an operator's secret of at least thirty-two characters"], purpose="doc")
>>> token = sealer.seal(b"alice")
>>> sealer.open(token)
b'alice'
>>> Sealer(["another secret, also thirty-two characters long"], purpose="doc").open(token)
Traceback (most recent call last):
...
mcp_middleware.core.sealing.SealError: unknown_key
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
import time
from collections.abc import Sequence
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import McpMiddlewareError

__all__ = ["MIN_SECRET_LENGTH", "SealError", "SealFailure", "Sealer", "secret_bytes"]

MIN_SECRET_LENGTH = 32
"""Shortest secret accepted (characters or bytes): a secret an attacker can guess seals nothing."""
MAX_TOKEN_LENGTH = 8192
"""Longest token even looked at (a client-controlled value is bounded before it is decoded)."""

_VERSION = 1
_HEADER = struct.Struct(">B4sI")
_NONCE = 12
_TAG = 16
_SALT = b"mcp-middleware sealed tokens v1"

SealFailure = Literal["malformed", "unknown_key", "tampered", "expired"]


class SealError(McpMiddlewareError, ValueError):
    """A token that does not open: `reason` says why (for decisions and logs, not for the client)."""

    def __init__(self, reason: SealFailure) -> None:
        super().__init__(reason)
        self.reason: SealFailure = reason


def secret_bytes(secret: str | bytes, which: str, what: str) -> bytes:
    """`secret` as bytes, or ValueError naming `which` when it is too short to be `what`."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{which} is {len(raw)} characters long; {what} needs at least {MIN_SECRET_LENGTH} "
            "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return raw


class Sealer:
    """Seal and open tokens for one `purpose` under `secrets` (newest first; all of them open)."""

    def __init__(self, secrets: Sequence[str | bytes], *, purpose: str) -> None:
        if not secrets:
            raise ValueError("a Sealer needs at least one secret")
        if not purpose:
            raise ValueError("a Sealer needs a purpose (keys of different purposes never open each other's tokens)")
        self.purpose = purpose
        self._keys: dict[bytes, AESGCM] = {}
        self._current = b""
        for index, secret in enumerate(secrets):
            raw = secret_bytes(secret, f"secret #{index + 1}", "a sealing secret")
            material = HKDF(
                algorithm=hashes.SHA256(), length=36, salt=_SALT, info=f"mcp-middleware/{purpose}".encode()
            ).derive(raw)
            key_id, key = material[:4], material[4:]
            self._keys.setdefault(key_id, AESGCM(key))
            if index == 0:
                self._current = key_id

    def seal(self, plaintext: bytes, *, ttl: float | None = None, now: float | None = None) -> str:
        """A token carrying `plaintext`, valid for `ttl` seconds (`None`: until its key is retired)."""
        expires = 0 if ttl is None else int((time.time() if now is None else now) + ttl) + 1
        header = _HEADER.pack(_VERSION, self._current, expires)
        nonce = os.urandom(_NONCE)
        sealed = header + nonce + self._keys[self._current].encrypt(nonce, plaintext, header)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, token: str | bytes, *, now: float | None = None) -> bytes:
        """The plaintext `token` carries, or :class:`SealError`."""
        raw = token.encode("ascii", "replace") if isinstance(token, str) else token
        if not 0 < len(raw) <= MAX_TOKEN_LENGTH:
            raise SealError("malformed")
        try:
            sealed = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            raise SealError("malformed") from None
        # base64 ignores the spare bits of its last character: only the canonical spelling is the token,
        # so that no other string (one flipped bit among them) opens as the same one.
        if base64.urlsafe_b64encode(sealed).rstrip(b"=") != raw:
            raise SealError("malformed")
        if len(sealed) < _HEADER.size + _NONCE + _TAG:
            raise SealError("malformed")
        version, key_id, expires = _HEADER.unpack_from(sealed)
        if version != _VERSION:
            raise SealError("malformed")
        key = self._keys.get(key_id)
        if key is None:
            raise SealError("unknown_key")
        header_end = _HEADER.size
        nonce = sealed[header_end : header_end + _NONCE]
        try:
            plaintext = key.decrypt(nonce, sealed[header_end + _NONCE :], sealed[:header_end])
        except InvalidTag:
            raise SealError("tampered") from None
        if expires and (time.time() if now is None else now) >= expires:
            raise SealError("expired")
        return plaintext
