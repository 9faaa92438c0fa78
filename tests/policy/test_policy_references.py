"""Completions, resource templates and listen filters under policy: what a caller is not shown, it cannot
complete, and what it may not subscribe to, it cannot listen to — at the path mount and at the aggregate, in
both eras, through the gateway (dev authorization server, rule files, real uvicorn, the SDK client)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import MCPError

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import load_config
from tests.conftest import ERAS, Era, free_port, serve_app
from tests.gateway.test_gateway import client
from tests.policy.test_gateway_policy import CONFIG, bearer, write

pytestmark = pytest.mark.anyio

RULES = """
[[rules]]
id = "tellers-see-prompts-and-accounts"
effect = "permit"
match = ["prompts/get:*", "resources/read:*", "resources/subscribe:*"]
when = "'teller' in principal.roles"

[[rules]]
id = "vault-closed"
effect = "forbid"
match = ["resources/read:bank://vault/*", "resources/subscribe:bank://vault/*"]
reason = "the vault is closed"
"""


def endpoints(base: str) -> list[tuple[str, str, str, str]]:
    """(path, url, tool/prompt prefix, URI prefix) of the mount and the aggregate."""
    return [("/mcp/bank", f"{base}/mcp/bank", "", ""), ("/mcp", f"{base}/mcp", "bank__", "bank+")]


def prompt(name: str) -> types.PromptReference:
    return types.PromptReference(type="ref/prompt", name=name)


def template(uri: str) -> types.ResourceTemplateReference:
    return types.ResourceTemplateReference(type="ref/resource", uri=uri)


async def refused(call: Any) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await call
    return raised.value


@pytest.mark.parametrize("era", ERAS)
async def test_a_completion_is_allowed_exactly_when_its_prompt_or_template_is_listed(era: Era, tmp_path: Path) -> None:
    port = free_port()
    gateway = build_gateway(load_config(write(tmp_path, RULES, CONFIG)), port=port)
    with serve_app(gateway.app, port=port) as served:
        for path, url, names, uris in endpoints(served.base):
            sam = bearer(gateway, path, "sam", roles=["support"], home="/home/sam/")
            ana = bearer(gateway, path, "ana", roles=["teller"], home="/home/ana/")
            async with client(url, era, sam) as support:
                sam_prompts = [p.name for p in (await support.list_prompts()).prompts]
                sam_templates = [t.uri_template for t in (await support.list_resource_templates()).resource_templates]
                sam_prompt = await refused(support.complete(prompt(f"{names}greet"), {"name": "name", "value": ""}))
                sam_template = await refused(
                    support.complete(template(f"{uris}bank://accounts/{{number}}"), {"name": "number", "value": ""})
                )
            async with client(url, era, ana) as teller:
                ana_prompts = [p.name for p in (await teller.list_prompts()).prompts]
                ana_templates = [t.uri_template for t in (await teller.list_resource_templates()).resource_templates]
                names_of = await teller.complete(prompt(f"{names}greet"), {"name": "name", "value": "a"})
                accounts = await teller.complete(
                    template(f"{uris}bank://accounts/{{number}}"), {"name": "number", "value": ""}
                )
                vault = await refused(
                    teller.complete(template(f"{uris}bank://vault/{{box}}"), {"name": "box", "value": ""})
                )
            assert (sam_prompts, sam_templates) == ([], []), path
            for error in (sam_prompt, sam_template):
                assert error.code == -32013 and error.data["rule"] == "default", path
            assert ana_prompts == [f"{names}greet"], path
            assert ana_templates == [f"{uris}bank://accounts/{{number}}"], path  # the vault template is hidden
            assert names_of.completion.values == ["ana"] and accounts.completion.values == ["1001", "1002"]
            assert (vault.code, vault.data["rule"], vault.data["reason"]) == (
                -32013,
                "vault-closed",
                "the vault is closed",
            )


async def test_a_listen_filter_names_only_what_the_caller_may_subscribe_to(tmp_path: Path) -> None:
    """At the mount the listen request is refused; at the aggregate the resource is not watched at the backend
    (the aggregate answers listen itself: nothing of it reaches the caller), as a `resources/subscribe` of it
    would be refused."""
    port = free_port()
    gateway = build_gateway(load_config(write(tmp_path, RULES, CONFIG)), port=port)
    watches = gateway.router.aggregate.watches._watches  # (backend, URI) -> the backend stream held for it
    with serve_app(gateway.app, port=port) as served:
        (mount, mount_url, _, _), (path, url, _, _) = endpoints(served.base)
        ana = bearer(gateway, mount, "ana", roles=["teller"], home="/home/ana/")
        async with client(mount_url, "modern", ana) as teller:
            async with teller.listen(resource_subscriptions=["bank://accounts/1001"]):
                pass  # allowed: acknowledged
            error = await refused(_listen(teller, ["bank://accounts/1001", "bank://vault/gold"]))
        ana = bearer(gateway, path, "ana", roles=["teller"], home="/home/ana/")
        listened = ["bank+bank://accounts/1001", "bank+bank://vault/gold"]
        async with client(url, "modern", ana) as teller, teller.listen(resource_subscriptions=listened):
            watched = sorted(uri for _, uri in watches)  # acknowledged: the aggregate chose its watches before
    assert error.code == -32013 and error.data["rule"] == "vault-closed"
    assert watched == ["bank://accounts/1001"]


async def _listen(client: Any, uris: list[str]) -> None:
    with anyio.fail_after(10):  # refused at once, or this fails (a listen allowed would wait for events)
        async with client.listen(resource_subscriptions=uris) as subscription:
            await subscription.__anext__()
