"""One vocabulary and one source of defaults: the file speaks the middlewares' Python names, and reads their defaults.

The names the file used before (`failure_threshold`, `open_seconds`, `quota`, `fail`,
`record_principal`, `audience`) are accepted for one release with a warning naming the new key
and the line; writing both the old and the new name is an error.
"""

from __future__ import annotations

import pytest
from starlette.applications import Starlette

from mcp_middleware.breaker import DEFAULT_TIMEOUTS, BreakerPolicy, CircuitBreakerMiddleware
from mcp_middleware.cache import ResponseCacheMiddleware, cache_store_from_url
from mcp_middleware.core import DEFAULT_MAX_BODY_SIZE
from mcp_middleware.gateway.assembly import Assembly
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.gateway.config_types import option_default
from mcp_middleware.ratelimit import BucketPolicy, QuotaPolicy, RateLimitMiddleware

SERVER = '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


def test_the_new_names_are_the_python_names() -> None:
    config = parse_config(
        SERVER
        + """
[auth]
mode = "static"
audiences = ["https://mcp.example.com"]
[auth.tokens]
"t0ken" = ["mcp"]
[ratelimit]
failure = "closed"
[[ratelimit.policies]]
name = "per-minute"
selector = ["tools/call", "tools/list"]
rate = "100/minute"
[[ratelimit.policies]]
name = "daily"
limit = "1000/day"
strategy = "moving-window"
[breaker]
consecutive_failures = 3
open_for = 12.5
failure_rate = false
backoff = 3
[tracing]
record_enduser = true
"""
    )
    assert config.warnings == ()
    assert config.auth.audiences == ("https://mcp.example.com",)
    assert config.ratelimit.failure == "closed"
    bucket, quota = config.ratelimit.policies
    assert bucket == BucketPolicy("per-minute", selector=("tools/call", "tools/list"), rate="100/minute")
    assert (bucket.bucket.capacity, round(bucket.bucket.rate, 4)) == (100.0, round(100 / 60, 4))
    assert quota == QuotaPolicy("daily", limit="1000/day", strategy="moving-window")
    assert config.breaker.policy == BreakerPolicy(consecutive_failures=3, open_for=12.5, failure_rate=None, backoff=3)
    assert config.tracing.record_enduser is True


OLD_NAMES = (
    SERVER
    + """
[auth]
mode = "static"
audience = ["https://mcp.example.com"]
[auth.tokens]
"t0ken" = ["mcp"]
[ratelimit]
fail = "closed"
[[ratelimit.policies]]
name = "daily"
quota = "1000/day"
[breaker]
failure_threshold = 3
open_seconds = 12
[tracing]
record_principal = true
"""
)


def test_the_old_names_still_work_with_a_warning_naming_the_new_key_and_line() -> None:
    config = parse_config(OLD_NAMES)
    assert config.auth.audiences == ("https://mcp.example.com",)
    assert config.ratelimit.failure == "closed"
    assert config.ratelimit.policies == (QuotaPolicy("daily", limit="1000/day"),)
    assert (config.breaker.policy.consecutive_failures, config.breaker.policy.open_for) == (3, 12)
    assert config.tracing.record_enduser is True
    said = {(w.path, w.line): w.message for w in config.warnings}
    assert set(said) == {
        ("auth.audience", 7),
        ("ratelimit.fail", 11),
        ("ratelimit.policies[0].quota", 14),
        ("breaker.failure_threshold", 16),
        ("breaker.open_seconds", 17),
        ("tracing.record_principal", 19),
    }
    assert said[("breaker.open_seconds", 17)] == (
        "is deprecated: write open_for (the name the Python API uses); open_seconds is read until the next release"
    )


def test_a_problem_with_an_old_name_is_reported_under_the_name_written() -> None:
    assert problems(SERVER + "[breaker]\nfailure_threshold = 0\n") == [
        ("breaker.failure_threshold", 5, "consecutive_failures must be at least 1")
    ]
    assert problems(SERVER + "[breaker]\nopen_for = 5\nopen_seconds = 6\n") == [
        (
            "breaker.open_seconds",
            6,
            "and open_for say the same thing: keep open_for (open_seconds is its deprecated name)",
        )
    ]


def test_an_unknown_key_suggests_the_known_one() -> None:
    [(path, line, message)] = problems(SERVER + "[breaker]\nconsecutive_failure = 3\n")
    assert (path, line) == ("breaker.consecutive_failure", 5)
    assert message == "is not a known setting; did you mean 'consecutive_failures'?"
    [(_, _, message)] = problems(SERVER + "[[ratelimit.policies]]\nname = 'p'\nrat = 5\n")
    assert message == "is not a known setting; did you mean 'rate'?"


def test_defaults_are_the_middlewares_own() -> None:
    config = parse_config(SERVER + "[breaker]\n[cache]\n[[ratelimit.policies]]\nname = 'p'\n")
    assert config.breaker.policy == BreakerPolicy()
    assert config.cache.ttl == option_default(ResponseCacheMiddleware, "ttl")
    assert config.cache.honor_ttl_ms == option_default(ResponseCacheMiddleware, "honor_ttl_ms")
    assert config.cache.max_entries == option_default(cache_store_from_url, "max_entries")
    assert config.cache.max_bytes == option_default(cache_store_from_url, "max_bytes")
    assert config.ratelimit.failure == option_default(RateLimitMiddleware, "failure")
    assert config.ratelimit.ipv6_prefix == option_default(RateLimitMiddleware, "ipv6_prefix")
    assert config.ratelimit.policies == (BucketPolicy("p"),)  # BucketPolicy's rate and capacity, not the file's
    assert config.front_door.max_body_size == DEFAULT_MAX_BODY_SIZE


def test_the_breaker_timeouts_start_from_the_breakers_own() -> None:
    config = parse_config(SERVER + '[breaker.timeouts]\n"tools/list" = 5\n')
    assembly = Assembly(config, "http://127.0.0.1:8000")
    [layer] = [layer for layer in assembly.for_mount(config.servers[0])]
    breaker = layer(Starlette())
    assert isinstance(breaker, CircuitBreakerMiddleware)
    timeouts = breaker._timeouts  # what the built middleware will apply
    assert {selector.text: seconds for selector, seconds in timeouts} == {**DEFAULT_TIMEOUTS, "tools/list": 5}
    assert timeouts.lookup_parts("tools/call", "echo") == DEFAULT_TIMEOUTS["tools/call"]


@pytest.mark.parametrize(
    ("policy", "key", "expected"),
    [
        ("rate = '10 per fortnight'", "rate", 'must be a rate such as "100/minute" or "10 per second"'),
        ("limit = '5 per fortnight'", "limit", 'must be a rate such as "100/minute" or "10 per second"'),
        ("rate = 5\ncapacity = 2\ncost = 3", "cost", "cost must be positive and at most the capacity (2)"),
        ("limit = '5/minute'\ncapacity = 3", "capacity", "is a token-bucket setting"),
        ("selector = ['tools/call', ':oops']", "selector", "is not a selector"),
        ("selector = 5", "selector", "must be a selector or a list of selectors"),
        ("limit = '5/minute'\nstrategy = 'leaky'", "strategy", "must be one of"),
    ],
)
def test_policies_are_checked_by_the_rate_limiters_own_parsers(policy: str, key: str, expected: str) -> None:
    found = problems(SERVER + f"[[ratelimit.policies]]\nname = 'p'\n{policy}\n")
    assert [(path, line) for path, line, _ in found] == [(f"ratelimit.policies[0].{key}", found[0][1])]
    assert found[0][1] is not None and expected in found[0][2]


def test_breaker_values_are_checked_by_the_breaker_policy() -> None:
    assert problems(SERVER + "[breaker]\nfailure_rate = 2.0\n") == [
        ("breaker.failure_rate", 5, "failure_rate must be in (0, 1]")
    ]
    assert problems(SERVER + "[breaker]\nminimum_calls = 'many'\n") == [
        ("breaker.minimum_calls", 5, "must be an integer, not a string ('many')")
    ]
    assert problems(SERVER + "[breaker]\nconsecutive_failures = false\nfailure_rate = false\n")[0][2] == (
        "BreakerPolicy needs consecutive_failures or failure_rate (or both)"
    )


def test_the_aggregate_speaks_naming_policys_names() -> None:
    from mcp_middleware.router import NamingPolicy

    config = parse_config(SERVER + '[aggregate]\nprefix = "never"\non_conflict = "first"\nseparator = "--"\n')
    assert config.warnings == ()
    assert (config.aggregate.prefix, config.aggregate.on_conflict, config.aggregate.separator) == (
        "never",
        "first",
        "--",
    )
    defaults = parse_config(SERVER).aggregate
    policy = NamingPolicy()
    assert (defaults.separator, defaults.prefix, defaults.on_conflict) == (
        policy.separator,
        policy.prefix.value,
        policy.on_conflict,
    )


def test_prefix_mode_is_read_as_prefix_with_a_warning_at_its_line() -> None:
    config = parse_config(SERVER + '[aggregate]\nprefix_mode = "on_collision"\n')
    assert config.aggregate.prefix == "on_collision"
    [warning] = config.warnings
    assert "aggregate.prefix" in str(warning) and "line 5" in str(warning) and "prefix_mode" in str(warning)
    assert problems(SERVER + '[aggregate]\nprefix_mode = "never"\nprefix = "never"\n')[0][0] == "aggregate.prefix_mode"


def test_a_separator_the_router_refuses_is_a_problem_with_its_line() -> None:
    [(path, line, message)] = problems(SERVER + '[aggregate]\nseparator = "::"\n')
    assert (path, line) == ("aggregate.separator", 5) and "portable" in message
