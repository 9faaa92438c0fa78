"""Fixed tokens for development and tests: never for production."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mcp.server.auth.provider import AccessToken

from .verification import TokenRejected

__all__ = ["StaticTokenVerifier"]


class StaticTokenVerifier:
    """Accept a fixed set of tokens, each standing for a configured caller.

    `tokens` maps a token to an `AccessToken` (its `token` field is filled in) or to a
    list of scopes (the caller is then subject = client id = `"dev"`). `resource` is
    the audience every token is taken to have been issued for (the MCP endpoint URI).

    >>> verifier = StaticTokenVerifier({"dev-token": ["mcp:read"]}, resource="http://127.0.0.1:8000/mcp")
    """

    def __init__(
        self,
        tokens: Mapping[str, AccessToken | Sequence[str]],
        *,
        resource: str | None = None,
        subject: str = "dev",
    ) -> None:
        self._tokens: dict[str, AccessToken] = {}
        for token, value in tokens.items():
            if isinstance(value, AccessToken):
                access = value.model_copy(update={"token": token})
                if access.resource is None:
                    access = access.model_copy(update={"resource": resource})
            else:
                access = AccessToken(
                    token=token, client_id=subject, scopes=list(value), subject=subject, resource=resource
                )
            self._tokens[token] = access

    async def verify_token(self, token: str) -> AccessToken | None:
        return self._tokens.get(token)

    async def check(self, token: str) -> AccessToken:
        access = self._tokens.get(token)
        if access is None:
            raise TokenRejected("Unknown token")
        return access
