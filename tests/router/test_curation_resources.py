"""Renamed resource URI prefixes at both doors, in both eras: `file:///srv/docs/` is served as `docs://`.

A real `MCPServer` ("files") has resources under the renamed prefix, one outside it, a template under
it, and one of its own already spelled `docs://` (which the rename shadows). Clients see the public
spelling in lists, read by it (the backend is asked in its own), get the public spelling back in the
read's contents, and cannot reach anything by the old spelling or walk out of the prefix.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import anyio
import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client, MCPError
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated

from mcp_middleware.core import JsonRpcCode
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.router import Curation, InProcessBackend, McpRouter
from mcp_middleware.router.curation import Override, ResourceRules
from mcp_middleware.router.curation_layer import CurationMiddleware
from tests.conftest import ERAS, Era, connect

pytestmark = pytest.mark.anyio

Endpoint = Literal["mount", "aggregate", "bridged"]
RENAME = {"file:///srv/docs/": "docs://"}
RULES = ResourceRules(
    rename=RENAME,
    override={  # by the public spelling, or the backend's
        "docs://readme.md": Override(description="Start here"),
        "file:///srv/docs/guide/{page}": Override(description="One page of the guide"),
    },
)


def files_server(asked: list[str]) -> MCPServer:
    """Resources that record the URI the backend was asked for (its own spelling)."""
    server = MCPServer("files")

    @server.resource("file:///srv/docs/readme.md")
    def readme() -> str:
        asked.append("file:///srv/docs/readme.md")
        return "the readme"

    @server.resource("file:///srv/docs/guide/{page}")
    def guide(page: str) -> str:
        asked.append(f"file:///srv/docs/guide/{page}")
        return f"guide page {page}"

    @server.resource("file:///srv/private/keys")
    def keys() -> str:
        asked.append("file:///srv/private/keys")
        return "the keys"

    @server.resource("docs://native")
    def native() -> str:
        asked.append("docs://native")
        return "the backend's own docs:// resource"

    @server.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Announce that a resource (in the backend's spelling) changed, on the stream the caller's era listens on."""
        await ctx.notify_resource_updated(uri)
        if ctx.session.protocol_version == "2025-11-25":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await ctx.session.send_resource_updated(uri)
        return f"touched {uri}"

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        asked.append(f"subscribe {params.uri}")
        return types.EmptyResult()  # a 2025-11-25 backend that accepts subscriptions (MCPServer has no handler)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        server._lowlevel_server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    return server


def build(asked: list[str], mode: Literal["auto", "legacy"] = "auto") -> McpRouter:
    router = McpRouter()
    backend = InProcessBackend(files_server(asked).streamable_http_app(), mode=mode)
    router.mount("files", backend, curation=Curation(resources=RULES))
    return router


def door(base: str, endpoint: Endpoint) -> tuple[str, str]:
    """The endpoint's URL and the prefix its URIs carry (the aggregate namespaces them `files+`)."""
    return (f"{base}/mcp/files", "") if endpoint == "mount" else (f"{base}/mcp", "files+")


async def read(client: Client, uri: str) -> tuple[str, str]:
    result = await client.read_resource(uri)
    [content] = result.contents
    return content.uri, content.text  # type: ignore[union-attr]


async def refused(client: Client, uri: str) -> MCPError:
    with pytest.raises(MCPError) as raised:
        await client.read_resource(uri)
    return raised.value


ENDPOINTS: tuple[Endpoint, ...] = ("mount", "aggregate", "bridged")
"""`bridged`: a backend the router reaches over 2025-11-25, so a modern client's read at the aggregate goes
through the aggregate's own server and bridge, not the backend's stack (the curation is applied there)."""


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_lists_reads_and_contents_use_the_public_prefix(era: Era, endpoint: Endpoint, serve: Any) -> None:
    asked: list[str] = []
    served = serve(build(asked, "legacy" if endpoint == "bridged" else "auto"))
    url, ns = door(served.base, endpoint)
    async with connect(url, era) as client:
        listed = {r.uri: r.description for r in (await client.list_resources()).resources}
        templates_listed = (await client.list_resource_templates()).resource_templates
        templates = [t.uri_template for t in templates_listed]
        readme = await read(client, f"{ns}docs://readme.md")
        page = await read(client, f"{ns}docs://guide/intro")
        keys = await read(client, f"{ns}file:///srv/private/keys")  # outside every renamed prefix: untouched
    assert sorted(listed) == [f"{ns}docs://readme.md", f"{ns}file:///srv/private/keys"]  # docs://native: shadowed
    assert templates == [f"{ns}docs://guide/{{page}}"]
    assert (
        listed[f"{ns}docs://readme.md"] == "Start here" and templates_listed[0].description == "One page of the guide"
    )
    assert not listed[f"{ns}file:///srv/private/keys"]  # not overridden: the backend's own (none)
    assert readme == (f"{ns}docs://readme.md", "the readme")
    assert page == (f"{ns}docs://guide/intro", "guide page intro")
    assert keys == (f"{ns}file:///srv/private/keys", "the keys")
    assert asked == ["file:///srv/docs/readme.md", "file:///srv/docs/guide/intro", "file:///srv/private/keys"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("era", ERAS)
async def test_no_spelling_reaches_around_the_rename(era: Era, endpoint: Endpoint, serve: Any) -> None:
    asked: list[str] = []
    served = serve(build(asked, "legacy" if endpoint == "bridged" else "auto"))
    url, ns = door(served.base, endpoint)
    hostile = [
        "file:///srv/docs/readme.md",  # the old spelling: renamed away, like a renamed tool's old name
        "docs://../private/keys",  # a dot segment out of the prefix
        "docs://guide/../../private/keys",
        "docs://%2e%2e/private/keys",  # encoded dot segment
        "docs://..%2Fprivate/keys",  # encoded separator
        "docs:/../private/keys",
    ]
    async with connect(url, era) as client:
        errors = {uri: await refused(client, f"{ns}{uri}") for uri in hostile}
        native = await refused(client, f"{ns}docs://native")  # now means file:///srv/docs/native: no such resource
    for uri, error in errors.items():
        assert error.code == JsonRpcCode.INVALID_PARAMS, uri  # hidden as if unknown (the curation's default)
        assert "Unknown resource" in error.message, uri
    assert "native" in native.message  # the backend's own answer: it has no file:///srv/docs/native
    assert asked == []  # nothing was read: not the old spelling, not the private keys, not docs://native


@pytest.mark.parametrize("endpoint", ["mount", "aggregate"])
@pytest.mark.parametrize("era", ERAS)
async def test_updates_arrive_under_the_public_prefix(era: Era, endpoint: Endpoint, serve: Any) -> None:
    """Subscribed by the public URI (legacy `resources/subscribe`, modern listen filter), announced by the backend
    in its own spelling, received in the public one; the backend was asked in its own."""
    asked: list[str] = []
    served = serve(build(asked))
    url, ns = door(served.base, endpoint)
    updates: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            arrived.set()

    touch = "touch" if endpoint == "mount" else "files__touch"
    async with connect(url, era, message_handler=on_message) as client:
        if era == "legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.subscribe_resource(f"{ns}docs://readme.md")
            for _ in range(5):  # the client's standalone stream may still be opening: touch again
                await client.call_tool(touch, {"uri": "file:///srv/docs/readme.md"})
                with anyio.move_on_after(3):
                    await arrived.wait()
                    break
        else:
            events: list[Any] = []
            async with client.listen(resource_subscriptions=[f"{ns}docs://readme.md"]) as subscription:
                for _ in range(5):  # the aggregate's watch at the backend may still be opening: touch again
                    await client.call_tool(touch, {"uri": "file:///srv/docs/readme.md"})
                    with anyio.move_on_after(3):
                        events.append(await subscription.__anext__())
                        break
            assert events == [ResourceUpdated(uri=f"{ns}docs://readme.md")]
    assert set(updates) == {f"{ns}docs://readme.md"}  # (modern: the client's handler sees the listen event too)
    if era == "legacy":
        assert asked == ["subscribe file:///srv/docs/readme.md"]


@pytest.mark.parametrize("era", ERAS)
async def test_a_subscription_by_the_old_spelling_is_refused(era: Era, serve: Any) -> None:
    served = serve(build([]))

    async def subscribe(client: Client) -> None:
        if era == "legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.subscribe_resource("file:///srv/docs/readme.md")
        else:
            async with client.listen(resource_subscriptions=["file:///srv/docs/readme.md"]) as subscription:
                await subscription.__anext__()

    async with connect(f"{served.base}/mcp/files", era) as client:
        with pytest.raises(MCPError) as raised:
            await subscribe(client)
    assert raised.value.code == JsonRpcCode.INVALID_PARAMS


async def test_forbidden_refusals_name_the_rename(serve: Any) -> None:
    router = McpRouter()
    rules = ResourceRules(rename=RENAME)
    router.mount(
        "files", files_server([]).streamable_http_app(), curation=Curation(resources=rules, refusal="forbidden")
    )
    served = serve(router)
    async with connect(f"{served.base}/mcp/files", "modern") as client:
        old = await refused(client, "file:///srv/docs/readme.md")
        out = await refused(client, "docs://../private/keys")
    assert old.data == {"rule": "resources.rename: renamed"}
    assert out.data == {"rule": "resources: a dot segment or an encoded separator in the URI"}


# --- the rules on their own -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rename", "problem"),
    [
        ({"docs": "d://"}, "must start with a URI scheme"),
        ({"file:///srv/docs": "d://"}, "must end with '/' or ':'"),
        ({"file:///srv/docs/": "d"}, "must start with a URI scheme"),
        ({"a://x/": "b://", "a://x/y/": "c://"}, "the renamed prefixes"),
        ({"a://": "c://", "b://": "c://x/"}, "the public prefixes"),
        ({"a://{x}/": "b://"}, "template brace"),
        ({"a://../": "b://"}, "dot segment"),
        ({"a://%2f/": "b://"}, "encoded separator"),
        ({"a:// /": "b://"}, "a space"),
    ],
)
def test_a_rename_that_could_be_a_way_out_is_refused(rename: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=r"^resources\.rename: ") as raised:
        ResourceRules(rename=rename)
    assert problem in str(raised.value)


def test_renames_are_reversible_and_shadow_what_they_take() -> None:
    rules = ResourceRules(rename={"a://": "b://", "b://": "c://"})  # a swap-like chain still round-trips
    for uri in ("a://1", "b://2", "z://3"):
        public = rules.public_uri(uri)
        assert rules.backend_uri(public) == uri and not rules.shadowed(uri)
    assert (rules.public_uri("a://1"), rules.public_uri("b://2")) == ("b://1", "c://2")
    assert rules.shadowed("c://own")  # the backend's own c:// URIs: c:// now means its b://
    assert rules.backend_uri("c://own") == "b://own"
    template = ResourceRules(rename={"file:///srv/docs/": "docs://"})
    assert template.public_uri("file:///srv/{path}") == "file:///srv/{path}"  # the prefix is not in its literal head
    assert template.backend_uri("file:///srv/docs/x") is None  # …so its expansions under the prefix are refused


async def test_a_completion_for_a_renamed_template_is_asked_in_the_backends_spelling() -> None:
    seen: list[bytes] = []

    async def backend(scope: Any, receive: Any, send: Any) -> None:
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":1,"result":{}}'})

    layer = CurationMiddleware(backend, curation=Curation(resources=ResourceRules(rename=RENAME)))
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource",'
        b'"uri":"docs://guide/{page}"},"argument":{"name":"page","value":"in"}}}'
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream")]
    headers.append((b"mcp-protocol-version", b"2025-11-25"))
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers, "query_string": b""}
    await layer(scope, receive, send)
    assert b'"uri":"file:///srv/docs/guide/{page}"' in seen[0]
    assert sent[0]["status"] == 200


def test_the_gateway_reads_resource_renames_and_names_a_bad_one(tmp_path: Path) -> None:
    base = '[[servers]]\nname = "files"\napp = "tests.router.curated_servers:build_crm"\n[servers.resources]\n'
    config = parse_config(base + 'rename = { "crm://public/" = "docs://" }\n')
    [server] = config.servers
    assert server.curation is not None and dict(server.curation.resources.rename) == {"crm://public/": "docs://"}
    with pytest.raises(ConfigError) as raised:
        parse_config(base + 'rename = { "crm://public" = "docs://" }\n')
    [problem] = raised.value.problems
    assert problem.path == "servers[0].resources.rename" and problem.line == 5
    assert "must end with '/' or ':'" in problem.message
    with pytest.raises(ConfigError) as hidden:
        parse_config(base + 'deny = ["crm://public/"]\nrename = { "crm://public/" = "docs://" }\n')
    assert "allow/deny hide entirely" in hidden.value.problems[0].message
    described = parse_config(base + '[servers.resources.override."crm://public/readme"]\ndescription = "Start here"\n')
    resources = described.servers[0].curation.resources  # type: ignore[union-attr]
    assert resources.description_for("crm://public/readme") == "Start here"
    with pytest.raises(ConfigError) as annotated:
        parse_config(
            base + '[servers.resources.override."crm://public/readme"]\nannotations = { readOnlyHint = true }\n'
        )
    assert "only tools have annotations" in annotated.value.problems[0].message


# --- the rename table as a property -------------------------------------------------------------------

_SCHEMES = st.sampled_from(["a:", "b:", "file:", "docs:"])
_SEGMENTS = st.lists(st.sampled_from(["x", "y", "srv", "docs", "..", ".", "%2e", "%2F", "z-1"]), max_size=4)


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    return draw(_SCHEMES) + "//" + "".join(f"{segment}/" for segment in draw(_SEGMENTS))


@st.composite
def uris(draw: st.DrawFn) -> str:
    return draw(_SCHEMES) + "//" + "/".join(draw(_SEGMENTS)) + draw(st.sampled_from(["", "/", "/n", "{v}"]))


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(prefixes(), prefixes()), max_size=3), backend=uris(), public=uris())
def test_any_rename_table_is_reversible_and_never_a_way_out(
    pairs: list[tuple[str, str]], backend: str, public: str
) -> None:
    try:
        rules = ResourceRules(rename=dict(pairs))
    except ValueError:
        return  # refused at construction: overlapping, escaping or unbounded prefixes
    if not rules.shadowed(backend):  # a listed URI's public spelling reaches exactly it
        assert rules.backend_uri(rules.public_uri(backend)) == backend
    reached, decision = rules.decide_public(public)
    if reached is not None:  # whatever a client names reaches a URI listed under that very name
        assert rules.public_uri(reached) == public and not rules.shadowed(reached)
    if decision.visible and rules.active:
        assert reached is not None and "/../" not in f"/{reached}/" and "%2e" not in reached.lower()
