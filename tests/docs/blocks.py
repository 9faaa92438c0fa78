"""The fenced code blocks of docs/*.md and README.md, and the markers that say how each is checked.

A marker is an HTML comment on the line(s) directly above a fence (no blank line between; indented
like the fence inside a list item). Markdown renders nothing for it:

    <!-- fragment -->                  not run (any language); say why: <!-- fragment: needs a live IdP -->
    <!-- continue -->                  python: run in the namespace the file's previous run python block left
    <!-- run: import-only -->          python: executed with `uvicorn.run` replaced by a recorder; nothing served
    <!-- mcp-path: /tools/mcp -->      python: where the block's `app` serves MCP (default /mcp)
    <!-- toml: syntax-only -->         toml that is not a gateway config: parsed with tomllib only

How each language is checked is in tests/docs/test_code_blocks.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<lang>[^`\s]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<name>[a-z-]+)(?:\s*:\s*(?P<value>.*?))?\s*-->\s*$")
KNOWN_MARKERS = {"fragment", "continue", "run", "mcp-path", "toml"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    """1-based line of the opening fence."""
    lang: str
    code: str
    markers: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    @property
    def fragment(self) -> bool:
        return "fragment" in self.markers


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of one Markdown file, in order, with its markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{index + 1}: the fence is never closed")
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[index + 1 : end]]
        markers: dict[str, str] = {}
        above = index - 1
        while above >= 0 and (marker := _MARKER.match(lines[above])):
            markers[marker["name"]] = marker["value"] or ""
            above -= 1
        found.append(Block(path, index + 1, opening["lang"].lower(), "\n".join(body) + "\n", markers))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in DOCUMENTS for block in blocks_of(path)]
