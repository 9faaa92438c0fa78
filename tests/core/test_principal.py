"""The principal converts to and from the SDK's AccessToken without losing anything."""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken

from mcp_middleware.core.principal import ANONYMOUS, Principal, get_principal, set_principal


def test_round_trip_through_access_token() -> None:
    principal = Principal(
        subject="alice",
        client_id="cli-1",
        scopes=frozenset({"mcp:read", "mcp:write"}),
        issuer="https://issuer.example",
        claims={"tid": "acme", "iss": "https://issuer.example"},
        expires_at=2_000_000_000,
        resource="http://127.0.0.1:8000/mcp",
        token="secret-token",
    )
    token = principal.to_access_token()
    assert isinstance(token, AccessToken)
    assert (token.subject, token.client_id, token.scopes) == ("alice", "cli-1", ["mcp:read", "mcp:write"])
    assert token.claims == {"tid": "acme", "iss": "https://issuer.example"}
    assert token.token == "secret-token"
    back = Principal.from_access_token(token)
    assert back == principal
    assert back.tenant == "acme"
    assert back.key == "cli-1|alice|https://issuer.example"


def test_token_is_never_in_repr() -> None:
    assert "secret" not in repr(Principal(subject="a", token="secret"))


def test_anonymous_is_the_default() -> None:
    scope: dict[str, object] = {"type": "http"}
    assert get_principal(scope) is ANONYMOUS
    assert not ANONYMOUS.authenticated
    assert ANONYMOUS.to_access_token().client_id == ""
    alice = Principal(subject="alice", scopes=frozenset({"a", "b"}))
    set_principal(scope, alice)
    assert get_principal(scope) is alice
    assert alice.authenticated and alice.has_scopes({"a"}) and not alice.has_scopes({"a", "c"})
