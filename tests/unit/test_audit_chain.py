"""The tamper suite of the audit chain, over real files written by the real broker and sink.

One chain of 1,000 events (checkpoints every 100, so 1,010 lines) is written once by
``AuditBroker`` + ``FileSink`` (fsync "always"); then every single event line is modified,
deleted, duplicated and swapped, and every checkpoint line deleted, duplicated, moved and
modified, and each variant goes through ``verify_lines``.

The rules asserted (chain.py's docstring and ``verify_lines``):

- An event whose content changed fails its own hash (or its prev_hash link): the first bad seq
  is that event's.
- A gap or a repeat in the seqs names ``min(found, expected)``: for a deleted event that is the
  deleted seq (the first seq whose record is not where it must be); for a duplicated or swapped
  one it is the seq of the first misplaced record. Exception, at the very start of a chain: a
  chain may legitimately begin at any checkpoint (rotated files removed by retention), so
  before the first record nothing is expected yet; a chain whose first record is an event other
  than seq 1 fails as "does not start at seq 1 or at a checkpoint" and names the seq of that
  first record (deleting or swapping away seq 1 therefore names seq 2).
- A checkpoint only signs the chain head (seq, hash); the hash chain makes it cover every event
  before it. Deleting an intermediate checkpoint, or duplicating one in place (rotation and
  restarts legitimately write such duplicates), therefore loses nothing and verifies. A
  checkpoint whose signed fields changed, or that sits where the chain head is not what it
  signs, fails.
- Events after the last checkpoint are an unsigned tail: they fail ("not covered") unless
  ``live=True``. A truncation exactly at a checkpoint leaves no unsigned tail and cannot be
  told from a file that ends there (there is no end marker): it verifies.

Speed: a walk over the whole chain costs ~20 ms, and there are ~6,000 variants. A chain may
start at any checkpoint, so each variant of event seq k is verified from the checkpoint that
precedes k's block of 100 (from the first line for k <= 100) to the end; verification stops
at the first bad line, so a variant costs ~1 ms. A sample of seqs is also verified over the
whole chain from line 1, and must give the same verdict.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from themisdb.audit import (
    CATEGORIES,
    AuditBroker,
    FileSink,
    Signer,
    Verdict,
    load_public_key,
    verify,
    verify_lines,
)
from themisdb.audit import broker as broker_module
from themisdb.audit.chain import GENESIS, canonical, event_hash
from themisdb.settings import FileOutput

EVENTS = 1000
EVERY = 100
ACTIONS = {
    "authentication": "authenticate",
    "authorization": "authorize",
    "data_access": "entity.put",
    "administrative": "config.update",
    "security": "key_provider.error",
}
OUTCOMES = ("success", "failure", "denied", "error")
# The fields modified besides ``outcome``, one per event in turn.
FIELDS = (
    "resource",
    "actor",
    "action",
    "category",
    "time",
    "node",
    "source",
    "reason",
    "request_id",
    "prev_hash",
    "hash",
    "seq",
)
# Seqs also checked over the whole chain from line 1 (block edges and a spread).
FULL_SAMPLE = frozenset({1, 2, 99, 100, 101, 200, 201, 499, 500, 501, 777, 900, 901, 999, 1000})


# --- building chains ---------------------------------------------------------------------------


def open_broker(
    directory: Path,
    signer: Signer,
    *,
    every: int = EVERY,
    rotation: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[AuditBroker, FileSink]:
    output = FileOutput(
        type="file",
        path=str(directory / "audit.log"),
        **({"rotation": rotation} if rotation else {}),
    )
    sink = FileSink(output, clock=clock)
    broker = AuditBroker(
        [sink],
        data_dir=directory,
        node="n1",
        signer=signer,
        block=False,
        checkpoint_every=every,
        checkpoint_seconds=3600,  # checkpoints by count only: the layout is deterministic
    )
    return broker, sink


def emit_varied(broker: AuditBroker, count: int) -> None:
    """``count`` events of every category, with resources of every JSON shape (and non-ASCII)."""
    for _ in range(count):
        n = broker.seq + 1
        category = CATEGORIES[n % len(CATEGORIES)]
        resources: list[Any] = [
            None,
            {"table": "users", "key": f"users:{n:05d}"},
            f"orders:ключ-{n}",
            {"route": "PUT /entities/{key:path}", "count": n, "keys": ["a", "b"]},
            ["bulk", n, {"nested": True}],
            {"schema": "encryption", "fields": {"ssn": "pii"}, "ratio": 0.5},
        ]
        seq = broker.emit(
            category,
            ACTIONS[category],
            outcome=OUTCOMES[n % len(OUTCOMES)],
            actor="-" if n % 3 == 0 else f"admin:{n:012x}",
            source="127.0.0.1" if n % 2 else "::1",
            resource=resources[n % len(resources)],
            reason=None if n % 4 == 0 else f"code_{n % 7}",
            request_id=f"req-{n:06x}",
        )
        assert seq == n


@dataclass(frozen=True)
class Chain:
    path: Path
    signer: Signer
    lines: tuple[str, ...]
    event_line: dict[int, int]  # seq -> index of its line
    checkpoint_line: dict[int, int]  # seq -> index of the (first) checkpoint of that seq

    @property
    def key(self) -> ec.EllipticCurvePublicKey:
        return self.signer.public_key


def index(lines: Sequence[str]) -> tuple[dict[int, int], dict[int, int]]:
    events: dict[int, int] = {}
    checkpoints: dict[int, int] = {}
    for number, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") == "checkpoint":
            checkpoints.setdefault(record["seq"], number)
        else:
            events[record["seq"]] = number
    return events, checkpoints


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    directory = tmp_path_factory.mktemp("chain")
    signer = Signer.create(directory / "key.pem")
    broker, sink = open_broker(directory, signer)
    broker.start()
    emit_varied(broker, EVENTS)
    broker.close()
    path = directory / "audit.log"
    assert sink.files() == [path]
    lines = tuple(path.read_text(encoding="utf-8").splitlines())
    events, checkpoints = index(lines)
    # The layout every test below relies on: e1..e100, cp100, e101..e200, cp200, ... cp1000.
    assert len(lines) == EVENTS + EVENTS // EVERY
    assert sorted(events) == list(range(1, EVENTS + 1))
    assert sorted(checkpoints) == list(range(EVERY, EVENTS + 1, EVERY))
    assert all(checkpoints[s] == events[s] + 1 for s in checkpoints)
    assert {json.loads(lines[events[s]])["category"] for s in range(1, 6)} == set(CATEGORIES)
    return Chain(path, signer, lines, events, checkpoints)


# --- running variants --------------------------------------------------------------------------


def run(lines: Iterable[str], key: ec.EllipticCurvePublicKey, *, live: bool = False) -> Verdict:
    return verify_lines(
        (("audit.log", number, text) for number, text in enumerate(lines, start=1)), key, live=live
    )


def window_start(chain: Chain, seq: int) -> int:
    """The line a variant of event ``seq`` is verified from: the checkpoint before its block."""
    anchor = EVERY * ((seq - 1) // EVERY)
    return chain.checkpoint_line[anchor] if anchor else 0


Variant = Callable[[list[str], int], list[str]]  # (lines, index of the event) -> tampered lines


def check_every_event(
    chain: Chain,
    variant: Variant,
    expected_seq: Callable[[int], int],
    seqs: Iterable[int] = range(1, EVENTS + 1),
    message: str | None = None,
) -> int:
    """Apply ``variant`` to each event in turn; every verdict must fail naming
    ``expected_seq(seq)`` (and contain ``message``). Returns the number of variants run."""
    problems: list[str] = []
    runs = 0
    for seq in seqs:
        starts = [window_start(chain, seq)] + ([0] if seq in FULL_SAMPLE else [])
        for start in dict.fromkeys(starts):
            lines = list(chain.lines[start:])
            tampered = variant(lines, chain.event_line[seq] - start)
            verdict = run(tampered, chain.key)
            runs += 1
            if (
                verdict.ok
                or verdict.first_bad_seq != expected_seq(seq)
                or (message is not None and message not in verdict.message)
            ):
                problems.append(f"seq {seq} (from line {start + 1}): {verdict}")
    assert not problems, f"{len(problems)} variant(s) wrong, e.g.:\n" + "\n".join(problems[:5])
    return runs


def tampered_value(field: str, value: Any) -> Any:
    if field == "outcome":
        return "failure" if value == "success" else "success"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + EVENTS
    if isinstance(value, str) and len(value) == 64:  # hash, prev_hash: one hex digit
        return value[:-1] + ("0" if value[-1] != "0" else "1")
    if isinstance(value, str):
        return value + "-x"
    if value is None:
        return "tampered"
    return {"tampered": value}


def with_field(line: str, field: str) -> str:
    """The line as an attacker would rewrite it: one value changed, still canonical JSON."""
    record = json.loads(line)
    record[field] = tampered_value(field, record[field])
    return canonical(record)


def replaced(lines: list[str], at: int, line: str) -> list[str]:
    lines[at] = line
    return lines


# --- the intact chain --------------------------------------------------------------------------


def test_the_untouched_chain_verifies(chain: Chain) -> None:
    verdict = verify([chain.path], chain.key)
    assert verdict == Verdict(True, "intact: 1000 events, 10 checkpoints", None, 1000, 10)
    # What the windows of the variants below start from: every block suffix verifies too.
    for anchor, number in chain.checkpoint_line.items():
        suffix = run(chain.lines[number:], chain.key)
        assert suffix.ok, suffix
        assert suffix.events == EVENTS - anchor


def test_the_public_key_round_trips_through_pem(chain: Chain, tmp_path: Path) -> None:
    pem = tmp_path / "public.pem"
    pem.write_text(chain.signer.public_pem())
    assert verify([chain.path], load_public_key(pem)).ok


# --- every event line: modified, deleted, duplicated, swapped ----------------------------------


def test_modifying_any_value_of_any_event_names_that_seq(chain: Chain) -> None:
    def outcome(lines: list[str], at: int) -> list[str]:
        return replaced(lines, at, with_field(lines[at], "outcome"))

    def other(lines: list[str], at: int) -> list[str]:
        seq = json.loads(lines[at])["seq"]
        return replaced(lines, at, with_field(lines[at], FIELDS[seq % len(FIELDS)]))

    runs = check_every_event(chain, outcome, lambda seq: seq)
    runs += check_every_event(chain, other, lambda seq: seq)
    assert runs >= 2 * EVENTS


def test_a_torn_event_line_names_that_seq(chain: Chain) -> None:
    """A line cut short (a crash mid-write, or an editor) is not JSON: the seq expected there."""

    def torn(lines: list[str], at: int) -> list[str]:
        return replaced(lines, at, lines[at][: len(lines[at]) // 2])

    # At the very first line nothing is expected yet: the verdict names no seq (checked apart).
    check_every_event(chain, torn, lambda seq: seq, range(2, EVENTS + 1), "not a JSON record")
    first = run(torn(list(chain.lines), 0), chain.key)
    assert not first.ok
    assert first.message == "audit.log:1: not a JSON record"


def test_deleting_any_event_names_the_deleted_seq(chain: Chain) -> None:
    def deleted(lines: list[str], at: int) -> list[str]:
        del lines[at]
        return lines

    # Mid-chain the gap names min(found, expected) = the deleted seq, whether the next line is
    # the following event or the checkpoint of the deleted one (seq 100, 200, ...).
    check_every_event(chain, deleted, lambda seq: seq, range(2, EVENTS + 1))
    # Seq 1: a chain whose first record is seq 2 "does not start at seq 1 or at a checkpoint",
    # and the verdict names the record it found (nothing was expected before it).
    check_every_event(chain, deleted, lambda seq: 2, [1], "does not start at seq 1")


def test_duplicating_any_event_right_after_itself_is_detected(chain: Chain) -> None:
    def duplicated(lines: list[str], at: int) -> list[str]:
        lines.insert(at + 1, lines[at])
        return lines

    # The copy carries seq k where k + 1 was expected: min(k, k + 1) = k.
    check_every_event(chain, duplicated, lambda seq: seq, message="deleted, inserted or reordered")


def test_swapping_any_event_with_the_next_event_is_detected(chain: Chain) -> None:
    def swapped(lines: list[str], at: int) -> list[str]:
        # The next *event* line: past the checkpoint when the event ends a block.
        after = next(
            i for i in range(at + 1, len(lines)) if json.loads(lines[i]).get("type") is None
        )
        lines[at], lines[after] = lines[after], lines[at]
        return lines

    # k + 1 where k was expected names k; at the first line that is the start rule (seq 2).
    check_every_event(chain, swapped, lambda seq: seq if seq > 1 else 2, range(1, EVENTS))


# --- checkpoint lines --------------------------------------------------------------------------


def without(lines: Sequence[str], *numbers: int) -> list[str]:
    return [line for i, line in enumerate(lines) if i not in numbers]


def test_deleting_intermediate_checkpoints_is_harmless(chain: Chain) -> None:
    """The last checkpoint signs the head of a hash chain, so it covers every event before it."""
    final = chain.checkpoint_line[EVENTS]
    intermediate = [n for s, n in chain.checkpoint_line.items() if s != EVENTS]
    for number in intermediate:
        verdict = run(without(chain.lines, number), chain.key)
        assert verdict == Verdict(True, "intact: 1000 events, 9 checkpoints", None, 1000, 9)
    verdict = run(without(chain.lines, *intermediate), chain.key)
    assert verdict == Verdict(True, "intact: 1000 events, 1 checkpoints", None, 1000, 1)
    assert chain.lines[final] in without(chain.lines, *intermediate)


def test_duplicating_a_checkpoint_in_place_is_harmless(chain: Chain) -> None:
    """Rotation and restarts write the same checkpoint twice in a row on purpose."""
    for number in chain.checkpoint_line.values():
        lines = list(chain.lines)
        lines.insert(number + 1, lines[number])
        verdict = run(lines, chain.key)
        assert verdict.ok, verdict
        assert verdict.checkpoints == 11


def test_deleting_the_final_checkpoint_leaves_an_uncovered_tail(chain: Chain) -> None:
    lines = without(chain.lines, chain.checkpoint_line[EVENTS])
    verdict = run(lines, chain.key)
    assert not verdict.ok
    assert verdict.first_bad_seq == 901
    assert "seq 901..1000 are not covered by a checkpoint" in verdict.message
    live = run(lines, chain.key, live=True)
    assert live.ok
    assert live.message == "intact: 1000 events, 9 checkpoints; seq 901.. not yet signed"


def test_moving_or_replaying_a_checkpoint_is_detected(chain: Chain) -> None:
    for seq, number in chain.checkpoint_line.items():
        if seq == EVENTS:
            continue
        # Swapped with the next event: it then signs a head that is not the chain's.
        lines = list(chain.lines)
        lines[number], lines[number + 1] = lines[number + 1], lines[number]
        verdict = run(lines, chain.key)
        assert not verdict.ok
        assert verdict.first_bad_seq == seq
        assert f"checkpoint does not match the event at seq {seq}" in verdict.message
        # An old (validly signed) checkpoint replayed after a later one.
        replay = list(chain.lines)
        later = chain.checkpoint_line[seq + EVERY]
        replay.insert(later + 1, chain.lines[number])
        verdict = run(replay, chain.key)
        assert not verdict.ok
        assert verdict.first_bad_seq == seq


def resigned_field(line: str, field: str) -> str:
    record = json.loads(line)
    if field == "signature":
        der = bytearray(base64.b64decode(record["signature"]))
        der[-1] ^= 0x01  # the last byte of s: still DER, no longer the signature
        record["signature"] = base64.b64encode(bytes(der)).decode()
    elif field == "seq":
        record["seq"] += 1
    elif field == "hash":
        record["hash"] = tampered_value("hash", record["hash"])
    else:
        record["time"] = "2000-01-01T00:00:00.000000Z"
    return canonical(record)


@pytest.mark.parametrize("field", ["signature", "hash", "seq", "time"])
def test_modifying_any_signed_field_of_any_checkpoint_fails(chain: Chain, field: str) -> None:
    for seq, number in chain.checkpoint_line.items():
        lines = list(chain.lines)
        lines[number] = resigned_field(lines[number], field)
        verdict = run(lines, chain.key)
        assert not verdict.ok
        # The verdict names the seq the checkpoint claims (the modified one, for "seq").
        assert verdict.first_bad_seq == (seq + 1 if field == "seq" else seq)
        assert "has a bad signature" in verdict.message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(signature="!!not base64!!"), "malformed checkpoint"),
        (lambda r: r.pop("signature"), "malformed checkpoint"),
        (lambda r: r.update(seq=str(r["seq"])), "malformed checkpoint"),
        (lambda r: r.pop("type"), "deleted, inserted or reordered"),  # now an event of seq 100
    ],
    ids=["garbage-signature", "no-signature", "seq-as-string", "no-type"],
)
def test_malformed_checkpoints_fail(
    chain: Chain, change: Callable[[dict[str, Any]], object], message: str
) -> None:
    lines = list(chain.lines)
    number = chain.checkpoint_line[EVERY]
    record = json.loads(lines[number])
    change(record)
    lines[number] = canonical(record)
    verdict = run(lines, chain.key)
    assert not verdict.ok
    assert message in verdict.message


def test_the_key_id_of_a_checkpoint_is_informational(chain: Chain) -> None:
    """``key_id`` is neither signed nor compared: the verifier chooses the key, so changing the
    hint changes nothing (and a checkpoint made by another key fails on its signature)."""
    lines = list(chain.lines)
    number = chain.checkpoint_line[EVERY]
    record = json.loads(lines[number])
    assert record["key_id"] == chain.signer.key_id
    record["key_id"] = "0" * 16
    lines[number] = canonical(record)
    assert run(lines, chain.key).ok


# --- truncation and keys -----------------------------------------------------------------------


def test_truncation_after_the_last_checkpoint_fails_unless_live(chain: Chain) -> None:
    end = chain.checkpoint_line[EVENTS]
    block_start = chain.checkpoint_line[EVENTS - EVERY]
    # Dropping the final checkpoint and then 0..99 of the events before it (verified from
    # cp800, as the windows above, and from line 1 for a few).
    for keep in range(block_start + 2, end + 1):
        starts = [chain.checkpoint_line[EVENTS - 2 * EVERY]]
        if keep in (block_start + 2, end - 50, end):
            starts.append(0)
        for start in starts:
            lines = chain.lines[start:keep]
            last = json.loads(lines[-1])["seq"]
            verdict = run(lines, chain.key)
            assert not verdict.ok, keep
            assert verdict.first_bad_seq == 901
            assert f"seq 901..{last} are not covered by a checkpoint" in verdict.message
            live = run(lines, chain.key, live=True)
            assert live.ok, live
            assert live.events == last - (800 if start else 0)
            assert "seq 901.. not yet signed" in live.message


def test_dropping_trailing_events_before_the_final_checkpoint_fails(chain: Chain) -> None:
    end = chain.checkpoint_line[EVENTS]
    lines = [*chain.lines[: end - 10], chain.lines[end]]  # e991..e1000 gone, cp1000 kept
    for live in (False, True):
        verdict = run(lines, chain.key, live=live)
        assert not verdict.ok
        assert verdict.first_bad_seq == EVENTS
        assert "checkpoint does not match the event at seq 1000" in verdict.message


def test_truncation_exactly_at_a_checkpoint_cannot_be_told_from_an_end(chain: Chain) -> None:
    """No end marker: a chain cut right after a checkpoint is a complete, shorter chain. (What
    protects the rest is a copy elsewhere: the syslog/SIEM sink, or an archived checkpoint.)"""
    lines = chain.lines[: chain.checkpoint_line[900] + 1]
    assert run(lines, chain.key) == Verdict(True, "intact: 900 events, 9 checkpoints", None, 900, 9)


def test_truncation_of_the_real_file(chain: Chain, tmp_path: Path) -> None:
    data = chain.path.read_bytes()
    final = chain.lines[chain.checkpoint_line[EVENTS]]
    path = tmp_path / "audit.log"
    path.write_bytes(data[: data.rindex(final.encode())])  # the final checkpoint cut off
    verdict = verify([path], chain.key)
    assert not verdict.ok
    assert verdict.first_bad_seq == 901
    assert "not covered by a checkpoint" in verdict.message
    assert verify([path], chain.key, live=True).ok


def test_another_p256_key_fails(chain: Chain, tmp_path: Path) -> None:
    other = Signer.create(tmp_path / "other.pem")
    assert other.key_id != chain.signer.key_id
    verdict = verify([chain.path], other.public_key)
    assert not verdict.ok
    assert verdict.first_bad_seq == EVERY  # the first checkpoint
    assert "checkpoint at seq 100 has a bad signature (modified, or another key)" in (
        verdict.message
    )


# --- a few variants through real files ---------------------------------------------------------


def _modify(lines: list[str], chain: Chain) -> None:
    at = chain.event_line[500]
    lines[at] = with_field(lines[at], "outcome")


def _delete(lines: list[str], chain: Chain) -> None:
    del lines[chain.event_line[250]]


def _duplicate(lines: list[str], chain: Chain) -> None:
    at = chain.event_line[999]
    lines.insert(at + 1, lines[at])


def _swap(lines: list[str], chain: Chain) -> None:
    a, b = chain.event_line[100], chain.event_line[101]
    lines[a], lines[b] = lines[b], lines[a]


def _resource(lines: list[str], chain: Chain) -> None:
    at = chain.event_line[777]
    lines[at] = with_field(lines[at], "resource")


@pytest.mark.parametrize(
    ("tamper", "seq"),
    [(_modify, 500), (_delete, 250), (_duplicate, 999), (_swap, 100), (_resource, 777)],
    ids=["modify", "delete", "duplicate", "swap", "resource"],
)
def test_tampered_real_files(
    chain: Chain, tmp_path: Path, tamper: Callable[[list[str], Chain], None], seq: int
) -> None:
    lines = list(chain.lines)
    tamper(lines, chain)
    path = tmp_path / "audit.log"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    verdict = verify([path], chain.key)
    assert not verdict.ok
    assert verdict.first_bad_seq == seq
    assert verdict.message.startswith(f"{path}:")  # names the file and line


def test_a_chain_split_anywhere_over_files_verifies_as_a_file_set(
    chain: Chain, tmp_path: Path
) -> None:
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    for cut in (1, 333, chain.checkpoint_line[500], chain.checkpoint_line[500] + 1, 1009):
        first.write_text("".join(f"{line}\n" for line in chain.lines[:cut]), encoding="utf-8")
        second.write_text("".join(f"{line}\n" for line in chain.lines[cut:]), encoding="utf-8")
        assert verify([first, second], chain.key).ok, cut
        assert not verify([second, first], chain.key).ok, cut


def test_a_byte_that_is_not_utf8_is_reported_not_raised(chain: Chain, tmp_path: Path) -> None:
    """Regression: ``_lines`` decoded whole files as UTF-8, so one tampered byte crashed the
    verifier (UnicodeDecodeError) instead of a verdict naming the event's seq."""
    data = bytearray(chain.path.read_bytes())
    line = chain.lines[chain.event_line[500]].encode()
    at = data.index(line) + line.index(b'"outcome":"') + len(b'"outcome":"')
    data[at] = 0xFF
    path = tmp_path / "audit.log"
    path.write_bytes(bytes(data))
    try:
        verdict = verify([path], chain.key)
    except UnicodeDecodeError as exc:
        pytest.fail(f"verify() raised UnicodeDecodeError ({exc.reason}) instead of naming seq 500")
    assert not verdict.ok
    assert verdict.first_bad_seq == 500


def test_a_line_that_is_not_canonical_json_is_detected(chain: Chain) -> None:
    """Regression: the hash is recomputed from the *parsed* record, so the stored text must
    also be compared with its canonical form. Otherwise a duplicate key goes unnoticed: Python
    (last key wins) verifies the genuine value, while a reader that keeps the first key (or
    rejects duplicates) shows the forged one."""
    at = chain.event_line[500]
    line = chain.lines[at]
    genuine = json.loads(line)["outcome"]
    other = "failure" if genuine == "success" else "success"
    forged = f'{{"outcome":"{other}",' + line[1:]  # a first-wins reader sees the other value
    assert json.loads(forged) == json.loads(line)  # json.loads keeps the last: the genuine one
    lines = list(chain.lines)
    lines[at] = forged
    verdict = run(lines, chain.key)
    assert not verdict.ok, f"a duplicate-key line passed verification: {verdict}"
    assert verdict.first_bad_seq == 500


# --- rotation, restarts, keys ------------------------------------------------------------------


def events_in(paths: Iterable[Path]) -> list[int]:
    seqs: list[int] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("type") != "checkpoint":
                seqs.append(record["seq"])
    return seqs


def test_rotation_files_verify_together_and_every_suffix_verifies(tmp_path: Path) -> None:
    signer = Signer.create(tmp_path / "key.pem")
    broker, sink = open_broker(tmp_path, signer, rotation={"max_size": "16KB"})
    broker.start()
    emit_varied(broker, 400)
    broker.close()
    files = sink.files()
    assert len(files) >= 5, files
    assert files[-1] == tmp_path / "audit.log"
    assert all(path.stat().st_size < 16_000 + 1_000 for path in files)
    assert events_in(files) == list(range(1, 401))
    assert verify(files, signer.public_key) == Verdict(
        True, f"intact: 400 events, {4 + len(files) - 1} checkpoints", None, 400, 4 + len(files) - 1
    )
    for i in range(1, len(files)):
        # The first line of a rotated-in file signs the last event of the previous file.
        head = json.loads(files[i].read_text(encoding="utf-8").splitlines()[0])
        assert head["type"] == "checkpoint"
        assert head["seq"] == events_in(files[:i])[-1]
        suffix = verify(files[i:], signer.public_key)
        assert suffix.ok, (i, suffix)
        assert suffix.events == len(events_in(files[i:]))
    # A file set with a file missing in the middle is not a suffix: detected.
    for i in range(1, len(files) - 1):
        gap = verify([*files[:i], *files[i + 1 :]], signer.public_key)
        assert not gap.ok
        assert "checkpoint does not match" in gap.message


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    signer = Signer.create(key)
    first, _ = open_broker(tmp_path, signer)
    first.start()
    emit_varied(first, 250)
    first.close()
    second, sink = open_broker(tmp_path, Signer.load(key))
    assert (second.seq, second.last_hash) == (first.seq, first.last_hash)
    second.start()
    emit_varied(second, 250)
    second.close()
    assert sink.files() == [tmp_path / "audit.log"]
    assert events_in(sink.files()) == list(range(1, 501))
    verdict = verify(sink.files(), signer.public_key)
    # cp100, cp200, cp250 at close, cp250 again at the restart, cp350, cp450, cp500.
    assert verdict == Verdict(True, "intact: 500 events, 7 checkpoints", None, 500, 7)


def test_a_restart_after_a_crash_signs_the_unsigned_tail(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    signer = Signer.create(key)
    crashed, sink = open_broker(tmp_path, signer)
    emit_varied(crashed, 150)  # cp100, then e101..e150 and no close(): a crash
    sink.close()
    path = tmp_path / "audit.log"
    before = verify([path], signer.public_key)
    assert not before.ok
    assert before.first_bad_seq == 101
    assert "seq 101..150 are not covered" in before.message
    restarted, _ = open_broker(tmp_path, Signer.load(key))
    restarted.start()  # signs seq 150 at once
    after = verify([path], signer.public_key)
    assert after == Verdict(True, "intact: 150 events, 2 checkpoints", None, 150, 2)
    emit_varied(restarted, 10)
    restarted.close()
    assert verify([path], signer.public_key).events == 160


def test_a_restart_onto_a_full_file_rotates_and_still_verifies(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    rotation = {"max_size": "16KB"}
    signer = Signer.create(key)
    first, _ = open_broker(tmp_path, signer, rotation=rotation)
    first.start()
    emit_varied(first, 120)
    first.close()
    second, sink = open_broker(tmp_path, Signer.load(key), rotation=rotation)
    assert second.seq == 120
    second.start()
    emit_varied(second, 120)
    second.close()
    files = sink.files()
    assert events_in(files) == list(range(1, 241))
    assert verify(files, signer.public_key).ok
    for i in range(1, len(files)):
        assert verify(files[i:], signer.public_key).ok, i


def test_events_appended_under_another_key_are_detected(tmp_path: Path) -> None:
    a = Signer.create(tmp_path / "a.pem")
    b = Signer.create(tmp_path / "b.pem")
    first, _ = open_broker(tmp_path, a)
    first.start()
    emit_varied(first, 150)  # cp100 and cp150 (at close), signed by A
    first.close()
    second, _ = open_broker(tmp_path, b)  # the same file, continued by a B-key process
    second.start()  # cp150, signed by B
    emit_varied(second, 100)
    second.close()
    path = tmp_path / "audit.log"
    assert events_in([path]) == list(range(1, 251))  # the hash chain itself is seamless
    with_a = verify([path], a.public_key)
    assert not with_a.ok
    assert with_a.first_bad_seq == 150  # the first checkpoint B signed
    assert "bad signature" in with_a.message
    with_b = verify([path], b.public_key)
    assert not with_b.ok
    assert with_b.first_bad_seq == 100  # A's first checkpoint


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_rotated_files_stay_in_chain_order_when_the_wall_clock_steps_back(
    tmp_path: Path,
) -> None:
    """Regression: rotated files were named ``<path>.<UTC wall-clock time>-<monotonic ns>``
    and ``files()`` sorts names, so after the wall clock stepped back (an NTP step, a VM resumed
    from a snapshot) a newer file sorted before an older one and ``verify(sink.files())`` and
    the broker's ``_recover`` saw the chain out of order."""
    clock = FakeClock(time.time())
    signer = Signer.create(tmp_path / "key.pem")
    broker, sink = open_broker(tmp_path, signer, rotation={"max_size": "16KB"}, clock=clock)
    broker.start()
    while len(sink.files()) < 2:
        emit_varied(broker, 1)
    clock.now -= 3600  # the wall clock is corrected by an hour
    while len(sink.files()) < 3:
        emit_varied(broker, 1)
    emit_varied(broker, 5)
    broker.close()
    files = sink.files()
    assert events_in(files) == sorted(events_in(files)), [p.name for p in files]
    assert verify(files, signer.public_key).ok


def test_max_age_counts_from_the_first_line_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the age of a reopened file was taken from ``st_ctime``, the time of its
    *last* write (every write changes ctime), not of its first line, so a process restarted
    more often than ``max_age`` never rotated by age."""
    day = 86400.0
    clock = FakeClock(time.time() - 89 * day)  # the file's first line: 89 days ago
    monkeypatch.setattr(  # event times follow the same clock as the sink
        broker_module,
        "now_rfc3339",
        lambda: datetime.fromtimestamp(clock.now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    key = tmp_path / "key.pem"
    rotation = {"max_age": 90}
    signer = Signer.create(key)
    first, _ = open_broker(tmp_path, signer, rotation=rotation, clock=clock)
    first.start()
    emit_varied(first, 3)
    first.close()
    clock.now = time.time()  # 89 days later: a restart
    second, sink = open_broker(tmp_path, Signer.load(key), rotation=rotation, clock=clock)
    second.start()
    emit_varied(second, 1)
    assert len(sink.files()) == 1  # 89 days old: not yet
    clock.now += 2 * day  # the first line is now 91 days old
    emit_varied(second, 1)
    second.close()
    assert len(sink.files()) == 2, "a file whose first line is 91 days old was not rotated"
    assert verify(sink.files(), signer.public_key).ok


def fill_past_max_size(broker: AuditBroker, path: Path, max_size: int) -> None:
    while path.stat().st_size < max_size:
        emit_varied(broker, 1)


def test_a_rotation_never_overwrites_an_earlier_file(tmp_path: Path) -> None:
    """BUG (file.py ``_rotate``): the rotated file is named after ``self._last``, the last event
    *written by this sink*, and moved there with ``os.replace``. When the file being rotated
    holds no event of its own (it was started by a rotation that a checkpoint triggered: the
    60 s checkpoint of a server that went quiet right after its file filled up, or the shutdown
    checkpoint), ``_last`` is the previous file's last seq, so the target is the previous
    rotated file, which is silently replaced. Here ``max_age`` (1 day) triggers the second
    rotation; the events 1..N disappear and ``verify`` still says intact (the remaining files
    start at a checkpoint, a legitimate suffix)."""
    clock = FakeClock(time.time())
    signer = Signer.create(tmp_path / "key.pem")
    rotation = {"max_size": "16KB", "max_age": 1}
    broker, sink = open_broker(tmp_path, signer, rotation=rotation, every=1000, clock=clock)
    broker.start()
    fill_past_max_size(broker, tmp_path / "audit.log", 16_000)
    written = broker.seq
    broker.checkpoint()  # the timed checkpoint: the next record after the file filled up
    assert len(sink.files()) == 2
    clock.now += 2 * 86400  # quiet for two days; then the next event rotates by age
    emit_varied(broker, 1)
    broker.close()
    files = sink.files()
    assert events_in(files) == list(range(1, written + 2)), (
        f"events 1..{written} are gone after the second rotation: "
        f"files {[p.name for p in files]} hold events {events_in(files)}"
    )


def test_a_rotation_at_restart_keeps_the_files_in_chain_order(tmp_path: Path) -> None:
    """BUG (file.py ``_open``/``_rotate``): a restarted sink takes ``_last`` from the current
    file only. When that file holds checkpoints only (the shutdown checkpoint rotated the full
    file), ``_last`` is None and a rotation before the first new event (here by age, at the
    restart checkpoint) names the file ``<path>.000000000000``: it sorts before every other
    rotated file, so ``files()`` is no longer in chain order and ``verify(sink.files())``
    fails on an intact chain."""
    clock = FakeClock(time.time())
    key = tmp_path / "key.pem"
    signer = Signer.create(key)
    rotation = {"max_size": "16KB", "max_age": 1}
    first, sink = open_broker(tmp_path, signer, rotation=rotation, every=1000, clock=clock)
    first.start()
    fill_past_max_size(first, tmp_path / "audit.log", 16_000)
    first.close()  # the shutdown checkpoint is the record that rotates
    assert len(sink.files()) == 2
    clock.now += 2 * 86400  # restarted two days later
    second, sink = open_broker(
        tmp_path, Signer.load(key), rotation=rotation, every=1000, clock=clock
    )
    second.start()
    emit_varied(second, 1)
    second.close()
    files = sink.files()
    assert events_in(files) == list(range(1, second.seq + 1)), [p.name for p in files]
    verdict = verify(files, signer.public_key)
    assert verdict.ok, f"files() is not in chain order: {[p.name for p in files]}: {verdict}"


def test_records_after_a_torn_final_line_start_on_a_line_of_their_own(tmp_path: Path) -> None:
    """BUG (file.py ``_open``/``_append``): a file can end in a partial line: ``_append``
    raises "short write" after ``os.write`` wrote part of a record (ENOSPC, the very case the
    spool exists for), and a power loss can leave a torn tail. The file is reopened with
    O_APPEND and the next record is appended to that partial line, so the two become one line
    that is not JSON: here the restart checkpoint vanishes into it, and ``verify`` fails on the
    chain for good although nothing was tampered with."""
    key = tmp_path / "key.pem"
    signer = Signer.create(key)
    first, _ = open_broker(tmp_path, signer)
    first.start()
    emit_varied(first, 5)
    first.close()  # cp5
    path = tmp_path / "audit.log"
    with path.open("a", encoding="utf-8") as out:
        out.write('{"action":"entity.put","actor":"-","categ')  # what a short write leaves
    second, _ = open_broker(tmp_path, Signer.load(key))
    assert second.seq == 5
    second.start()  # cp5 again: the restart checkpoint
    emit_varied(second, 3)
    second.close()  # cp8
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    assert [r["seq"] for r in records if r.get("type") != "checkpoint"] == list(range(1, 9))
    checkpoints = [r["seq"] for r in records if r.get("type") == "checkpoint"]
    assert checkpoints == [5, 5, 8], (
        f"a record was glued to the torn line: checkpoints {checkpoints}, expected [5, 5, 8]"
    )


def _forge_from(lines: list[str], at: int, forged: dict[str, Any]) -> list[str]:
    """An attacker with write access but without the signing key: insert ``forged`` before
    line ``at``, renumber every later event and re-hash the chain from there so that every
    seq, prev_hash and hash is consistent again. Checkpoints cannot be re-signed: kept as
    they are, with their seq moved along like the attacker would."""
    out = lines[:at]
    genesis: dict[str, Any] = {"seq": 0, "hash": GENESIS}
    previous: dict[str, Any] = next(
        (json.loads(line) for line in reversed(out) if json.loads(line).get("type") is None),
        genesis,
    )
    record = {**forged, "seq": previous["seq"] + 1, "prev_hash": previous["hash"]}
    record["hash"] = event_hash(record)
    out.append(canonical(record))
    head = record
    for line in lines[at:]:
        fields = json.loads(line)
        if fields.get("type") == "checkpoint":
            fields["seq"] = head["seq"]
            out.append(canonical(fields))
            continue
        fields["seq"], fields["prev_hash"] = head["seq"] + 1, head["hash"]
        fields["hash"] = event_hash(fields)
        out.append(canonical(fields))
        head = fields
    return out


@pytest.mark.parametrize("seq", [1, 2, 150, 500, 999, 1000])
def test_a_forged_event_with_the_chain_rehashed_after_it_fails_on_the_signature(
    chain: Chain, seq: int
) -> None:
    """The hash chain alone cannot catch this (every link is consistent again); the next
    signed checkpoint does, because it signed the real head."""
    at = chain.lines.index(next(line for line in chain.lines if json.loads(line).get("seq") == seq))
    template = json.loads(chain.lines[at])
    forged = {k: v for k, v in template.items() if k not in ("seq", "prev_hash", "hash")} | {
        "action": "config.update",
        "outcome": "success",
        "resource": {"forged": True},
    }
    variant = _forge_from(list(chain.lines), at, forged)
    verdict = run(variant, chain.key)
    assert not verdict.ok
    assert "checkpoint" in verdict.message
    # Dropping every checkpoint after the forgery leaves an unsigned tail instead.
    unsigned = [
        line
        for i, line in enumerate(variant)
        if i <= at or json.loads(line).get("type") != "checkpoint"
    ]
    assert not run(unsigned, chain.key).ok
    # ... which --live (a file still being written) accepts: the forgery is hash-consistent,
    # so the signature is what caught it above, not a slip of the forger.
    assert run(unsigned, chain.key, live=True).ok


def test_concurrent_requests_share_writes_and_the_chain_stays_intact(tmp_path: Path) -> None:
    """Group commit: 16 threads emitting at once get their events written together (fewer
    fsync'd writes than requests), in chain order, with checkpoints after what they sign."""
    signer = Signer.create(tmp_path / "key.pem")
    broker, sink = open_broker(tmp_path, signer)
    writes = 0
    real_write_many = sink.write_many

    def counted(records: list[Any]) -> None:  # the real sink, its calls counted
        nonlocal writes
        writes += 1
        real_write_many(records)

    sink.write_many = counted  # type: ignore[method-assign]
    broker.start()

    def request(i: int) -> int:
        return broker.emit_many(
            [
                {"category": "authentication", "action": "authenticate", "outcome": "success"},
                {"category": "data_access", "action": "entity.put", "outcome": "success"},
            ]
        )

    with ThreadPoolExecutor(16) as pool:
        lasts = list(pool.map(request, range(800)))
    broker.close()
    assert sorted(lasts) == list(range(2, 1601, 2))  # each request got its own two seqs
    assert writes < 800  # requests that arrived during an fsync were written together
    assert events_in(sink.files()) == list(range(1, 1601))
    verdict = verify(sink.files(), signer.public_key)
    assert verdict.ok, verdict
    # One per >= 100 events (requests racing to the same due checkpoint sign it once), plus
    # the one at close: never more, and not many fewer (a request adds 2 events).
    assert 1600 // (EVERY + 2 * 16) <= verdict.checkpoints <= 1600 // EVERY + 1
