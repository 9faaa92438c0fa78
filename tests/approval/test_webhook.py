"""Someone else approves: a webhook on loopback is POSTed each held call and its answer decides."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
import pytest
from mcp import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_middleware.approval import WebhookApprover
from tests.approval.conftest import ENDPOINTS, Endpoint, Files, Setup, build, client_for, public
from tests.conftest import ERAS, Era

pytestmark = pytest.mark.anyio

SIGNING = "webhook signing secret"


@dataclass
class Approver:
    """The loopback approver: answers as `mode` says, and keeps what it was sent."""

    mode: str = "approve"
    seen: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        signature = request.headers.get("x-mcp-approval-signature", "")
        self.seen.append((orjson.loads(body), signature))
        if self.mode == "slow":
            await anyio.sleep(5)
        if self.mode == "broken":
            return Response("oops", status_code=500)
        if self.mode == "garbage":
            return Response("not json", media_type="application/json")
        approved = self.mode == "approve"
        return JSONResponse({"approved": approved, "reason": "" if approved else "change freeze until Monday"})


def hooked(serve: Any, mode: str) -> tuple[Setup, Approver]:
    approver = Approver(mode)
    hook = serve(Starlette(routes=[Route("/hook", approver.hook, methods=["POST"])]))
    files = Files()
    webhook = WebhookApprover(f"{hook.base}/hook", timeout=1.0, signing_secret=SIGNING)
    recorder = build(files, approver=webhook)
    return Setup(serve(recorder).base, files, recorder), approver


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_the_webhook_approves(era: Era, endpoint: Endpoint, serve: Any) -> None:
    setup, approver = hooked(serve, "approve")
    async with client_for(setup.url(endpoint), era, "alice") as client:  # no elicitation: the webhook decides
        result = await client.call_tool(public(endpoint, "delete_file"), {"path": "/srv/a", "token": "s3cr3t"})
    assert result.content[0].text == "deleted /srv/a"  # type: ignore[union-attr]
    assert len(approver.seen) == 1
    facts, signature = approver.seen[0]
    assert facts["tool"] == "delete_file" and facts["backend"] == "files" and facts["method"] == "tools/call"
    assert len(facts["digest"]) == 64 and "path='/srv/a'" in facts["summary"]
    assert facts["principal"]["client_id"] is not None
    assert "s3cr3t" not in orjson.dumps(facts).decode()  # the summary, never a credential-like argument
    expected = hmac.new(SIGNING.encode(), orjson.dumps(facts), hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert setup.recorder.of("approval") == [
        (
            "required",
            {"tool": "delete_file", "digest": facts["digest"][:16], "why": "destructive", "approver": "webhook"},
        ),
        (
            "approved",
            {"tool": "delete_file", "digest": facts["digest"][:16], "why": "destructive", "approver": "webhook"},
        ),
    ]


@pytest.mark.parametrize("era", ERAS)
async def test_the_webhook_denies(era: Era, serve: Any) -> None:
    setup, _ = hooked(serve, "deny")
    async with client_for(setup.url("aggregate"), era, "alice") as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool(public("aggregate", "delete_file"), {"path": "/srv/b"})
    assert raised.value.code == -32013
    assert raised.value.data["approval"] == "declined"
    assert raised.value.data["detail"] == "change freeze until Monday"
    assert "change freeze" in str(raised.value)
    assert setup.files.calls == []


@pytest.mark.parametrize(
    ("mode", "word"), [("slow", "timeout"), ("broken", "webhook_error"), ("garbage", "webhook_error")]
)
async def test_no_clear_answer_refuses(mode: str, word: str, serve: Any) -> None:
    setup, approver = hooked(serve, mode)
    async with client_for(setup.url("mount"), "modern", "alice") as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("delete_file", {"path": "/srv/c"})
        read = await client.call_tool("read_file", {"path": "/srv/c"})  # not held: the webhook is not asked
    assert raised.value.data["approval"] == word
    assert read.content[0].text == "contents of /srv/c"  # type: ignore[union-attr]
    assert len(approver.seen) == 1
    assert setup.files.ran("delete_file") == []
    assert setup.recorder.outcomes("approval")[-1] == ("timeout" if mode == "slow" else "deny")


def test_a_webhook_needs_an_http_url_and_a_positive_timeout() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookApprover("file:///etc/passwd")
    with pytest.raises(ValueError, match="positive"):
        WebhookApprover("https://example.org/hook", timeout=0)
