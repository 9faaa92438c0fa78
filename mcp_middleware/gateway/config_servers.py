"""`[[servers]]`: each backend, its source (app, url or command) and its own overrides of the middlewares."""

from __future__ import annotations

import re

from .config_backend_auth import backend_exchange, backend_tls
from .config_curation import curation
from .config_sections import policies, scope_map, timeouts
from .config_types import PoolSettings, ServerSettings
from .toml_reader import Reader
from .validation import selector, split_command

__all__ = ["server"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_APP = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_URL = re.compile(r"^https?://[^/\s]+")


def server(reader: Reader, index: int, names: dict[str, str]) -> ServerSettings | None:
    """One `[[servers]]` table, or None when it cannot be a server (the problems say why)."""
    name = _name(reader, names)
    app = reader.string("app", None)
    url, pool = _url(reader)
    command = split_command(reader, "command")
    given = [key for key, value in (("app", app), ("url", url), ("command", command)) if value]
    given += [key for key in ("command",) if key in reader.data and not command and key not in given]
    if len(given) != 1:
        reader.problem(
            None,
            "needs exactly one of app (module:attr), url or command"
            + (f"; it has {', '.join(given)}" if given else ""),
        )
    if app is not None and not _APP.match(app):
        reader.problem("app", f"must be 'module:attribute', not {app!r}")
    for each in pool.urls if pool is not None else (url,) if url is not None else ():
        if not _URL.match(each):
            reader.problem("url", f"must be an http:// or https:// URL, not {each!r}")
    kind = "app" if app else "url" if url else "command"
    headers = reader.string_map("headers")
    exchange = backend_exchange(reader, kind, headers)  # a pool of URLs too: one exchange for the pool
    settings = ServerSettings(
        name=name or "",
        app=app,
        url=url,
        command=command,
        env=reader.string_map("env"),
        headers=headers,
        mount=reader.boolean("mount", True),
        aggregate=reader.boolean("aggregate", True),
        timeout=reader.number("timeout", ServerSettings.timeout, positive=True),
        optional=reader.boolean("optional", False),
        scopes=scope_map(reader, "scopes") if "scopes" in reader.data else None,
        ratelimit_policies=policies(reader, "ratelimit_policies") if "ratelimit_policies" in reader.data else None,
        breaker_timeouts=timeouts(reader, "breaker_timeouts") if "breaker_timeouts" in reader.data else None,
        cache_ttl=reader.number("cache_ttl", 0.0, positive=True) if "cache_ttl" in reader.data else None,
        honor_ttl_ms=reader.boolean("honor_ttl_ms", True) if "honor_ttl_ms" in reader.data else None,
        curation=curation(reader),
        index=index,
        pool=pool,
        exchange=exchange,
        tls=backend_tls(reader, kind),
    )
    if not settings.mount and not settings.aggregate:
        reader.problem("mount", "and aggregate are both false: the server would be reachable nowhere")
    reader.done()
    return settings if len(given) == 1 and name is not None else None


_POOL_KEYS = ("balance", "probe_interval", "probe_timeout", "probe_failures", "retry_tools", "on_replica_loss")


def _url(reader: Reader) -> tuple[str | None, PoolSettings | None]:
    """`url`: one URL, or a list of replicas (a pool, with its own options); the first URL, and the pool.
    `replicas = N` beside a `command`: a pool of N processes of it (the same options)."""
    if "replicas" in reader.data:
        pool = _command_pool(reader)
        listed = reader.raw("url", None)  # a url beside it is reported (here, or as one source too many)
        return (listed if isinstance(listed, str) else None), pool
    if not isinstance(reader.raw("url", None), list):
        for key in _POOL_KEYS:
            if key in reader.data:
                reader.raw(key)  # read, so that it is not also called unknown
                reader.problem(
                    key,
                    'is for a pool of replicas: write url = ["http://a/mcp", "http://b/mcp"], or replicas = 3'
                    " beside a command",
                )
        return reader.string("url", None), None
    urls = reader.strings("url", ())
    if not urls:
        reader.problem("url", "must name at least one replica")
        return None, None
    return urls[0], _pool_options(reader, urls=urls)


def _command_pool(reader: Reader) -> PoolSettings | None:
    """`replicas = N` with a `command`: N copies of one program (a stdio replica is a local process, so one
    command, env and cwd describe them all; several URLs name several hosts, several commands would not)."""
    replicas = reader.integer("replicas", 1, minimum=1, maximum=64)
    if "command" not in reader.data:
        hint = "url = [...] lists URL replicas" if "url" in reader.data else "it needs a command"
        reader.problem("replicas", f"is the number of processes of a command ({hint})")
        return None
    if isinstance(reader.raw("url", None), list):
        reader.problem("url", "a pool is url = [...] or a command with replicas = N, not both")
    return _pool_options(reader, replicas=replicas)


def _pool_options(reader: Reader, *, urls: tuple[str, ...] = (), replicas: int = 0) -> PoolSettings:
    retry_tools = reader.strings("retry_tools", ())
    for position, text in enumerate(retry_tools):
        selector(reader, f"retry_tools[{position}]", text)
    return PoolSettings(
        urls=urls,
        replicas=replicas,
        balance=reader.string("balance", PoolSettings.balance, choices=("least_in_flight", "round_robin")),
        probe_interval=reader.number("probe_interval", PoolSettings.probe_interval, positive=True),
        probe_timeout=reader.number("probe_timeout", PoolSettings.probe_timeout, positive=True),
        probe_failures=reader.integer("probe_failures", PoolSettings.probe_failures, minimum=1),
        retry_tools=retry_tools,
        on_replica_loss=reader.string(
            "on_replica_loss", PoolSettings.on_replica_loss, choices=("not_found", "reinitialize")
        ),
    )


def _name(reader: Reader, names: dict[str, str]) -> str | None:
    name = reader.string("name")
    if not isinstance(name, str):
        return None
    if not _NAME.match(name):
        reader.problem(
            "name", f"must match [A-Za-z0-9_-]{{1,64}} (it is a path segment and a tool prefix), not {name!r}"
        )
    elif name in names:
        reader.problem("name", f"{name!r} is already the name of {names[name]}")
    else:
        names[name] = reader.path
    return name
