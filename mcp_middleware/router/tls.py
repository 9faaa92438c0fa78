"""TLS toward backends and token endpoints: one way to build a client context, one way to name a refusal.

A backend that requires a client certificate (mTLS) and does not like ours may not fail the handshake
where the client sees it: with TLS 1.3 the client's certificate is checked after the client's side of
the handshake is done, and many servers (uvicorn, for one) then close the connection without an alert.
The client sees a completed handshake, then an unclean EOF (`SSLEOFError`) on its first read.
:func:`tls_refusal` names that, an alert, and an untrusted server certificate as `tls: …`, so readiness,
probes and logs say "TLS" instead of "down" or "closed the connection".
"""

from __future__ import annotations

import ssl

from ._causes import causes

__all__ = ["client_tls_context", "tls_refusal"]


def client_tls_context(
    *, ca_bundle: str | None = None, client_cert: str | None = None, client_key: str | None = None
) -> ssl.SSLContext:
    """A client `SSLContext`: the system CAs unless `ca_bundle`, with a client certificate when given.

    Loads files: build it once (when a backend or its credentials are made), never per request."""
    context = ssl.create_default_context(cafile=ca_bundle)
    if client_cert is not None:
        context.load_cert_chain(client_cert, client_key)
    return context


def tls_refusal(exc: BaseException, *, settings: str = "tls") -> str | None:
    """`tls: …` when `exc` (or what it was raised from, or inside an exception group) is a TLS failure,
    else None. `settings` names the config table whose keys the hint names (`tls`, `auth.exchange`)."""
    client_cert = f"if it requires a client certificate: set {settings}.client_cert and {settings}.client_key"
    for found in causes(exc):
        if isinstance(found, ssl.SSLCertVerificationError):
            why = found.verify_message or found.reason or "verify failed"
            return f"tls: the server's certificate is not trusted ({why}; is its CA in {settings}.ca_bundle?)"
        if isinstance(found, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLWantReadError | ssl.SSLWantWriteError):
            # (a "want read/write" in the chain: TLS was waiting for the server when the connection broke)
            return f"tls: the server closed the connection after the handshake ({client_cert})"
        if isinstance(found, ssl.SSLError):
            reason = (found.reason or type(found).__name__).lower().replace("_", " ")
            return f"tls: the handshake failed ({reason}; {client_cert})"
    return None
