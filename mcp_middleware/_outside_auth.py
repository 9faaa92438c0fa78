"""Noticing a middleware that depends on the principal but runs outside authentication.

Starlette's `add_middleware` makes the LAST middleware added the OUTERMOST, so a stack typed
"outermost first" comes out inside out: the cache or the rate limiter then sees every request
before any token was checked. They cannot tell in advance; they can tell afterwards, for free:
a request reached them unauthenticated, and by the time the inner app returned it carried a
principal (ours, or an authenticated `scope["user"]` of another auth layer, e.g. the `mcp`
SDK's own). That is the signature of auth running inside them.

This lives beside `core/` (it reads only the core's principal); it belongs in `core/` and
moves there when that package is next open for changes.
"""

from __future__ import annotations

import logging

from starlette.types import Scope

from .core.principal import PRINCIPAL_SCOPE_KEY, Principal

__all__ = ["OutsideAuth", "authenticated"]


def authenticated(scope: Scope) -> bool:
    """Whether some authentication layer has already vouched for this request."""
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is not None:
        return isinstance(principal, Principal) and principal.authenticated
    user = scope.get("user")  # Starlette's AuthenticationMiddleware and the SDK's bearer auth set it
    return user is not None and getattr(user, "is_authenticated", False) is True


class OutsideAuth:
    """Remembers, once and for all, that `component` found itself outside authentication, and says so once.

    Call :meth:`check` after the inner app ran, for a request that was unauthenticated when
    it reached the component; it returns True when authentication happened further in.

    >>> import logging
    >>> guard = OutsideAuth("ResponseCacheMiddleware", "caching is off", logging.getLogger("demo"))
    >>> scope = {}
    >>> guard.check(scope)
    False
    >>> scope[PRINCIPAL_SCOPE_KEY] = Principal(subject="alice")
    >>> guard.check(scope), guard.detected
    (True, True)
    """

    __slots__ = ("component", "consequence", "detected", "logger")

    def __init__(self, component: str, consequence: str, logger: logging.Logger) -> None:
        self.component = component
        self.consequence = consequence
        self.logger = logger
        self.detected = False

    def check(self, scope: Scope) -> bool:
        if not authenticated(scope):
            return False
        if not self.detected:
            self.detected = True
            self.logger.error(
                "%s runs OUTSIDE authentication: a request reached it unauthenticated and was authenticated "
                "further in, so it cannot tell callers apart. %s. Fix: put %s inside AuthMiddleware (with "
                "Starlette/FastAPI add_middleware, add it BEFORE AuthMiddleware: the last one added is the "
                "outermost), or build the whole stack with mcp_middleware.stack(app, auth=..., ...).",
                self.component,
                self.consequence,
                self.component,
            )
        return True
