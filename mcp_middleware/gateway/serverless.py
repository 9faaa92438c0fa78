"""The gateway on AWS Lambda: its ASGI app behind `mangum`, built once per execution environment.

Set the function's handler to `mcp_middleware.gateway.serverless.handler` and `MCP_GATEWAY_CONFIG` to
the config file (the `lambda` extra installs mangum). The first time the runtime reads `handler` (its
init phase, the cold start), the config is loaded and checked against the serverless profile
(`serverless_profile.py`: what it refuses and why), the gateway is built, its lifespan started (backends,
stores) and the issuer's keys fetched; every invocation then reuses all of it. API Gateway HTTP API
(payload 2.0), REST API (1.0), Function URLs and ALB events all work.

Mangum runs an app's lifespan around each event (`lifespan="auto"`), which would restart every backend,
reconnect every store and drop every legacy session per request; here the lifespan is held open for
the environment's life instead, and ended on SIGTERM (Lambda's shutdown phase).

Responses are buffered: Lambda (through API Gateway) returns one body per invocation, so an SSE answer
arrives whole at its end (progress notifications included), and a GET for a standing event stream,
which would never end, is answered 405 (the MCP spec's way of saying "no stream here").

>>> # handler = build_handler("serverless.toml")          # what `handler` does with $MCP_GATEWAY_CONFIG
>>> # answer = handler(api_gateway_event, lambda_context)  # {"statusCode": 200, "body": ..., ...}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_middleware.auth.verification import VerificationUnavailable
from mcp_middleware.core import CoreConfig, McpCoreMiddleware
from mcp_middleware.core.errors import JsonRpcCode, send_error
from mcp_middleware.core.lifespan import run_lifespan

from .app import Gateway, build_gateway
from .config import ConfigError, GatewayConfig, load_config
from .serverless_profile import serverless_problems

if TYPE_CHECKING:
    from mangum import Mangum

__all__ = ["BASE_PATH_ENV", "CONFIG_ENV", "ServerlessGateway", "build_handler", "check", "handler_from_environment"]

CONFIG_ENV = "MCP_GATEWAY_CONFIG"
"""The config file the Lambda handler loads (relative to the function's working directory)."""
BASE_PATH_ENV = "MCP_GATEWAY_BASE_PATH"
"""A path prefix API Gateway adds that the gateway should not see (a named stage: `/prod`)."""

logger = logging.getLogger("mcp_middleware.gateway")


class ServerlessGateway:
    """A Lambda handler, `handler(event, context) -> response`, over a built gateway whose lifespan runs.

    One per execution environment: it owns an event loop, on which the gateway's lifespan (and what it
    started: backend sessions, store connections) stays alive between invocations. `close()` ends it.
    """

    def __init__(self, gateway: Gateway, *, api_gateway_base_path: str = "/") -> None:
        from mangum import Mangum  # the `lambda` extra: imported where it is used, so the package imports without it

        started = time.perf_counter()
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # Mangum runs each event on the thread's current loop
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()
        self._held = self.loop.create_task(self._hold_lifespan())
        try:
            with _sigterm_for_the_main_thread():
                self.loop.run_until_complete(self._started())
        except BaseException:
            self.loop.close()
            raise
        prefix, door = gateway.config.gateway.prefix, gateway.config.front_door
        # The core in front, as tracing is when on: every refusal inside (an unknown session, the front
        # door's) carries the request's id, and a crash is a JSON-RPC 500, not Mangum's plain-text page.
        core = McpCoreMiddleware(
            gateway.app, config=CoreConfig(paths=(prefix, f"{prefix}/*"), max_body_size=door.max_body_size)
        )
        self.adapter: Mangum = Mangum(
            cast(Any, _NoStandingStreams(core)), lifespan="off", api_gateway_base_path=api_gateway_base_path
        )
        self.started_in = time.perf_counter() - started
        """Seconds the lifespan and the key fetch took (the rest of a cold start is imports and building)."""

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        asyncio.set_event_loop(self.loop)  # ours, whatever another library made current since
        with _sigterm_for_the_main_thread():
            return self.adapter(event, context)

    def close(self) -> None:
        """End the lifespan (backends stop, exporters flush, the audit file closes) and the loop."""
        if self.loop.is_closed():
            return
        self._stop.set()
        try:
            self.loop.run_until_complete(self._held)
        finally:
            left = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            for task in left:  # what requests left waiting (the SDK's stream watchers): ended as asyncio.run does
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _hold_lifespan(self) -> None:
        """Start the gateway's lifespan and keep it open (one task: anyio scopes end where they began)."""
        async with run_lifespan(self.gateway.app):
            self._ready.set()
            await self._stop.wait()

    async def _started(self) -> None:
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait({ready, self._held}, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            failure = self._held.exception()
            while isinstance(failure, BaseExceptionGroup) and failure.exceptions:  # the task group's wrapping
                failure = failure.exceptions[0]
            raise RuntimeError(f"the gateway did not start: {failure or 'its lifespan ended'}") from failure
        await self._fetch_keys()

    async def _fetch_keys(self) -> None:
        """`jwt` mode: the issuer's keys now, in the init phase, not in the first client's request."""
        assembly = self.gateway.assembly
        keys = assembly.jwks_keys if assembly is not None else None
        if keys is None:
            return
        try:
            await keys.current()
        except VerificationUnavailable:  # requests answer 503 with Retry-After until a later fetch succeeds
            logger.warning("the issuer's keys could not be fetched at start-up from %s", keys.uri)


class _NoStandingStreams:
    """Answer a GET for a standing event stream with 405: Lambda returns a body only once it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and "text/event-stream" in Headers(scope=scope).get("accept", "")
        ):
            await send_error(
                send,
                status=405,
                code=JsonRpcCode.INVALID_REQUEST,
                message="Method Not Allowed: no standing event stream on a serverless gateway (answers to "
                "POST carry their notifications)",
                headers={"Allow": "POST, DELETE"},
            )
            return
        await self.app(scope, receive, send)


def build_handler(config: str | Path | GatewayConfig, *, api_gateway_base_path: str = "/") -> ServerlessGateway:
    """Load `config` (a path or a parsed config), check it for the serverless profile, build and start it.

    Raises :class:`ConfigError` with every problem (each with key and line); logs the profile's warnings.
    """
    if not isinstance(config, GatewayConfig):
        config = load_config(config)
    problems, warnings = serverless_problems(config)
    source = str(config.source or "config")
    if problems:
        raise ConfigError(problems, source)
    for warning in [*config.warnings, *warnings]:
        logger.warning("%s: %s", source, warning)
    gateway = build_gateway(config)
    for skipped in gateway.skipped:
        logger.warning("optional server skipped: %s", skipped)
    return ServerlessGateway(gateway, api_gateway_base_path=api_gateway_base_path)


def handler_from_environment() -> ServerlessGateway:
    """What `handler` is: the gateway of `$MCP_GATEWAY_CONFIG`, with the process-wide set-up `serve` does
    (one log stream, the global tracer provider) and the lifespan ended on SIGTERM."""
    from mcp_middleware.logs import configure_logging

    started = time.perf_counter()
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"set {CONFIG_ENV} to the gateway's config file")
    config = load_config(path)
    settings = config.gateway
    configure_logging(settings.log_format or "json", settings.log_level, levels=settings.log_levels)
    built = build_handler(config, api_gateway_base_path=os.environ.get(BASE_PATH_ENV) or "/")
    if built.gateway.telemetry is not None:
        built.gateway.telemetry.install_global()
    _close_on_sigterm(built)
    logger.info(
        "serverless gateway ready in %.0f ms (lifespan and keys: %.0f ms)",
        (time.perf_counter() - started) * 1000,
        built.started_in * 1000,
    )
    return built


def _close_on_sigterm(built: ServerlessGateway) -> None:
    """Lambda's shutdown phase sends SIGTERM (between invocations): end the lifespan, then exit."""

    def close(signum: int, frame: FrameType | None) -> None:
        if not built.loop.is_running():
            built.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, close)


@contextlib.contextmanager
def _sigterm_for_the_main_thread() -> Iterator[None]:
    """Block SIGTERM while the gateway runs, so every thread it starts (anyio's workers) inherits the block.

    Between invocations the main thread is the only one that takes SIGTERM: the kernel delivers it there,
    its blocking wait is interrupted, and the shutdown handler runs. Otherwise a worker thread may take the
    signal while the main thread waits in a system call that nothing interrupts, and shutdown never comes.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a SIGTERM that came meanwhile is taken now


def check(argv: Sequence[str] | None = None) -> int:
    """`python -m mcp_middleware.gateway.serverless CONFIG`: what `check-config` checks, then the profile's rules.

    Prints each problem and warning with its key and line; exits 0 when the handler would start, 2 otherwise.
    """
    from .config_check import check_config

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m mcp_middleware.gateway.serverless CONFIG", file=sys.stderr)
        return 2
    try:
        config = load_config(args[0])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    problems, warnings = check_config(config)
    profile_problems, profile_warnings = serverless_problems(config)
    for warning in [*warnings, *profile_warnings]:
        print(f"{args[0]}: warning: {warning}", file=sys.stderr)
    if problems or profile_problems:
        print(ConfigError([*problems, *profile_problems], args[0]), file=sys.stderr)
        return 2
    print(f"{args[0]}: OK for the serverless profile — {len(config.servers)} servers")
    return 0


def __getattr__(name: str) -> ServerlessGateway:
    """`handler`, built on first access: the Lambda runtime reads it in its init phase (the cold start).

    Built lazily so that importing this module (tests, doctests, tools) needs neither mangum nor a config.
    """
    if name != "handler":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = handler_from_environment()
    globals()["handler"] = built
    return built


if __name__ == "__main__":
    raise SystemExit(check())
