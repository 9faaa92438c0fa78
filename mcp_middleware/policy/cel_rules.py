"""Rules written in CEL (the Common Expression Language), read from TOML files, compiled once.

A rule file is a TOML array of tables::

    [[rules]]
    id = "payments-cap"                # names the rule in refusals, spans and logs
    effect = "forbid"                  # or "permit"
    match = ["tools/call:pay*"]        # selectors (docs/core.md); default "*"
    when = "arguments.amount > 100"    # a CEL expression; default "true"
    reason = "payments above 100 need a human"

The decision follows Cedar's: a `forbid` whose condition holds denies (it wins over any permit);
otherwise a `permit` whose condition holds allows; otherwise nothing applies (the caller decides
the default). A condition that cannot be evaluated (a missing claim, a wrong type) fails closed:
a forbid denies, a permit does not permit.

At list time the arguments are not known: forbids that read `arguments` are skipped (they judge a
call, not the tool) and permits that read them count as possible, so a tool is listed exactly when
some call of it can pass.

Expressions run on `common-expression-language` (Rust; the `[policy]` extra), imported when a
rule is compiled.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mcp_middleware.core import Selector, clip

from .engine import DEFAULT_DENY, PolicyDecision, PolicyError, PolicyInput, PolicyProblem

__all__ = ["CelPolicyEngine", "CelRule"]

_POSITION = re.compile(r"<input>:(\d+):(\d+)")
_RULES_HEADER = re.compile(r"^\s*\[\[\s*rules\s*\]\]")
_WHEN_KEY = re.compile(r"^\s*when\s*=\s*(\'\'\'|\"\"\")?\s*$|^\s*when\s*=")
_TARGETS_CACHE_SIZE = 4096
_DECISIONS_CACHE_SIZE = 8192
_REMEMBERED_TARGET_LENGTH = 256
_RULE_FIELDS = frozenset({"id", "effect", "match", "when", "reason"})


@dataclass(frozen=True, slots=True)
class CelRule:
    id: str
    effect: Literal["permit", "forbid"]
    selectors: tuple[Selector, ...]
    when: str
    reason: str
    program: Any
    """The compiled `cel.Program`."""
    reads_arguments: bool

    def applies(self, method: str, target: str | None) -> bool:
        return any(selector.matches_parts(method, target) for selector in self.selectors)


def _cel() -> Any:
    try:
        import cel
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise PolicyError(
            [PolicyProblem("cel", "CEL rules need the policy extra: pip install 'mcp-middleware[policy]'")]
        ) from None
    return cel


class CelPolicyEngine:
    """A compiled set of CEL rules (see the module docstring for the file format).

    >>> engine = CelPolicyEngine.from_text('''
    ... [[rules]]
    ... id = "cap"
    ... effect = "forbid"
    ... match = "tools/call:pay"
    ... when = "arguments.amount > 100"
    ... [[rules]]
    ... id = "everyone"
    ... effect = "permit"
    ... ''')
    >>> from mcp_middleware.policy import PolicyInput
    >>> engine.evaluate(PolicyInput({}, "bank", "tools/call", "pay", {"amount": 500})).rule
    'cap'
    """

    def __init__(self, rules: Sequence[CelRule], *, files: Sequence[Path] = ()) -> None:
        self.rules = tuple(rules)
        self.files = tuple(files)
        self._applicable: dict[tuple[str, str | None], tuple[tuple[CelRule, ...], tuple[CelRule, ...]]] = {}
        self._decisions: dict[Hashable, PolicyDecision] = {}
        """Decisions that read no arguments, by principal key, backend, method, target, annotations and phase."""

    @classmethod
    def from_files(cls, files: Iterable[str | Path]) -> CelPolicyEngine:
        paths = [Path(file) for file in files]
        return cls(_compile_files(paths), files=paths)

    @classmethod
    def from_text(cls, text: str, source: str = "<policy>") -> CelPolicyEngine:
        problems: list[PolicyProblem] = []
        rules = _compile_text(text, source, problems, set())
        if problems:
            raise PolicyError(problems)
        return cls(rules)

    def reload(self) -> None:
        """Read and compile the files again; keep the current rules if any problem is found."""
        if self.files:
            rules = _compile_files(list(self.files))
            self.rules, self._applicable, self._decisions = tuple(rules), {}, {}

    def applicable(self, method: str, target: str | None) -> tuple[tuple[CelRule, ...], tuple[CelRule, ...]]:
        """(forbids, permits) whose selectors match, in file order; remembered per short target."""
        key = (method, target)
        found = self._applicable.get(key)
        if found is None:
            matching = [rule for rule in self.rules if rule.applies(method, target)]
            found = (
                tuple(rule for rule in matching if rule.effect == "forbid"),
                tuple(rule for rule in matching if rule.effect == "permit"),
            )
            # Targets come from clients: remember short ones only, in a bounded table.
            if target is None or len(target) <= _REMEMBERED_TARGET_LENGTH:
                if len(self._applicable) >= _TARGETS_CACHE_SIZE:
                    self._applicable.clear()
                self._applicable[key] = found
        return found

    def evaluate(self, request: PolicyInput, /) -> PolicyDecision:
        forbids, permits = self.applicable(request.method, request.target)
        if not forbids and not permits:
            return DEFAULT_DENY
        key = self._memo_key(request, forbids, permits)
        if key is not None:
            decision = self._decisions.get(key)
            if decision is None:
                decision = self._decide(request, forbids, permits)
                if len(self._decisions) >= _DECISIONS_CACHE_SIZE:
                    self._decisions.clear()
                self._decisions[key] = decision
            return decision
        return self._decide(request, forbids, permits)

    @staticmethod
    def _memo_key(request: PolicyInput, forbids: tuple[CelRule, ...], permits: tuple[CelRule, ...]) -> Hashable | None:
        """A key for a decision that depends on nothing but the key's parts, or None."""
        if request.principal_key is None or (request.target is not None and len(request.target) > 256):
            return None
        if request.phase == "call" and any(rule.reads_arguments for rule in (*forbids, *permits)):
            return None
        try:
            annotations = tuple(sorted(request.annotations.items())) if request.annotations else ()
            key = (request.principal_key, request.backend, request.method, request.target, annotations, request.phase)
            hash(key)
        except TypeError:  # an annotation value that is a list or a mapping: decided every time
            return None
        return key

    def _decide(
        self, request: PolicyInput, forbids: tuple[CelRule, ...], permits: tuple[CelRule, ...]
    ) -> PolicyDecision:
        listing = request.phase == "list"
        context = None
        for rule in forbids:
            if listing and rule.reads_arguments:
                continue
            if context is None:
                context = _context(request)
            verdict = _run(rule, context)
            if verdict is not False:  # True, or an error: a forbid fails closed
                return PolicyDecision(False, rule.id, rule.reason if verdict is True else verdict)
        for rule in permits:
            if listing and rule.reads_arguments:
                return PolicyDecision(True, rule.id, rule.reason)
            if context is None:
                context = _context(request)
            if _run(rule, context) is True:
                return PolicyDecision(True, rule.id, rule.reason)
        return DEFAULT_DENY


def _context(request: PolicyInput) -> Any:
    # Lazy: a variable is converted to CEL only when a rule reads it (huge arguments cost nothing otherwise).
    context = _cel().Context()
    context.set_variable_resolver(request.variables().get)
    return context


def _run(rule: CelRule, context: Any) -> bool | str:
    """True/False, or why the condition could not be evaluated (bounded, no values)."""
    try:
        value = rule.program.execute(context)
    except Exception as exc:  # missing claim or key, wrong type, recursion: the rule cannot say yes
        return clip(f"rule {rule.id} could not be evaluated ({type(exc).__name__}: {exc})", 200)
    if isinstance(value, bool):
        return value
    return f"rule {rule.id} gave {type(value).__name__}, not a boolean"


def _compile_files(paths: Sequence[Path]) -> list[CelRule]:
    problems: list[PolicyProblem] = []
    rules: list[CelRule] = []
    ids: set[str] = set()
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(PolicyProblem(str(path), f"cannot be read: {getattr(exc, 'strerror', None) or exc}"))
            continue
        rules += _compile_text(text, str(path), problems, ids)
    if problems:
        raise PolicyError(problems)
    return rules


def _compile_text(text: str, source: str, problems: list[PolicyProblem], ids: set[str]) -> list[CelRule]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        at = re.search(r"at line (\d+)", str(exc))
        problems.append(PolicyProblem(source, f"is not valid TOML: {exc}", int(at.group(1)) if at else None))
        return []
    unknown = sorted(set(data) - {"rules"})
    if unknown:
        problems.append(PolicyProblem(source, f"unknown top-level key(s) {unknown}: rules go in [[rules]]"))
    tables = data.get("rules", [])
    if not isinstance(tables, list):
        problems.append(PolicyProblem(source, "rules must be an array of tables ([[rules]])"))
        return []
    starts, whens = _rule_lines(text)
    rules = []
    for index, table in enumerate(tables):
        line = starts[index] if index < len(starts) else None
        rule = _rule(table, index, source, line, whens.get(index, line), problems, ids)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(
    table: Mapping[str, Any],
    index: int,
    source: str,
    line: int | None,
    when_line: int | None,
    problems: list[PolicyProblem],
    ids: set[str],
) -> CelRule | None:
    def problem(message: str, at: int | None = line) -> None:
        problems.append(PolicyProblem(source, f"rules[{index}]: {message}", at))

    before = len(problems)
    for key in sorted(set(table) - _RULE_FIELDS):
        problem(f"unknown key {key!r} (a rule has {', '.join(sorted(_RULE_FIELDS))})")
    rule_id = table.get("id")
    if not isinstance(rule_id, str) or not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", rule_id):
        problem("id must be 1-64 characters of [A-Za-z0-9_.:-]")
        rule_id = f"rules[{index}]"
    elif rule_id in ids:
        problem(f"id {rule_id!r} is used twice")
    ids.add(rule_id)
    effect: Literal["permit", "forbid"] = "forbid"
    if table.get("effect") in ("permit", "forbid"):
        effect = table["effect"]
    else:
        problem(f"effect must be 'permit' or 'forbid', not {table.get('effect')!r}")
    raw_match = table.get("match", "*")
    texts = [raw_match] if isinstance(raw_match, str) else raw_match
    selectors: list[Selector] = []
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
        problem("match must be a selector or a non-empty list of selectors")
    else:
        for text in texts:
            try:
                selectors.append(Selector.parse(text))
            except ValueError as exc:
                problem(f"match: {exc}")
    when = table.get("when", "true")
    reason = table.get("reason", "")
    if not isinstance(reason, str):
        problem("reason must be a string")
        reason = ""
    program = None
    if not isinstance(when, str):
        problem("when must be a CEL expression (a string)")
    else:
        try:
            program = _cel().compile(when)
        except ValueError as exc:
            at = _POSITION.search(str(exc))
            offset = int(at.group(1)) - 1 if at else 0
            column = f", column {at.group(2)}" if at else ""
            message = str(exc).split("ERROR: <input>:", 1)[-1].split("\n", 1)[0]
            problem(f"when: CEL syntax error{column}: {clip(message, 200)}", when_line + offset if when_line else line)
    if len(problems) > before or program is None:
        return None
    reads_arguments = "arguments" in program.variables()
    return CelRule(rule_id, effect, tuple(selectors), when, clip(reason, 200), program, reads_arguments)


def _rule_lines(text: str) -> tuple[list[int], dict[int, int]]:
    """The line of each `[[rules]]` header, and of each rule's `when =` key (best effort)."""
    starts: list[int] = []
    whens: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if _RULES_HEADER.match(line):
            starts.append(number)
        elif starts and (found := _WHEN_KEY.match(line)):
            # A multi-line `when = '''` string starts on the line after its key.
            whens[len(starts) - 1] = number + (1 if found.group(1) else 0)
    return starts, whens
