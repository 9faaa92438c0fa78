"""The package's public surface: every exported name resolves, and importing the package stays light."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import mcp_middleware
from tests.support import processes


def test_every_exported_name_resolves() -> None:
    for name in mcp_middleware.__all__:
        assert getattr(mcp_middleware, name) is not None, name


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        mcp_middleware.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_importing_the_package_loads_no_middleware_dependency() -> None:
    code = (
        "import sys, mcp_middleware; "
        "print(sorted(m for m in ('authlib', 'joserfc', 'limits', 'redis', 'opentelemetry.sdk', 'cachetools',"
        " 'mcp_middleware.auth', 'mcp_middleware.ratelimit') if m in sys.modules))"
    )
    done = processes.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# What the top level exports: each a thing a user constructs (or reads in a tool). A change here is a
# change to the public surface, and needs a CHANGELOG line.
_EXPORTED = {
    "AccessLog",
    "ApprovalMiddleware",
    "AuthMiddleware",
    "AuthOptions",
    "BreakerOptions",
    "BreakerPolicy",
    "BucketPolicy",
    "CacheOptions",
    "CachePolicy",
    "CircuitBreakerMiddleware",
    "CoreConfig",
    "EmbeddedAuthorizationServer",
    "HttpBackend",
    "InProcessBackend",
    "IntrospectionTokenVerifier",
    "JwksTokenVerifier",
    "McpCoreMiddleware",
    "McpMiddlewareError",
    "McpRouter",
    "McpStack",
    "MemoryBucketStore",
    "MemoryCacheStore",
    "NamingPolicy",
    "PrometheusMetrics",
    "PrometheusMiddleware",
    "QuotaPolicy",
    "RateLimitMiddleware",
    "RateLimitOptions",
    "RedisBucketStore",
    "RedisCacheStore",
    "ResponseCacheMiddleware",
    "RetryPolicy",
    "StaticTokenVerifier",
    "StdioBackend",
    "TracingMiddleware",
    "TracingOptions",
    "WebhookApprover",
    "__version__",
    "configure_logging",
    "get_mcp_request",
    "get_principal",
    "stack",
}
_PACKAGES = ("core", "approval", "auth", "auth.server", "breaker", "cache", "ratelimit", "router", "tracing", "gateway")


def test_exported_members() -> None:
    assert set(mcp_middleware.__all__) == _EXPORTED
    assert len(mcp_middleware.__all__) == len(_EXPORTED)  # no duplicates


def test_every_package_exports_only_what_it_defines_publicly() -> None:
    for package in _PACKAGES:
        module = importlib.import_module(f"mcp_middleware.{package}")
        exported = getattr(module, "__all__", [])
        assert len(set(exported)) == len(exported), package
        for name in exported:
            assert not name.startswith("_"), f"{package}.{name}"
            assert getattr(module, name, None) is not None, f"{package}.{name}"


def test_moved_names_still_resolve_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"mcp_middleware\.core"):
        code = mcp_middleware.ErrorCode  # type: ignore[attr-defined]
    from mcp_middleware.core import ErrorCode

    assert code is ErrorCode


def test_the_package_raises_one_family_of_errors() -> None:
    """Every exception class the package defines derives from `McpMiddlewareError` (private ones aside)."""
    strays = []
    for path in sorted(Path(mcp_middleware.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = ".".join(path.relative_to(Path(mcp_middleware.__file__).parent.parent).with_suffix("").parts)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                cls = getattr(importlib.import_module(module.removesuffix(".__init__")), node.name, None)
                if (
                    isinstance(cls, type)
                    and issubclass(cls, BaseException)
                    and not issubclass(cls, mcp_middleware.McpMiddlewareError)
                ):
                    strays.append(f"{module}.{node.name}")
    assert strays == []
