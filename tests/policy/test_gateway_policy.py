"""`[policy]` in the gateway: rule files and roles in each backend's stack, the same decisions at the path mount
and at the aggregate, argument validation, and `check-config` naming a broken rule file and its line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from joserfc import jwt
from mcp import MCPError

from mcp_middleware.gateway.app import Gateway, build_gateway
from mcp_middleware.gateway.cli import main
from mcp_middleware.gateway.config import ConfigError, load_config
from tests.conftest import ERAS, Era, Served, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.policy.conftest import RULES

pytestmark = pytest.mark.anyio

CONFIG = """
[[servers]]
name = "bank"
app = "tests.policy.conftest:bank_server"

[auth]
mode = "dev"

[policy]
files = ["policies/*.toml"]
claims = ["home"]
validate_arguments = ["bank"]

[policy.roles]
support = ["tools/call:crm_*"]
admin = ["*"]
"""


def write(tmp_path: Path, rules: str = RULES, config: str = CONFIG) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "bank.toml").write_text(rules, encoding="utf-8")
    path = tmp_path / "gateway.toml"
    path.write_text(config, encoding="utf-8")
    return path


@contextlib.contextmanager
def running(tmp_path: Path) -> Iterator[tuple[Gateway, Served]]:
    port = free_port()
    gateway = build_gateway(load_config(write(tmp_path)), port=port)
    with serve_app(gateway.app, port=port) as served:
        yield gateway, served


def bearer(gateway: Gateway, endpoint: str, subject: str, **claims: Any) -> str:
    """A token of the gateway's dev authorization server, with the claims a real identity provider would add."""
    server = gateway.authorization_server
    assert server is not None
    now = int(time.time())
    body = {
        "iss": server.issuer,
        "sub": subject,
        "aud": f"{gateway.base_url}{endpoint}",
        "client_id": "policy-test",
        "scope": "",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        **claims,
    }
    header = {"alg": server.algorithm, "kid": server.key.kid, "typ": "at+jwt"}
    return str(jwt.encode(header, body, server.key, algorithms=[server.algorithm]))


@pytest.mark.parametrize("era", ERAS)
async def test_the_same_decisions_at_the_mount_and_the_aggregate(era: Era, tmp_path: Path) -> None:
    with running(tmp_path) as (gateway, served):
        for endpoint, prefix in (("/mcp/bank", ""), ("/mcp", "bank__")):
            url = f"{served.base}{endpoint}"
            sam = bearer(gateway, endpoint, "sam", roles=["support"], home="/home/sam/")
            ana = bearer(gateway, endpoint, "ana", roles=["teller"], home="/home/ana/")
            async with client(url, era, sam) as support:
                # The aggregate lists over its own sessions: the first call teaches the stack crm_delete's
                # annotations (one tools/list through it), and the refusal names the rule at either endpoint.
                with pytest.raises(MCPError) as destructive:
                    await support.call_tool(f"{prefix}crm_delete", {"customer": 1})
                listed = sorted(tool.name for tool in (await support.list_tools()).tools)
                found = await support.call_tool(f"{prefix}crm_search", {"query": "acme"})
            async with client(url, era, ana) as teller:
                with pytest.raises(MCPError) as capped:
                    await teller.call_tool(f"{prefix}pay", {"amount": 500, "to": "bob"})
                with pytest.raises(MCPError) as malformed:
                    await teller.call_tool(f"{prefix}pay", {"amount": 5})
                paid = await teller.call_tool(f"{prefix}pay", {"amount": 5, "to": "bob"})
            assert destructive.value.code == -32013
            assert destructive.value.data == {
                "rule": "destructive-needs-admin",
                "reason": "destructive tools are for admins",
                "backend": "bank",
            }
            assert listed == [f"{prefix}crm_search", f"{prefix}echo"], endpoint
            assert found.content[0].text == "customer matching acme"  # type: ignore[union-attr]
            assert (capped.value.code, capped.value.data["rule"]) == (-32013, "payments-cap")
            assert (malformed.value.code, malformed.value.data["path"]) == (-32602, "$")
            assert "'to' is a required property" in malformed.value.data["message"]
            assert paid.content[0].text == "paid 5.0 to bob"  # type: ignore[union-attr]


def test_a_broken_rule_file_is_named_with_its_line_by_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = RULES.replace('when = "arguments.amount > 100"', 'when = "arguments.amount >> 100"')
    path = write(tmp_path, broken)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [problem] = raised.value.problems
    rule_file = tmp_path / "policies" / "bank.toml"
    assert problem.path == "policy.files" and problem.line == 10
    assert problem.message.startswith(f"{rule_file}:6: rules[0]: when: CEL syntax error")
    assert main(["check-config", "-c", str(path)]) != 0
    assert f"{rule_file}:6:" in capsys.readouterr().err


def test_reload_recompiles_the_rule_files_for_every_backend(tmp_path: Path) -> None:
    path = write(tmp_path)
    gateway = build_gateway(load_config(path), port=free_port())
    assert gateway.assembly is not None
    engine = gateway.assembly.policy_engine
    assert engine is not None and len(engine.rules) == 5
    (tmp_path / "policies" / "bank.toml").write_text('[[rules]]\nid = "closed"\neffect = "forbid"\n')
    gateway.assembly.reload_policies()
    assert [rule.id for rule in engine.rules] == ["closed"]


async def test_a_refusal_names_its_rule_in_the_audit_record_too(tmp_path: Path) -> None:
    """The rule a client reads in the error's `data` is the one the audit record keeps, with `by: policy`."""
    audit = tmp_path / "audit.jsonl"
    path = write(tmp_path, config=CONFIG + f'\n[audit]\nfile = "{audit}"\n')
    port = free_port()
    gateway = build_gateway(load_config(path), port=port)
    with serve_app(gateway.app, port=port) as served:
        url = f"{served.base}/mcp/bank"
        ana = bearer(gateway, "/mcp/bank", "ana", roles=["teller"], home="/home/ana/")
        async with client(url, "modern", ana) as teller:
            with pytest.raises(MCPError) as capped:
                await teller.call_tool("pay", {"amount": 500, "to": "bob"})
            await teller.call_tool("pay", {"amount": 5, "to": "bob"})
        deadline = time.monotonic() + 30  # the writer thread seals records after the answers ended
        calls: list[dict[str, Any]] = []
        while len(calls) < 2 and time.monotonic() < deadline:
            await anyio.sleep(0.05)
            lines = audit.read_text(encoding="utf-8").splitlines() if audit.exists() else []
            records = [orjson.loads(line) for line in lines]
            calls = [r for r in records if r.get("event") == "mcp.operation" and r.get("method") == "tools/call"]
    assert capped.value.data["rule"] == "payments-cap"
    refused, paid = calls
    assert refused["outcome"]["class"] == "refused" and refused["outcome"]["by"] == "policy"
    assert refused["outcome"]["code"] == -32013 and refused["principal"]["subject"] == "ana"
    [denial] = [d for d in refused["decisions"] if d["component"] == "policy"]
    assert denial["outcome"] == "deny" and denial["rule"] == "payments-cap"
    assert paid["outcome"]["class"] == "ok"
    assert [d["outcome"] for d in paid["decisions"] if d["component"] == "policy"] == ["allow"]
