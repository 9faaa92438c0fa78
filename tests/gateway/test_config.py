"""The config file: every problem named by its key and line, all at once; secrets only by reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_middleware.gateway.config import ConfigError, GatewayConfig, load_config, parse_config

MINIMAL = """
[[servers]]
name = "demo"
app = "examples.gateway.demo:server"
"""


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


def test_a_minimal_file_gets_safe_defaults() -> None:
    config = parse_config(MINIMAL)
    assert isinstance(config, GatewayConfig)
    assert (config.gateway.host, config.gateway.port, config.gateway.prefix) == ("127.0.0.1", 8000, "/mcp")
    assert config.servers[0].kind == "app" and config.servers[0].mount and config.servers[0].aggregate
    # Safe by default: loopback hosts only, no foreign origins, middlewares off until configured.
    assert "*" not in config.front_door.allowed_hosts
    assert all("localhost" in o or "127.0.0.1" in o for o in config.front_door.allowed_origins)
    assert config.auth.mode == "none" and not config.ratelimit.enabled and not config.cache.enabled


def test_every_problem_is_reported_with_its_key_and_line() -> None:
    found = problems(
        """[gateway]
port = "eighty"
prefix = "mcp/"

[[servers]]
name = "demo"
app = "examples.gateway.demo:server"

[[servers]]
name = "demo"
url = "ftp://example"

[ratelimit]
store = "postgres://db"
[[ratelimit.policies]]
name = "p"
rate = -1
colour = "blue"
"""
    )
    assert found == [
        ("gateway.port", 2, "must be an integer, not a string ('eighty')"),
        ("gateway.prefix", 3, "must start with '/' and not end with one, not 'mcp/'"),
        ("servers[1].name", 10, "'demo' is already the name of servers[0]"),
        ("servers[1].url", 11, "must be an http:// or https:// URL, not 'ftp://example'"),
        ("ratelimit.store", 14, "must be memory:// or a redis://, rediss:// or redis+unix:// URL, not 'postgres://db'"),
        ("ratelimit.policies[0].rate", 17, "must be a positive number, not -1"),
        ("ratelimit.policies[0].colour", 18, "is not a known setting"),
    ]


def test_a_typo_is_not_silently_ignored() -> None:
    assert problems(MINIMAL + "\n[cahce]\nenabled = true\n") == [
        ("cahce", 6, "is not a known setting; did you mean 'cache'?")
    ]


def test_a_server_needs_exactly_one_source() -> None:
    both = problems('[[servers]]\nname = "x"\napp = "a:b"\nurl = "http://127.0.0.1:1/mcp"\n')
    assert both == [("servers[0]", 1, "needs exactly one of app (module:attr), url or command; it has app, url")]
    assert problems('[[servers]]\nname = "x"\n')[0][2] == "needs exactly one of app (module:attr), url or command"


@pytest.mark.parametrize("name", ["has space", "x" * 65, "ünïcode", ""])
def test_server_names_must_be_portable(name: str) -> None:
    [(path, line, message)] = problems(f'[[servers]]\nname = "{name}"\napp = "a:b"\n')
    assert (path, line) == ("servers[0].name", 2) and message.startswith("must match [A-Za-z0-9_-]{1,64}")


def test_no_servers_is_a_problem() -> None:
    assert problems("[gateway]\nport = 8000\n") == [("servers", None, "at least one [[servers]] entry is needed")]


def test_secrets_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL + '\n[[servers]]\nname = "remote"\nurl = "http://127.0.0.1:9/mcp"\n'
    text += 'headers = { Authorization = "Bearer ${env:REMOTE_TOKEN}" }\n'
    monkeypatch.delenv("REMOTE_TOKEN", raising=False)
    assert problems(text) == [
        ("servers[1].headers.Authorization", 9, "refers to environment variable REMOTE_TOKEN, which is not set")
    ]
    monkeypatch.setenv("REMOTE_TOKEN", "s3cret")
    assert parse_config(text).servers[1].headers == {"Authorization": "Bearer s3cret"}


def test_an_env_reference_may_have_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_PORT_HOST", raising=False)
    config = parse_config(MINIMAL + '\n[gateway]\nhost = "${env:GW_PORT_HOST:-0.0.0.0}"\n')
    assert config.gateway.host == "0.0.0.0"


def test_sizes_accept_units() -> None:
    config = parse_config(MINIMAL + '\n[front_door]\nmax_body_size = "512KiB"\n')
    assert config.front_door.max_body_size == 512 * 1024
    assert problems(MINIMAL + '\n[front_door]\nmax_body_size = "lots"\n')[0][:2] == ("front_door.max_body_size", 7)


def test_modes_need_their_settings() -> None:
    assert problems(MINIMAL + '\n[auth]\nmode = "jwt"\n') == [
        ("auth.jwks_url", 6, "is required when mode = 'jwt'"),  # not in the file: the line of its table
        ("auth.issuer", 6, "is required when mode = 'jwt'"),
    ]
    assert problems(MINIMAL + '\n[auth]\nmode = "magic"\n')[0][2].startswith("must be one of 'none', 'dev'")


def test_invalid_toml_names_the_line() -> None:
    [(path, line, message)] = problems('[[servers]]\nname = "x"\napp = \n')
    assert path == "(file)" and line == 3 and message.startswith("is not valid TOML")


def test_load_config_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "binary.toml")


SELECTOR_FILE = """
[[servers]]
name = "a"
app = "x:y"
[[servers.ratelimit_policies]]
name = "own"
selector = "tools/call"
limit = "5 per minute"
[servers.breaker_timeouts]
":nothing" = 3
[auth.scopes]
":oops" = ["a"]
"tools/call:" = ["b"]
"tools/call:search_*" = ["c"]
[ratelimit]
[[ratelimit.policies]]
name = "p"
selector = ":bad"
limit = "10 per fortnight"
[breaker.timeouts]
"tools/call:" = 5
"tools/list" = 5
"""


def test_selectors_and_quotas_are_checked_by_the_parsers_the_middlewares_use() -> None:
    with pytest.raises(ConfigError) as failed:
        parse_config(SELECTOR_FILE)
    found = {(problem.path, problem.line) for problem in failed.value.problems}
    assert found == {
        ("servers[0].breaker_timeouts.:nothing", 10),
        ("auth.scopes.:oops", 12),
        ("auth.scopes.tools/call:", 13),
        ("ratelimit.policies[0].selector", 18),
        ("ratelimit.policies[0].limit", 19),
        ("breaker.timeouts.tools/call:", 21),
    }
    assert all("selector" in p.message or "rate" in p.message for p in failed.value.problems)


def test_ratelimit_fields_on_admitted_answers_are_opt_in() -> None:
    base = '[[servers]]\nname = "demo"\napp = "examples.gateway.demo:server"\n[ratelimit]\n'
    policy = '[[ratelimit.policies]]\nname = "p"\nrate = 1\n'
    assert parse_config(base + policy).ratelimit.headers is False
    assert parse_config(base + "headers = true\n" + policy).ratelimit.headers is True
    with pytest.raises(ConfigError, match=r"ratelimit\.headers"):
        parse_config(base + 'headers = "yes"\n' + policy)
