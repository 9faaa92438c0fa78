"""API Gateway in front of a Lambda handler, for tests: its events as AWS documents them, and an HTTP transport.

API Gateway and the Lambda runtime are what cannot run here. :func:`api_gateway_event` builds the event
API Gateway passes a Lambda proxy integration: HTTP API payload 2.0 ("Working with AWS Lambda proxy
integrations for HTTP APIs") or REST API 1.0 ("Input format of a Lambda function for proxy integration");
:class:`LambdaContext` stands for the runtime's context object. :class:`ApiGatewayTransport` lets any
`httpx2` client (the SDK's `mcp.Client` among them) call a handler the way API Gateway would: each
request becomes one event, the handler's answer the response, whole (Lambda buffers it).

    transport = ApiGatewayTransport(lambda: build_handler("serverless.toml"))
    async with httpx2.AsyncClient(transport=transport) as http: ...
    transport.close()
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio.to_thread
import httpx2

__all__ = ["HOST", "ApiGatewayTransport", "LambdaContext", "Shape", "api_gateway_event", "response_headers"]

HOST = "abc123.execute-api.eu-west-1.amazonaws.com"
"""The API's default domain: what clients put in `Host` (API Gateway sends it without a port)."""
Shape = Literal["http-api-v2", "rest-v1"]


class Handler(Protocol):
    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass
class LambdaContext:
    """What the Lambda runtime passes as `context` (the fields the Python runtime documents)."""

    function_name: str = "mcp-gateway"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:mcp-gateway"
    memory_limit_in_mb: int = 512
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    log_group_name: str = "/aws/lambda/mcp-gateway"
    log_stream_name: str = "2026/12/05/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


def api_gateway_event(
    shape: Shape,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
    *,
    base64_body: bool = False,
) -> dict[str, Any]:
    """The event for one HTTP request; `headers` over API Gateway's own (`host`, `x-forwarded-*`)."""
    headers = {"host": HOST, "x-forwarded-proto": "https", "x-forwarded-port": "443", **headers}
    text: str | None = None
    if body is not None:
        text = base64.b64encode(body).decode() if base64_body else body.decode()
    if shape == "http-api-v2":
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "abc123",
                "domainName": HOST,
                "domainPrefix": "abc123",
                "http": {
                    "method": method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "198.51.100.7",
                    "userAgent": "mcp-test",
                },
                "requestId": "JKJaXmPLvHcESHA=",
                "routeKey": "$default",
                "stage": "$default",
                "time": "05/Dec/2026:03:00:00 +0000",
                "timeEpoch": 1796439600000,
            },
            "body": text,
            "isBase64Encoded": base64_body,
        }
    return {  # REST API (1.0): headers also as multiValueHeaders, the stage only in requestContext.path
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": HOST,
            "extendedRequestId": "JKJaXmPLvHcESHA=",
            "httpMethod": method,
            "identity": {"sourceIp": "198.51.100.7", "userAgent": "mcp-test"},
            "path": f"/prod{path}",
            "protocol": "HTTP/1.1",
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "requestTime": "05/Dec/2026:03:00:00 +0000",
            "requestTimeEpoch": 1796439600000,
            "resourceId": "roq9wj",
            "resourcePath": "/{proxy+}",
            "stage": "prod",
        },
        "body": text,
        "isBase64Encoded": base64_body,
    }


def response_headers(answer: dict[str, Any]) -> list[tuple[str, str]]:
    """Every header of a handler's answer: `headers`, `multiValueHeaders` (1.0) and `cookies` (2.0)."""
    found = list((answer.get("headers") or {}).items())
    for name, values in (answer.get("multiValueHeaders") or {}).items():
        found.extend((name, value) for value in values)
    found.extend(("set-cookie", cookie) for cookie in answer.get("cookies") or ())
    return found


class ApiGatewayTransport(httpx2.AsyncBaseTransport):
    """An `httpx2` transport that hands each request to a Lambda handler as an API Gateway event.

    The handler is built and called on one thread of its own, as an execution environment is a process
    of its own with its own event loop: one request at a time, as Lambda sends them.
    """

    def __init__(self, build: Callable[[], Handler], *, shape: Shape = "http-api-v2") -> None:
        self.shape = shape
        self.events: list[dict[str, Any]] = []
        self.exchanges: list[tuple[str, int]] = []
        """(method, status) of every request, in order."""
        self._environment = ThreadPoolExecutor(1, thread_name_prefix="lambda-environment")
        self.handler = self._environment.submit(build).result()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers.raw}
        event = api_gateway_event(self.shape, request.method, request.url.path, headers, body or None, base64_body=True)
        self.events.append(event)
        answer = await anyio.to_thread.run_sync(self._invoke, event)
        self.exchanges.append((request.method, answer["statusCode"]))
        content = answer.get("body") or ""
        raw = base64.b64decode(content) if answer.get("isBase64Encoded") else content.encode()
        headers_out = [(k, v) for k, v in response_headers(answer) if k != "content-length"]
        return httpx2.Response(answer["statusCode"], headers=headers_out, content=raw, request=request)

    def _invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        return self._environment.submit(self.handler, event, LambdaContext()).result()

    def close(self) -> None:
        """End the environment (the handler's lifespan) and its thread."""
        self._environment.submit(self.handler.close).result()
        self._environment.shutdown()
