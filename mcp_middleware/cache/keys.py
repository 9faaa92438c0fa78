"""Cache keys: what makes two MCP requests the same question, and whose answer it is.

A key is `mount | method | digest | partition`:

- `mount`: which backend answered (by default the request path, so a cache in front of a
  router keeps `/mcp/github` and `/mcp/jira` apart); a mount that holds the separator, is
  `*` or is long is written as `#` + its hash, so keys stay parseable and short;
- `method`: the JSON-RPC method, kept readable so invalidation can name it;
- `digest`: a hash of the protocol version and the canonical params (stable JSON with sorted
  keys; `_meta` is left out except the fields that can change the result, by default the
  client's capabilities; the cursor is a param, so every page has its own key);
- `partition`: whose answer it is. `*` for results every caller may share (`cacheScope:
  public`), otherwise a hash of the principal's issuer, subject and client id, each
  length-prefixed so that no choice of fields spells another principal's (never the raw
  token), or `anonymous`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from hashlib import blake2b
from typing import Any

import orjson
from mcp.types import CLIENT_CAPABILITIES_META_KEY

from ..core.principal import Principal
from ..core.request import McpRequest

__all__ = [
    "ANONYMOUS_PARTITION",
    "DEFAULT_KEY_META_FIELDS",
    "PUBLIC_PARTITION",
    "entry_key",
    "entry_tags",
    "invalidation_tag",
    "partition_of",
    "request_digest",
    "with_origin",
]

PUBLIC_PARTITION = "*"
"""The partition of `cacheScope: public` results: shared by every caller."""
ANONYMOUS_PARTITION = "anonymous"
"""The partition of callers no one authenticated (they share one authorization context: none)."""

DEFAULT_KEY_META_FIELDS: frozenset[str] = frozenset({CLIENT_CAPABILITIES_META_KEY})
"""`_meta` fields that may change a result and so belong in the key.

A server may tailor a result to what the client can do (offer input-required flows only to
clients that can elicit, say). Trace context, progress tokens, log levels and the self-reported
client info never change a result and stay out, so they do not defeat the cache.
"""

_SEPARATOR = "|"
_PLAIN = re.compile(r"[A-Za-z0-9/_.:~-]{1,128}")
"""Mounts and methods written as they are; anything else (the separator, `*`, `#`, unicode, length) as a hash."""


def _field(value: str | None) -> bytes:
    if value is None:
        return b"-"
    data = value.encode("utf-8", "surrogatepass")
    return b"%d:%s" % (len(data), data)


def partition_of(principal: Principal) -> str:
    """The principal's partition: a hash of issuer, subject and client id (no token, no raw identity).

    The fields are length-prefixed (and a missing one differs from an empty one) before hashing:
    joined by a separator, `("a\x1fb", "c")` and `("a", "b\x1fc")` were the same partition.
    """
    if not principal.authenticated:
        return ANONYMOUS_PARTITION
    identity = b"|".join((_field(principal.issuer), _field(principal.subject), _field(principal.client_id)))
    return blake2b(identity, digest_size=12).hexdigest()


def _part(text: str) -> str:
    """A key part that cannot hold the separator or pose as `*`, and stays short: itself, or `#` + its hash."""
    if _PLAIN.fullmatch(text):
        return text
    return "#" + blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def request_digest(request: McpRequest, meta_fields: frozenset[str] = DEFAULT_KEY_META_FIELDS) -> str:
    """A hash of what makes the request's result what it is: version, method and canonical params.

    >>> from mcp_middleware.core.request import Era, McpRequest, RequestKind
    >>> a = McpRequest(RequestKind.REQUEST, Era.MODERN, "2026-07-28", method="tools/list", id=1,
    ...                params={"cursor": "p2", "_meta": {"traceparent": "00-ab-cd-01"}})
    >>> b = a._replace(id=2, params={"cursor": "p2"})
    >>> request_digest(a) == request_digest(b), request_digest(a) == request_digest(b._replace(params={}))
    (True, False)
    """
    params: Mapping[str, Any] | None = request.params
    if params and "_meta" in params:
        meta = params["_meta"]
        kept = {name: meta[name] for name in meta_fields if name in meta} if isinstance(meta, dict) else {}
        params = {key: value for key, value in params.items() if key != "_meta"}
        if kept:
            params["_meta"] = kept
    question = (request.protocol_version, request.method, params or None)
    try:
        canonical = orjson.dumps(question, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # a value orjson will not write (an integer beyond 64 bits): the slow, total way
        canonical = json.dumps(question, sort_keys=True, separators=(",", ":"), default=repr).encode()
    return blake2b(canonical, digest_size=16).hexdigest()


def entry_key(mount: str, method: str, digest: str, partition: str) -> str:
    """The store key of one answer."""
    return f"{_part(mount)}{_SEPARATOR}{_part(method)}{_SEPARATOR}{digest}{_SEPARATOR}{partition}"


def _uri_tag(mount: str | None, uri: str) -> str:
    # URIs can be long and contain anything: the tag carries their hash.
    where = _part(mount) if mount is not None else "*"
    return f"u:{where}{_SEPARATOR}{blake2b(uri.encode('utf-8', 'surrogatepass'), digest_size=16).hexdigest()}"


def invalidation_tag(
    mount: str | None = None, method: str | None = None, partition: str | None = None, uri: str | None = None
) -> str:
    """The tag naming every entry of `mount`, `method` and `partition` (`None` = any), or of one resource `uri`."""
    if uri is not None:
        return _uri_tag(mount, uri)
    where = _part(mount) if mount is not None else "*"
    return _SEPARATOR.join(("t", where, _part(method) if method else "*", partition or "*"))


def entry_tags(mount: str, method: str, partition: str, uri: str | None = None) -> tuple[str, ...]:
    """Every tag an entry carries: each combination of its mount, method and partition (or any), and its URI."""
    tags = [invalidation_tag(m, f, p) for m in (mount, None) for f in (method, None) for p in (partition, None)]
    if uri is not None:
        tags += (_uri_tag(mount, uri), _uri_tag(None, uri))
    return tuple(tags)


def with_origin(digest: str, headers: list[tuple[bytes, bytes]]) -> str:
    """The digest, bound to the request's `Origin` when it has one (browsers send it with every POST).

    The app inside may refuse a browser's request by its origin alone (the SDK's DNS-rebinding
    protection answers 403), so the origin is part of the question: a page on attacker.example
    that rebinds its name to this server gets a miss, goes to the app and is refused there,
    instead of getting what a genuine client stored. (`Host` is not keyed: only a browser can be
    made to send a rebound `Host`, and a browser also sends `Origin`; any other client can send
    whatever `Host` it likes, the genuine one included.) Hashed: the value is the client's.
    """
    for name, value in headers:
        if name == b"origin":
            return blake2b(b"%s\x00%s" % (digest.encode(), value), digest_size=16).hexdigest()
    return digest
