"""JWT access tokens verified against an issuer's JWKS (joserfc), keys fetched asynchronously (httpx2)."""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
import httpx2
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import (
    JoseError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key
from joserfc.jws import CompactSignature, JWSRegistry, extract_compact, validate_compact
from mcp.server.auth.provider import AccessToken

from .verification import (
    ExplainingVerifier,
    TokenRejected,
    VerificationUnavailable,
    access_token_from_claims,
    canonical_resource,
)

__all__ = ["DEFAULT_ALGORITHMS", "JwksKeys", "JwksTokenVerifier"]

logger = logging.getLogger("mcp_middleware.auth")

DEFAULT_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256", "PS256")
"""Asymmetric algorithms only: a resource server never holds a shared secret with the issuer."""

_KEY_TYPES: dict[str, type[Key]] = {
    "RS256": RSAKey,
    "RS384": RSAKey,
    "RS512": RSAKey,
    "PS256": RSAKey,
    "PS384": RSAKey,
    "PS512": RSAKey,
    "ES256": ECKey,
    "ES384": ECKey,
    "ES512": ECKey,
    "ES256K": ECKey,
    "EdDSA": OKPKey,
    "Ed25519": OKPKey,
    "Ed448": OKPKey,
}
_MAX_JWKS_BYTES = 1024 * 1024
_MAX_KEYLESS_CANDIDATES = 4
"""A token without `kid` is tried against at most this many keys of its algorithm's type."""


class _KeyIndex:
    """Signing keys of one JWKS document, by `kid` and by key type."""

    __slots__ = ("by_kid", "by_type")

    def __init__(self, keys: Iterable[Key]) -> None:
        self.by_kid: dict[str, Key] = {}
        self.by_type: dict[type[Key], list[Key]] = {}
        for key in keys:
            if key.kid is not None:
                self.by_kid[key.kid] = key
            self.by_type.setdefault(type(key), []).append(key)

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.by_type.values())

    @classmethod
    def parse(cls, document: Any) -> _KeyIndex:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: list[Key] = []
        for data in document["keys"]:
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            try:
                key = import_key(data)
            except (JoseError, ValueError, TypeError):
                continue  # a key type we cannot use must not hide the others
            if isinstance(key, RSAKey | ECKey | OKPKey):  # never a symmetric key from a public document
                keys.append(key)
        return cls(keys)

    def candidates(self, kid: str | None, alg: str) -> list[Key]:
        wanted = _KEY_TYPES[alg]
        if kid is not None:
            key = self.by_kid.get(kid)
            return [key] if key is not None and isinstance(key, wanted) and _alg_fits(key, alg) else []
        keys = [key for key in self.by_type.get(wanted, ()) if _alg_fits(key, alg)]
        return keys[:_MAX_KEYLESS_CANDIDATES]


def _alg_fits(key: Key, alg: str) -> bool:
    declared = key.get("alg")
    return declared is None or declared == alg


class JwksKeys:
    """An issuer's JWKS, fetched with httpx2 and kept for `ttl` seconds.

    Concurrent callers share one fetch. After `ttl` the keys are fetched again; if that
    fails the old keys stay in use (an outage of the issuer must not lock everyone out)
    and the fetch is retried at most every `min_refetch_interval` seconds. A token
    signed with an unknown `kid` may trigger one early fetch, also at most every
    `min_refetch_interval` seconds (key rotation works, a flood of bogus `kid`s does
    not turn into a flood of fetches).

    >>> keys = JwksKeys("https://issuer.example/.well-known/jwks.json", ttl=600)
    """

    def __init__(
        self,
        uri: str,
        *,
        ttl: float = 600.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 5.0,
        http_client: httpx2.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri = uri
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._client = http_client
        self._clock = clock
        self._index: _KeyIndex | None = None
        self._fetched_at = -float("inf")
        self._attempted_at = -float("inf")
        self._lock = anyio.Lock()
        self._generation = 0
        self.fetches = 0
        """How many fetches were attempted (for tests and metrics)."""

    @property
    def cached(self) -> bool:
        return self._index is not None

    async def current(self) -> _KeyIndex:
        """The keys, fetched if never fetched or older than `ttl`; raises VerificationUnavailable without any."""
        index = self._index
        now = self._clock()
        if index is not None and now - self._fetched_at < self.ttl:
            return index
        if index is not None and now - self._attempted_at < self.min_refetch_interval:
            return index  # stale, but the issuer was asked recently and failed: keep serving
        return await self._refresh()

    async def refresh_for_unknown_kid(self) -> _KeyIndex | None:
        """Fetch early because a token names a key we do not have; `None` if rate-limited."""
        if self._clock() - self._attempted_at < self.min_refetch_interval:
            return None
        return await self._refresh()

    async def _refresh(self) -> _KeyIndex:
        generation = self._generation
        async with self._lock:
            if self._generation != generation:  # a fetch finished while we waited: share its outcome
                if self._index is not None:
                    return self._index
                raise self._unavailable()
            self._attempted_at = self._clock()
            self.fetches += 1
            try:
                index = _KeyIndex.parse(await self._download())
            except (httpx2.HTTPError, ValueError) as exc:
                logger.warning("JWKS fetch from %s failed: %s", self.uri, exc)
                if self._index is not None:  # keep serving the keys we have
                    return self._index
                raise self._unavailable() from exc
            finally:
                self._generation += 1
            self._index = index
            self._fetched_at = self._attempted_at
            return index

    def _unavailable(self) -> VerificationUnavailable:
        return VerificationUnavailable(
            "The authorization server's keys are unavailable", retry_after=max(1.0, self.min_refetch_interval)
        )

    async def _download(self) -> Any:
        if self._client is not None:
            response = await self._client.get(self.uri, timeout=self.timeout)
        else:
            async with httpx2.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(self.uri)
        response.raise_for_status()
        if len(response.content) > _MAX_JWKS_BYTES:
            raise ValueError(f"JWKS document larger than {_MAX_JWKS_BYTES} bytes")
        return orjson.loads(response.content)


class JwksTokenVerifier(ExplainingVerifier):
    """Verify JWT access tokens: signature by the issuer's JWKS, algorithm allow-list, claims.

    Accepts only the `algorithms` given (asymmetric ones; `none` and HMAC are refused
    outright, so an HS256 token "signed" with the public key never verifies). Checks
    `iss` against `issuer`, `aud` against `audience` (RFC 8707: the canonical URI of
    this MCP server), `exp` and `nbf` with `leeway` seconds, and that every claim in
    `required_claims` is present. A token without `kid` is tried against the keys of
    its algorithm's type. Implements the `mcp` SDK's `TokenVerifier`.

    >>> verifier = JwksTokenVerifier(
    ...     jwks_uri="https://issuer.example/.well-known/jwks.json",
    ...     issuer="https://issuer.example",
    ...     audience="https://mcp.example.com/mcp",
    ... )
    """

    def __init__(
        self,
        *,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        jwks_uri: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: int = 30,
        required_claims: Sequence[str] = ("exp",),
        jwks_ttl: float = 600.0,
        min_refetch_interval: float = 30.0,
        timeout: float = 5.0,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if (jwks_uri is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_uri (fetched) or jwks (a fixed key set)")
        unknown = [alg for alg in algorithms if alg not in _KEY_TYPES]
        if unknown or not algorithms:
            raise ValueError(f"unsupported or symmetric algorithms {unknown}; allowed: {sorted(_KEY_TYPES)}")
        self.issuers = [issuer] if isinstance(issuer, str) else list(issuer)
        self.audiences = [audience] if isinstance(audience, str) else list(audience)
        if not self.issuers or not self.audiences:
            raise ValueError("issuer and audience must name at least one value each")
        self._audiences = frozenset(canonical_resource(a) for a in self.audiences)
        self._audience_spellings = frozenset(self.audiences)
        self.algorithms = tuple(algorithms)
        self._jws = JWSRegistry(algorithms=list(self.algorithms))
        self.leeway = leeway
        self.keys = (
            JwksKeys(
                jwks_uri,
                ttl=jwks_ttl,
                min_refetch_interval=min_refetch_interval,
                timeout=timeout,
                http_client=http_client,
            )
            if jwks_uri is not None
            else None
        )
        self._fixed = _KeyIndex.parse(dict(jwks)) if jwks is not None else None
        self._required = frozenset(required_claims) | {"iss", "aud"}
        self._issuers = frozenset(self.issuers)

    async def check(self, token: str) -> AccessToken:
        obj = self._parse(token)
        header = obj.headers()
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(kid, str):
            kid = None
        if alg not in self.algorithms:
            raise TokenRejected(f"Algorithm {alg!r} is not accepted")
        index = self._fixed if self._fixed is not None else await self._key_source().current()
        keys = index.candidates(kid, alg)
        if not keys and kid is not None and self.keys is not None:
            refreshed = await self.keys.refresh_for_unknown_kid()
            if refreshed is not None:
                keys = refreshed.candidates(kid, alg)
        if not keys:
            raise TokenRejected("Unknown signing key" if kid is not None else "No key to verify the token")
        claims = self._verify_signature(obj, keys)
        audience = self._validate(claims)
        return access_token_from_claims(token, claims, resource=audience)

    def _key_source(self) -> JwksKeys:
        assert self.keys is not None
        return self.keys

    def _parse(self, token: str) -> CompactSignature:
        """Split and decode the token once; the header is unverified until the signature is checked."""
        try:
            return extract_compact(token.encode("ascii"), registry=self._jws)
        except (JoseError, ValueError, TypeError, UnicodeError) as exc:
            raise TokenRejected("Malformed token") from exc

    def _verify_signature(self, obj: CompactSignature, keys: list[Key]) -> dict[str, Any]:
        es256 = obj.headers().get("alg") == "ES256"
        for key in keys:
            try:
                if es256 and isinstance(key, ECKey):
                    self._jws.check_header(obj.headers())  # what validate_compact checks first ("crit")
                    if not _verify_es256(obj, key):
                        continue
                elif not validate_compact(obj, key, registry=self._jws):
                    continue
            except UnsupportedAlgorithmError as exc:
                raise TokenRejected("Algorithm is not accepted") from exc
            except (JoseError, ValueError, TypeError, binascii.Error) as exc:
                raise TokenRejected("Malformed token") from exc
            try:
                claims = orjson.loads(obj.payload)
            except orjson.JSONDecodeError as exc:
                raise TokenRejected("Malformed token") from exc
            if not isinstance(claims, dict):
                raise TokenRejected("Malformed token")
            return claims
        raise TokenRejected("Invalid signature")

    def _validate(self, claims: dict[str, Any]) -> str:
        """Check the registered claims (RFC 7519 §4.1) with leeway; return the audience naming this resource.

        Written out rather than run through a generic claims registry: this is on the path
        of every first request of a token, and the checks are few.
        """
        missing = sorted(name for name in self._required if claims.get(name) is None)
        if missing:
            raise TokenRejected(f"Token lacks required claims: {','.join(missing)}")
        now = time.time()
        leeway = self.leeway
        exp = claims.get("exp")
        if exp is not None:
            if not _numeric_date(exp):
                raise TokenRejected("Invalid claim 'exp'")
            if exp <= now - leeway:
                raise TokenRejected("Token has expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not _numeric_date(nbf) or nbf > now + leeway):
            raise TokenRejected("Token is not yet valid")
        iat = claims.get("iat")
        if iat is not None and (not _numeric_date(iat) or iat > now + leeway):
            raise TokenRejected("Token was issued in the future")
        if claims.get("iss") not in self._issuers:
            raise TokenRejected("Token was issued by an untrusted issuer")
        sub = claims.get("sub")
        if sub is not None and not isinstance(sub, str):
            raise TokenRejected("Invalid claim 'sub'")
        aud = claims["aud"]
        for candidate in aud if isinstance(aud, list) else [aud]:
            # Exact spelling first (the common case), the canonical form only when that misses.
            if not isinstance(candidate, str):
                continue
            if candidate in self._audience_spellings or canonical_resource(candidate) in self._audiences:
                return candidate
        raise TokenRejected("Token was not issued for this resource")


def _numeric_date(value: object) -> bool:
    """A JSON number that is a time: not a bool, not NaN or infinite."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _verify_es256(obj: CompactSignature, key: ECKey) -> bool:
    """ES256 straight through `cryptography`: joserfc's generic path adds about 10 µs to a first
    verification whose P-256 check alone takes 60-80 µs here (the target is 100 µs in all).

    The signature must be exactly 64 bytes of base64url (r || s, RFC 7518 §3.4) under a P-256 key;
    anything else is not a valid signature by this key.
    """
    if key.curve_name != "P-256":
        return False
    segments = obj.segments
    encoded = segments["signature"]
    raw = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), altchars=b"-_", validate=True)
    if len(raw) != 64:
        return False
    signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = key.get_op_key("verify")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        public.verify(signature, segments["header"] + b"." + segments["payload"], _ECDSA_SHA256)
    except InvalidSignature:
        return False
    return True
