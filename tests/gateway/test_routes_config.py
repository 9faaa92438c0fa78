"""`[[routes]]` in the gateway's config: validated with key and line, served by a real gateway in both eras.

Both vendors are in-process `MCPServer`s of tests/router/test_routes.py's kind, loaded by the
gateway from `module:attr` (tests.gateway.test_routes_config:vendor_a), behind the gateway's own
stacks (breaker on). The routed tool is listed once; with the primary broken, calls move on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import MCPError
from starlette.types import ASGIApp

from mcp_middleware.gateway.app import build_gateway
from mcp_middleware.gateway.config import ConfigError, load_config, parse_config
from mcp_middleware.gateway.config_check import check_config
from mcp_middleware.router import ROUTER_META_KEY, Route
from tests.conftest import ERAS, Era, connect
from tests.router.test_routes import Switchable, Vendor, vendor_server

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).parents[2] / "examples" / "gateway" / "gateway.toml"
VENDORS = {name: Vendor(name) for name in ("vendor_a", "vendor_b")}


def vendor_a() -> ASGIApp:
    """A fresh app per gateway (an SDK app's lifespan runs once); the vendor's switch is shared."""
    return Switchable(vendor_server(VENDORS["vendor_a"]).streamable_http_app(), VENDORS["vendor_a"])


def vendor_b() -> ASGIApp:
    return Switchable(vendor_server(VENDORS["vendor_b"]).streamable_http_app(), VENDORS["vendor_b"])


SERVERS = """
[[servers]]
name = "vendor_a"
app = "tests.gateway.test_routes_config:vendor_a"

[[servers]]
name = "vendor_b"
app = "tests.gateway.test_routes_config:vendor_b"
"""

ROUTE = """
[[routes]]
tool = "search"
primary = "vendor_a"
fallback = ["vendor_b"]
"""


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


def test_a_route_is_read_into_the_routers_own_type() -> None:
    text = SERVERS + ROUTE + '[[routes]]\nprompt = "brief"\nprimary = "vendor_b"\nallow_retry = true\n'
    config = parse_config(text)
    assert config.routes == (
        Route(tool="search", primary="vendor_a", fallback=("vendor_b",)),
        Route(prompt="brief", primary="vendor_b", allow_retry=True),
    )


def test_an_unknown_server_is_named_with_its_line_and_a_guess() -> None:
    text = SERVERS + ROUTE.replace('["vendor_b"]', '["vendr_b"]')
    assert problems(text) == [
        ("routes[0].fallback", 13, "'vendr_b' is not the name of a [[servers]] entry; did you mean 'vendor_b'?")
    ]


def test_a_server_cannot_be_its_own_fallback_or_appear_twice() -> None:
    text = SERVERS + ROUTE.replace('["vendor_b"]', '["vendor_a", "vendor_b", "vendor_b"]')
    found = problems(text)
    assert [(path, line) for path, line, _ in found] == [("routes[0].fallback", 13)] * 2
    assert "cannot be its own fallback" in found[0][2] and "more than once" in found[1][2]


def test_two_routes_for_one_tool_and_a_route_without_a_name() -> None:
    text = SERVERS + ROUTE + ROUTE.replace('"vendor_a"', '"vendor_b"').replace('["vendor_b"]', "[]")
    text += '[[routes]]\nprimary = "vendor_a"\nfalback = []\n'
    found = problems(text)
    assert ("routes[1].tool", 16, "'search' is routed by routes[0] already") in found
    assert ("routes[2].tool", 19, "a route needs exactly one of tool, prompt or resource_prefix") in found
    assert ("routes[2].falback", 21, "is not a known setting; did you mean 'fallback'?") in found


def test_a_server_left_out_of_the_aggregate_cannot_serve_a_route() -> None:
    text = SERVERS.replace('vendor_b"\n', 'vendor_b"\naggregate = false\n', 1) + ROUTE
    assert problems(text) == [("routes[0].fallback", 14, "'vendor_b' is not in the aggregate (its aggregate = false)")]
    no_aggregate = SERVERS + ROUTE + "[aggregate]\nenabled = false\n"
    assert problems(no_aggregate)[0][0] == "routes[0]"


def test_check_config_warns_of_a_route_to_a_tool_no_server_offers() -> None:
    config = parse_config(SERVERS + ROUTE.replace('"search"', '"serch"'))
    problems_found, warnings = check_config(config, probe=True)
    assert problems_found == []
    [warning] = [w for w in warnings if w.path.startswith("routes")]
    assert warning.path == "routes[0].tool" and warning.line == 11
    assert "none of vendor_a, vendor_b; did you mean 'search'?" in warning.message


@pytest.mark.parametrize("era", ERAS)
async def test_the_gateway_serves_a_route_and_moves_it_when_the_primary_breaks(era: Era, serve: object) -> None:
    config = parse_config(SERVERS + ROUTE + "[breaker]\nconsecutive_failures = 1\nopen_for = 30\n")
    gateway = build_gateway(config)
    url = serve(gateway.app).mcp_url  # type: ignore[operator]
    try:
        async with connect(url, era) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            assert tools.count("search") == 1 and "vendor_a__search" not in tools and "vendor_a__book" in tools
            first = await client.call_tool("search", {"query": "one"})
            VENDORS["vendor_a"].down = True
            second = await client.call_tool("search", {"query": "two"})
            with pytest.raises(MCPError):  # `book` is not routed: its own backend answers
                await client.call_tool("vendor_a__book", {"item": "x"})
    finally:
        VENDORS["vendor_a"].down = False
    assert first.content[0].text == "vendor_a:one"  # type: ignore[union-attr]
    assert second.content[0].text == "vendor_b:two"  # type: ignore[union-attr]
    assert (second.meta or {})[ROUTER_META_KEY]["server"] == "vendor_b"


def test_the_example_routes_its_clock_to_the_fastmcp_server_when_demo_fails() -> None:
    pytest.importorskip("fastmcp", reason="the example's fallback is the fastmcp demo server")
    config = load_config(EXAMPLE)
    assert config.routes == (Route(tool="utc_now", primary="demo", fallback=("fast",)),)
    problems_found, warnings = check_config(config, probe=True)
    assert problems_found == [] and not [w for w in warnings if w.path.startswith("routes")]


def test_a_resource_prefix_route_is_read_and_its_problems_named_with_key_and_line() -> None:
    config = parse_config(
        SERVERS + '[[routes]]\nresource_prefix = "docs://"\nprimary = "vendor_a"\nfallback = ["vendor_b"]\n'
    )
    assert config.routes == (Route(resource_prefix="docs://", primary="vendor_a", fallback=("vendor_b",)),)
    found = problems(
        SERVERS
        + '[[routes]]\nresource_prefix = "no scheme"\nprimary = "vendor_a"\n'
        + '[[routes]]\nresource_prefix = "docs://"\ntool = "search"\nprimary = "vendor_a"\n'
        + '[[routes]]\nresource_prefix = "docs://"\nprimary = "vendor_b"\n'
        + '[[routes]]\nresource_prefix = "docs://"\nprimary = "vendor_a"\n'
    )
    assert any(p == "routes[0].resource_prefix" and line == 10 and "URI prefix" in m for p, line, m in found), found
    assert any(p == "routes[1].tool" and "exactly one of" in m for p, _, m in found), found
    assert any(p == "routes[3].resource_prefix" and line == 20 and "routed by" in m for p, line, m in found), found
