"""The package's public surface: every exported name resolves, and importing the package stays light."""

from __future__ import annotations

import sys

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
