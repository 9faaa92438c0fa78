"""The sections of the config file other than `[[servers]]` and `[auth]`: each read into its settings.

Middleware sections speak the middlewares' vocabulary (`[breaker]` is a `BreakerPolicy`,
`[[ratelimit.policies]]` are `BucketPolicy`/`QuotaPolicy`); the names the file used before are
read as deprecated aliases for one release (a warning names the new key and its line).
"""

from __future__ import annotations

import importlib.util
import os
import re

from mcp_middleware.ratelimit import Policy
from mcp_middleware.router import NamingPolicy, PrefixMode

from .config_types import (
    AggregateSettings,
    BreakerSettings,
    CacheSettings,
    FrontDoorSettings,
    GatewaySettings,
    RateLimitSettings,
    TracingSettings,
)
from .toml_reader import Reader
from .validation import breaker_policy, rate_limit_policy, selector, store_url

__all__ = [
    "aggregate",
    "breaker",
    "cache",
    "front_door",
    "gateway",
    "policies",
    "ratelimit",
    "scope_map",
    "timeouts",
    "tracing",
]

_URL = re.compile(r"^https?://[^/\s?#]+(/[^\s?#]*)?$")


def gateway(reader: Reader) -> GatewaySettings:
    d = GatewaySettings()
    prefix = reader.string("prefix", d.prefix)
    if not prefix.startswith("/") or (prefix != "/" and prefix.endswith("/")):
        reader.problem("prefix", f"must start with '/' and not end with one, not {prefix!r}")
        prefix = d.prefix
    public_url = reader.string("public_url", None)
    if public_url is not None and not _URL.match(public_url):
        reader.problem(
            "public_url", f"must be an http:// or https:// URL without query or fragment, not {public_url!r}"
        )
        public_url = None
    settings = GatewaySettings(
        host=reader.string("host", d.host),
        port=reader.integer("port", d.port, minimum=0, maximum=65535),
        prefix=prefix,
        public_url=public_url,
        shutdown_timeout=reader.number("shutdown_timeout", d.shutdown_timeout, minimum=0),
        tls_certfile=reader.string("tls_certfile", None),
        tls_keyfile=reader.string("tls_keyfile", None),
        log_level=reader.string("log_level", d.log_level, choices=_LOG_LEVELS),
        log_format=reader.string("log_format", d.log_format, choices=("json", "text")),
        log_levels=_log_levels(reader),
        instance=_instance(reader),
        workers=reader.integer("workers", d.workers, minimum=1, maximum=_MAX_WORKERS),
        per_worker_state=reader.boolean("per_worker_state", d.per_worker_state),
        gc_freeze=reader.boolean("gc_freeze", d.gc_freeze),
        watch_config=reader.boolean("watch_config", d.watch_config),
    )
    if settings.watch_config and importlib.util.find_spec("watchfiles") is None:
        reader.problem("watch_config", "needs watchfiles: pip install 'mcp-middleware[watch]' (or reload with SIGHUP)")
    if (settings.tls_certfile is None) != (settings.tls_keyfile is None):
        reader.problem(
            "tls_keyfile" if settings.tls_keyfile is None else "tls_certfile",
            "TLS needs both tls_certfile and tls_keyfile",
        )
    reader.done()
    return settings


_MAX_WORKERS = 1024
"""A bound, not advice: a worker per core is the useful most."""
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_levels(reader: Reader) -> dict[str, str]:
    levels = reader.string_map("log_levels")
    for name, level in levels.items():
        if level.lower() not in _LOG_LEVELS:
            reader.problem(f"log_levels.{name}", f"must be one of {', '.join(map(repr, _LOG_LEVELS))}, not {level!r}")
    return {name: level for name, level in levels.items() if level.lower() in _LOG_LEVELS}


def _instance(reader: Reader) -> str | None:
    value = os.environ.get("MCP_GATEWAY_INSTANCE") or reader.string("instance", None)
    if not value:
        return None
    value = value.replace(".", "-")
    if not re.match(r"^[A-Za-z0-9-]{1,63}$", value):
        reader.problem("instance", f"must be a DNS label ([A-Za-z0-9-], at most 63), not {value!r}")
        return None
    return value


def front_door(reader: Reader) -> FrontDoorSettings:
    d = FrontDoorSettings()
    settings = FrontDoorSettings(
        allowed_hosts=reader.strings("allowed_hosts", d.allowed_hosts),
        allowed_origins=reader.strings("allowed_origins", d.allowed_origins),
        cors=reader.boolean("cors", d.cors),
        max_body_size=reader.size("max_body_size", d.max_body_size),
    )
    reader.done()
    return settings


def aggregate(reader: Reader) -> AggregateSettings:
    reader.deprecated({"prefix_mode": "prefix"})
    d = AggregateSettings()
    separator = reader.string("separator", d.separator)
    try:  # the router's own rule (portable names), not a copy of it
        NamingPolicy(separator=separator)
    except ValueError as exc:
        reader.problem("separator", f"{exc}, not {separator!r}")
        separator = d.separator
    settings = AggregateSettings(
        enabled=reader.boolean("enabled", d.enabled),
        separator=separator,
        prefix=reader.string("prefix", d.prefix, choices=tuple(mode.value for mode in PrefixMode)),
        on_conflict=reader.string("on_conflict", d.on_conflict, choices=("first", "prefix")),
    )
    reader.done()
    return settings


def scope_map(reader: Reader, key: str) -> dict[str, tuple[str, ...]]:
    """Selector → scopes (`"tools/call:delete_*" = ["admin"]`), each selector checked by the real parser."""
    table = reader.table(key)
    found = {name: table.strings(name, ()) for name in list(table.data)}
    for name in found:
        selector(table, name, name)
    table.done()
    return found


def timeouts(reader: Reader, key: str) -> dict[str, float]:
    """Selector → seconds (the breaker's `timeouts`)."""
    table = reader.table(key)
    found = {name: table.number(name, 1.0, positive=True) for name in list(table.data)}
    for name in found:
        selector(table, name, name)
    table.done()
    return found


def policies(reader: Reader, key: str) -> tuple[Policy, ...]:
    """An array of rate-limit policy tables, each a `BucketPolicy` or a `QuotaPolicy`; names unique."""
    found: list[Policy] = []
    seen: set[str] = set()
    for table in reader.tables(key):
        name = table.data.get("name")
        if isinstance(name, str) and name in seen:
            table.problem("name", f"{name!r} names another policy too")
        seen.add(name if isinstance(name, str) else "")
        policy = rate_limit_policy(table)
        if policy is not None:
            found.append(policy)
    return tuple(found)


def ratelimit(reader: Reader) -> RateLimitSettings:
    reader.deprecated({"fail": "failure"})
    d = RateLimitSettings()
    found = policies(reader, "policies")
    settings = RateLimitSettings(
        enabled=reader.boolean("enabled", bool(found) or "policies" in reader.data),
        store=store_url(reader, "store", "bucket store"),
        failure=reader.string("failure", d.failure, choices=("open", "closed")),
        trusted_proxies=reader.strings("trusted_proxies", ()),
        ipv6_prefix=reader.integer("ipv6_prefix", d.ipv6_prefix, minimum=1, maximum=128),
        headers=reader.boolean("headers", d.headers),
        policies=found,
    )
    reader.done()
    return settings


def breaker(reader: Reader) -> BreakerSettings:
    found = timeouts(reader, "timeouts")
    settings = BreakerSettings(enabled=reader.boolean("enabled", True), policy=breaker_policy(reader), timeouts=found)
    reader.done()
    return settings


def cache(reader: Reader) -> CacheSettings:
    d = CacheSettings()
    settings = CacheSettings(
        enabled=reader.boolean("enabled", True),
        store=store_url(reader, "store", "cache store"),
        ttl=reader.number("ttl", d.ttl, positive=True),
        max_entries=reader.integer("max_entries", d.max_entries, minimum=1),
        max_bytes=reader.size("max_bytes", d.max_bytes),
        honor_ttl_ms=reader.boolean("honor_ttl_ms", d.honor_ttl_ms),
    )
    reader.done()
    return settings


def tracing(reader: Reader) -> TracingSettings:
    reader.deprecated({"record_principal": "record_enduser"})
    d = TracingSettings()
    path = reader.string("metrics_path", d.metrics_path)
    if not path.startswith("/"):
        reader.problem("metrics_path", f"must start with '/', not {path!r}")
        path = d.metrics_path
    settings = TracingSettings(
        enabled=reader.boolean("enabled", True),
        metrics_path=path,
        access_log=reader.boolean("access_log", d.access_log),
        record_enduser=reader.boolean("record_enduser", d.record_enduser),
        otlp_endpoint=_otlp_endpoint(reader),
        otlp_protocol=reader.string("otlp_protocol", None, choices=("http/protobuf", "grpc")),
        service_name=reader.string("service_name", None) or None,
    )
    reader.done()
    return settings


def _otlp_endpoint(reader: Reader) -> str | None:
    endpoint = reader.string("otlp_endpoint", None)
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        reader.problem("otlp_endpoint", f"must be an http:// or https:// URL, not {endpoint!r}")
        return None
    return endpoint or None
