"""Pattern file loading and checking, and the detector built from it.

Time bound. Each pattern is an RE2 expression (no backtracking: one search costs time linear in
the bytes it reads) whose matches are at most ``MAX_WIDTH`` characters long. The detector
searches the UTF-8 text with one alternation of all patterns. A candidate the validator accepts
moves the search past it; a rejected candidate costs at most one anchored try of the patterns
after it (same start) and moves the search one character past its start. Every search reads
from its start position to at most ``MAX_WIDTH`` characters past the start of the match it
returns, so the total is O(n * MAX_WIDTH * number of patterns): linear in the length of the
text, with constants the pattern file bounds and the loader enforces.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import yaml

from themisdb.errors import ConfigError
from themisdb.pii import _re2
from themisdb.pii._validators import VALIDATORS, Validator

SCHEMA_VERSION = 1
MAX_WIDTH = 1000  # longest match a pattern's expression may produce, in characters
CONTEXT_WINDOW = 64  # characters before a match searched for a context word
CLASSIFICATIONS = ("pii", "restricted", "confidential")
Classification = Literal["pii", "restricted", "confidential"]

_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATTERN_KEYS = frozenset(
    {"name", "regex", "validator", "context", "classification", "redaction", "examples"}
)
_RE2_ONLY_ESCAPE = re.compile(r"\\(?:[pP](?:\{\^?[A-Za-z_]+\}|[A-Za-z])|x\{[0-9A-Fa-f]{1,6}\})")
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected value: ``text[start:end]`` (character offsets, end exclusive)."""

    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Redaction:
    """``full``: the value becomes ``[NAME]``. Partial: letters and digits become ``*``
    except the first ``keep_first`` and last ``keep_last`` of them; separators stay. A partial
    style never reveals more than half of a value's letters and digits: shorter values are
    redacted in full."""

    keep_first: int = 0
    keep_last: int = 0

    @property
    def full(self) -> bool:
        return self.keep_first == 0 and self.keep_last == 0

    def describe(self) -> str:
        if self.full:
            return "full"
        parts = [f"keep_first: {self.keep_first}"] if self.keep_first else []
        parts += [f"keep_last: {self.keep_last}"] if self.keep_last else []
        return "{" + ", ".join(parts) + "}"

    def apply(self, name: str, value: str) -> str:
        if self.full:
            return f"[{name}]"
        positions = [i for i, ch in enumerate(value) if ch.isalnum()]
        if self.keep_first + self.keep_last > len(positions) // 2:
            return f"[{name}]"
        hidden = set(positions[self.keep_first : len(positions) - self.keep_last])
        return "".join("*" if i in hidden else ch for i, ch in enumerate(value))


@dataclass(frozen=True, slots=True)
class Pattern:
    """One entry of the pattern file."""

    name: str
    regex: str
    validator: str | None
    context: tuple[str, ...]
    classification: Classification
    redaction: Redaction
    match_examples: tuple[str, ...]
    no_match_examples: tuple[str, ...]


def _repository_file(*parts: str) -> Path | None:
    """``parts`` under the source checkout this package was imported from, if there is one."""
    root = Path(__file__).resolve().parents[3]
    candidate = root.joinpath(*parts)
    return candidate if (root / "pyproject.toml").is_file() and candidate.is_file() else None


def _default_patterns() -> Path:
    """The repository's ``config/security/pii_patterns.yaml`` when running from a checkout
    (editable install, tests, CI); otherwise the copy shipped inside the package."""
    return _repository_file("config", "security", "pii_patterns.yaml") or (
        Path(__file__).resolve().parent / "default_patterns.yaml"
    )


DEFAULT_PATTERNS: Path = _default_patterns()
POLICY_DOC: Path | None = _repository_file("docs", "security", "PII_REDACTION_POLICY.md")


# --- parsing and checking --------------------------------------------------------------------


def _width(regex: str) -> tuple[int, int] | None:
    """(shortest, longest) match of ``regex`` per Python's own parser, None when Python's
    ``re`` cannot parse it (the pattern language is what RE2 and ``re`` both accept)."""
    parser: Any = importlib.import_module("re._parser")
    regex = _RE2_ONLY_ESCAPE.sub("a", regex)  # RE2's \p{L}, \x{10FFFF}: one character
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo, hi = parser.parse(regex).getwidth()
    except (re.error, RecursionError, OverflowError):
        return None
    return int(lo), int(hi)


def _strings(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return cast(list[str], value)
    return None


def _parse_redaction(value: object, where: str, problems: list[str]) -> Redaction:
    if value == "full":
        return Redaction()
    if isinstance(value, dict) and value and set(value) <= {"keep_first", "keep_last"}:
        counts = {k: v for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}
        if len(counts) == len(value) and all(0 <= v <= 16 for v in counts.values()):
            redaction = Redaction(counts.get("keep_first", 0), counts.get("keep_last", 0))
            if not redaction.full:
                return redaction
    problems.append(
        f"{where}: redaction must be 'full' or a mapping of keep_first/keep_last to integers "
        "0..16, at least one above 0"
    )
    return Redaction()


def _check_regex(regex: object, where: str, problems: list[str]) -> None:
    if not isinstance(regex, str) or not regex:
        problems.append(f"{where}: regex must be a non-empty string")
        return
    try:
        compiled = _re2.Regex(regex)
    except _re2.RE2_ERROR as exc:
        problems.append(f"{where}: regex does not compile in RE2: {_re2.error_text(exc)}")
    else:
        width = _width(regex)
        if compiled.groups:
            problems.append(f"{where}: regex has capturing groups; use (?:...)")
        if width is None:
            problems.append(
                f"{where}: regex is outside the supported language (RE2 syntax that "
                "Python's re also parses)"
            )
        elif width[0] == 0:
            problems.append(f"{where}: regex can match the empty string")
        elif width[1] > MAX_WIDTH:
            problems.append(
                f"{where}: regex can match more than {MAX_WIDTH} characters; bound every "
                "repetition ({m,n}, not + or *)"
            )


def _parse_pattern(raw: object, where: str, problems: list[str]) -> Pattern | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    before = len(problems)
    name = raw.get("name")
    if isinstance(name, str) and _NAME.fullmatch(name):
        where = f"{where} ({name})"
    else:
        problems.append(f"{where}: name must be UPPER_SNAKE_CASE (A-Z, 0-9, _), at most 64")
    for key in sorted(set(map(str, raw)) - _PATTERN_KEYS):
        problems.append(f"{where}: unknown key {key!r}")
    regex = raw.get("regex")
    _check_regex(regex, where, problems)
    validator = raw.get("validator")
    if validator is not None and validator not in VALIDATORS:
        problems.append(
            f"{where}: validator {validator!r} is not one of: {', '.join(sorted(VALIDATORS))}"
        )
    context = raw.get("context", [])
    words = _strings(context)
    if words is None or (context is not None and "context" in raw and not words):
        problems.append(f"{where}: context must be a non-empty list of words")
        words = []
    elif any(not w.strip() or len(w) > CONTEXT_WINDOW for w in words):
        problems.append(f"{where}: context words must be 1..{CONTEXT_WINDOW} characters")
    classification = raw.get("classification")
    if classification not in CLASSIFICATIONS:
        problems.append(f"{where}: classification must be one of {', '.join(CLASSIFICATIONS)}")
    redaction = _parse_redaction(raw.get("redaction"), where, problems)
    examples = raw.get("examples")
    match_examples: list[str] | None = None
    no_match_examples: list[str] | None = None
    if isinstance(examples, dict) and set(examples) <= {"match", "no_match"}:
        match_examples = _strings(examples.get("match"))
        no_match_examples = _strings(examples.get("no_match", []))
    if not match_examples or no_match_examples is None:
        problems.append(
            f"{where}: examples must be {{match: [text, ...], no_match: [text, ...]}} with at "
            "least one match"
        )
    if len(problems) > before:
        return None
    assert isinstance(name, str)
    assert isinstance(regex, str)
    assert match_examples is not None
    return Pattern(
        name=name,
        regex=regex,
        validator=cast(str | None, validator),
        context=tuple(w.lower() for w in words),
        classification=cast(Classification, classification),
        redaction=redaction,
        match_examples=tuple(match_examples),
        no_match_examples=tuple(no_match_examples or ()),
    )


def _read(path: Path, problems: list[str]) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read it ({exc.__class__.__name__})")
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"{path}: not valid YAML{at}")
        return None


def _parse(data: object, source: str, problems: list[str]) -> tuple[int, list[Pattern]]:
    if not isinstance(data, dict):
        problems.append(f"{source}: must be a mapping with keys version and patterns")
        return SCHEMA_VERSION, []
    for key in sorted(set(map(str, data)) - {"version", "patterns"}):
        problems.append(f"{source}: unknown top-level key {key!r}")
    version = data.get("version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        problems.append(f"{source}: version must be {SCHEMA_VERSION} (found {version!r})")
    raw_patterns = data.get("patterns")
    if not isinstance(raw_patterns, list) or not raw_patterns:
        problems.append(f"{source}: patterns must be a non-empty list")
        return SCHEMA_VERSION, []
    patterns: list[Pattern] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_patterns):
        pattern = _parse_pattern(raw, f"{source}: patterns[{i}]", problems)
        if pattern is None:
            continue
        if pattern.name in seen:
            problems.append(f"{source}: patterns[{i}]: duplicate name {pattern.name}")
            continue
        seen.add(pattern.name)
        patterns.append(pattern)
    return SCHEMA_VERSION, patterns


def _example_problems(engine: PiiEngine, source: str) -> list[str]:
    problems: list[str] = []
    for pattern in engine.pattern_specs:
        for text in pattern.match_examples:
            if pattern.name not in {f.type for f in engine.find(text)}:
                problems.append(f"{source}: {pattern.name}: match example not found: {text!r}")
        for text in pattern.no_match_examples:
            if pattern.name in {f.type for f in engine.find(text)}:
                problems.append(f"{source}: {pattern.name}: no_match example matched: {text!r}")
    return problems


def policy_problems(patterns: Sequence[Pattern], policy_doc: Path) -> list[str]:
    """The CI rule: the policy document names every pattern, on a line that also states the
    pattern's classification."""
    try:
        lines = policy_doc.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{policy_doc}: cannot read the policy document ({exc.__class__.__name__})"]
    problems = []
    for pattern in patterns:
        named = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(pattern.name)}(?![A-Za-z0-9_])")
        rows = [line for line in lines if named.search(line)]
        if not rows:
            problems.append(f"{policy_doc}: does not name pattern {pattern.name}")
        elif not any(re.search(rf"\b{pattern.classification}\b", row) for row in rows):
            problems.append(
                f"{policy_doc}: no line names {pattern.name} with its classification "
                f"{pattern.classification}"
            )
    return problems


def check_pattern_file(path: str | Path, policy_doc: Path | None = None) -> list[str]:
    """Every problem of the pattern file at ``path`` (empty list: usable): schema, RE2
    compilation, the bounded pattern language, the examples, and when ``policy_doc`` is given,
    that the policy document names every pattern with its classification."""
    path = Path(path)
    problems: list[str] = []
    data = _read(path, problems)
    if problems:
        return problems
    version, patterns = _parse(data, str(path), problems)
    if patterns and not problems:
        problems += _example_problems(PiiEngine(version, patterns), str(path))
    if policy_doc is not None and patterns:
        problems += policy_problems(patterns, policy_doc)
    return problems


# --- the detector ----------------------------------------------------------------------------


def _char_offsets(buf: bytes, offsets: Sequence[int]) -> list[int]:
    """Character offsets of ascending byte offsets into the UTF-8 ``buf``."""
    result: list[int] = []
    last_byte = last_char = 0
    for offset in offsets:
        last_char += len(buf[last_byte:offset].translate(None, _CONTINUATION))
        last_byte = offset
        result.append(last_char)
    return result


def _next_char(buf: bytes, pos: int) -> int:
    pos += 1
    while pos < len(buf) and 0x80 <= buf[pos] < 0xC0:
        pos += 1
    return pos


@dataclass(frozen=True, slots=True)
class _KeyHit:
    """On the walk stack of scan_value: an object key at this path contains PII."""

    kinds: list[str]


class PiiEngine:
    """Finds, redacts and locates PII with the patterns of one pattern file."""

    def __init__(self, version: int, patterns: Sequence[Pattern]) -> None:
        self.version = version
        self.pattern_specs: tuple[Pattern, ...] = tuple(patterns)
        self.patterns: Mapping[str, Classification] = MappingProxyType(
            {p.name: p.classification for p in self.pattern_specs}
        )
        self._validators: list[Validator | None] = [
            VALIDATORS[p.validator] if p.validator else None for p in self.pattern_specs
        ]
        self._context = [tuple(w.encode("utf-8") for w in p.context) for p in patterns]
        # One alternation per suffix of the pattern list: [0] is the detector's single pass;
        # [i] re-tries the patterns after i-1 at a start where pattern i-1 was rejected.
        self._alternations: list[_re2.Regex] = [
            _re2.Regex("|".join(f"({p.regex})" for p in self.pattern_specs[i:]))
            for i in range(len(self.pattern_specs))
        ]

    @classmethod
    def load(cls, path: str | Path) -> PiiEngine:
        """The engine of the pattern file at ``path``; ConfigError lists every problem."""
        path = Path(path)
        problems: list[str] = []
        data = _read(path, problems)
        if problems:
            raise ConfigError(problems)
        version, patterns = _parse(data, str(path), problems)
        if problems:
            raise ConfigError(problems)
        engine = cls(version, patterns)
        problems = _example_problems(engine, str(path))
        if problems:
            raise ConfigError(problems)
        return engine

    def pattern(self, name: str) -> Pattern:
        """The full definition of pattern ``name`` (KeyError if there is none)."""
        for pattern in self.pattern_specs:
            if pattern.name == name:
                return pattern
        raise KeyError(name)

    def _in_context(self, buf: bytes, index: int, start: int, end: int) -> int | None:
        """``end`` when one of pattern ``index``'s context words precedes the match."""
        window = buf[max(0, start - 4 * CONTEXT_WINDOW) : start]
        before = window.decode("utf-8", "ignore")[-CONTEXT_WINDOW:].lower().encode()
        return end if any(word in before for word in self._context[index]) else None

    def _scan(self, buf: bytes) -> Iterator[tuple[int, int, int]]:
        """(pattern index, start, end) byte spans, ascending and non-overlapping.

        The hot loop of the detector: the RE2 calls and the first validator are inlined."""
        if not self.pattern_specs:
            return
        count, size = len(self.pattern_specs), len(buf)
        search = self._alternations[0].raw_match
        retries = [a.raw_match for a in self._alternations]
        validators, context = self._validators, self._context
        unanchored, anchored, no_match = _re2.UNANCHORED, _re2.ANCHOR_START, _re2.NO_MATCH
        pos = 0
        while pos < size:
            spans = search(unanchored, buf, pos, size)
            if spans[0] == no_match:
                return
            start, first = spans[0][0], 0
            while True:
                # Group k+1 of alternation [first] is pattern first+k; exactly one took part.
                group = 1
                while spans[group] == no_match:
                    group += 1
                index = first + group - 1
                end: int | None = spans[0][1]
                validator = validators[index]
                if validator is not None:
                    accepted = validator(buf, start, spans[0][1])
                    end = accepted if accepted is not None and accepted > start else None
                if end is not None and context[index]:
                    end = self._in_context(buf, index, start, end)
                if end is not None:
                    yield index, start, end
                    pos = end
                    break
                first = index + 1
                if first == count:
                    pos = _next_char(buf, start)
                    break
                spans = retries[first](anchored, buf, start, size)
                if spans[0] == no_match:
                    pos = _next_char(buf, start)
                    break

    def find(self, text: str) -> list[Finding]:
        """Every finding in ``text``: non-overlapping, sorted by start, character offsets."""
        buf = text.encode("utf-8", "surrogatepass")
        spans = list(self._scan(buf))
        if not spans:
            return []
        if len(buf) == len(text):  # ASCII: byte offsets are character offsets
            return [Finding(self.pattern_specs[i].name, s, e) for i, s, e in spans]
        chars = _char_offsets(buf, [o for _, s, e in spans for o in (s, e)])
        return [
            Finding(self.pattern_specs[i].name, chars[2 * k], chars[2 * k + 1])
            for k, (i, _, _) in enumerate(spans)
        ]

    def redact(self, text: str, classes: Collection[str] | None = None) -> str:
        """``text`` with every finding (of a pattern classified in ``classes``, when given)
        replaced per its pattern's redaction style."""
        pieces: list[str] = []
        last = 0
        for finding in self.find(text):
            if classes is not None and self.patterns[finding.type] not in classes:
                continue
            redaction = self.pattern(finding.type).redaction
            pieces.append(text[last : finding.start])
            pieces.append(redaction.apply(finding.type, text[finding.start : finding.end]))
            last = finding.end
        pieces.append(text[last:])
        return "".join(pieces)

    def scan_value(self, value: object) -> list[tuple[str, str]]:
        """(path, type) of the PII in a JSON value, each pair once, in document order.

        Paths: ``$`` is the value itself, then ``a.b[2]``; keys that are not identifiers are
        quoted (``a["x-y"]``) and keys that contain PII appear redacted, so that no path
        carries a detected value. Strings are scanned; numbers are scanned as their text;
        booleans and null are not. Object keys are scanned too.
        """
        found: dict[tuple[str, str], None] = {}
        stack: list[tuple[str, object]] = [("", value)]
        while stack:
            path, item = stack.pop()
            if isinstance(item, Mapping):
                children: list[tuple[str, object]] = []
                for key, child in item.items():
                    key_text = str(key)
                    key_types = [f.type for f in self.find(key_text)]
                    shown = self.redact(key_text) if key_types else key_text
                    child_path = (
                        f"{path}.{shown}" if path and _KEY.fullmatch(shown) else
                        shown if _KEY.fullmatch(shown) else f"{path}[{json.dumps(shown)}]"
                    )  # fmt: skip
                    if key_types:
                        children.append((child_path, _KeyHit(key_types)))
                    children.append((child_path, child))
                stack.extend(reversed(children))
            elif isinstance(item, _KeyHit):
                for kind in item.kinds:
                    found.setdefault((path, kind), None)
            elif isinstance(item, list | tuple):
                stack.extend(
                    (f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item)))
                )
            elif item is None or isinstance(item, bool):
                continue
            else:
                text = item if isinstance(item, str) else str(item)
                for finding in self.find(text):
                    found.setdefault((path or "$", finding.type), None)
        return list(found)
