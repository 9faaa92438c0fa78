"""CEL rule files: compiled once, problems named by file and line, decisions as Cedar makes them, reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_middleware.policy import CelPolicyEngine, PolicyError, PolicyInput


def ask(engine: CelPolicyEngine, tool: str, arguments: dict[str, Any] | None = None, **principal: Any) -> Any:
    view = {"roles": [], "claims": {}, "subject": "s", **principal}
    return engine.evaluate(PolicyInput(view, "b", "tools/call", tool, arguments or {}))


def test_a_syntax_error_names_the_file_and_its_line(tmp_path: Path) -> None:
    good = tmp_path / "a.toml"
    good.write_text('[[rules]]\nid = "ok"\neffect = "permit"\n')
    bad = tmp_path / "b.toml"
    bad.write_text(
        '[[rules]]\nid = "fine"\neffect = "permit"\n\n'
        '[[rules]]\nid = "broken"\neffect = "forbid"\nwhen = "arguments.amount >"\n\n'
        "[[rules]]\nid = \"multi\"\neffect = \"forbid\"\nwhen = '''\nprincipal.subject == 'x' &&\n  ) 1\n'''\n"
    )
    with pytest.raises(PolicyError) as raised:
        CelPolicyEngine.from_files([good, bad])
    problems = raised.value.problems
    assert [(p.source, p.line) for p in problems] == [(str(bad), 8), (str(bad), 15)]
    assert "rules[1]: when: CEL syntax error, column 19" in problems[0].message
    assert str(problems[1]).startswith(f"{bad}:15: rules[2]: when: CEL syntax error, column 3")


def test_every_shape_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        '[[rules]]\nid = "x"\neffect = "maybe"\nmatch = ":nothing"\nunless = "true"\n'
        '[[rules]]\nid = "x"\neffect = "permit"\nreason = 3\n'
        "[rule]\n"
    )
    with pytest.raises(PolicyError) as raised:
        CelPolicyEngine.from_files([path])
    text = str(raised.value)
    for expected in (
        "unknown top-level key(s) ['rule']",
        "unknown key 'unless'",
        "effect must be 'permit' or 'forbid'",
        "match: selector ':nothing' has no method",
        "id 'x' is used twice",
        "reason must be a string",
    ):
        assert expected in text
    assert "p.toml:1:" in text and "p.toml:6:" in text


def test_not_toml_and_unreadable_files_are_problems(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[[rules]\n")
    with pytest.raises(PolicyError, match=r"p\.toml:1: is not valid TOML"):
        CelPolicyEngine.from_files([path])
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot be read"):
        CelPolicyEngine.from_files([tmp_path / "missing.toml"])


RULES = """
[[rules]]
id = "cap"
effect = "forbid"
match = "tools/call:pay"
when = "arguments.amount > 100"
reason = "too much"
[[rules]]
id = "tellers"
effect = "permit"
match = "tools/call:*"
when = "'teller' in principal.roles"
[[rules]]
id = "numbers"
effect = "permit"
match = "tools/call:count"
when = "principal.claims.limit"
"""


def test_a_forbid_wins_and_no_rule_means_no_decision() -> None:
    engine = CelPolicyEngine.from_text(RULES)
    assert ask(engine, "pay", {"amount": 101}, roles=["teller"]) == (False, "cap", "too much")
    assert ask(engine, "pay", {"amount": 100}, roles=["teller"]) == (True, "tellers", "")
    assert ask(engine, "other", roles=[]) == (False, None, "no rule permits this request")


def test_errors_fail_closed_and_results_must_be_booleans() -> None:
    engine = CelPolicyEngine.from_text(RULES)
    missing = ask(engine, "pay", {}, roles=["teller"])  # no amount: the forbid cannot say no
    assert (missing.allowed, missing.rule) == (False, "cap") and "could not be evaluated" in missing.reason
    not_bool = ask(engine, "count", claims={"limit": 3})
    assert not not_bool.allowed and not_bool.rule is None  # a permit that errs or gives 3 permits nothing


def test_list_time_skips_forbids_on_arguments_and_counts_permits_on_them_as_possible() -> None:
    engine = CelPolicyEngine.from_text(
        RULES + '[[rules]]\nid = "big"\neffect = "permit"\nmatch = "tools/call:big"\nwhen = "arguments.n > 5"\n'
    )
    view = {"roles": ["teller"], "claims": {}}
    assert engine.evaluate(PolicyInput(view, "b", "tools/call", "pay", phase="list")).allowed
    assert engine.evaluate(PolicyInput({"roles": [], "claims": {}}, "b", "tools/call", "big", phase="list")).allowed


def test_reload_reads_the_files_again_and_keeps_the_old_rules_on_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[[rules]]\nid = "all"\neffect = "permit"\n')
    engine = CelPolicyEngine.from_files([path])
    assert ask(engine, "x").allowed
    path.write_text('[[rules]]\nid = "none"\neffect = "forbid"\n')
    engine.reload()
    assert ask(engine, "x").rule == "none"
    path.write_text('[[rules]]\nid = "bad"\neffect = "forbid"\nwhen = "("\n')
    with pytest.raises(PolicyError, match=r"p\.toml:4"):
        engine.reload()
    assert ask(engine, "x").rule == "none"


def test_contradicting_argument_rules_list_a_tool_every_call_of_which_is_refused() -> None:
    # The one-sided guarantee, pinned: list time cannot solve argument rules, so it errs towards
    # listing; the call is still refused (a hidden tool, by contrast, is never callable).
    engine = CelPolicyEngine.from_text(
        '[[rules]]\nid = "big-only"\neffect = "permit"\nwhen = "arguments.n > 5"\n'
        '[[rules]]\nid = "no-big"\neffect = "forbid"\nwhen = "arguments.n > 5"\n'
    )
    view = {"roles": [], "claims": {}}
    assert engine.evaluate(PolicyInput(view, "b", "tools/call", "t", phase="list")).allowed
    assert not any(engine.evaluate(PolicyInput(view, "b", "tools/call", "t", {"n": n})).allowed for n in (1, 9))
