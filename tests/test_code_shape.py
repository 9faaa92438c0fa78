"""Every module of the package stays one concern a maintainer can hold: about 400 lines at most.

(`tests/gateway/test_code_shape.py` also bounds the gateway's functions at 50 lines.) A module that
grows past the bound is split by concern, not given a larger bound here.
"""

from __future__ import annotations

from pathlib import Path

import mcp_middleware

PACKAGE = Path(mcp_middleware.__file__).parent
MAX_MODULE_LINES = 400


def large_modules(root: Path, bound: int) -> list[str]:
    """`path is N lines` for every module under `root` over `bound` lines."""
    large = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > bound:
            large.append(f"{path.relative_to(root)} is {lines} lines (bound {bound})")
    return large


def test_no_module_of_the_package_is_over_400_lines() -> None:
    assert len(list(PACKAGE.rglob("*.py"))) >= 100  # the package is where this test thinks it is
    assert large_modules(PACKAGE, MAX_MODULE_LINES) == []


def test_the_measure_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text("x = 1\n" * 401, encoding="utf-8")
    (tmp_path / "short.py").write_text("x = 1\n" * 400, encoding="utf-8")
    assert large_modules(tmp_path, MAX_MODULE_LINES) == ["pkg/long.py is 401 lines (bound 400)"]
