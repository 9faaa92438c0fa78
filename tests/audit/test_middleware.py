"""`AuditMiddleware` around a real stack (auth → rate limit → SDK server) under uvicorn, real clients in both eras."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_middleware import stack
from mcp_middleware.audit import AuditMiddleware, AuditTrail, JsonlFileSink, verify_files
from mcp_middleware.auth import StaticTokenVerifier
from mcp_middleware.breaker import BreakerPolicy
from mcp_middleware.ratelimit import BucketPolicy
from tests.audit.support import settled
from tests.conftest import ERAS, Era, Served, serve_app
from tests.servers import build_server
from tests.support.requests import ENVELOPE, modern_body, modern_headers

pytestmark = pytest.mark.anyio

RESOURCE = "http://127.0.0.1/mcp"


def read_records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@contextlib.contextmanager
def audited(tmp_path: Path, *, capacity: float = 1000, values: bool = False) -> Iterator[tuple[AuditTrail, Served]]:
    trail = AuditTrail([JsonlFileSink(tmp_path / "audit.jsonl")], values=values, redact=["password", "*secret*"])
    verifier = StaticTokenVerifier(
        {"tok-ann": {"scopes": ["mcp"], "subject": "ann", "client_id": "cli"}, "tok-bob": ["mcp"]},
        resource=RESOURCE,
    )
    app = stack(
        build_server().streamable_http_app(),
        auth={"verifier": verifier, "resource": RESOURCE},
        ratelimit={"policies": [BucketPolicy("per-user", rate=0.001, capacity=capacity)]},
    )
    try:
        with serve_app(AuditMiddleware(app, trail=trail)) as served:
            yield trail, served
    finally:
        trail.close()


@contextlib.asynccontextmanager
async def client(url: str, era: Era, token: str = "tok-ann") -> AsyncIterator[Client]:
    mode = "legacy" if era == "legacy" else "auto"
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
        session = Client(streamable_http_client(url, http_client=http), mode=mode, cache=None)
        async with session:
            yield session


def operations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == "mcp.operation"]


@pytest.mark.parametrize("era", ERAS)
async def test_calls_and_lists_are_recorded_once_each_and_the_chain_verifies(tmp_path: Path, era: Era) -> None:
    with audited(tmp_path) as (trail, served):
        async with client(served.mcp_url, era) as session:
            await session.list_tools()
            result = await session.call_tool("echo", {"text": "hello"})
            assert not result.is_error
            failed = await session.call_tool("failing", {"reason": "boom"})
            assert failed.is_error
        await settled(trail, 4)
    records = read_records(tmp_path / "audit.jsonl")
    assert records[0]["event"] == "audit.start" and records[0]["resumed"] is False and records[0]["seq"] == 0
    ops = operations(records)
    methods = [op["method"] for op in ops]
    # The handshake (legacy `initialize`, modern `server/discover`) is an operation too; notifications are not.
    expected = ["tools/list", "tools/call", "tools/call"]
    assert methods == (["initialize" if era == "legacy" else "server/discover", *expected]), methods
    call = next(op for op in ops if op["target"] == "echo")
    assert call["principal"] == {"subject": "ann", "client_id": "cli", "issuer": None}
    assert call["era"] == era
    assert call["outcome"] == {"class": "ok", "status": 200, "code": None}
    assert call["arguments"]["digest"].startswith("sha256:") and "values" not in call["arguments"]
    assert [(d["component"], d["outcome"]) for d in call["decisions"]] == [("auth", "allow"), ("ratelimit", "allow")]
    assert call["duration_ms"] >= 0 and call["ts"].endswith("Z")
    tool_error = next(op for op in ops if op["target"] == "failing")
    assert tool_error["outcome"]["class"] == "error" and tool_error["outcome"]["tool_error"] is True
    assert "tok-ann" not in (tmp_path / "audit.jsonl").read_text()
    verified = verify_files([tmp_path / "audit.jsonl"])
    assert verified.ok, verified.summary()
    assert verified.records == len(records)


async def test_refusals_are_recorded_with_who_refused(tmp_path: Path) -> None:
    with audited(tmp_path, capacity=1) as (trail, served):
        async with httpx2.AsyncClient(timeout=10) as http:

            async def call(token: str | None) -> int:
                headers = modern_headers("tools/call", "echo")
                if token is not None:
                    headers["authorization"] = f"Bearer {token}"
                body = modern_body("tools/call", {"name": "echo", "arguments": {"text": "x"}})
                response = await http.post(served.mcp_url, content=body, headers=headers)
                return response.status_code

            assert await call(None) == 401
            assert await call("wrong") == 401
            assert await call("tok-ann") == 200
            assert await call("tok-ann") == 429
            # A notification is not an operation.
            note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized", "params": {"_meta": {}}})
            await http.post(served.mcp_url, content=note, headers=modern_headers("notifications/initialized"))
        await settled(trail, 4)
    ops = operations(read_records(tmp_path / "audit.jsonl"))
    assert [op["outcome"]["class"] for op in ops] == ["refused", "refused", "ok", "refused"]
    assert [op["outcome"].get("by") for op in ops] == ["auth", "auth", None, "ratelimit"]
    assert [op["outcome"]["status"] for op in ops] == [401, 401, 200, 429]
    assert ops[0]["principal"] is None and ops[3]["principal"]["subject"] == "ann"
    assert ops[3]["outcome"]["code"] == -32014
    limited = [d for d in ops[3]["decisions"] if d["component"] == "ratelimit"]
    assert limited and limited[0]["outcome"] == "deny" and limited[0]["policy"] == "per-user"
    assert verify_files([tmp_path / "audit.jsonl"]).ok


async def test_values_are_redacted_at_any_depth_and_bounded(tmp_path: Path) -> None:
    secret_args = {
        "text": "visible",
        "password": "hunter2",
        "nested": [{"deep": {"Client_Secret": "s3cr3t", "keep": 1}}],
    }
    with audited(tmp_path, values=True) as (trail, served):
        async with httpx2.AsyncClient(timeout=10, headers={"authorization": "Bearer tok-ann"}) as http:
            for arguments in (secret_args, {"text": "x" * 1_000_000, "password": "p" * 10}):
                body = modern_body("tools/call", {"name": "echo", "arguments": arguments})
                response = await http.post(served.mcp_url, content=body, headers=modern_headers("tools/call", "echo"))
                assert response.status_code == 200
        await settled(trail, 2)
    raw = (tmp_path / "audit.jsonl").read_text()
    assert "hunter2" not in raw and "s3cr3t" not in raw
    small, huge = operations([orjson.loads(line) for line in raw.splitlines()])
    values = small["arguments"]["values"]
    assert values["password"] == "[REDACTED]" and values["nested"][0]["deep"] == {
        "Client_Secret": "[REDACTED]",
        "keep": 1,
    }
    assert values["text"] == "visible"
    assert huge["arguments"]["values_truncated"] is True and len(huge["arguments"]["values"]) <= 4096
    assert huge["arguments"]["bytes"] > 1_000_000
    assert max(len(line) for line in raw.splitlines()) < 16_384  # the record stays small whatever was sent
    assert verify_files([tmp_path / "audit.jsonl"]).ok


async def test_the_digest_is_of_the_arguments_not_of_how_they_were_written(tmp_path: Path) -> None:
    with audited(tmp_path) as (trail, served):
        async with httpx2.AsyncClient(timeout=10, headers={"authorization": "Bearer tok-ann"}) as http:
            meta = orjson.dumps(ENVELOPE)
            for text in (
                b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","n":1}'
                b',"_meta":' + meta + b"}}",
                b'{ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"arguments": { "n": 1, "text": "a" },'
                b' "name": "echo", "_meta": ' + meta + b"}}",
            ):
                response = await http.post(served.mcp_url, content=text, headers=modern_headers("tools/call", "echo"))
                assert response.status_code == 200
        await settled(trail, 2)
    first, second = operations(read_records(tmp_path / "audit.jsonl"))
    assert first["arguments"]["digest"] == second["arguments"]["digest"]
    assert first["request_id"] == 1 and second["request_id"] == 2


async def test_a_timeout_has_its_own_class_and_an_audit_inside_an_audit_adds_no_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path)])
    inner = stack(
        build_server().streamable_http_app(),
        breaker={"policy": BreakerPolicy(consecutive_failures=100, open_for=60), "timeouts": {"tools/call:slow": 0.05}},
    )
    app = AuditMiddleware(AuditMiddleware(inner, trail=trail), trail=trail)  # e.g. one per mount inside a global one
    try:
        with serve_app(app) as served:
            async with httpx2.AsyncClient(timeout=10) as http:
                for name, arguments, status in (("slow", {"steps": 20}, 504), ("echo", {"text": "x"}, 200)):
                    body = modern_body("tools/call", {"name": name, "arguments": arguments})
                    response = await http.post(served.mcp_url, content=body, headers=modern_headers("tools/call", name))
                    assert response.status_code == status
            await settled(trail, 2)
            assert trail.offered == 2
    finally:
        trail.close()
    slow, echo = operations(read_records(path))
    assert slow["outcome"]["class"] == "timeout" and slow["outcome"]["code"] == -32016
    assert ("breaker", "timeout") in [(d["component"], d["outcome"]) for d in slow["decisions"]]
    assert echo["outcome"]["class"] == "ok"


async def test_a_client_that_leaves_mid_stream_still_gets_one_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail([JsonlFileSink(path)])
    try:
        with serve_app(AuditMiddleware(build_server().streamable_http_app(), trail=trail)) as served:
            body = modern_body(
                "tools/call", {"name": "slow", "arguments": {"steps": 30}, "_meta": {"progressToken": "p"}}
            )
            async with (
                httpx2.AsyncClient(timeout=10) as http,
                http.stream(
                    "POST", served.mcp_url, content=body, headers=modern_headers("tools/call", "slow")
                ) as answer,
            ):
                assert answer.status_code == 200
                async for chunk in answer.aiter_bytes():
                    if b"progress" in chunk:
                        break  # leave after the first progress event
            await settled(trail, 1)
    finally:
        trail.close()
    (left,) = operations(read_records(path))
    assert left["target"] == "slow"
    assert left["outcome"]["class"] == "error" and left["outcome"]["complete"] is False, left["outcome"]
    assert left["outcome"]["status"] == 200
