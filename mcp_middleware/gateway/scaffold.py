"""`mcp-gateway new-server NAME`: a working MCP server package, its test, and its `[[servers]]` entry.

It writes `NAME/__init__.py`, `NAME/server.py` (an `MCPServer` with one typed tool) and
`NAME/test_server.py` (the tool called with the SDK `Client` in both protocol eras, in process),
and prints the entry to paste into gateway.toml. The generated test passes as generated
(tests/gateway/test_new_server.py runs it).

The files are templates shipped as package data (`templates/new_server/*.tmpl`, in the wheel
with the package), not string constants: each one reads as the file it becomes, and `$name`
(`string.Template`) is the only substitution, so Python's own braces and quotes need no escaping.
Nothing is ever overwritten: an existing `NAME` is refused, and each file is created exclusively.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from importlib import resources
from pathlib import Path
from string import Template

from mcp_middleware.core.errors import McpMiddlewareError

__all__ = ["ScaffoldError", "new_server", "server_entry", "write_server"]

_FILES = ("__init__.py", "server.py", "test_server.py")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""A Python identifier that is also a gateway server name (`[A-Za-z0-9_-]{1,64}`): ASCII, ≤ 64 characters."""


class ScaffoldError(McpMiddlewareError):
    """NAME or the folder cannot be used; the message is the one line the CLI prints."""


def new_server(name: str, folder: Path) -> int:
    """The command: write the package, print what was written and the entry; 0, or 2 with one line on stderr."""
    try:
        package = write_server(name, folder)
    except ScaffoldError as exc:
        print(f"mcp-gateway new-server: {exc}", file=sys.stderr)
        return 2
    print(f"created {package}/ ({', '.join(_FILES)})")
    print(f"test it:  python -m pytest {package}")
    print(f"serve it: add this to a gateway.toml in {folder.resolve()} (or with that folder on PYTHONPATH):\n")
    print(server_entry(name))
    return 0


def write_server(name: str, folder: Path) -> Path:
    """Write the package `folder/name/`; raises :class:`ScaffoldError` before writing anything it refuses."""
    _check_name(name)
    if not folder.is_dir():
        raise ScaffoldError(f"{str(folder)!r} is not a directory")
    package = folder / name
    if package.exists() or package.is_symlink():
        raise ScaffoldError(f"{str(package)!r} already exists: nothing was written")
    _check_unshadowed(name)
    try:
        package.mkdir()  # not exist_ok: whatever is there (a folder, a file, a link) stays as it is
    except FileExistsError:
        raise ScaffoldError(f"{str(package)!r} already exists: nothing was written") from None
    except OSError as exc:
        raise ScaffoldError(f"cannot create {str(package)!r}: {exc.strerror or exc}") from None
    templates = resources.files(__package__ or "mcp_middleware.gateway").joinpath("templates", "new_server")
    for file in _FILES:
        text = Template(templates.joinpath(f"{file}.tmpl").read_text(encoding="utf-8")).substitute(name=name)
        with (package / file).open("x", encoding="utf-8") as out:
            out.write(text)
    return package


def server_entry(name: str) -> str:
    """The `[[servers]]` entry serving the package: its module-level `server`, imported in process."""
    return f'[[servers]]\nname = "{name}"\napp = "{name}.server:server"'


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ScaffoldError(
            f"{name!r} is not a package name: use letters, digits and _, a letter or _ first, at most 64 characters"
        )
    if keyword.iskeyword(name):
        raise ScaffoldError(f"{name!r} is a Python keyword: it cannot be imported; choose another name")


def _check_unshadowed(name: str) -> None:
    if name in sys.stdlib_module_names or _importable(name):
        raise ScaffoldError(f"{name!r} is already an importable module: the new package would shadow it or be shadowed")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return True  # something by that name is there and broken: still a clash
