"""`[approval]` in the gateway: each configured backend's stack holds its calls, at the mount and the aggregate,
and the file's mistakes (a short secret, an unknown server, a bad selector) are problems with their lines."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError, types

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from tests.approval.conftest import ENDPOINTS, GATEWAY_FILES, SECRET, Endpoint, client_for
from tests.conftest import ERAS, Era, Served, free_port, serve_app

pytestmark = pytest.mark.anyio

CONFIG = f"""
[[servers]]
name = "files"
app = "tests.approval.conftest:gateway_files"

[[servers]]
name = "other"
app = "tests.approval.conftest:gateway_files"

[auth]
mode = "static"

[auth.tokens]
alice = {{ subject = "alice", scopes = ["mcp"] }}

[approval]
select = ["tools/call:purge_*"]
servers = ["files"]
timeout = 5
secrets = ["{SECRET}"]
"""


@contextlib.contextmanager
def running(tmp_path: Path) -> Iterator[Served]:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG, encoding="utf-8")
    port = free_port()
    gateway = build_gateway(load_config(path), port=port)
    with serve_app(gateway.app, port=port) as served:
        yield served


def answering(action: str, asked: list[str]) -> Any:
    async def callback(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action=action, content={"approve": True} if action == "accept" else None)  # type: ignore[arg-type]

    return callback


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_the_gateway_asks_before_a_held_call(era: Era, endpoint: Endpoint, tmp_path: Path) -> None:
    GATEWAY_FILES.calls.clear()
    asked: list[str] = []
    with running(tmp_path) as served:
        url = f"{served.base}/mcp/files" if endpoint == "mount" else f"{served.base}/mcp"
        name = (lambda tool: tool) if endpoint == "mount" else (lambda tool: f"files__{tool}")
        async with client_for(url, era, "alice", elicitation_callback=answering("accept", asked)) as client:
            deleted = await client.call_tool(name("delete_file"), {"path": "/g/a"})  # destructive: held
            purged = await client.call_tool(name("purge_cache"), {"region": "us"})  # selected: held
        async with client_for(url, era, "alice", elicitation_callback=answering("decline", asked)) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool(name("delete_file"), {"path": "/g/b"})
            if endpoint == "aggregate":  # `other` is not in `servers`: its calls are not held
                other = await client.call_tool("other__delete_file", {"path": "/g/c"})
                assert other.content[0].text == "deleted /g/c"  # type: ignore[union-attr]
    assert deleted.content[0].text == "deleted /g/a"  # type: ignore[union-attr]
    assert purged.content[0].text == "purged us"  # type: ignore[union-attr]
    assert raised.value.code == -32013 and raised.value.data["approval"] == "declined"
    assert len(asked) == 3 and all("on files" in question for question in asked)
    assert ("delete_file", {"path": "/g/b"}) not in GATEWAY_FILES.calls


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ('secrets = ["short"]', "approval.secrets[0]"),
        ('servers = ["nope"]', "approval.servers"),
        ('select = ["tool/call:x"]', "approval.select[0]"),
        ("destructive = false", "approval"),
        ('approver = { webhook = "ftp://x" }', "approval.approver.webhook"),
        ("timeout = -1", "approval.timeout"),
        ("colour = 1", "approval.colour"),
    ],
)
def test_config_problems_name_their_key(section: str, problem: str) -> None:
    text = '[[servers]]\nname = "files"\napp = "tests.approval.conftest:gateway_files"\n\n[approval]\n' + section
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert problem in [p.path for p in raised.value.problems], raised.value


def test_a_webhook_approver_is_read() -> None:
    text = (
        '[[servers]]\nname = "files"\napp = "tests.approval.conftest:gateway_files"\n\n[approval]\n'
        'approver = { webhook = "https://approvals.example/hook", timeout = 7, signing_secret = "s" }\n'
    )
    settings = parse_config(text).approval
    assert settings.enabled and settings.destructive and settings.servers is None
    assert settings.webhook is not None
    approver = settings.webhook.approver()
    assert approver.url == "https://approvals.example/hook" and approver.timeout == 7


RULE_FILE = """
[[rules]]
id = "secret-reads"
effect = "forbid"
match = "tools/call:read_file"
when = "arguments.path.startsWith('/secret/')"
"""


async def test_approval_rules_hold_by_arguments(tmp_path: Path) -> None:
    (tmp_path / "approval").mkdir()
    (tmp_path / "approval" / "reads.toml").write_text(RULE_FILE, encoding="utf-8")
    config = CONFIG.replace('select = ["tools/call:purge_*"]', 'rules = ["approval/*.toml"]\ndestructive = false')
    path = tmp_path / "gateway.toml"
    path.write_text(config, encoding="utf-8")
    port = free_port()
    asked: list[str] = []
    with serve_app(build_gateway(load_config(path), port=port).app, port=port) as served:
        async with client_for(
            f"{served.base}/mcp", "modern", "alice", elicitation_callback=answering("decline", asked)
        ) as client:
            public = await client.call_tool("files__read_file", {"path": "/public/a"})
            deleted = await client.call_tool("files__delete_file", {"path": "/g/d"})  # destructive = false
            with pytest.raises(MCPError) as raised:
                await client.call_tool("files__read_file", {"path": "/secret/b"})
    assert public.content[0].text == "contents of /public/a"  # type: ignore[union-attr]
    assert deleted.content[0].text == "deleted /g/d"  # type: ignore[union-attr]
    assert raised.value.data["approval"] == "declined"
    assert len(asked) == 1 and "/secret/b" in asked[0]


def test_a_broken_rule_file_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "approval").mkdir()
    (tmp_path / "approval" / "bad.toml").write_text('[[rules]]\nid = "x"\neffect = "forbid"\nwhen = "(("\n')
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[[servers]]\nname = "files"\napp = "tests.approval.conftest:gateway_files"\n\n'
        '[approval]\nrules = ["approval/*.toml", "nowhere/*.toml"]\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    messages = [p.message for p in raised.value.problems if p.path == "approval.rules"]
    assert any("bad.toml" in message for message in messages)
    assert any("matches no file" in message for message in messages)


async def test_a_call_the_policy_forbids_is_never_asked_about(tmp_path: Path) -> None:
    config = CONFIG + '\n[policy]\ndefault = "deny"\n\n[policy.roles]\nadmin = ["*"]\n'  # alice has no role
    path = tmp_path / "gateway.toml"
    path.write_text(config, encoding="utf-8")
    port = free_port()
    asked: list[str] = []
    with serve_app(build_gateway(load_config(path), port=port).app, port=port) as served:
        async with client_for(
            f"{served.base}/mcp/files", "legacy", "alice", elicitation_callback=answering("accept", asked)
        ) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("delete_file", {"path": "/g/e"})
    assert raised.value.code == -32013 and raised.value.data["rule"] == "default"  # the policy's refusal
    assert asked == []  # policy first: no one is asked to approve what may not run anyway


PER_SERVER = f"""
[[servers]]
name = "files"
app = "tests.approval.conftest:gateway_files"

[[servers]]
name = "other"
app = "tests.approval.conftest:gateway_files"

[auth]
mode = "static"

[auth.tokens]
alice = {{ subject = "alice", scopes = ["mcp"] }}

[approval]
secrets = ["{SECRET}"]

[approval.per_server.files]
select = ["tools/call:read_*"]
destructive = false

[approval.per_server.other]
enabled = false
"""


async def test_a_server_s_own_table_replaces_the_selection(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(PER_SERVER, encoding="utf-8")
    port = free_port()
    asked: list[str] = []
    with serve_app(build_gateway(load_config(path), port=port).app, port=port) as served:
        url = f"{served.base}/mcp"
        async with client_for(url, "modern", "alice", elicitation_callback=answering("accept", asked)) as client:
            read = await client.call_tool("files__read_file", {"path": "/r"})  # files: selected by its own table
            deleted = await client.call_tool("files__delete_file", {"path": "/d"})  # files: destructive = false
            other = await client.call_tool("other__delete_file", {"path": "/o"})  # other: exempt
    assert [r.content[0].text for r in (read, deleted, other)] == [  # type: ignore[union-attr]
        "contents of /r",
        "deleted /d",
        "deleted /o",
    ]
    assert len(asked) == 1 and "'read_file' on files" in asked[0]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[approval.per_server.files]\nselect = ["tool/call:x"]', "approval.per_server.files.select[0]"),
        ("[approval.per_server.files]\ncolour = 1", "approval.per_server.files.colour"),
        ("[approval.per_server.files]\ndestructive = 3", "approval.per_server.files.destructive"),
        ("[approval.per_server.nope]\nenabled = false", "approval.per_server.nope"),
    ],
)
def test_a_server_s_own_table_is_checked(table: str, problem: str) -> None:
    text = f'[[servers]]\nname = "files"\napp = "tests.approval.conftest:gateway_files"\n\n[approval]\n{table}\n'
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert problem in [p.path for p in raised.value.problems], raised.value


def test_workers_need_shared_sealing_secrets() -> None:
    from mcp_middleware.gateway.config_workers import worker_problems

    server = '[[servers]]\nname = "files"\napp = "tests.approval.conftest:gateway_files"\n\n'
    base = "[gateway]\nworkers = 2\nper_worker_state = true\n\n" + server
    problems, warnings = worker_problems(parse_config(base + "[approval]\n"))
    assert [p.path for p in problems] == ["approval"] and "set [approval] secrets" in problems[0].message
    assert any(w.path == "approval" and "2025-11-25 approvals wait in the worker" in w.message for w in warnings)
    problems, warnings = worker_problems(parse_config(base + f'[approval]\nsecrets = ["{SECRET}"]\n'))
    assert problems == [] and any(w.path == "approval" for w in warnings)
    shared = f'[approval]\nsecrets = ["{SECRET}"]\nstore = "redis://127.0.0.1:6379/0"\n'
    problems, warnings = worker_problems(parse_config(base + shared))  # answers reach the asker, mount or aggregate
    assert problems == [] and not any(w.path == "approval" for w in warnings), warnings
    problems, warnings = worker_problems(parse_config(base + '[approval]\napprover = { webhook = "http://h/x" }\n'))
    assert problems == [] and not any(w.path == "approval" for w in warnings)  # the webhook answers the asker
