"""Sealed session handles: the `Mcp-Session-Id` a gateway with a `session_key` hands out.

A handle is a :class:`~mcp_middleware.core.sealing.Sealer` token (AES-256-GCM, key derived once per
process, purpose `mcp-session`) around what any instance needs to resume a legacy session: who it is
bound to, the path it was opened on, the session id the stack below knows, the client's `initialize`
parameters (to open it again where that id means nothing) and, for a pool, the replica holding it.

The plaintext is compact rather than readable (a handle travels on every request and must stay
under 512 bytes even with ten backend session ids):

    format (1) | flags (1) | owner digest (32, if bound) | expires (4, Unix seconds)
    | ids block length (2) | session ids (the SDK's hex ids as 16 bytes each)
    | one issuer fingerprint per id (4 each, zeros: none) | deflate(orjson(path, params, …))

Each session id is bound to the server that issued it (:mod:`~mcp_middleware.router.origins`): the stack
below uses it only where the name still points at that server. Format 1 (before those fingerprints) is
not read: its handles are unknown sessions and the client initializes again (once, after the upgrade).

An aggregate's handle also carries the client's sessions at its remote backends (`backends`: name and
id, and for a pool the replica holding it): any instance continues those sessions instead of opening
new ones (:mod:`mcp_middleware.router.relay_adopt`).

Opening costs an AES-GCM pass, an inflate and a JSON parse (about 6.5 µs of CPU); a bounded LRU of
handles this process already opened or minted makes a repeat request one dict lookup.

>>> from mcp_middleware.core.sealing import Sealer
>>> handles = SessionHandles(Sealer(["x" * 32], purpose="mcp-session"), ttl=3600)
>>> handle = handles.mint(SessionState(owner="", path="/mcp/a", session_id="4f1c", initialize={}))
>>> handles.open(handle).session_id
'4f1c'
"""

from __future__ import annotations

import dataclasses
import re
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson

from mcp_middleware.core.sealing import MAX_TOKEN_LENGTH, Sealer, SealError
from mcp_middleware.router.origins import NO_ORIGIN, ORIGIN_SIZE, UNKEYED, Fingerprints

__all__ = ["DEFAULT_SESSION_TTL", "OpenedSession", "SessionHandles", "SessionState"]

DEFAULT_SESSION_TTL = 24 * 3600.0
"""A working day and then some: a legacy session outlives one conversation (an IDE keeps it open all
day), and the handle is bound to its principal, so a longer life grants nothing a token does not."""

_FORMAT = 2
_BOUND = 0x01  # flags: an owner digest follows
_FIXED = struct.Struct(">BB")
_EXPIRES = struct.Struct(">I")
_COUNT = struct.Struct(">H")
_ID_LENGTH = struct.Struct(">H")
_MAX_ID = 1024
"""Longest session id sealed (the SDK's are 32 characters; the spec sets no bound, this gateway does)."""
_HEX = re.compile(r"[0-9a-f]{32}")
_DICTIONARY = (
    b'"/mcp/",{"protocolVersion":"2025-06-18","protocolVersion":"2025-11-25","capabilities":{"sampling":{"tools":{}}'
    b',"elicitation":{"form":{},"url":{}},"roots":{"listChanged":true},"experimental":{},"tasks":{}},'
    b'"clientInfo":{"name":"mcp","title":"","version":"1.0.0","websiteUrl":"https://","icons":[]}}'
)
"""Deflate's preset dictionary: the words every `initialize` repeats, so a small one packs small.
Part of formats 1 and 2: changing it is a new format byte."""
_MAX_PLAIN = 64 * 1024
"""Largest inflated plaintext read back (it is authenticated, so only this gateway wrote it)."""


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a handle carries."""

    owner: str
    """:func:`~mcp_middleware.router.sessions.owner_of` the principal that opened it (`""`: anonymous)."""
    path: str
    """The path it was opened on: a handle is valid there only."""
    session_id: str
    """The session id of the stack below the gateway (the backend's, or the aggregate's)."""
    initialize: Mapping[str, Any]
    """The client's `initialize` params (protocol version, capabilities, client info)."""
    replica: str | None = None
    """For a pool: the replica that holds the session."""
    backends: tuple[tuple[str, str], ...] = ()
    """(backend, session id) pairs a session spanning several backends carries (the format's room for them)."""
    expires: int = 0
    """Unix seconds after which the handle is refused (set when minted)."""
    replicas: tuple[tuple[str, str], ...] = ()
    """(backend, replica) for those of `backends` that are pools: the replica holding that session."""
    origin: bytes | None = None
    """Fingerprint of the server that issued `session_id` (None: in-process, or the aggregate's own)."""
    origins: tuple[tuple[str, bytes], ...] = ()
    """(backend, fingerprint of the server that issued its session) for `backends`."""


@dataclass(slots=True, eq=False)
class OpenedSession:
    """A handle this process opened or minted: its state and the session id it maps to *here*."""

    state: SessionState
    session_id: str
    """Where the session lives in this process: the sealed one, or the one it was re-opened as."""
    ended: bool = False
    """Deleted through this process: not re-opened here (another instance may, until the handle expires)."""
    _lock: anyio.Lock | None = None

    @property
    def lock(self) -> anyio.Lock:
        """Held while the session is re-opened here (concurrent requests of the session wait for it)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock


@dataclass(slots=True)
class SessionHandles:
    """Mint and open handles under one :class:`Sealer`; the last `max_cached` opened ones are kept."""

    sealer: Sealer
    ttl: float = DEFAULT_SESSION_TTL
    fingerprints: Fingerprints = UNKEYED
    """How issuers are fingerprinted (keyed by the session key: `Fingerprints.from_secrets`)."""
    max_cached: int = 10_000
    _cache: OrderedDict[str, OpenedSession] = field(default_factory=OrderedDict)

    def mint(self, state: SessionState, *, now: float | None = None) -> str:
        """A new handle for `state` (its `expires` set from the ttl), remembered as opened; `ValueError` when
        the state cannot be sealed (a session id over 1 KiB, a handle over 8 KiB)."""
        now = time.time() if now is None else now
        expires = int(now + self.ttl) + 1
        sealed = dataclasses.replace(state, expires=expires)
        handle = self.sealer.seal(encode(sealed), ttl=self.ttl, now=now)
        if len(handle) > MAX_TOKEN_LENGTH:  # it would never open: say so now, not on every request
            raise ValueError(f"the session's state seals to {len(handle)} characters (at most {MAX_TOKEN_LENGTH})")
        self._remember(handle, OpenedSession(sealed, sealed.session_id))
        return handle

    def open(self, handle: str, *, now: float | None = None) -> OpenedSession:
        """The session `handle` names, or :class:`SealError` (`malformed`, `unknown_key`, `tampered`, `expired`)."""
        cache = self._cache
        opened = cache.get(handle)
        if opened is None:
            opened = OpenedSession(decode(self.sealer.open(handle, now=now)), "")
            opened.session_id = opened.state.session_id
            self._remember(handle, opened)
        else:
            cache.move_to_end(handle)
        if (time.time() if now is None else now) >= opened.state.expires:
            cache.pop(handle, None)
            raise SealError("expired")
        return opened

    def _remember(self, handle: str, opened: OpenedSession) -> None:
        cache = self._cache
        cache[handle] = opened
        if len(cache) > self.max_cached:
            cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)


def encode(state: SessionState) -> bytes:
    """The compact plaintext of `state` (see the module's docstring)."""
    owner = bytes.fromhex(state.owner) if state.owner else b""
    if len(owner) not in (0, 32):
        raise ValueError("an owner is a SHA-256 digest in hex (owner_of), or empty")
    ids = b"".join(_pack_id(value) for value in (state.session_id, *(value for _, value in state.backends)))
    origins = dict(state.origins)
    issuers = b"".join(
        _pack_origin(origin) for origin in (state.origin, *(origins.get(name) for name, _ in state.backends))
    )
    rest = [state.path, state.initialize, state.replica, [name for name, _ in state.backends]]
    if state.replicas:  # only then: a handle without pools reads the same in every release of its format
        rest.append(dict(state.replicas))
    deflate = zlib.compressobj(
        9, zlib.DEFLATED, -15, zdict=_DICTIONARY
    )  # raw deflate: no header or checksum (the AEAD tag is one)
    packed = deflate.compress(orjson.dumps(rest)) + deflate.flush()
    head = _FIXED.pack(_FORMAT, _BOUND if owner else 0) + owner + _EXPIRES.pack(state.expires)
    return head + _COUNT.pack(len(ids)) + ids + issuers + packed


def decode(plain: bytes) -> SessionState:
    """`encode`'s inverse; a plaintext it did not write is `SealError("malformed")` (it cannot be: sealed)."""
    try:
        version, flags = _FIXED.unpack_from(plain)
        if version != _FORMAT:
            raise ValueError(version)
        at = _FIXED.size
        owner = plain[at : at + 32].hex() if flags & _BOUND else ""
        at += 32 if flags & _BOUND else 0
        (expires,) = _EXPIRES.unpack_from(plain, at)
        (length,) = _COUNT.unpack_from(plain, at + _EXPIRES.size)
        at += _EXPIRES.size + _COUNT.size
        ids = _unpack_ids(plain[at : at + length])
        at += length
        issuers = [_unpack_origin(plain[at + i * ORIGIN_SIZE : at + (i + 1) * ORIGIN_SIZE]) for i in range(len(ids))]
        at += len(ids) * ORIGIN_SIZE
        inflate = zlib.decompressobj(-15, zdict=_DICTIONARY)
        path, initialize, replica, names, *more = orjson.loads(inflate.decompress(plain[at:], _MAX_PLAIN))
        if len(names) != len(ids) - 1 or not isinstance(initialize, dict) or len(more) > 1:
            raise ValueError("backends")
        servers = [str(name) for name in names]
        pairs = tuple(zip(servers, ids[1:], strict=True))
        replicas = tuple((str(name), str(label)) for name, label in more[0].items()) if more else ()
        origins = tuple((name, origin) for name, origin in zip(servers, issuers[1:], strict=True) if origin is not None)
        return SessionState(
            owner, str(path), ids[0], initialize, replica, pairs, int(expires), replicas, issuers[0], origins
        )
    except (ValueError, TypeError, IndexError, AttributeError, struct.error, zlib.error, orjson.JSONDecodeError):
        raise SealError("malformed") from None


def _pack_id(value: str) -> bytes:
    """A session id: the SDK's (32 lowercase hex digits) as its 16 bytes, any other as its length and UTF-8."""
    if len(value) == 32 and _HEX.fullmatch(value):
        return b"\x00" + bytes.fromhex(value)
    raw = value.encode()
    if len(raw) > _MAX_ID:
        raise ValueError(f"a session id longer than {_MAX_ID} bytes cannot be sealed")
    return b"\x01" + _ID_LENGTH.pack(len(raw)) + raw


def _pack_origin(origin: bytes | None) -> bytes:
    if origin is None:
        return NO_ORIGIN
    if len(origin) != ORIGIN_SIZE or origin == NO_ORIGIN:
        raise ValueError(f"an issuer fingerprint is {ORIGIN_SIZE} bytes, not all zero (router/origins.py)")
    return origin


def _unpack_origin(raw: bytes) -> bytes | None:
    if len(raw) != ORIGIN_SIZE:
        raise ValueError("origins")
    return None if raw == NO_ORIGIN else raw


def _unpack_ids(block: bytes) -> list[str]:
    ids: list[str] = []
    at = 0
    while at < len(block):
        if block[at] == 0:
            ids.append(block[at + 1 : at + 17].hex())
            at += 17
        else:
            (size,) = _ID_LENGTH.unpack_from(block, at + 1)
            ids.append(block[at + 3 : at + 3 + size].decode())
            at += 3 + size
    if not ids or at != len(block):
        raise ValueError("ids")
    return ids
