"""`[[servers]] auth` and `tls`: a `url` backend's own credentials (RFC 8693 exchange) and client certificate.

    [[servers]]
    name = "saas"
    url = "https://saas.example/mcp"
    auth = { exchange = { token_endpoint = "https://idp.example/token", audience = "https://saas.example",
                          scope = "tools", client_id = "gateway", client_secret = "${env:GATEWAY_SECRET}" } }
    tls = { client_cert = "/etc/gw/client.pem", client_key = "/etc/gw/client.key", ca_bundle = "/etc/gw/ca.pem" }

Both are for `url` backends only (an in-process app or a stdio command has no HTTP side to carry them), a
pool of URL replicas included (one exchange per caller for the pool: its audience). The token endpoint
has its own `ca_bundle` (an internal IdP with a private CA) and, if it asks for one, `client_cert` and
`client_key`, written as in `tls`:

    auth = { exchange = { token_endpoint = "https://idp.internal/token", ca_bundle = "/etc/gw/idp-ca.pem", … } }
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from mcp_middleware.router.credentials import TokenExchange
from mcp_middleware.router.tls import client_tls_context

from .toml_reader import Reader

__all__ = ["BackendTls", "backend_exchange", "backend_tls"]

_URL_ONLY = "is for url backends only (an app or a command has no HTTP connection to carry it)"


@dataclass(frozen=True)
class BackendTls:
    """How the gateway reaches an `https` backend: its client certificate (mTLS) and the CAs it trusts."""

    client_cert: str | None = None
    client_key: str | None = None
    ca_bundle: str | None = None

    def context(self) -> ssl.SSLContext:
        """The `SSLContext` (built once, when the backend is made): system CAs unless `ca_bundle`."""
        return client_tls_context(ca_bundle=self.ca_bundle, client_cert=self.client_cert, client_key=self.client_key)


def backend_exchange(reader: Reader, kind: str, headers: dict[str, str]) -> TokenExchange | None:
    """`auth = { exchange = { … } }`, or None without it."""
    if "auth" not in reader.data:
        return None
    auth = reader.table("auth")
    if "exchange" not in auth.data:
        auth.raw("exchange")  # "is required": the one kind of backend auth there is
        auth.done()
        return None
    table = auth.table("exchange")
    auth.done()
    if kind != "url":
        table.problem(None, _URL_ONLY)
    endpoint = table.string("token_endpoint")
    if isinstance(endpoint, str) and not endpoint.startswith(("https://", "http://")):
        table.problem("token_endpoint", f"must be an http:// or https:// URL, not {endpoint!r}")
    client_id = table.string("client_id", None)
    secret = table.string("client_secret", None)
    method = table.string(
        "auth_method",
        "client_secret_basic" if secret else "none",
        choices=("client_secret_basic", "client_secret_post", "none"),
    )
    if method != "none" and not (client_id and secret):
        table.problem("client_id", f"and client_secret are required with auth_method = {method!r}")
    tls = _tls_files(table)  # the token endpoint's own CA bundle and client certificate
    exchange = TokenExchange(
        token_endpoint=endpoint if isinstance(endpoint, str) else "",
        audience=table.string("audience", None),
        resource=table.string("resource", None),
        scope=table.string("scope", None),
        client_id=client_id,
        client_secret=secret,
        auth_method=method,
        timeout=table.number("timeout", TokenExchange.timeout, positive=True),
        refresh_before=table.number("refresh_before", TokenExchange.refresh_before, minimum=0),
        ca_bundle=tls.ca_bundle,
        client_cert=tls.client_cert,
        client_key=tls.client_key,
    )
    table.done()
    if any(name.lower() == "authorization" for name in headers):
        reader.problem("headers", "sets Authorization, which auth.exchange replaces: keep one of them")
    return exchange


def backend_tls(reader: Reader, kind: str) -> BackendTls | None:
    """`tls = { client_cert, client_key, ca_bundle }`: each file must exist and load; None without it."""
    if "tls" not in reader.data:
        return None
    table = reader.table("tls")
    if kind != "url":
        table.problem(None, _URL_ONLY)
    tls = _tls_files(table)
    table.done()
    return tls


def _tls_files(table: Reader) -> BackendTls:
    """`client_cert`, `client_key` and `ca_bundle` of `table`: each file must exist and load."""
    files = {key: table.string(key, None) for key in ("client_cert", "client_key", "ca_bundle")}
    for key, value in files.items():
        if value is not None and not Path(value).is_file():
            table.problem(key, f"names {value!r}, which is not a readable file")
            files[key] = None
    if files["client_key"] is not None and files["client_cert"] is None and "client_cert" not in table.data:
        table.problem("client_cert", "is required with client_key")
    tls = BackendTls(files["client_cert"], files["client_key"], files["ca_bundle"])
    for key, load in (("ca_bundle", _load_ca), ("client_cert", _load_ca), ("client_key", lambda _: tls.context())):
        if files[key] is None:
            continue
        try:
            load(files[key])
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            table.problem(key, f"cannot be loaded: {exc}")
            break
    return tls


def _load_ca(path: str | None) -> None:
    """Whether `path` holds PEM certificates (a CA bundle, or the client's own certificate)."""
    ssl.create_default_context().load_verify_locations(cafile=path)
