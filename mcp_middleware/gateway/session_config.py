"""`[gateway] session_key`: the secrets that seal legacy session ids (see `sealed_sessions.py`).

One string or a list, newest first (rotation: add the new secret in front, drop the old one a
`session_ttl` later), usually `"${env:MCP_GATEWAY_SESSION_KEY}"`. Every secret must be long enough to
seal anything; a problem names the key and its line, never the secret.
"""

from __future__ import annotations

from starlette.types import ASGIApp

from mcp_middleware.core import CoreConfig
from mcp_middleware.core.sealing import MIN_SECRET_LENGTH, Sealer
from mcp_middleware.router.origins import Fingerprints

from .affinity import SessionAffinityMiddleware
from .config_types import GatewayConfig
from .sealed_sessions import SealedSessionMiddleware
from .session_handles import SessionHandles
from .toml_reader import Reader, describe

__all__ = ["SESSION_PURPOSE", "session_key", "session_layer"]

SESSION_PURPOSE = "mcp-session"
"""The `Sealer` purpose of session handles: a token sealed for another purpose never opens as one."""


def session_key(reader: Reader) -> tuple[str, ...]:
    """The `session_key` secrets, resolved from the environment and checked (problems, not exceptions)."""
    raw = reader.raw("session_key", None)
    if raw is None:
        return ()
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values or not all(isinstance(value, str) for value in values):
        shown = describe(raw) if not isinstance(raw, str | list) else "an empty list or one with non-strings"
        reader.problem("session_key", f"must be a string or a list of strings (newest first), not {shown}")
        return ()
    secrets = tuple(reader.secret("session_key", value) for value in values)
    for index, secret in enumerate(secrets):
        if len(secret.encode()) < MIN_SECRET_LENGTH:
            which = f"secret #{index + 1}" if len(secrets) > 1 else "the secret"
            reader.problem(
                "session_key",
                f"{which} is {len(secret.encode())} bytes long; a session key needs at least {MIN_SECRET_LENGTH} "
                "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            )
            return ()
    if "instance" in reader.data:
        reader.warn("instance", "is not needed with session_key: sealed handles need no affinity (instance is ignored)")
    return secrets


def session_layer(inner: ASGIApp, config: GatewayConfig) -> ASGIApp:
    """Sealed session handles when a key is set, else the instance tag when `instance` is set, else nothing."""
    settings = config.gateway
    if settings.session_key:
        handles = SessionHandles(
            Sealer(settings.session_key, purpose=SESSION_PURPOSE),
            ttl=settings.session_ttl,
            fingerprints=Fingerprints.from_secrets(settings.session_key),  # which server issued each sealed id
        )
        prefix = settings.prefix
        virtual = tuple(server.path for server in config.virtual_servers if server.path)
        mcp_paths = (prefix, f"{prefix.rstrip('/')}/*", *virtual)
        paths = CoreConfig(paths=mcp_paths, max_body_size=config.front_door.max_body_size)
        return SealedSessionMiddleware(inner, handles=handles, config=paths)
    if settings.instance:
        return SessionAffinityMiddleware(inner, instance=settings.instance)
    return inner
