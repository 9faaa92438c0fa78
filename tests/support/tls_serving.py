"""An ASGI app under uvicorn over HTTPS with the test CA of `tests.gateway.test_backend_mtls` (`make_pki`).

with serve_tls(app, pki) as base:                          # https://127.0.0.1:port, server cert by the test CA
with serve_tls(app, pki, client_cert=True) as base:        # and a client certificate by that CA required
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from tests.conftest import free_port
from tests.gateway.test_backend_mtls import Pki

__all__ = ["serve_tls"]


@contextlib.contextmanager
def serve_tls(app: ASGIApp, pki: Pki, *, client_cert: bool = False) -> Iterator[str]:
    """Serve `app` (lifespan on) over HTTPS on a free loopback port until the block ends; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="on",
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca),
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_cert else ssl.CERT_NONE,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-tls-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the TLS server did not start"
        time.sleep(0.02)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
