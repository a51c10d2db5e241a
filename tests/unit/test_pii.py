"""PII patterns, detector, redaction, JSON scanning, the pattern file check and the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from themisdb.errors import ConfigError
from themisdb.pii import DEFAULT_PATTERNS, POLICY_DOC, Finding, PiiEngine, check_pattern_file
from themisdb.pii._validators import IBAN_LENGTHS, de_tax_id_ok, iban_ok, luhn_ok
from themisdb.pii.cli import pii

REPO = Path(__file__).resolve().parent.parent.parent
PATTERNS = REPO / "config" / "security" / "pii_patterns.yaml"
POLICY = REPO / "docs" / "security" / "PII_REDACTION_POLICY.md"
SHIPPED = ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "SSN", "IP_ADDRESS", "URL", "UK_NINO"]
SHIPPED += ["DE_TAX_ID"]


@pytest.fixture(scope="module")
def engine() -> PiiEngine:
    return PiiEngine.load(PATTERNS)


def types(engine: PiiEngine, text: str) -> set[str]:
    return {f.type for f in engine.find(text)}


# --- the shipped file ------------------------------------------------------------------------


def test_default_paths_are_the_repository_files() -> None:
    assert DEFAULT_PATTERNS == PATTERNS
    assert POLICY_DOC == POLICY


def test_shipped_file_passes_the_check_including_the_policy_doc() -> None:
    assert check_pattern_file(PATTERNS, POLICY) == []


def test_ships_every_required_pattern(engine: PiiEngine) -> None:
    assert set(SHIPPED) <= set(engine.patterns)
    assert engine.version == 1
    assert engine.patterns["CREDIT_CARD"] == "restricted"
    assert engine.patterns["EMAIL"] == "pii"


def _examples() -> list[tuple[str, str, bool]]:
    data = yaml.safe_load(PATTERNS.read_text(encoding="utf-8"))
    cases = []
    for pattern in data["patterns"]:
        cases += [(pattern["name"], text, True) for text in pattern["examples"]["match"]]
        cases += [(pattern["name"], text, False) for text in pattern["examples"]["no_match"]]
    return cases


@pytest.mark.parametrize(("name", "text", "expected"), _examples())
def test_every_example_behaves_as_declared(
    engine: PiiEngine, name: str, text: str, expected: bool
) -> None:
    assert (name in types(engine, text)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane@example.com now", [Finding("EMAIL", 5, 21)]),
        ("card 4111 1111 1111 1111.", [Finding("CREDIT_CARD", 5, 24)]),
        ("über: jürgen@example.de", [Finding("EMAIL", 6, 23)]),  # character offsets
        ("€ 10.0.0.1 €", [Finding("IP_ADDRESS", 2, 10)]),
        ("see https://example.com/a_(b).", [Finding("URL", 4, 29)]),
        ("Steuer-ID: 86 095 742 719", [Finding("DE_TAX_ID", 11, 25)]),
        ("2001:db8::, ok", [Finding("IP_ADDRESS", 0, 10)]),
    ],
)
def test_spans(engine: PiiEngine, text: str, expected: list[Finding]) -> None:
    assert engine.find(text) == expected


def test_findings_are_sorted_and_disjoint(engine: PiiEngine) -> None:
    text = (
        "Ann <ann@example.org>, +44 20 7946 0958, IBAN GB29 NWBK 6016 1331 9268 19, "
        "card 5500-0000-0000-0004, SSN 536-22-1234, NI JG103759A, 192.168.1.20, "
        "https://example.com/x?u=ann@example.org"
    )
    found = engine.find(text)
    assert [f.type for f in found] == [
        "EMAIL", "PHONE", "IBAN", "CREDIT_CARD", "SSN", "UK_NINO", "IP_ADDRESS", "URL",
    ]  # fmt: skip
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))


def test_validators_directly() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("DE89370400440532013001")
    assert de_tax_id_ok("65929970489")
    assert not de_tax_id_ok("65929970488")
    assert not de_tax_id_ok("12345678903")  # no digit repeated
    assert not de_tax_id_ok("11145678903")  # three in a row


def test_phone_is_not_a_date_or_an_ip(engine: PiiEngine) -> None:
    for text in ["2024-01-15", "15.01.2024", "01/15/2024", "10.20.30.40", "12:30", "v1.2.3"]:
        assert "PHONE" not in types(engine, text), text


# --- redaction and JSON ----------------------------------------------------------------------


def test_redact(engine: PiiEngine) -> None:
    assert engine.redact("card 4111111111111111") == "card ************1111"
    assert engine.redact("to jane@example.com.") == "to [EMAIL]."
    assert engine.redact("ssn 536-22-1234") == "ssn ***-**-1234"
    assert engine.redact("4111 1111 1111 1111") == "**** **** **** 1111"
    assert engine.redact("nothing here") == "nothing here"
    assert engine.redact("") == ""


def test_scan_value_paths_and_types_without_values(engine: PiiEngine) -> None:
    value = {
        "user": {"email": "jane@example.com", "cards": ["none", 4111111111111111]},
        "x-forwarded-for": "10.1.2.3",
        "ann@example.org": True,
        "n": None,
        "ok": [1, 2.5, False],
    }
    result = engine.scan_value(value)
    assert result == [
        ("user.email", "EMAIL"),
        ("user.cards[1]", "CREDIT_CARD"),
        ('["x-forwarded-for"]', "IP_ADDRESS"),
        ('["[EMAIL]"]', "EMAIL"),
    ]
    assert "example" not in json.dumps(result)
    assert engine.scan_value("jane@example.com") == [("$", "EMAIL")]
    assert engine.scan_value([[{"a": "10.0.0.1"}]]) == [("[0][0].a", "IP_ADDRESS")]


def test_scan_value_deep_nesting_does_not_recurse(engine: PiiEngine) -> None:
    value: object = "jane@example.com"
    for _ in range(5000):
        value = [value]
    assert engine.scan_value(value) == [("[0]" * 5000, "EMAIL")]


# --- properties ------------------------------------------------------------------------------


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError


@st.composite
def cards(draw: st.DrawFn) -> str:
    length = draw(st.sampled_from([13, 15, 16, 19]))
    first = draw(st.sampled_from("23456"))
    rest = draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    number = _luhn_complete(first + rest)
    if length == 16 and draw(st.booleans()):
        number = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    return number


def _change_one_digit(value: str, position: int, delta: int) -> str:
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    i = digits[position % len(digits)]
    return value[:i] + str((int(value[i]) + delta) % 10) + value[i + 1 :]


@settings(max_examples=300, deadline=None)
@given(cards(), st.integers(0, 30), st.integers(1, 9))
def test_luhn_valid_cards_are_found_and_near_misses_not(
    engine: PiiEngine, card: str, position: int, delta: int
) -> None:
    text = f"paid with {card} yesterday"
    assume_not_all_same = len(set(card.replace(" ", ""))) > 1
    if assume_not_all_same:
        assert Finding("CREDIT_CARD", 10, 10 + len(card)) in engine.find(text)
    near = _change_one_digit(card, position, delta)
    assert "CREDIT_CARD" not in types(engine, f"paid with {near} yesterday")


BBAN = {  # country: BBAN layout, n = digit, a = upper-case letter, c = either
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "NL": "aaaa" + "n" * 10,
    "NO": "n" * 11,
    "IT": "a" + "n" * 10 + "c" * 12,
    "CH": "n" * 5 + "c" * 12,
}


def _iban_with_check(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{country}{98 - number % 97:02d}{bban}"


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(sorted(BBAN)))
    alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    alphabet["c"] = alphabet["n"] + alphabet["a"]
    bban = "".join(draw(st.sampled_from(alphabet[kind])) for kind in BBAN[country])
    value = _iban_with_check(country, bban)
    assert len(value) == IBAN_LENGTHS[country]
    assert iban_ok(value)
    if draw(st.booleans()):
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


@settings(max_examples=300, deadline=None)
@given(ibans(), st.integers(0, 40), st.integers(1, 9))
def test_valid_ibans_are_found_and_near_misses_not(
    engine: PiiEngine, iban: str, position: int, delta: int
) -> None:
    text = f"IBAN: {iban}, thanks"
    assert Finding("IBAN", 6, 6 + len(iban)) in engine.find(text)
    near = _change_one_digit(iban, position, delta)
    assert "IBAN" not in types(engine, f"IBAN: {near}, thanks")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_sorted_disjoint_in_range_findings(engine: PiiEngine, text: str) -> None:
    found = engine.find(text)
    assert all(0 <= f.start < f.end <= len(text) for f in found)
    assert all(a.end <= b.start for a, b in itertools.pairwise(found))
    if not found:
        assert engine.redact(text) == text


# --- time bound ------------------------------------------------------------------------------

MB = 1_000_000
ADVERSARIAL = {  # few or no candidates: one pass of RE2
    "digits": "1" * MB,
    "digits and spaces": "1 " * (MB // 2),
    "a@": "a@" * (MB // 2),
    "local part without domain": "a" * MB + "@x",
    "colons": ":" * MB,
    "plus signs": "+1 " * (MB // 3),
    "schemes": "http://" * (MB // 7),
    "closing parentheses": "http://x.com/" + ")" * MB,
    "dates": "2024-01-15 " * (MB // 11),
    "non-ascii": "é1" * (MB // 2),
    "ssn-like": "123-45-678 " * (MB // 11),
}
DENSE = {  # a valid finding every few characters: bounded by the per-finding cost
    "IPv4 chain": "1." * (MB // 2) + "1",
    "IPv6 chain": "ab:" * (MB // 3),
    "emails": "a@b.co " * (MB // 7),
}


class _CountingEngine:
    """The engine with every RE2 call counted. RE2 bounds the cost of one call by the bytes it
    reads (no backtracking); the detector's own bound is on the number of calls and where they
    start (module docstring of themisdb.pii._engine). Counting calls makes that bound a
    deterministic assertion; the seconds are measured in bench/pii.py, not here."""

    def __init__(self, engine: PiiEngine) -> None:
        self.engine = PiiEngine(engine.version, engine.pattern_specs)
        self.calls = 0
        for regex in self.engine._alternations:
            regex.raw_match = self._counted(regex.raw_match)

    def _counted(self, match: Any) -> Any:
        def counted(*args: Any) -> Any:
            self.calls += 1
            return match(*args)

        return counted

    def find(self, text: str) -> tuple[int, int]:
        """(findings, RE2 calls) for ``text``."""
        self.calls = 0
        return len(self.engine.find(text)), self.calls


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_megabyte_takes_one_or_two_passes(engine: PiiEngine, name: str) -> None:
    findings, calls = _CountingEngine(engine).find(ADVERSARIAL[name])
    assert findings <= 1
    assert calls <= findings + 1


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_findings_cost_one_call_each(engine: PiiEngine, name: str) -> None:
    findings, calls = _CountingEngine(engine).find(DENSE[name])
    assert findings > len(DENSE[name]) // 25
    assert calls == findings + 1


def test_rejected_candidates_cost_a_bounded_number_of_calls(engine: PiiEngine) -> None:
    """The worst input: a candidate that the validator rejects every 17 characters. Each costs
    at most one anchored retry per later pattern; the count grows exactly with the input."""
    counting = _CountingEngine(engine)

    def calls(size: int) -> int:
        findings, made = counting.find("4111111111111112 " * (size // 17))
        assert findings == 0
        return made

    small, large = calls(MB // 4), calls(MB)
    per_candidate = len(engine.pattern_specs) + 1
    assert large <= per_candidate * (MB // 17) + 1
    assert 3.9 * small <= large <= 4.1 * small  # linear: 4x the input, 4x the calls


# --- the pattern file check ------------------------------------------------------------------


def _write(tmp_path: Path, mutate: dict[str, object], name: str = "EMAIL") -> Path:
    data = yaml.safe_load(PATTERNS.read_text(encoding="utf-8"))
    for pattern in data["patterns"]:
        if pattern["name"] == name:
            pattern.update(mutate)
    path = tmp_path / "patterns.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_check_catches_a_broken_regex(tmp_path: Path) -> None:
    problems = check_pattern_file(_write(tmp_path, {"regex": "(?<=x)[a-z"}))
    assert any("EMAIL" in p and "does not compile in RE2" in p for p in problems)


def test_check_catches_a_failing_example(tmp_path: Path) -> None:
    path = _write(tmp_path, {"examples": {"match": ["no address here"], "no_match": []}})
    problems = check_pattern_file(path)
    assert problems == [f"{path}: EMAIL: match example not found: 'no address here'"]
    path = _write(tmp_path, {"examples": {"match": ["a@b.co"], "no_match": ["x@y.org"]}})
    assert check_pattern_file(path) == [f"{path}: EMAIL: no_match example matched: 'x@y.org'"]


def test_check_catches_a_pattern_missing_from_the_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.md"
    lines = POLICY.read_text(encoding="utf-8").splitlines(keepends=True)
    policy.write_text("".join(x for x in lines if "UK_NINO" not in x), encoding="utf-8")
    assert check_pattern_file(PATTERNS, policy) == [f"{policy}: does not name pattern UK_NINO"]
    policy.write_text(POLICY.read_text().replace("| SSN | restricted", "| SSN | pii"))
    assert check_pattern_file(PATTERNS, policy) == [
        f"{policy}: no line names SSN with its classification restricted"
    ]


def test_load_lists_every_problem_at_once(tmp_path: Path) -> None:
    data = {
        "version": 2,
        "patterns": [
            {"name": "bad name", "regex": "a+", "classification": "secret", "redaction": "x"},
            {"name": "UNBOUNDED", "regex": "[a-z]+@x", "classification": "pii",
             "redaction": {"keep_last": 4}, "examples": {"match": ["ab@x"], "no_match": []}},
            {"name": "GROUPS", "regex": "(a)(b)", "validator": "nope", "classification": "pii",
             "redaction": "full", "examples": {"match": ["ab"]}, "extra": 1},
            {"name": "EMPTY", "regex": "a?", "classification": "pii", "redaction": "full",
             "examples": {"match": ["a"]}},
        ],
    }  # fmt: skip
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        PiiEngine.load(path)
    text = "\n".join(caught.value.problems)
    for expected in [
        "version must be 1",
        "name must be UPPER_SNAKE_CASE",
        "classification must be one of",
        "redaction must be 'full'",
        "examples must be",
        "can match more than 1000 characters",
        "capturing groups",
        "validator 'nope'",
        "unknown key 'extra'",
        "can match the empty string",
    ]:
        assert expected in text
    assert len(caught.value.problems) >= 10


def test_load_rejects_unreadable_and_non_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PiiEngine.load(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("version: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PiiEngine.load(tmp_path / "x.yaml")


def test_context_words_are_required_when_given(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"context": ["steuer"], "examples": {"match": ["Steuer-ID 65929970489"],
                                             "no_match": ["65929970489"]}},
        name="DE_TAX_ID",
    )  # fmt: skip
    assert check_pattern_file(path) == []


# --- CLI -------------------------------------------------------------------------------------


def test_cli_scan_json_is_one_object_with_character_offsets(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("ü jane@example.com\r\n4111 1111 1111 1111", encoding="utf-8")
    result = CliRunner().invoke(pii, ["scan", "--format", "json", str(source)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "findings": [
            {"type": "EMAIL", "start": 2, "end": 18},
            {"type": "CREDIT_CARD", "start": 20, "end": 39},
        ]
    }
    assert result.stdout.count("\n") == 1


def test_cli_scan_stdin_text_never_prints_values() -> None:
    result = CliRunner().invoke(pii, ["scan", "-"], input="x 10.0.0.1 y")
    assert result.exit_code == 0
    assert result.stdout == "2\t10\tIP_ADDRESS\tpii\n"


def test_cli_scan_bad_patterns_exit_78(tmp_path: Path) -> None:
    bad = _write(tmp_path, {"regex": "[a-z"})
    result = CliRunner().invoke(pii, ["scan", "--patterns", str(bad), "-"], input="x")
    assert result.exit_code == 78
    assert "does not compile" in result.stderr


def test_cli_check(tmp_path: Path) -> None:
    ok = CliRunner().invoke(pii, ["check"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(pii, ["check", str(_write(tmp_path, {"regex": "[a-z"}))])
    assert bad.exit_code == 1
    assert "does not compile in RE2" in bad.stderr
    policy = tmp_path / "p.md"
    policy.write_text("# nothing\n")
    missing = CliRunner().invoke(pii, ["check", str(PATTERNS), "--policy", str(policy)])
    assert missing.exit_code == 1
    assert "does not name pattern EMAIL" in missing.stderr


def test_the_plain_field_warning_is_rate_limited_per_table(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from themisdb.redaction import PiiRuntime
    from themisdb.settings import load_settings

    detected: list[str] = []
    runtime = PiiRuntime(load_settings({}), on_detected=lambda table, found: detected.append(table))
    entity = {"contact": "ada@example.com"}
    with caplog.at_level("WARNING", logger="themisdb.pii"):
        for i in range(50):
            runtime.check_write("people", f"k{i}", entity, frozenset())
        runtime.check_write("orders", "k", entity, frozenset())
    warnings = [r.getMessage() for r in caplog.records if "not encrypted" in r.getMessage()]
    assert len(warnings) == 2  # one per table within the minute
    assert all("ada@example.com" not in w for w in warnings)
    assert len(detected) == 51  # every write is still counted
