"""How a failed TLS connection is named (`router.tls.tls_refusal`): the exception chains the data path and
the readiness probe really see, including the one CI met where the TLS layer's "want read" is the only
trace of the handshake under a broken connection (the server hung up on a certificate it refused)."""

from __future__ import annotations

import ssl

import anyio
import pytest

from mcp_middleware.router.tls import tls_refusal


def _raised_while(context: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise context
        except BaseException:
            raise outer  # noqa: B904 (the implicit __context__ is the point)
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "context",
    [
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"),
        ssl.SSLWantReadError(2, "The operation did not complete (read)"),
    ],
    ids=["eof", "zero-return", "want-read"],
)
def test_a_connection_broken_inside_tls_says_the_server_closed_it(context: BaseException) -> None:
    found = tls_refusal(_raised_while(context, anyio.BrokenResourceError()))
    assert found is not None and found.startswith("tls: the server closed the connection after the handshake")
    assert "tls.client_cert" in found


def test_an_untrusted_certificate_names_the_ca_setting() -> None:
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    found = tls_refusal(_raised_while(error, OSError("connect failed")), settings="auth.exchange")
    assert found is not None and "not trusted" in found and "auth.exchange.ca_bundle" in found


@pytest.mark.parametrize("plain", [ConnectionRefusedError(), TimeoutError(), anyio.EndOfStream(), OSError("x")])
def test_failures_without_tls_in_them_are_not_called_tls(plain: BaseException) -> None:
    assert tls_refusal(plain) is None
