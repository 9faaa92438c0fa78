"""`[[servers]] auth.exchange` and `tls`: read, and refused with key and line where they cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_middleware.gateway.backends import load_backend
from mcp_middleware.gateway.config import ConfigError, parse_config
from mcp_middleware.router import HttpBackend, PoolBackend
from tests.conftest import self_signed_certificate


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return [(p.path, p.line, p.message) for p in caught.value.problems]


EXCHANGE = """
[servers.auth.exchange]
token_endpoint = "https://idp.example/token"
audience = "https://saas.example"
client_id = "gateway"
client_secret = "${env:GW_TEST_EXCHANGE_SECRET}"
"""


def test_an_exchange_is_read_with_its_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EXCHANGE_SECRET", "from-env")
    config = parse_config(
        '[[servers]]\nname = "saas"\nurl = "https://saas.example/mcp"\n'
        + EXCHANGE
        + 'resource = "https://saas.example/mcp"\n'
    )
    exchange = config.servers[0].exchange
    assert exchange is not None and exchange.client_secret == "from-env" and exchange.audience == "https://saas.example"
    assert exchange.resource == "https://saas.example/mcp" and exchange.auth_method == "client_secret_basic"
    assert "from-env" not in repr(exchange)  # a secret is never shown
    backend = load_backend(config.servers[0], Path("."))
    assert isinstance(backend, HttpBackend) and backend.credentials is not None


def test_an_exchange_on_a_backend_without_http_is_refused_with_key_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EXCHANGE_SECRET", "x")
    found = problems('[[servers]]\nname = "local"\ncommand = "python server.py"\n' + EXCHANGE)
    assert found == [
        (
            "servers[0].auth.exchange",
            5,
            "is for url backends only (an app or a command has no HTTP connection to carry it)",
        )
    ]
    found = problems('[[servers]]\nname = "local"\napp = "tests.servers:build_server"\n' + EXCHANGE)
    assert found[0][0] == "servers[0].auth.exchange"


def test_an_exchange_beside_a_static_authorization_is_refused_also_on_a_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EXCHANGE_SECRET", "x")
    for url in ('"https://saas.example/mcp"', '["https://a.example/mcp", "https://b.example/mcp"]'):
        both = problems(
            f'[[servers]]\nname = "saas"\nurl = {url}\nheaders = {{ Authorization = "Bearer static" }}\n' + EXCHANGE
        )
        assert both == [("servers[0].headers", 4, "sets Authorization, which auth.exchange replaces: keep one of them")]


def test_a_pool_of_urls_has_one_exchange_shared_by_its_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EXCHANGE_SECRET", "x")
    config = parse_config(
        '[[servers]]\nname = "saas"\nurl = ["https://a.example/mcp", "https://b.example/mcp"]\n' + EXCHANGE
    )
    pool = load_backend(config.servers[0], Path("."))
    assert isinstance(pool, PoolBackend) and pool.credentials is not None
    assert pool.credentials.backend == "saas"  # one cache, the pool's: its audience, not a replica's
    assert all(isinstance(r, HttpBackend) and r.credentials is pool.credentials for r in pool.replicas)
    on_processes = problems('[[servers]]\nname = "saas"\ncommand = "python s.py"\nreplicas = 2\n' + EXCHANGE)
    assert on_processes[0][0] == "servers[0].auth.exchange" and "url backends only" in on_processes[0][2]


def test_the_token_endpoint_has_its_own_ca_bundle_and_client_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_EXCHANGE_SECRET", "x")
    cert, key = self_signed_certificate(tmp_path)
    config = parse_config(
        '[[servers]]\nname = "saas"\nurl = "https://saas.example/mcp"\n'
        + EXCHANGE
        + f'ca_bundle = "{cert}"\nclient_cert = "{cert}"\nclient_key = "{key}"\n'
    )
    exchange = config.servers[0].exchange
    assert exchange is not None and (exchange.ca_bundle, exchange.client_cert) == (str(cert), str(cert))
    assert isinstance(load_backend(config.servers[0], tmp_path), HttpBackend)
    missing = problems(
        '[[servers]]\nname = "saas"\nurl = "https://saas.example/mcp"\n'
        + EXCHANGE
        + f'ca_bundle = "{tmp_path}/no.pem"\n'
    )
    assert missing == [
        ("servers[0].auth.exchange.ca_bundle", 10, f"names '{tmp_path}/no.pem', which is not a readable file")
    ]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    garbage = problems(
        '[[servers]]\nname = "saas"\nurl = "https://saas.example/mcp"\n' + EXCHANGE + f'ca_bundle = "{not_pem}"\n'
    )
    assert garbage[0][0] == "servers[0].auth.exchange.ca_bundle" and "cannot be loaded" in garbage[0][2]


def test_an_exchange_needs_its_endpoint_and_client_credentials() -> None:
    found = problems(
        '[[servers]]\nname = "saas"\nurl = "https://saas.example/mcp"\n'
        '[servers.auth.exchange]\naudience = "x"\nauth_method = "client_secret_post"\nsecret = "typo"\n'
    )
    assert ("servers[0].auth.exchange.token_endpoint", 4, "is required") in found
    assert (
        "servers[0].auth.exchange.client_id",
        4,
        "and client_secret are required with auth_method = 'client_secret_post'",
    ) in found
    assert any(path == "servers[0].auth.exchange.secret" and line == 7 for path, line, _ in found)
    assert problems('[[servers]]\nname = "saas"\nurl = "https://s/mcp"\nauth = {}\n') == [
        ("servers[0].auth.exchange", 4, "is required")
    ]


def test_tls_files_must_exist_and_load(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    config = parse_config(
        f'[[servers]]\nname = "s"\nurl = "https://127.0.0.1:1/mcp"\n'
        f'tls = {{ client_cert = "{cert}", client_key = "{key}", ca_bundle = "{cert}" }}\n'
    )
    tls = config.servers[0].tls
    assert tls is not None and tls.client_cert == str(cert)
    backend = load_backend(config.servers[0], tmp_path)
    assert isinstance(backend, HttpBackend) and backend.ssl_context is not None
    missing = problems(
        f'[[servers]]\nname = "s"\nurl = "https://127.0.0.1:1/mcp"\n'
        f'tls = {{ client_cert = "{tmp_path}/nope.pem", client_key = "{key}" }}\n'
    )
    assert missing == [("servers[0].tls.client_cert", 4, f"names '{tmp_path}/nope.pem', which is not a readable file")]
    not_a_key = problems(
        f'[[servers]]\nname = "s"\nurl = "https://127.0.0.1:1/mcp"\n'
        f'tls = {{ client_cert = "{cert}", client_key = "{cert}" }}\n'
    )
    assert not_a_key[0][:2] == ("servers[0].tls.client_key", 4) and "cannot be loaded" in not_a_key[0][2]
    on_command = problems(f'[[servers]]\nname = "s"\ncommand = "python x.py"\ntls = {{ ca_bundle = "{cert}" }}\n')
    assert on_command[0][:2] == ("servers[0].tls", 4)
