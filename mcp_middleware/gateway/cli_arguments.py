"""The arguments of `mcp-gateway`'s smaller commands (audit, token, health-check, new-server), and their types."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = [
    "HEALTH_CHECK_HELP",
    "NEW_SERVER_HELP",
    "TOKEN_HELP",
    "audit_arguments",
    "health_check_arguments",
    "new_server_arguments",
    "positive_count",
    "positive_seconds",
    "token_arguments",
]


def audit_arguments(audit: argparse.ArgumentParser) -> None:
    verify = audit.add_subparsers(dest="audit_command", required=True, metavar="command").add_parser(
        "verify",
        help="check the hash chain of audit files (oldest first): exit 0 when intact, 1 naming the first bad record",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--with-backups", action="store_true", help="also check FILE's rotated files (FILE.N … FILE.1) before it"
    )
    verify.add_argument(
        "--key-env",
        action="append",
        default=[],
        metavar="NAME",
        help="the environment variable holding the chain's key ([audit] key); repeat for rotated keys",
    )


TOKEN_HELP = "log in to a running dev-mode gateway and print an access token (for curl, the MCP Inspector)"


def token_arguments(token: argparse.ArgumentParser) -> None:
    token.add_argument("--subject", help="the user name to log in as (default: the dev server's default user)")
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a scope to ask for (repeatable, or space-separated; default: every scope the gateway issues)",
    )
    token.add_argument(
        "--resource",
        "--audience",
        dest="resource",
        help="what the token is for: a server's name (its mount /mcp/{name}) or a resource URL "
        "(default: the aggregate)",
    )
    token.add_argument("--url", help="the gateway's base URL (default: from the config: public_url, or host and port)")
    token.add_argument("--port", type=int, help="the port the gateway listens on (default: $PORT, then [gateway].port)")


HEALTH_CHECK_HELP = (
    "probe every configured server over MCP (handshake and tools/list, all at once) without serving, and print "
    "name, kind, state, latency and tools; exit 1 unless every required server is healthy"
)
NEW_SERVER_HELP = (
    "write a new MCP server package (an MCPServer with one tool, and its test) and print its [[servers]] entry"
)


def health_check_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--timeout",
        type=positive_seconds,
        help="seconds each server has for its probe (default: the server's own `timeout`)",
    )
    sub.add_argument("--json", action="store_true", help="print one JSON document instead of the table")


def positive_count(text: str) -> int:
    """A whole number from 1 (argparse prints the message and exits 2 otherwise)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1, not {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    """A finite number of seconds above zero (argparse prints the message and exits 2 otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above zero, not {text!r}")
    return value


def new_server_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", help="the package name: a Python identifier (letters, digits, _), also the server's name")
    sub.add_argument("--dir", type=Path, default=Path(), help="the folder to write NAME/ in (default: here)")
