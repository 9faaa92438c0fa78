"""The gateway as an AWS Lambda function: its handler fed real API Gateway events, in both eras.

The events are built as AWS documents them (HTTP API payload 2.0 and REST API 1.0: tests/support/api_gateway.py);
the context is a stand-in for the one the Lambda runtime passes. The Lambda runtime and API Gateway are what
cannot run here: everything behind the handler is the real gateway, its real middlewares and a real SDK
server, in this process, as they run in an execution environment. The SDK's own clients through the same
handler: test_serverless_clients.py.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from mcp_middleware.core.errors import ErrorCode, JsonRpcCode
from tests.conftest import SIGNALS, Served, require
from tests.security.idp import serve_idp
from tests.servers import build_server
from tests.support import processes
from tests.support.api_gateway import HOST, LambdaContext, Shape
from tests.support.api_gateway import api_gateway_event as event
from tests.support.requests import LEGACY, MODERN, initialize_body, legacy_body, modern_body
from tests.support.sse import sse_messages

require("mangum", "the serverless profile's Lambda adapter (the `lambda` extra)")

from mcp_middleware.gateway.serverless import ServerlessGateway, build_handler  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gateway" / "serverless.toml"
PUBLIC_URL = f"https://{HOST}"
SHAPES: tuple[Shape, ...] = ("http-api-v2", "rest-v1")
ACCEPT = "application/json, text/event-stream"


def modern(method: str, name: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": ACCEPT, "mcp-protocol-version": MODERN}
    headers["mcp-method"] = method
    if name is not None:
        headers["mcp-name"] = name
    return {**headers, **extra}


def legacy(session: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": ACCEPT, "mcp-protocol-version": LEGACY}
    if session is not None:
        headers["mcp-session-id"] = session
    return {**headers, **extra}


def header(answer: dict[str, Any], name: str) -> str | None:
    """A response header, from `headers` (both shapes) or `multiValueHeaders` (REST)."""
    found = (answer.get("headers") or {}).get(name)
    if found is None:
        values = (answer.get("multiValueHeaders") or {}).get(name)
        found = values[0] if values else None
    return found


def messages(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a Lambda answer (a JSON body, or the whole event stream: Lambda buffers it)."""
    body = answer["body"]
    if answer.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    if (header(answer, "content-type") or "").startswith("text/event-stream"):
        return sse_messages(body)
    return [orjson.loads(body)]


def reply(answer: dict[str, Any]) -> dict[str, Any]:
    """The one JSON-RPC response (not a notification) in an answer."""
    found = [m for m in messages(answer) if "id" in m and "method" not in m]
    assert len(found) == 1, answer
    return found[0]


def tool_text(answer: dict[str, Any]) -> str:
    assert answer["statusCode"] == 200, answer
    result = reply(answer)["result"]
    assert result.get("isError") is not True, result
    return str(result["content"][0]["text"])


def config_text(auth: str = "", extra: str = "") -> str:
    return (
        textwrap.dedent(f"""\
        [gateway]
        prefix = "/mcp"
        public_url = "{PUBLIC_URL}"
        gc_freeze = false

        [front_door]
        allowed_hosts = ["{HOST}"]
        allowed_origins = []

        [[servers]]
        name = "demo"
        app = "examples.gateway.demo:server"
        """)
        + textwrap.dedent(auth)
        + textwrap.dedent(extra)
    )


STATIC_AUTH = """
[auth]
mode = "static"
[auth.tokens]
"tok-alice" = { subject = "alice", scopes = ["mcp"] }
"tok-bob" = { subject = "bob", scopes = ["mcp"] }
"""


@pytest.fixture
def lambda_handler(tmp_path: Path) -> Iterator[Callable[..., ServerlessGateway]]:
    """`lambda_handler(auth=..., extra=...)`: one execution environment's handler; all closed at teardown."""
    built: list[ServerlessGateway] = []

    def make(auth: str = "", extra: str = "", name: str = "gateway.toml") -> ServerlessGateway:
        path = tmp_path / name
        path.write_text(config_text(auth, extra), encoding="utf-8")
        handler = build_handler(path)
        built.append(handler)
        return handler

    yield make
    for handler in built:
        handler.close()


# --- the modern era --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_a_modern_tools_call_is_answered_through_the_aggregate_and_the_mount(
    lambda_handler: Callable[..., ServerlessGateway], shape: Shape
) -> None:
    handler = lambda_handler()
    context = LambdaContext()
    call = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "über λ"}}, request_id=7)
    answer = handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), call), context)
    assert tool_text(answer) == "über λ"
    assert reply(answer)["id"] == 7
    assert answer["isBase64Encoded"] is False

    own = modern_body("tools/call", {"name": "add", "arguments": {"a": 2, "b": 40}}, request_id="r-1")
    answer = handler(event(shape, "POST", "/mcp/demo", modern("tools/call", "add"), own), context)
    assert tool_text(answer) == "42"
    assert reply(answer)["id"] == "r-1"

    listed = handler(event(shape, "POST", "/mcp", modern("tools/list"), modern_body("tools/list", {})), context)
    names = {tool["name"] for tool in reply(listed)["result"]["tools"]}
    assert {"demo__echo", "demo__add", "demo__countdown"} <= names

    for probe in ("/healthz", "/readyz"):  # API Gateway health checks reach the operations endpoints
        answer = handler(event(shape, "GET", probe, {"accept": "application/json"}), context)
        assert answer["statusCode"] == 200, answer


def test_progress_arrives_with_the_answer_at_its_end(lambda_handler: Callable[..., ServerlessGateway]) -> None:
    """Lambda returns one body per invocation: the event stream of a call with progress is whole, in order."""
    handler = lambda_handler()
    params = {"name": "countdown", "arguments": {"steps": 2}, "_meta": {"progressToken": "p-1"}}
    answer = handler(
        event("http-api-v2", "POST", "/mcp/demo", modern("tools/call", "countdown"), modern_body("tools/call", params)),
        LambdaContext(),
    )
    assert answer["statusCode"] == 200
    found = messages(answer)
    progress = [m for m in found if m.get("method") == "notifications/progress"]
    assert [m["params"]["progress"] for m in progress] == [0, 1]
    assert found[-1]["result"]["content"][0]["text"] == "lift-off"


def test_a_named_stage_in_the_path_is_stripped_when_configured(tmp_path: Path) -> None:
    """An HTTP API's named stage is in the event's path (`/prod/mcp`): `MCP_GATEWAY_BASE_PATH=/prod` strips it."""
    path = tmp_path / "gateway.toml"
    path.write_text(config_text(), encoding="utf-8")
    handler = build_handler(path, api_gateway_base_path="/prod")
    try:
        call = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "staged"}})
        answer = handler(event("http-api-v2", "POST", "/prod/mcp", modern("tools/call", "demo__echo"), call), None)
        assert tool_text(answer) == "staged"
    finally:
        handler.close()


# --- the legacy era --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_a_legacy_session_lives_across_invocations_of_one_environment(
    lambda_handler: Callable[..., ServerlessGateway], shape: Shape
) -> None:
    handler = lambda_handler()
    context = LambdaContext()
    opened = handler(event(shape, "POST", "/mcp", legacy(), initialize_body(LEGACY, 0)), context)
    assert opened["statusCode"] == 200, opened
    assert reply(opened)["result"]["protocolVersion"] == LEGACY
    session = header(opened, "mcp-session-id")
    assert session
    done = handler(
        event(shape, "POST", "/mcp", legacy(session), b'{"jsonrpc":"2.0","method":"notifications/initialized"}'),
        context,
    )
    assert done["statusCode"] == 202, done
    call = legacy_body("tools/call", {"name": "demo__echo", "arguments": {"text": "again"}}, 3)
    answer = handler(event(shape, "POST", "/mcp", legacy(session), call), context)
    assert tool_text(answer) == "again"
    assert reply(answer)["id"] == 3

    # A standing GET stream would never end, and Lambda answers only at the end: refused, as the spec allows.
    stream = handler(event(shape, "GET", "/mcp", {"accept": "text/event-stream", **legacy(session)}), context)
    assert stream["statusCode"] == 405
    assert header(stream, "allow") == "POST, DELETE"
    assert orjson.loads(stream["body"])["error"]["code"] == JsonRpcCode.INVALID_REQUEST

    closed = handler(event(shape, "DELETE", "/mcp", legacy(session)), context)
    assert closed["statusCode"] == 200, closed
    after = handler(event(shape, "POST", "/mcp", legacy(session), call), context)
    assert after["statusCode"] == 404
    assert reply(after)["id"] == 3


def test_a_legacy_session_of_another_environment_is_not_found_not_a_failure(
    lambda_handler: Callable[..., ServerlessGateway],
) -> None:
    """What the profile warns about without a session key: API Gateway sends the next request elsewhere."""
    first, second = lambda_handler(name="one.toml"), lambda_handler(name="two.toml")
    opened = first(event("http-api-v2", "POST", "/mcp/demo", legacy(), initialize_body(LEGACY, 0)), LambdaContext())
    session = header(opened, "mcp-session-id")
    assert session
    call = legacy_body("tools/call", {"name": "echo", "arguments": {"text": "x"}}, 11)
    elsewhere = second(event("http-api-v2", "POST", "/mcp/demo", legacy(session), call), LambdaContext())
    assert elsewhere["statusCode"] == 404  # the client re-initializes (the SDK does on 404)
    assert reply(elsewhere)["id"] == 11
    assert "error" in reply(elsewhere)


# --- a remote backend ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_a_remote_backend_is_reached_through_the_proxy_in_both_eras(
    serve: Callable[[Any], Served], lambda_handler: Callable[..., ServerlessGateway], shape: Shape
) -> None:
    """The proxy's pooled connections live on the environment's loop between invocations."""
    # `serve` first: fixtures end in reverse, so the handler (and its pooled connection and session) closes before
    # the backend stops; the other way round the backend's shutdown waits 10 s for that connection.
    backend = serve(build_server().streamable_http_app())
    handler = lambda_handler(extra=f'[[servers]]\nname = "remote"\nurl = "{backend.mcp_url}"\n')
    context = LambdaContext()
    for request_id in (1, 2):  # the second reuses the keep-alive connection the first opened
        call = modern_body("tools/call", {"name": "echo", "arguments": {"text": f"far {request_id}"}}, request_id)
        answer = handler(event(shape, "POST", "/mcp/remote", modern("tools/call", "echo"), call), context)
        assert tool_text(answer) == f"far {request_id}"
    aggregate = modern_body("tools/call", {"name": "remote__echo", "arguments": {"text": "via /mcp"}}, 3)
    assert (
        tool_text(handler(event(shape, "POST", "/mcp", modern("tools/call", "remote__echo"), aggregate), context))
        == "via /mcp"
    )

    opened = handler(event(shape, "POST", "/mcp/remote", legacy(), initialize_body(LEGACY, 0)), context)
    session = header(opened, "mcp-session-id")
    assert opened["statusCode"] == 200 and session, opened
    done = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    assert handler(event(shape, "POST", "/mcp/remote", legacy(session), done), context)["statusCode"] == 202
    call = legacy_body("tools/call", {"name": "echo", "arguments": {"text": "in session"}}, 4)
    assert tool_text(handler(event(shape, "POST", "/mcp/remote", legacy(session), call), context)) == "in session"


# --- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_static_tokens_are_required_and_a_session_stays_with_its_principal(
    lambda_handler: Callable[..., ServerlessGateway], shape: Shape
) -> None:
    handler = lambda_handler(STATIC_AUTH)
    context = LambdaContext()
    call = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "hi"}}, request_id=5)
    refused = handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), call), context)
    assert refused["statusCode"] == 401
    assert reply(refused)["id"] == 5
    assert reply(refused)["error"]["code"] == ErrorCode.UNAUTHORIZED
    assert (header(refused, "www-authenticate") or "").startswith("Bearer")

    alice = {"authorization": "Bearer tok-alice"}
    answer = handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__echo", **alice), call), context)
    assert tool_text(answer) == "hi"

    # Bob presents Alice's legacy session: it is not his, and looks exactly like one that does not exist.
    opened = handler(event(shape, "POST", "/mcp", legacy(**alice), initialize_body(LEGACY, 0)), context)
    session = header(opened, "mcp-session-id")
    assert session
    own = legacy_body("tools/call", {"name": "demo__echo", "arguments": {"text": "mine"}}, 8)
    bob = handler(event(shape, "POST", "/mcp", legacy(session, authorization="Bearer tok-bob"), own), context)
    assert bob["statusCode"] == 404
    assert reply(bob)["id"] == 8


def test_jwt_keys_are_fetched_at_cold_start_not_in_the_first_request(
    lambda_handler: Callable[..., ServerlessGateway],
) -> None:
    with serve_idp() as idp:
        auth = f"""
        [auth]
        mode = "jwt"
        issuer = "{idp.issuer.issuer}"
        jwks_url = "{idp.jwks_uri}"
        """
        handler = lambda_handler(auth)
        assert len(idp.host.hits) == 1  # one fetch for every endpoint (the aggregate and the mount), before any event
        context = LambdaContext()
        for path, name in (("/mcp", "demo__echo"), ("/mcp/demo", "echo")):
            token = idp.token(aud=f"{PUBLIC_URL}{path}")
            call = modern_body("tools/call", {"name": name, "arguments": {"text": path}}, request_id=1)
            headers = modern("tools/call", name, authorization=f"Bearer {token}")
            assert tool_text(handler(event("http-api-v2", "POST", path, headers, call), context)) == path
        assert len(idp.host.hits) == 1

        elsewhere = idp.token(aud="https://other.example/mcp")  # another API's token
        headers = modern("tools/call", "demo__echo", authorization=f"Bearer {elsewhere}")
        call = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "x"}}, request_id=2)
        refused = handler(event("http-api-v2", "POST", "/mcp", headers, call), context)
        assert refused["statusCode"] == 401
        assert reply(refused)["id"] == 2
        # The challenge and the RFC 9728 metadata name the public URL, not the function's (absent) address.
        challenge = header(refused, "www-authenticate") or ""
        assert f'resource_metadata="{PUBLIC_URL}/.well-known/oauth-protected-resource/mcp"' in challenge
        metadata = event("rest-v1", "GET", "/.well-known/oauth-protected-resource/mcp", {"accept": "application/json"})
        found = handler(metadata, context)
        assert found["statusCode"] == 200
        assert orjson.loads(found["body"])["resource"] == f"{PUBLIC_URL}/mcp"
        assert orjson.loads(found["body"])["authorization_servers"] == [idp.issuer.issuer]


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_bad_requests_get_json_rpc_errors_never_a_500(
    lambda_handler: Callable[..., ServerlessGateway], shape: Shape
) -> None:
    handler = lambda_handler()
    context = LambdaContext()
    call = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "x"}}, request_id=21)
    lying = handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__add"), call), context)
    assert lying["statusCode"] == 400
    assert reply(lying)["id"] == 21
    assert reply(lying)["error"]["code"] == JsonRpcCode.HEADER_MISMATCH

    broken = handler(
        event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), b'{"jsonrpc":"2.0","id":'), context
    )
    assert broken["statusCode"] == 400
    assert reply(broken)["error"]["code"] == JsonRpcCode.PARSE_ERROR

    unknown = modern_body("tools/call", {"name": "demo__nope", "arguments": {}}, request_id=22)
    missing = handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__nope"), unknown), context)
    assert missing["statusCode"] == 200, missing
    assert reply(missing)["id"] == 22
    assert reply(missing)["error"]["code"] == JsonRpcCode.INVALID_PARAMS  # the aggregate knows no such name

    huge = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "x" * 5_000_000}}, request_id=23)
    too_big = handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), huge), context)
    assert too_big["statusCode"] == 413
    assert reply(too_big)["error"]["code"] == ErrorCode.PAYLOAD_TOO_LARGE

    foreign = event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), call)
    foreign["headers"]["host"] = "attacker.example"
    if "multiValueHeaders" in foreign:
        foreign["multiValueHeaders"]["host"] = ["attacker.example"]
    refused = handler(foreign, context)
    assert refused["statusCode"] == 421
    assert reply(refused)["id"] == 21

    # After all that, the environment still answers.
    assert tool_text(handler(event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), call), context)) == "x"


@pytest.mark.parametrize("shape", SHAPES)
def test_a_base64_encoded_body_is_read_as_its_bytes(
    lambda_handler: Callable[..., ServerlessGateway], shape: Shape
) -> None:
    """API Gateway sets `isBase64Encoded` for binary media types (and an HTTP API may for any body)."""
    handler = lambda_handler()
    call = modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "😀 base64"}}, request_id=31)
    answer = handler(
        event(shape, "POST", "/mcp", modern("tools/call", "demo__echo"), call, base64_body=True), LambdaContext()
    )
    assert tool_text(answer) == "😀 base64"
    assert reply(answer)["id"] == 31

    garbage = event(
        shape, "POST", "/mcp", modern("tools/call", "demo__echo"), b"\xff\xfe\x00not json", base64_body=True
    )
    refused = handler(garbage, LambdaContext())
    assert refused["statusCode"] == 400
    assert reply(refused)["error"]["code"] == JsonRpcCode.PARSE_ERROR


# --- the handler module, as the Lambda runtime uses it ------------------------------------------


@pytest.mark.xdist_group(SIGNALS)
def test_the_handler_module_builds_the_gateway_from_the_environment_and_stops_on_sigterm(tmp_path: Path) -> None:
    """As the Lambda runtime uses it: import `handler` (cold start), invoke, then SIGTERM (shutdown phase)."""
    answer_event = event(
        "http-api-v2", "POST", "/mcp", modern("tools/call", "demo__echo"),
        modern_body("tools/call", {"name": "demo__echo", "arguments": {"text": "cold"}}),
    )  # fmt: skip
    script = textwrap.dedent("""\
        import faulthandler, json, signal, sys
        faulthandler.register(signal.SIGUSR1)  # the test asks for every thread's stack if shutdown hangs
        from mcp_middleware.gateway.serverless import handler
        answer = handler(json.loads(sys.argv[1]), None)
        print(json.dumps(answer), flush=True)
        sys.stdin.read()  # stay warm until the test sends SIGTERM
        """)
    env = {
        **os.environ,
        "MCP_GATEWAY_CONFIG": str(EXAMPLE),
        "MCP_GATEWAY_AUTH_MODE": "none",
        "MCP_GATEWAY_HOST": HOST,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE.parent)]),
    }
    log = tmp_path / "stderr.log"
    with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stop the child, not the test
        child = processes.start(
            [sys.executable, "-c", script, orjson.dumps(answer_event).decode()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
            env=env,
            cwd=EXAMPLE.parent,
        )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, log.read_text()
        assert tool_text(orjson.loads(line)) == "cold"
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGUSR1)
            time.sleep(1)
            pytest.fail(f"the handler did not end on SIGTERM; its threads:\n{log.read_text()[-6000:]}")
        assert code == 0
    finally:
        processes.stop(child)
    logged = log.read_text()
    assert "serverless gateway ready in" in logged
    assert "Traceback" not in logged


def test_a_gateway_that_cannot_start_fails_the_cold_start_with_why(tmp_path: Path) -> None:
    """An init error (Lambda logs it and retries the init on the next event), not a half-started handler."""
    (tmp_path / "broken_app.py").write_text(
        textwrap.dedent("""\
            async def app(scope, receive, send):
                if scope["type"] == "lifespan":
                    await receive()
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
            """),
        encoding="utf-8",
    )
    path = tmp_path / "gateway.toml"
    path.write_text('[[servers]]\nname = "broken"\napp = "broken_app:app"\n', encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"the gateway did not start: .*no database"):
        build_handler(path)
