"""`check-config` runs every check `serve` runs short of binding the port: what it passes, `build_gateway` builds.

Each broken file below is one an operator could write; each is reported with its key and its
line (a "did you mean" for near misses), and `build_gateway` refuses it with a `ConfigError`
too, never a bare `ValueError` or an `ImportError` from deep inside.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.cli import EXIT_OK, EXIT_USAGE, main
from mcp_middleware.gateway.config import ConfigError, GatewayConfig, Problem, parse_config
from mcp_middleware.gateway.config_check import check_config
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
STDIO = ROOT / "examples" / "gateway" / "stdio_server.py"
DEMO = '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'


def found(text: str, *, probe: bool = False) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) as check-config reports them: the file's, then the built gateway's."""
    try:
        config = parse_config(text)
    except ConfigError as exc:
        return exc.problems, []
    return check_config(config, probe=probe)


def only(text: str) -> tuple[str, int | None, str]:
    [problem] = found(text)[0]
    return problem.path, problem.line, problem.message


def test_a_misspelt_module_is_named_with_its_key_line_and_the_near_miss() -> None:
    assert only('[[servers]]\nname = "demo"\napp = "tests.servres:build_server"\n') == (
        "servers[0].app",
        3,
        "cannot be imported: no module named 'tests.servres'; did you mean 'tests.servers'?",
    )


def test_a_misspelt_attribute_is_named_with_its_key_line_and_the_near_miss() -> None:
    assert only('\n[[servers]]\nname = "demo"\napp = "tests.servers:build_sever"\n') == (
        "servers[0].app",
        4,
        "cannot be found: tests.servers has no attribute 'build_sever'; did you mean 'build_server'?",
    )


def test_what_is_no_mcp_app_is_refused() -> None:
    path, line, message = only('[[servers]]\nname = "x"\napp = "os:sep"\n')
    assert (path, line) == ("servers[0].app", 3) and message.startswith("is not an MCPServer")


def test_a_command_whose_program_is_missing_is_refused() -> None:
    assert only('[[servers]]\nname = "x"\ncommand = ["no-such-program-c17", "serve"]\n') == (
        "servers[0].command",
        3,
        "cannot be started: 'no-such-program-c17' is not found on PATH",
    )
    path, line, message = only('[[servers]]\nname = "x"\ncommand = "./missing.py --stdio"\n')
    assert (path, line) == ("servers[0].command", 3) and "is not a file" in message


def test_a_string_command_is_split_as_a_shell_would() -> None:
    config = parse_config(f'[[servers]]\nname = "text"\ncommand = "{{python}} \'{STDIO}\' --name \\"a b\\""\n')
    assert config.servers[0].command == ("{python}", str(STDIO), "--name", "a b")
    assert check_config(config) == ([], [])
    assert only('[[servers]]\nname = "x"\ncommand = "python \'unclosed"\n') == (
        "servers[0].command",
        3,
        'cannot be split into arguments (No closing quotation); write a list such as ["python", "server.py"]',
    )
    assert only('[[servers]]\nname = "x"\ncommand = []\n')[:2] == ("servers[0].command", 3)


BROKEN = {
    "empty selector target": (DEMO + '[auth.scopes]\n"tools/call:" = ["a"]\n', "auth.scopes.tools/call:", 5),
    "selector without method": (DEMO + '[breaker.timeouts]\n":x" = 3\n', "breaker.timeouts.:x", 5),
    "policy selector": (DEMO + "[[ratelimit.policies]]\nname = 'p'\nselector = 'tools/call:'\n", None, 6),
    "quota string": (DEMO + "[[ratelimit.policies]]\nname = 'p'\nlimit = '10 per fortnight'\n", None, 6),
    "policy name": (DEMO + "[[ratelimit.policies]]\nname = 'not a name!'\n", None, 5),
    "cost over capacity": (DEMO + "[[ratelimit.policies]]\nname = 'p'\ncapacity = 1\ncost = 2\n", None, 7),
    "store url": (DEMO + "[ratelimit]\nstore = 'postgres://db'\n", "ratelimit.store", 5),
    "cache store url": (DEMO + "[cache]\nstore = 'memcached://x'\n", "cache.store", 5),
    "public url": (DEMO + "[gateway]\npublic_url = 'example.com'\n", "gateway.public_url", 5),
    "public url fragment": (DEMO + "[gateway]\npublic_url = 'https://x.example/#f'\n", "gateway.public_url", 5),
    "breaker rate": (DEMO + "[breaker]\nfailure_rate = 0\n", "breaker.failure_rate", 5),
    "breaker window": (DEMO + "[breaker]\nwindow = -1\n", "breaker.window", 5),
    "breaker open_for": (DEMO + "[breaker]\nopen_for = 10\nmax_open_for = 5\n", "breaker.open_for", 5),
    "timeout zero": (DEMO + '[breaker.timeouts]\n"tools/list" = 0\n', "breaker.timeouts.tools/list", 5),
    "cache ttl": (DEMO + "[cache]\nttl = -5\n", "cache.ttl", 5),
    "server timeout": (DEMO + "timeout = 0\n", "servers[0].timeout", 4),
    "unknown key": (DEMO + "[cache]\nttll = 5\n", "cache.ttll", 5),
    "nowhere": (DEMO + "mount = false\naggregate = false\n", "servers[0].mount", 4),
    "bad module": ('[[servers]]\nname = "a"\napp = "nope_c17.mod:app"\n', "servers[0].app", 3),
    "bad attribute": ('[[servers]]\nname = "a"\napp = "tests.servers:nothing"\n', "servers[0].app", 3),
    "module raises": ('[[servers]]\nname = "a"\napp = "tests.gateway.test_config_check:RAISES.x"\n', None, 3),
    "command quote": ('[[servers]]\nname = "a"\ncommand = "sh -c \'x"\n', "servers[0].command", 3),
    "missing program": ('[[servers]]\nname = "a"\ncommand = ["nope-c17"]\n', "servers[0].command", 3),
    "jwt without issuer": (DEMO + "[auth]\nmode = 'jwt'\njwks_url = 'https://x/jwks'\n", "auth.issuer", 4),
    "dev on public host": (DEMO + "[gateway]\nhost = '0.0.0.0'\n[auth]\nmode = 'dev'\n", None, 7),
    "body size": (DEMO + "[front_door]\nmax_body_size = 0\n", "front_door.max_body_size", 5),
    "prefix mode": (DEMO + "[aggregate]\nprefix = 'sometimes'\n", "aggregate.prefix", 5),
    "ipv6 prefix": (DEMO + "[ratelimit]\nipv6_prefix = 129\n", "ratelimit.ipv6_prefix", 5),
    "server scope selector": (DEMO + '[servers.scopes]\n"tools/call:" = ["a"]\n', "servers[0].scopes.tools/call:", 5),
    "server policy selector": (
        DEMO + "[[servers.ratelimit_policies]]\nname = 'own'\nselector = ':x'\n",
        "servers[0].ratelimit_policies[0].selector",
        6,
    ),
    "server breaker selector": (DEMO + '[servers.breaker_timeouts]\n"tools/call:" = 5\n', None, 5),
    "method typo": (DEMO + '[auth.scopes]\n"tool/call:delete_*" = ["admin"]\n', "auth.scopes.tool/call:delete_*", 5),
    "quota store": (
        DEMO + "[ratelimit]\nstore = 'unix:///r.sock'\n[[ratelimit.policies]]\nname = 'q'\nlimit = '5/day'\n",
        "ratelimit.store",
        5,
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_every_broken_config_is_reported_with_key_and_line_and_never_built(case: str) -> None:
    text, key, line = BROKEN[case]
    problems, _ = found(text)
    assert problems, case
    assert all(problem.line is not None and problem.path != "(config)" for problem in problems), problems
    assert problems[0].line == line, problems
    if key is not None:
        assert problems[0].path == key, problems
    try:
        config: GatewayConfig | None = parse_config(text)
    except ConfigError:
        config = None
    if config is not None:  # the file parses: building it is what refuses, and only with a ConfigError
        with pytest.raises(ConfigError) as refused:
            build_gateway(config)
        assert refused.value.problems == problems


def test_a_dev_gateway_bound_elsewhere_is_refused_at_its_line() -> None:
    config = parse_config(DEMO + "[auth]\nmode = 'dev'\n")
    with pytest.raises(ConfigError) as refused:
        build_gateway(config, host="0.0.0.0")
    [problem] = refused.value.problems
    assert (problem.path, problem.line) == ("auth.allow_dev_on_public_host", 4)


def test_a_method_mcp_does_not_have() -> None:
    """A near miss of a real method protects nothing: an error with the real one; any other name a warning."""
    [problem] = found(DEMO + '[auth.scopes]\n"tool/call:delete_*" = ["admin"]\n')[0]
    assert problem.message == "names no MCP method ('tool/call'; did you mean 'tools/call'?)"
    config = parse_config(DEMO + '[auth.scopes]\n"x-vendor/report" = ["admin"]\n')
    assert [(w.path, w.line) for w in config.warnings] == [("auth.scopes.x-vendor/report", 5)]
    assert (
        config.warnings[0].message == "names no MCP method ('x-vendor/report'): it selects only requests of that name"
    )


def test_check_config_prints_each_problem_and_the_near_miss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[[servers]]\nname = "demo"\napp = "tests.servers:build_sever"\n[breaker]\nopen_seconds = 5\n')
    assert main(["check-config", "-c", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "servers[0].app (line 3): cannot be found: tests.servers has no attribute 'build_sever'" in err
    assert "did you mean 'build_server'?" in err
    assert "warning: breaker.open_seconds (line 5): is deprecated: write open_for" in err
    path.write_text(DEMO + "[breaker]\nopen_seconds = 5\n")
    assert main(["check-config", "-c", str(path)]) == EXIT_OK
    captured = capsys.readouterr()
    assert "OK — 1 servers; middlewares: breaker; 1 warning" in captured.out
    assert "warning: breaker.open_seconds (line 5)" in captured.err


def test_probe_warns_of_a_selector_that_names_no_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = DEMO + '[breaker.timeouts]\n"tools/call:ecco" = 5\n"tools/call:look*" = 5\n"prompts/get:x" = 5\n'
    text += '[[servers.ratelimit_policies]]\nname = "own"\nselector = "tools/call:slo"\nrate = 5\n'
    problems, warnings = found(text, probe=False)
    assert problems == [] and warnings == []  # without --probe no backend is started
    problems, warnings = found(text, probe=True)
    assert problems == []
    assert [(w.path, w.line, w.message) for w in warnings] == [
        ("breaker.timeouts.tools/call:ecco", 5, "'tools/call:ecco' matches no tool of demo; did you mean 'echo'?"),
        (
            "servers[0].ratelimit_policies[0].selector",
            10,
            "'tools/call:slo' matches no tool of demo; did you mean 'slow'?",
        ),
    ]
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    assert main(["check-config", "--probe", "-c", str(path)]) == EXIT_OK
    assert "warning: breaker.timeouts.tools/call:ecco (line 5)" in capsys.readouterr().err


def test_probe_starts_each_backend(tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}/mcp"
    text = f'{DEMO}[[servers]]\nname = "gone"\nurl = "{refused}"\ntimeout = 5\n'
    text += '[[servers]]\nname = "dies"\ncommand = ["{python}", "-c", "raise SystemExit(1)"]\ntimeout = 5\n'
    text += f'[[servers]]\nname = "text"\ncommand = "{{python}} {STDIO}"\n'
    problems, warnings = found(text, probe=True)
    assert [(p.path, p.line) for p in problems] == [("servers[1]", 4), ("servers[2]", 8)]
    assert all(p.message.startswith("cannot be reached: ") for p in problems) and warnings == []
    optional = text.replace("timeout = 5\n", "timeout = 5\noptional = true\n")
    problems, warnings = found(optional, probe=True)
    assert problems == [] and [w.path for w in warnings] == ["servers[1]", "servers[2]"]
    missing = found(optional + '[[servers]]\nname = "fast"\napp = "no_such_c17:app"\noptional = true\n')
    assert [(w.path, w.line, w.message) for w in missing[1]] == [
        ("servers[4]", 17, "is optional and skipped: cannot be imported: no module named 'no_such_c17'")
    ]


class _Raises:
    """An app whose module fails when it is looked up (as a settings object read at import might)."""

    def __getattr__(self, name: str) -> object:
        if name == "x":
            raise RuntimeError("settings not loaded")
        raise AttributeError(name)


RAISES = _Raises()


EXAMPLE = ROOT / "examples" / "gateway" / "gateway.toml"
HOSTILE_VALUES = ("-1", "0", '"x"', "[]", "{}", "true", "inf", '"${env:C17_NEVER_SET}"', '["tools/call:"]')
_ASSIGNMENT = re.compile(r"^(\s*[A-Za-z0-9_\"./:*-]+\s*=\s*)([^#]+?)(\s*#.*)?$")


def mutations() -> Iterator[tuple[int, str, str]]:
    """(line, value, text): the example file with one value replaced by a hostile one."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        assignment = _ASSIGNMENT.match(line)
        if assignment is None or line.lstrip().startswith("#"):
            continue
        for value in HOSTILE_VALUES:
            changed = [*lines[:index], f"{assignment.group(1)}{value}", *lines[index + 1 :]]
            yield index + 1, value, "\n".join(changed) + "\n"


def test_no_hostile_value_gets_past_check_config_into_an_error_of_another_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value of the example file, replaced by each hostile value: the file is accepted and builds,
    or it is refused with problems that each name a key and a line. Nothing else escapes."""
    monkeypatch.chdir(EXAMPLE.parent)  # the example's `app = "demo:server"` is relative to its folder
    tried = refused = 0
    for line, value, text in mutations():
        tried += 1
        try:
            config = parse_config(text, source=EXAMPLE)
        except ConfigError as exc:
            problems = exc.problems
        else:
            problems, _ = check_config(config)
        if problems:
            refused += 1
            assert all(p.line is not None and p.path != "(config)" for p in problems), (line, value, problems)
    assert tried > 250 and refused > tried // 2, (tried, refused)
