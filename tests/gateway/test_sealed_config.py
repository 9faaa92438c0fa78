"""`[gateway] session_key` and `session_ttl`: read, resolved from the environment, checked with key and line.

`check-config` and `serve` refuse a key too short to seal anything, naming the key and its line and
never the secret; a list is rotation (newest first: it seals, all open).
"""

from __future__ import annotations

import pytest

from mcp_middleware.gateway.config import ConfigError, Problem, parse_config
from mcp_middleware.gateway.config_check import check_config
from mcp_middleware.gateway.session_config import session_layer
from mcp_middleware.gateway.session_handles import SessionState

DEMO = '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'
LONG = "k" * 43
OLD = "o" * 40


def problems(text: str) -> list[Problem]:
    try:
        config = parse_config(text)
    except ConfigError as exc:
        return exc.problems
    return check_config(config)[0]


def test_a_key_from_the_environment_and_the_default_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_GATEWAY_SESSION_KEY", LONG)
    config = parse_config('[gateway]\nsession_key = "${env:MCP_GATEWAY_SESSION_KEY}"\n' + DEMO)
    assert config.gateway.session_key == (LONG,) and config.gateway.session_ttl == 24 * 3600
    assert problems('[gateway]\nsession_key = "${env:MCP_GATEWAY_SESSION_KEY}"\n' + DEMO) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"short-secret"', "the secret is 12 bytes long; a session key needs at least 32"),
        (f'["{LONG}", "tiny"]', "secret #2 is 4 bytes long; a session key needs at least 32"),
        ("[]", "must be a string or a list of strings (newest first), not an empty list or one with non-strings"),
        ("42", "must be a string or a list of strings (newest first), not an integer (42)"),
        (f'["{LONG}", 7]', "must be a string or a list of strings (newest first)"),
    ],
)
def test_a_bad_key_is_a_problem_with_key_and_line(value: str, expected: str) -> None:
    text = f"[gateway]\nport = 8000\nsession_key = {value}\n" + DEMO
    [problem] = problems(text)
    assert problem.path == "gateway.session_key" and problem.line == 3
    assert expected in problem.message
    assert "short-secret" not in problem.message and "tiny" not in problem.message  # never the secret


def test_an_unset_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_SESSION_KEY_VAR", raising=False)
    found = problems('[gateway]\nsession_key = "${env:NO_SUCH_SESSION_KEY_VAR}"\n' + DEMO)
    assert [p.path for p in found] == ["gateway.session_key", "gateway.session_key"]
    assert "NO_SUCH_SESSION_KEY_VAR, which is not set" in found[0].message


@pytest.mark.parametrize("ttl", ["0", "-5", '"1h"'])
def test_the_ttl_is_a_positive_number(ttl: str) -> None:
    [problem] = problems(f'[gateway]\nsession_key = "{LONG}"\nsession_ttl = {ttl}\n' + DEMO)
    assert problem.path == "gateway.session_ttl" and problem.line == 3


def test_rotation_newest_seals_every_key_opens() -> None:
    old = session_layer(lambda *a: None, parse_config(f'[gateway]\nsession_key = "{OLD}"\n' + DEMO))  # type: ignore[arg-type]
    new = session_layer(lambda *a: None, parse_config(f'[gateway]\nsession_key = ["{LONG}", "{OLD}"]\n' + DEMO))  # type: ignore[arg-type]
    state = SessionState("", "/mcp/demo", "abc", {})
    minted_before = old.handles.mint(state)  # type: ignore[attr-defined]
    assert new.handles.open(minted_before).session_id == "abc"  # type: ignore[attr-defined]
    minted_after = new.handles.mint(state)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown_key"):
        old.handles.open(minted_after)  # type: ignore[attr-defined]


def test_without_a_key_the_instance_tag_stays() -> None:
    layer = session_layer(lambda *a: None, parse_config('[gateway]\ninstance = "g1"\n' + DEMO))  # type: ignore[arg-type]
    assert type(layer).__name__ == "SessionAffinityMiddleware"
    both = session_layer(lambda *a: None, parse_config(f'[gateway]\ninstance = "g1"\nsession_key = "{LONG}"\n' + DEMO))  # type: ignore[arg-type]
    assert type(both).__name__ == "SealedSessionMiddleware"  # the key wins: handles need no routing


def test_an_instance_tag_beside_a_key_is_a_warning() -> None:
    config = parse_config(f'[gateway]\ninstance = "g1"\nsession_key = "{LONG}"\n' + DEMO)
    [warning] = config.warnings
    assert warning.path == "gateway.instance" and warning.line == 2 and "not needed with session_key" in warning.message
