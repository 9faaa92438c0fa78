"""What a client without a usable token sees: RFC 6750 / MCP challenges with JSON-RPC errors, and RFC 9728 metadata."""

from __future__ import annotations

from typing import Any

import httpx2
import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
from mcp_middleware.core import CoreConfig, ErrorCode
from tests.auth.conftest import Site, challenge_params, post_mcp
from tests.servers import build_server

pytestmark = pytest.mark.anyio

AS_URL = "https://login.example.com"


def start(site: Site, **options: Any) -> str:
    served, mcp_app = site.served, site.mcp_app
    site.slot.app = AuthMiddleware(
        mcp_app,
        verifier=StaticTokenVerifier({"reader": ["mcp:read"], "admin": ["mcp:read", "admin"]}, resource=served.mcp_url),
        resource=served.mcp_url,
        authorization_servers=[AS_URL],
        required_scopes=["mcp:read"],
        scopes={"tools/call:large": ["admin", "bulk"]},
        **options,
    )
    return served.mcp_url


def assert_jsonrpc_error(response: httpx2.Response, status: int, code: int, request_id: int = 7) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = orjson.loads(response.content)
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == request_id
    assert body["error"]["code"] == code
    return body["error"]  # type: ignore[no-any-return]


async def test_no_credentials_get_a_challenge_without_an_error_code(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url)
    assert_jsonrpc_error(response, 401, ErrorCode.UNAUTHORIZED)
    params = challenge_params(response)
    assert "error" not in params, "RFC 6750 §3.1: no error code when no credentials were sent"
    assert params["resource_metadata"] == url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert params["scope"] == "mcp:read"


async def test_basic_credentials_are_not_bearer_credentials(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url, authorization="Basic YWxpY2U6c2VjcmV0")
    error = assert_jsonrpc_error(response, 401, ErrorCode.UNAUTHORIZED)
    assert "error" not in challenge_params(response)
    assert error["message"] == "Bearer token required"


@pytest.mark.parametrize(
    ("authorization", "description"),
    [
        ("Bearer not-a-known-token", "Unknown token"),
        ("Bearer", "Malformed bearer token"),
        ("Bearer two words", "Malformed bearer token"),
        ('Bearer "quoted"', "Malformed bearer token"),
        ("Bearer tok\u00e9n".encode(), "Malformed bearer token"),
        ("Bearer " + "a" * 9000, "Token is too large"),
    ],
    ids=["unknown", "empty", "two-words", "quoted", "non-ascii", "oversized"],
)
async def test_bad_bearer_tokens_are_invalid_tokens(site: Site, authorization: str | bytes, description: str) -> None:
    url = start(site)
    response = await post_mcp(url, authorization=authorization)
    error = assert_jsonrpc_error(response, 401, ErrorCode.UNAUTHORIZED)
    params = challenge_params(response)
    assert params["error"] == "invalid_token"
    assert params["error_description"] == description
    assert error["data"] == {"error": "invalid_token", "error_description": description}


async def test_the_401_challenge_names_the_scopes_of_the_operation(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url, params={"name": "large", "arguments": {"size": 1}})
    assert challenge_params(response)["scope"] == "admin bulk mcp:read"


async def test_insufficient_scope_names_every_scope_needed(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url, authorization="Bearer admin", params={"name": "large", "arguments": {"size": 1}})
    error = assert_jsonrpc_error(response, 403, ErrorCode.FORBIDDEN)
    params = challenge_params(response)
    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "admin bulk mcp:read"
    assert params["resource_metadata"].endswith("/.well-known/oauth-protected-resource/mcp")
    assert error["data"]["missingScopes"] == ["bulk"]
    assert error["data"]["requiredScopes"] == ["admin", "bulk", "mcp:read"]


async def test_a_token_in_the_query_string_is_refused(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url + "?access_token=reader", authorization="Bearer reader")
    assert_jsonrpc_error(response, 400, -32600)
    assert challenge_params(response)["error"] == "invalid_request"


async def test_two_authorization_headers_are_refused(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url, authorization="Bearer reader", extra_headers=[("authorization", "Bearer admin")])
    assert_jsonrpc_error(response, 400, -32600)


async def test_a_valid_token_passes(site: Site) -> None:
    url = start(site)
    response = await post_mcp(url, authorization="bearer reader")  # the scheme is case-insensitive
    assert response.status_code == 200
    assert "hi" in response.text


async def test_get_stream_and_delete_need_a_token_too(site: Site) -> None:
    url = start(site)
    async with httpx2.AsyncClient() as client:
        get = await client.get(url, headers={"accept": "text/event-stream", "mcp-session-id": "abc"})
        delete = await client.delete(url, headers={"mcp-session-id": "abc"})
    assert get.status_code == delete.status_code == 401
    assert orjson.loads(get.content)["id"] is None


async def test_cors_preflight_passes_without_a_token(site: Site) -> None:
    url = start(site)
    async with httpx2.AsyncClient() as client:
        response = await client.options(
            url, headers={"origin": "http://127.0.0.1", "access-control-request-method": "POST"}
        )
    assert response.status_code != 401


async def test_protected_resource_metadata_at_the_path_inserted_url(site: Site) -> None:
    url = start(site)
    metadata_url = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    async with httpx2.AsyncClient() as client:
        response = await client.get(metadata_url, headers={"origin": "https://app.example"})
        preflight = await client.options(
            metadata_url, headers={"origin": "https://app.example", "access-control-request-method": "GET"}
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert orjson.loads(response.content) == {
        "resource": url,
        "authorization_servers": [AS_URL],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["admin", "bulk", "mcp:read"],
    }


async def test_metadata_is_at_the_host_root_when_the_mcp_app_is_mounted_under_a_prefix(site: Site) -> None:
    served, slot, mcp_app = site.served, site.slot, site.mcp_app
    resource = f"{served.base}/api/mcp"

    async def health(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    host = Starlette(routes=[Route("/healthz", health), Mount("/api", app=mcp_app)])
    slot.app = AuthMiddleware(
        host,
        verifier=StaticTokenVerifier({"reader": ["mcp:read"]}, resource=resource),
        resource=resource,
        authorization_servers=[AS_URL],
        config=CoreConfig(paths=("/api/mcp",)),
    )
    async with httpx2.AsyncClient() as client:
        metadata = await client.get(f"{served.base}/.well-known/oauth-protected-resource/api/mcp")
        health_check = await client.get(f"{served.base}/healthz")
    assert metadata.status_code == 200
    assert orjson.loads(metadata.content)["resource"] == resource
    assert health_check.text == "ok", "paths that are not the MCP endpoint are not guarded"
    refused = await post_mcp(resource)
    assert (
        challenge_params(refused)["resource_metadata"] == f"{served.base}/.well-known/oauth-protected-resource/api/mcp"
    )
    allowed = await post_mcp(resource, authorization="Bearer reader")
    assert allowed.status_code == 200


async def test_public_paths_need_no_token(site: Site) -> None:
    served, slot, mcp_app = site.served, site.slot, site.mcp_app

    async def health(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    host = Starlette(routes=[Route("/healthz", health), Mount("/", app=mcp_app)])
    slot.app = AuthMiddleware(
        host,
        verifier=StaticTokenVerifier({"reader": ["mcp:read"]}, resource=served.mcp_url),
        resource=served.mcp_url,
        authorization_servers=[AS_URL],
        config=CoreConfig(paths=("*",)),
        public_paths=("/healthz",),
    )
    async with httpx2.AsyncClient() as client:
        health_check = await client.get(f"{served.base}/healthz")
    assert health_check.text == "ok"
    assert (await post_mcp(served.mcp_url)).status_code == 401


def test_the_resource_must_be_an_absolute_uri() -> None:
    for bad in ("/mcp", "mcp.example.com/mcp", "https://mcp.example.com/mcp#x", "ftp://x/mcp"):
        with pytest.raises(ValueError, match="absolute"):
            AuthMiddleware(build_server().streamable_http_app(), verifier=StaticTokenVerifier({}), resource=bad)


async def test_without_an_authorization_server_the_challenge_points_nowhere(site: Site) -> None:
    url = site.served.mcp_url
    site.slot.app = AuthMiddleware(site.mcp_app, verifier=StaticTokenVerifier({}, resource=url), resource=url)
    response = await post_mcp(url)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    async with httpx2.AsyncClient() as client:
        metadata = await client.get(url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
    assert metadata.status_code != 200


def test_the_scopes_an_operation_needs_are_remembered_per_target_without_growing() -> None:
    """`required_for` remembers its answer per (method, target): the same answers as the selector lookup,
    short targets only, in a table that a flood of distinct tool names cannot grow past its bound."""
    auth = AuthMiddleware(
        build_server().streamable_http_app(),
        verifier=StaticTokenVerifier({}),
        resource="http://127.0.0.1:8000/mcp",
        required_scopes=["mcp:read"],
        scopes={"tools/call:delete_*": ["admin"]},
    )
    for _ in range(2):  # computed, then remembered
        assert auth.required_for("tools/call", "delete_all") == {"mcp:read", "admin"}
        assert auth.required_for("tools/call", "echo") == {"mcp:read"}
        assert auth.required_for("tools/list", None) == {"mcp:read"}
    giant = "delete_" + "x" * 10_000
    assert auth.required_for("tools/call", giant) == {"mcp:read", "admin"}
    assert all(target is None or len(target) <= 256 for _, target in auth._required)
    for n in range(5000):
        assert auth.required_for("tools/call", f"delete_{n}") == {"mcp:read", "admin"}
    assert len(auth._required) <= 4096
