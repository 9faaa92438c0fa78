"""`[auth]`: how callers prove who they are, and where `dev` mode may run.

`static` tokens are never shown in problems (`check-config` output ends up in CI logs): a
literal token is named by a digest, a `${env:…}` reference as written.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from .config_sections import scope_map
from .config_types import AuthSettings, GatewayConfig, StaticTokenSettings
from .toml_reader import Problem, Reader, describe

__all__ = ["auth", "dev_mode_exposure", "dev_mode_problem"]


def auth(reader: Reader) -> AuthSettings:
    reader.deprecated({"audience": "audiences"})
    d = AuthSettings()
    mode = reader.string("mode", d.mode, choices=("none", "dev", "static", "jwt", "introspection"))
    settings = AuthSettings(
        mode=mode,
        issuer=reader.string("issuer", None),
        jwks_url=reader.string("jwks_url", None),
        introspection_url=reader.string("introspection_url", None),
        client_id=reader.string("client_id", None),
        client_secret=reader.string("client_secret", None),
        audiences=reader.strings("audiences", ()),
        tokens=_static_tokens(reader),
        required_scopes=reader.strings("required_scopes", ()),
        scopes=scope_map(reader, "scopes"),
        public_paths=reader.strings("public_paths", d.public_paths),
        auto_approve=reader.boolean("auto_approve", d.auto_approve),
        allow_dev_on_public_host=_flag(reader, "allow_dev_on_public_host", d.allow_dev_on_public_host),
    )
    needs = {"jwt": ("jwks_url", "issuer"), "introspection": ("introspection_url",), "static": ("tokens",)}
    for key in needs.get(mode, ()):
        if not getattr(settings, key) and not (key == "tokens" and reader.data.get("tokens")):  # else: said why
            reader.problem(key, f"is required when mode = {mode!r}")
    reader.done()
    return settings


def _static_tokens(reader: Reader) -> dict[str, StaticTokenSettings]:
    """`[auth.tokens]`: each token → a scope list or `{ subject, scopes, client_id }`.

    Problems name a literal token by its digest (`auth.tokens[static:…]`), never by itself: the
    output of `check-config` ends up in CI logs. References (`${env:…}`) are shown as written.
    """
    table = reader.table("tokens")
    found: dict[str, StaticTokenSettings] = {}
    for name in list(table.data):
        table.seen.add(name)
        start = len(table.problems)
        token = table.secret(name, name)
        settings = _static_token(table, name, table.data[name]) if len(table.problems) == start else None
        real = table._key(name)
        if settings is not None and (not token or token in found):
            message = "is an empty token" if not token else "is the same token as another entry"
            table.problems.append(Problem(real, message, table.lines.find(real)))
        elif settings is not None:
            found[token] = settings
        if "${env:" not in name:  # hide a literal token in the paths of its problems
            shown = f"{table.path}[{_token_label(name)}]"
            for index in range(start, len(table.problems)):
                old = table.problems[index]
                table.problems[index] = Problem(shown + old.path[len(real) :], old.message, old.line)
    return found


def _static_token(table: Reader, name: str, value: Any) -> StaticTokenSettings | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return StaticTokenSettings(scopes=tuple(value))
    if not isinstance(value, dict):
        table.problem(
            name, f"must be a list of scopes or a table {{ subject, scopes, client_id }}, not {describe(value)}"
        )
        return None
    entry = table._child(value, table._key(name))
    settings = StaticTokenSettings(
        scopes=entry.strings("scopes", ()),
        subject=entry.string("subject", None),
        client_id=entry.string("client_id", None),
    )
    for key in ("subject", "client_id"):
        text = getattr(settings, key)
        if text is not None and not text.strip():
            entry.problem(key, "must not be empty")
    entry.done()
    return settings


def _token_label(token: str) -> str:
    return "static:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _flag(reader: Reader, key: str, default: bool) -> bool:
    """A boolean, or a `"${env:NAME}"` string that resolves to `true`/`false` (containers set it by env)."""
    value = reader.raw(key, default)
    if isinstance(value, str):
        resolved = reader.secret(key, value).strip().lower()
        if resolved in ("true", "1", "yes"):
            return True
        if resolved in ("false", "0", "no", ""):
            return False
        reader.problem(key, f"must be true or false, not {resolved!r}")
        return default
    if not isinstance(value, bool):
        reader.problem(key, f"must be true or false, not {describe(value)}")
        return default
    return value


def _loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or "" / 0.0.0.0 / ::, every interface): reachable from elsewhere


def dev_mode_exposure(config: GatewayConfig, host: str | None = None) -> str | None:
    """Where `dev` mode would be reachable from other machines, or `None` (off, or loopback only).

    `host` is the address the gateway binds (default `[gateway] host`, the CLI's `--host`
    overrides it); a non-loopback `public_url` counts too (a proxy in front publishes it).
    """
    if config.auth.mode != "dev":
        return None
    bind = config.gateway.host if host is None else host
    if not _loopback(bind):
        return f"host {bind!r}"
    public = config.gateway.public_url
    if public is not None and not _loopback(urlsplit(public).hostname or ""):
        return f"public_url {public!r}"
    return None


def dev_mode_problem(config: GatewayConfig, host: str | None = None) -> Problem | None:
    """The problem of `dev` mode on a non-loopback address without `allow_dev_on_public_host`."""
    where = dev_mode_exposure(config, host)
    if where is None or config.auth.allow_dev_on_public_host:
        return None
    return Problem(
        "auth.allow_dev_on_public_host",
        f"mode = 'dev' serves a login page that accepts any user name, and this gateway is reachable at {where}: "
        "bind a loopback host, use mode = 'jwt' or 'introspection', or set allow_dev_on_public_host = true "
        "if that is really meant",
    )
