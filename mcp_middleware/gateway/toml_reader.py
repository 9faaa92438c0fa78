"""Reading a parsed TOML file into typed values, collecting every problem with its key and line.

The config schema (`config.py`) asks a :class:`Reader` for each key with its type and default;
the reader records what is wrong instead of stopping, so one run reports every problem, and
:class:`Lines` finds where each key path is written in the text (best effort).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Lines", "Problem", "Reader", "describe", "did_you_mean"]

T = TypeVar("T")

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file: where (`path`, `line`) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}" + (f" (line {self.line})" if self.line else "")
        return f"{where}: {self.message}"


# --- where a key is in the file -----------------------------------------------------------------


class Lines:
    """Finds the line of a key path in TOML text (tables, arrays of tables, dotted keys); best effort."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-. ])+?)\s*=""")
    _PART = re.compile(r"""\s*("[^"]*"|'[^']*'|[^."']+)\s*\.?""")

    def __init__(self, text: str) -> None:
        # (table path with array indexes, key, line): e.g. ("servers[1]", "url", 12)
        self.entries: list[tuple[str, str | None, int]] = []
        counts: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), 1):
            header = self._HEADER.match(line)
            if header:
                name = self._within_arrays(
                    ".".join(part.strip().strip("\"'") for part in header.group(2).split(".")), counts
                )
                if header.group(1) == "[[":
                    index = counts.get(name, 0)
                    counts[name] = index + 1
                    table = f"{name}[{index}]"
                else:
                    table = name
                self.entries.append((table, None, number))
                continue
            key = self._KEY.match(line)
            if key and not line.lstrip().startswith("#"):
                dotted = ".".join(part.strip().strip("\"'") for part in self._PART.findall(key.group(1)))
                self.entries.append((table, dotted, number))

    @staticmethod
    def _within_arrays(name: str, counts: dict[str, int]) -> str:
        """`servers.scopes` after `[[servers]]` is `servers[n].scopes`: the latest element of each enclosing array."""
        parts = name.split(".")
        resolved = ""
        for index, part in enumerate(parts[:-1]):
            resolved = f"{resolved}.{part}" if index else part
            if resolved in counts:
                resolved = f"{resolved}[{counts[resolved] - 1}]"
        return f"{resolved}.{parts[-1]}" if resolved else parts[-1]

    def find(self, path: str) -> int | None:
        best: int | None = None
        for table, key, number in self.entries:
            full = table if key is None else (f"{table}.{key}" if table else key)
            if full == path:
                return number
            if path.startswith(full + ".") or path.startswith(full + "["):
                best = number  # the closest enclosing table or key seen so far
        return best


# --- the reader ---------------------------------------------------------------------------------

_MISSING: Any = object()


class Reader:
    """Reads typed values out of a parsed TOML table, collecting problems instead of stopping."""

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        problems: list[Problem],
        lines: Lines,
        warnings: list[Problem] | None = None,
    ) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.lines = lines
        self.warnings: list[Problem] = [] if warnings is None else warnings
        """Shared by every reader of one file: what is accepted but should change (deprecated names)."""
        self.seen: set[str] = set()
        self.written_as: dict[str, str] = {}
        """Canonical key → the deprecated name the file used for it (problems name what the file says)."""

    def _key(self, key: str) -> str:
        key = self.written_as.get(key, key)
        return f"{self.path}.{key}" if self.path else key

    def _child(self, data: Mapping[str, Any], path: str) -> Reader:
        return Reader(data, path, self.problems, self.lines, self.warnings)

    def problem(self, key: str | None, message: str) -> None:
        path = self._key(key) if key else self.path or "(top level)"
        self.problems.append(Problem(path, message, self.lines.find(path)))

    def warn(self, key: str, message: str) -> None:
        path = self._key(key)
        self.warnings.append(Problem(path, message, self.lines.find(path)))

    def deprecated(self, aliases: Mapping[str, str]) -> None:
        """Accept each old name of `aliases` (old → new) for its new one, with a warning naming the new key.

        The old names are the TOML layer's own from before it spoke the middlewares' vocabulary;
        they are read for one more release.
        """
        if not any(old in self.data for old in aliases):
            return
        data = dict(self.data)
        for old, new in aliases.items():
            if old not in data:
                continue
            self.seen.add(old)
            if new in data:
                self.problem(old, f"and {new} say the same thing: keep {new} ({old} is its deprecated name)")
                del data[old]
                continue
            data[new] = data.pop(old)
            self.written_as[new] = old
            self.warn(
                new, f"is deprecated: write {new} (the name the Python API uses); {old} is read until the next release"
            )
        self.data = data

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.problem(key, "is required")
            return default
        return self.data[key]

    def _typed(self, key: str, default: T, check: Callable[[Any], bool], expected: str) -> T:
        value = self.raw(key, default)
        if value is default:
            return default
        if not check(value):
            self.problem(key, f"must be {expected}, not {describe(value)}")
            return default
        return value  # type: ignore[no-any-return]

    def string(self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] = ()) -> Any:
        value = self._typed(key, default, lambda v: isinstance(v, str), "a string")
        if isinstance(value, str) and value is not default:
            value = self.secret(key, value)
            if choices and value not in choices:
                self.problem(key, f"must be one of {', '.join(map(repr, choices))}, not {value!r}")
                return default
        return value

    def secret(self, key: str, value: str) -> str:
        """Resolve `${env:NAME}` (and `${env:NAME:-default}`) references from the environment."""

        def resolve(match: re.Match[str]) -> str:
            name, fallback = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is None:
                if fallback is not None:
                    return fallback
                self.problem(key, f"refers to environment variable {name}, which is not set")
                return ""
            return found

        return _ENV_REF.sub(resolve, value) if "${env:" in value else value

    def boolean(self, key: str, default: bool) -> bool:
        return self._typed(key, default, lambda v: isinstance(v, bool), "true or false")

    def integer(self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._typed(key, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
        if value is not default and not _within(value, minimum, maximum):
            self.problem(key, f"must be {_range_text(minimum, maximum)}, not {value}")
            return default
        return value

    def number(self, key: str, default: float, *, minimum: float | None = None, positive: bool = False) -> float:
        value = self._typed(key, default, lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number")
        if value is default:
            return default
        number = float(value)
        if not math.isfinite(number) or (positive and number <= 0) or (minimum is not None and number < minimum):
            self.problem(
                key,
                f"must be {'a positive' if positive else 'a finite'} number"
                + (f" ≥ {minimum:g}" if minimum is not None else "")
                + f", not {value}",
            )
            return default
        return number

    def size(self, key: str, default: int) -> int:
        """A byte size: an integer, or a string such as `"4MiB"`, `"512 KB"`."""
        value: Any = self.raw(key, None)
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return int(value)
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None or float(match.group(1)) <= 0:
            self.problem(key, f'must be a positive size such as 4194304 or "4MiB", not {describe(value)}')
            return default
        return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value: Any = self.raw(key, default)
        if value is default:
            return tuple(default)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(key, f"must be a list of strings, not {describe(value)}")
            return default
        return tuple(self.secret(key, item) for item in value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.raw(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.problem(key, f"must be a table of strings, not {describe(value)}")
            return {}
        return {name: self.secret(f"{key}.{name}", item) for name, item in value.items()}

    def table(self, key: str) -> Reader:
        value = self.raw(key, {})
        if not isinstance(value, dict):
            self.problem(key, f"must be a table, not {describe(value)}")
            value = {}
        return self._child(value, self._key(key))

    def tables(self, key: str) -> Iterator[Reader]:
        value = self.raw(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problem(key, f"must be an array of tables ([[{self._key(key)}]]), not {describe(value)}")
            return
        for index, item in enumerate(value):
            yield self._child(item, f"{self._key(key)}[{index}]")

    def done(self) -> None:
        """Every key not read is a problem: a typo must not be silently ignored."""
        known = sorted(self.seen)
        for key in self.data:
            if key not in self.seen:
                self.problem(key, "is not a known setting" + did_you_mean(key, known))


def describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}
    return (
        f"{kind.get(type(value), type(value).__name__)} ({value!r})"
        if not isinstance(value, dict | list)
        else kind[type(value)]
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`"; did you mean 'x'?"` for the closest of `choices` to `word`, or `""` when none is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f"; did you mean {found[0]!r}?" if found else ""


def _within(value: int, minimum: int | None, maximum: int | None) -> bool:
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def _range_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"between {minimum} and {maximum}"
    return f"≥ {minimum}" if minimum is not None else f"≤ {maximum}"
