"""`[gateway] workers` and what more than one worker asks of the rest of the file (`check-config`, `serve`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_middleware.gateway.cli import EXIT_OK, EXIT_USAGE, main
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.gateway.config_check import check_config
from mcp_middleware.gateway.config_workers import legacy_sessions_problem, worker_problems

DEMO = '[[servers]]\nname = "demo"\napp = "tests.servers:build_server"\n'
KEY = 'session_key = "a-session-key-of-at-least-thirty-two-characters"\n'
"""Sealed session handles: what lets several workers serve legacy sessions (without: a problem of its own)."""
LIMITS = '[[ratelimit.policies]]\nname = "calls"\nselector = "tools/call"\ncapacity = 5\nrate = 1\n'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be"),
        ("-2", "must be"),
        ("2.5", "must be an integer"),
        ('"4"', "must be an integer"),
        ("true", "must be an integer"),
        ("100000", "must be"),
    ],
)
def test_workers_must_be_a_whole_number_from_one(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[gateway]\nworkers = {value}\n{DEMO}")
    [problem] = raised.value.problems
    assert (problem.path, problem.line) == ("gateway.workers", 2)
    assert message in problem.message


def test_one_worker_asks_nothing_of_the_stores() -> None:
    config = parse_config(DEMO + LIMITS + "[cache]\n")
    assert config.gateway.workers == 1
    assert worker_problems(config) == ([], [])


def test_memory_stores_are_refused_at_their_lines_unless_per_worker_state_is_accepted() -> None:
    config = parse_config(f"[gateway]\nworkers = 4\n{KEY}{DEMO}{LIMITS}[cache]\nttl = 5\n")
    problems, _ = check_config(config)
    assert [(p.path, p.line) for p in problems] == [("ratelimit.store", 7), ("cache.store", 12)]
    assert "every limit 4 times looser" in problems[0].message
    assert all("set [gateway] per_worker_state = true" in p.message for p in problems)
    accepted = parse_config(f"[gateway]\nworkers = 4\n{KEY}per_worker_state = true\n{DEMO}{LIMITS}[cache]\n")
    assert check_config(accepted)[0] == []


def test_redis_stores_are_shared_and_accepted() -> None:
    redis = "redis://127.0.0.1:6379/0"
    config = parse_config(
        f'[gateway]\nworkers = 4\n{KEY}{DEMO}{LIMITS}[ratelimit]\nstore = "{redis}"\n[cache]\nstore = "{redis}"\n'
    )
    assert worker_problems(config)[0] == []


def test_an_unused_memory_store_is_no_problem() -> None:
    """`[ratelimit]` without policies and `[cache] enabled = false` keep nothing per worker."""
    config = parse_config(f"[gateway]\nworkers = 2\n{KEY}{DEMO}[cache]\nenabled = false\n")
    assert worker_problems(config)[0] == []


def test_a_servers_own_rate_limit_counts_too() -> None:
    own = '[[servers.ratelimit_policies]]\nname = "own"\nselector = "tools/call"\ncapacity = 5\nrate = 1\n'
    [problem] = worker_problems(parse_config(f"[gateway]\nworkers = 2\n{KEY}{DEMO}{own}"))[0]
    assert problem.path == "ratelimit.store"


def test_process_bound_features_are_refused_with_workers() -> None:
    dev = parse_config(f'[gateway]\nworkers = 2\n{KEY}{DEMO}[auth]\nmode = "dev"\n')
    [problem] = worker_problems(dev)[0]
    assert (problem.path, problem.line) == ("auth.mode", 8)
    assert "use workers = 1" in problem.message
    audit = parse_config(f'[gateway]\nworkers = 2\n{KEY}{DEMO}[audit]\nfile = "audit.jsonl"\n')
    [problem] = worker_problems(audit)[0]
    assert (problem.path, problem.line) == ("audit.file", 8)
    assert "interleave 2 chains" in problem.message


def test_legacy_sessions_need_a_session_key_or_per_worker_state() -> None:
    config = parse_config(f"[gateway]\nworkers = 3\n{DEMO}")
    assert legacy_sessions_problem(config, 3, has_session_key=True) is None
    assert legacy_sessions_problem(config, 1, has_session_key=False) is None
    problem = legacy_sessions_problem(config, 3, has_session_key=False)
    assert problem is not None and (problem.path, problem.line) == ("gateway.workers", 2)
    assert "set [gateway] session_key" in problem.message
    problems, warnings = worker_problems(config, has_session_key=False)
    assert problems == [problem]
    assert worker_problems(config, has_session_key=True) == ([], [])
    # The config decides: no key is a refusal naming both ways out; a key, or per_worker_state, accepts.
    problems, warnings = worker_problems(config)
    assert problems == [problem] and warnings == []
    assert "or set [gateway] per_worker_state = true to accept sessions kept per worker" in problem.message
    keyed = parse_config(f'[gateway]\nworkers = 3\nsession_key = "{"k" * 40}"\n{DEMO}')
    assert worker_problems(keyed) == ([], [])
    per_worker = parse_config(f"[gateway]\nworkers = 3\nper_worker_state = true\n{DEMO}")
    assert worker_problems(per_worker) == ([], [])


def test_metrics_with_workers_are_no_longer_a_warning() -> None:
    """Every worker's scrape carries every worker's series (tests/gateway/test_worker_metrics.py)."""
    config = parse_config(f"[gateway]\nworkers = 2\n{DEMO}[tracing]\n")
    assert worker_problems(config, has_session_key=True) == ([], [])


def test_check_config_workers_flag_wins_over_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(DEMO + LIMITS, encoding="utf-8")
    assert main(["check-config", "-c", str(path)]) == EXIT_OK
    capsys.readouterr()
    assert main(["check-config", "-c", str(path), "--workers", "3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "ratelimit.store (line 4): is memory:// and 3 workers" in err
    path.write_text("[gateway]\nworkers = 3\n" + DEMO + LIMITS, encoding="utf-8")
    assert main(["check-config", "-c", str(path), "--workers", "1"]) == EXIT_OK


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_a_workers_flag_that_is_no_count_is_bad_usage(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["serve", "--workers", value])
    assert raised.value.code == EXIT_USAGE
    assert "must be a whole number from 1" in capsys.readouterr().err
