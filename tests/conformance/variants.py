"""The conformance server wrapped in each of this project's middleware stacks, and how one is served.

Every variant serves the same conformance server (`server.py`); the suite must see no difference
between them. Serve one by hand (from the project root):

    .venv/bin/python -m tests.conformance.variants --variant gateway_aggregate --port 8000

* `bare`: the SDK's own app, alone (the baseline);
* `core`: behind `McpCoreMiddleware` (parse once, replay the body, tap the response);
* `stack`: behind tracing → auth (static dev token) → rate limit → cache → breaker;
* `gateway_mount`: the reference gateway (auth, rate limit, breaker, cache, tracing) with the
  server as an in-process backend, at its path mount `/mcp/conformance`;
* `gateway_aggregate`: the same gateway's aggregate `/mcp`, `prefix = "never"` (names kept);
* `gateway_remote_mount`, `gateway_remote_aggregate`: the same two endpoints, the server in a
  uvicorn process of its own behind a `url` backend.
"""

import argparse
import ctypes
import http.client
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import uvicorn
from mcp.shared.exceptions import MCPDeprecationWarning
from starlette.types import ASGIApp

from ..support import processes
from .server import MCP_PATH, bare_app

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 30
SERVER_STOP_TIMEOUT_S = 10
DEV_TOKEN = "conformance-dev-token"
BACKEND_NAME = "conformance"


class ServerStartError(RuntimeError):
    """A server process did not come up."""


class _WithToken:
    """The suite's client sends no credentials; a client with a (static dev) token would send this header.

    Everything behind it verifies the token for real; this only stands in for the client's side.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            scope = {**scope, "headers": [*headers, (b"authorization", f"Bearer {DEV_TOKEN}".encode())]}
        await self.app(scope, receive, send)


def core_app(backend_url: str | None = None) -> ASGIApp:
    from mcp_middleware.core import McpCoreMiddleware

    return McpCoreMiddleware(bare_app())


def stack_app(backend_url: str | None = None) -> ASGIApp:
    """The conformance server behind every middleware, in the recommended order (DESIGN.md §3.2):
    tracing → auth (static dev token) → rate limit (never tripping) → cache → breaker."""
    from mcp_middleware.auth import AuthMiddleware, StaticTokenVerifier
    from mcp_middleware.breaker import CircuitBreakerMiddleware
    from mcp_middleware.cache import ResponseCacheMiddleware
    from mcp_middleware.ratelimit import BucketPolicy, RateLimitMiddleware
    from mcp_middleware.tracing import TracingMiddleware

    app: ASGIApp = CircuitBreakerMiddleware(bare_app())
    app = ResponseCacheMiddleware(app)
    app = RateLimitMiddleware(app, policies=[BucketPolicy(name="conformance", rate=10_000.0, capacity=10_000.0)])
    app = AuthMiddleware(
        app,
        verifier=StaticTokenVerifier({DEV_TOKEN: ["mcp"]}),
        resource="http://127.0.0.1/mcp",
        require_audience=False,
    )
    return _WithToken(TracingMiddleware(app))


def gateway_app(backend_url: str | None = None) -> ASGIApp:
    """The reference gateway with auth (static dev token), rate limits, breaker, cache and tracing all
    on, and one backend, the conformance server: in process, or at `backend_url`. It serves the
    backend both at its path mount `/mcp/conformance` and in the aggregate `/mcp`, names unprefixed."""
    from mcp_middleware.gateway.app import build_gateway
    from mcp_middleware.gateway.config import parse_config

    backend = f'url = "{backend_url}"' if backend_url else 'app = "tests.conformance.server:bare_app"'
    config = parse_config(
        f"""
[gateway]
[aggregate]
prefix = "never"
[[servers]]
name = "{BACKEND_NAME}"
{backend}
[auth]
mode = "static"
[auth.tokens]
"{DEV_TOKEN}" = ["mcp"]
[ratelimit]
[[ratelimit.policies]]
name = "per-user"
capacity = 10000
rate = 10000
[breaker]
[cache]
[tracing]
access_log = false
"""
    )
    return _WithToken(build_gateway(config).app)


@dataclass(frozen=True)
class Variant:
    build: Callable[[str | None], ASGIApp]
    """Builds the app afresh; its argument is the remote backend's URL (None unless `remote`)."""
    path: str = MCP_PATH
    """Where the variant serves MCP."""
    remote: bool = False
    """The conformance server runs in its own uvicorn process and the app reaches it over HTTP."""


MOUNT_PATH = f"{MCP_PATH}/{BACKEND_NAME}"
VARIANTS: dict[str, Variant] = {
    "bare": Variant(lambda _: bare_app()),
    "core": Variant(core_app),
    "stack": Variant(stack_app),
    "gateway_mount": Variant(gateway_app, path=MOUNT_PATH),
    "gateway_aggregate": Variant(gateway_app),
    "gateway_remote_mount": Variant(gateway_app, path=MOUNT_PATH, remote=True),
    "gateway_remote_aggregate": Variant(gateway_app, remote=True),
}
"""One entry per middleware stack under test."""


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


# --- Serving ----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, so no server outlives a killed run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_until_serving(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait for an HTTP answer: uvicorn accepts connections only after the app's lifespan started."""
    while True:
        if process.poll() is not None:
            raise ServerStartError(f"server exited with code {process.returncode} before serving")
        if time.monotonic() > deadline:
            raise ServerStartError(f"server did not answer within {SERVER_START_TIMEOUT_S} s")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        try:
            # Any status will do (an MCP app answers a bare GET with an error): it is alive.
            connection.request("GET", "/")
            connection.getresponse().read()
            return
        except OSError:  # not accepting yet (the socket queues us), or reset
            time.sleep(0.1)
        finally:
            connection.close()


@contextmanager
def serve_in_process(name: str, log: IO[bytes] | None = None) -> Iterator[str]:
    """Serve variant `name` in a child process on a free loopback port; yield its MCP URL.

    The child writes to `log` (default: where this process writes).
    """
    chosen = variant(name)
    # Bind here and hand the listening socket to the child: the port is known up front
    # and cannot be taken by anyone else in between.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        fd = listener.fileno()
        command = [sys.executable, "-m", "tests.conformance.variants", "--variant", name, "--fd", str(fd)]
        # Stopped by SIGTERM to its group (graceful: the lifespan's shutdown runs), then SIGKILL.
        with processes.running(
            command,
            patience=SERVER_STOP_TIMEOUT_S,
            cwd=PROJECT_ROOT,
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            preexec_fn=_die_with_parent,
        ) as process:
            _wait_until_serving(port, process, time.monotonic() + SERVER_START_TIMEOUT_S)
            yield f"http://127.0.0.1:{port}{chosen.path}"


def serve(name: str, *, host: str = "127.0.0.1", port: int = 0, fd: int | None = None) -> None:
    """Serve variant `name` under uvicorn until SIGINT/SIGTERM.

    With `fd`, serve on that already-listening socket (the runner binds it, so the
    port is known before this process starts and nothing can take it meanwhile).
    A remote variant first starts the bare server in a process of its own, stopped on exit.
    """
    # The suite exercises handshake-era features (logging, sampling) the SDK marks deprecated.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    chosen = variant(name)
    with _remote_backend(chosen.remote) as backend_url:
        config = uvicorn.Config(
            chosen.build(backend_url),
            host=host,
            port=port,
            lifespan="on",  # fail loudly if the app (or a middleware) breaks the lifespan protocol
            log_level="warning",
            timeout_graceful_shutdown=3,  # open SSE streams must not hold up shutdown
        )
        sockets = [socket.socket(fileno=fd)] if fd is not None else None
        uvicorn.Server(config).run(sockets=sockets)


@contextmanager
def _remote_backend(wanted: bool) -> Iterator[str | None]:
    if not wanted:
        yield None
        return
    with serve_in_process("bare") as url:  # its log goes where ours goes
        yield url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="bare", choices=list(VARIANTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fd", type=int, help="serve on this inherited, listening socket instead of --port")
    args = parser.parse_args(argv)
    serve(args.variant, host=args.host, port=args.port, fd=args.fd)


if __name__ == "__main__":
    main()
