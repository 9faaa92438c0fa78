"""Which server issued a backend session id: the fingerprint a sealed handle keeps beside each one.

A session id is a credential at the server that issued it. A sealed handle (`[gateway] session_key`)
carries backend session ids across instances and reloads; when the name it was opened at now points
at another server (a reload, or another instance running a newer config), the old id must never be
sent there, and the new server must not be handed a session it did not open. So each sealed id is
bound to a short keyed digest of its issuer's identity, and is used only where that still matches:

* a URL backend is its URL, canonical: scheme and host lowercased, the port spelled out (80/443 when
  implied), the path (`/` when empty) and the query as written; never the credentials in it, nor a
  fragment. `http://Tools:80/mcp` and `http://tools/mcp` are one server; `/mcp` and `/mcp/` two;
* a stdio command is its command line and working directory;
* a pool's session is its replica's (the replica's own identity, not its place in the list: a session
  follows its replica when the list is reordered, and is adopted nowhere when that replica is gone);
* an in-process app has none: its sessions live in this process and are re-opened, never continued.

The digest is HMAC-SHA256 under a key derived from the session key (purpose `mcp-session-origin`),
truncated to :data:`ORIGIN_SIZE` bytes (ten of them keep a handle under 512 bytes). Keyed, so that
nobody without the session key can pick a URL whose fingerprint matches another's; every key of a
rotation matches, the newest makes new ones.

>>> fingerprints = Fingerprints.from_secrets(["an operator's secret of at least 32 characters"])
>>> old = fingerprints.of(identity_of_url("http://tools.internal/mcp"))
>>> fingerprints.match(old, identity_of_url("HTTP://tools.internal:80/mcp"))
True
>>> fingerprints.match(old, identity_of_url("http://tools.internal:8080/mcp"))
False
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mcp_middleware.core.sealing import secret_bytes

__all__ = ["NO_ORIGIN", "ORIGIN_SIZE", "UNKEYED", "Fingerprints", "identity_of", "identity_of_url", "place_of"]

ORIGIN_SIZE = 4
"""Bytes of a fingerprint: a handle carries up to eleven, and stays under 512 bytes."""
NO_ORIGIN = bytes(ORIGIN_SIZE)
"""How a handle spells "no issuer" (an in-process session, an aggregate's own): it matches nothing."""
_PURPOSE = b"mcp-session-origin"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_REMEMBERED = 1024
"""Identities whose digests are kept (they come from the configuration, never from a client)."""


def identity_of_url(url: str) -> str:
    """The identity of the server at `url` (see the module's docstring for what counts)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:  # a port out of range: the text is the identity (it reaches nothing anyway)
        port = 0
    query = f"?{parts.query}" if parts.query else ""
    return f"url {scheme}://[{host}]:{port}{parts.path or '/'}{query}"


def identity_of(backend: object, replica: str | None = None) -> str | None:
    """The identity of the server that issues `backend`'s sessions (for a pool: its replica labelled
    `replica`, its place in the list now); None when there is none to bind to (in-process, unknown label)."""
    if replica is not None:
        replicas: Sequence[object] = getattr(backend, "replicas", ())
        if not replica.isdigit() or int(replica) >= len(replicas):
            return None
        backend = replicas[int(replica)]
    url = getattr(backend, "url", None)
    if isinstance(url, str):
        return identity_of_url(url)
    command = getattr(backend, "command", None)
    if isinstance(command, str):
        args = list(getattr(backend, "args", ()))
        return "stdio " + orjson.dumps([command, args, getattr(backend, "cwd", None)]).decode()
    inner = getattr(backend, "backend", None)  # a pool's stdio replica wraps its command
    return identity_of(inner) if inner is not None and inner is not backend else None


def place_of(fingerprints: Fingerprints, origin: bytes | None, replicas: Sequence[object]) -> int | None:
    """Where in a pool's list `replicas` the server that issued a session (`origin`) is now, if anywhere:
    a reordered list keeps its sessions, a replica gone or replaced takes none of them."""
    if origin is None:
        return None
    return next((at for at, replica in enumerate(replicas) if fingerprints.match(origin, identity_of(replica))), None)


class Fingerprints:
    """Keyed digests of identities: the first key makes them, any key matches (rotation)."""

    __slots__ = ("_keys", "_made")

    def __init__(self, keys: Sequence[bytes] = (b"",)) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._keys = tuple(keys)
        self._made: dict[str, tuple[bytes, ...]] = {}

    @classmethod
    def from_secrets(cls, secrets: Sequence[str | bytes]) -> Fingerprints:
        """Keys derived (HKDF-SHA256) from the session key's secrets, newest first."""
        keys = [
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
                secret_bytes(secret, "session_key", "a session key")
            )
            for secret in secrets
        ]
        return cls(keys)

    def of(self, identity: str | None) -> bytes | None:
        """The fingerprint new handles carry for `identity` (None: none)."""
        return None if identity is None else self._digests(identity)[0]

    def match(self, origin: bytes | None, identity: str | None) -> bool:
        """Whether `origin` (a handle's) names the server `identity` (what the name points at now)."""
        return origin is not None and identity is not None and origin in self._digests(identity)

    def _digests(self, identity: str) -> tuple[bytes, ...]:
        found = self._made.get(identity)
        if found is None:
            raw = identity.encode()
            found = tuple(_nonzero(hmac.new(key, raw, hashlib.sha256).digest()[:ORIGIN_SIZE]) for key in self._keys)
            if len(self._made) < _MAX_REMEMBERED:
                self._made[identity] = found
        return found


UNKEYED = Fingerprints()
"""Fingerprints for a handle layer built without keys (tests, embedding): unkeyed, still per server."""


def _nonzero(digest: bytes) -> bytes:
    """A digest never spells :data:`NO_ORIGIN` (which matches nothing)."""
    return digest if digest != NO_ORIGIN else NO_ORIGIN[:-1] + b"\x01"
