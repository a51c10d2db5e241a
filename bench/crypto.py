"""Encryption benchmark: entities with envelope-encrypted fields against the same ones in clear.

Run from the repository root (details in bench/README.md)::

    .venv/bin/python bench/crypto.py [--seconds 8] [--clients 32] [--batch 100] [--json]

Part 1, over HTTP, against a real ``themisdb serve`` (development mode: ``file`` key provider,
no token), started and stopped with bench/ingest.py's code. ``PUT /config/encryption-schema``
makes ``ssn`` (pii) and ``iban`` (restricted) of table ``enc`` encrypted; table ``plain`` has no
encrypted field. Both tables get the same ~1 KiB entities. Phases, each ``--seconds`` after an
unmeasured ``--warmup`` (ingest.py's ``http_phase``):

1. plain, PUT      2. enc, PUT      3. plain, batch      4. enc, batch

Then ``--sample`` acknowledged entities of each table are read back (``GET``, which decrypts)
and compared with what was written, and once the server has stopped its stored rows are
inspected: ciphertext in ``enc``'s two fields, plaintext in ``plain``, one data key (``enc``).

Part 2, in process (no server): ``Storage`` + ``LocalKeyProvider("file")`` + ``Envelope`` +
``Database``, each scenario in a fresh data directory. ``--writes`` entities go to 1 table, then
to 4 tables (round robin), each with and without encrypted fields, in ``storage.write`` calls of
``--batch`` ops; every scenario ``--rounds`` times (order reversed every other round).
Reported: ``Envelope.provider_calls`` (wrap + unwrap calls to the key provider), which must
equal the number of data keys (1, 4) and not grow with the writes; seal (``Database.put_op``)
and end-to-end throughput (best round); and, after ``Envelope.forget()``, reading everything
back, which again must cost one provider call per data key.

Every failed request, wrong answer or broken expectation is counted and reported; the exit
status is 1 when there was any, 0 otherwise. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingest import (
    BATCH_ROUTE,
    PUT_ROUTE,
    Entities,
    HttpConnection,
    PhaseStats,
    Server,
    Sync,
    Workload,
    _fmt,
    _run_clients,
    http_phase,
    progress,
    running_server,
    stop,
)
from ingest import Args as IngestArgs

from themisdb.crypto import EncryptionSchema, Envelope, is_ciphertext
from themisdb.database import Database
from themisdb.errors import ThemisError
from themisdb.keys import LocalKeyProvider
from themisdb.storage import Storage, encode_entity

PLAIN, ENC = "plain", "enc"
SENSITIVE = ("iban", "ssn")
FIELD_POLICY: dict[str, Any] = {
    "fields": {
        "ssn": {"encrypt": True, "classification": "pii"},
        "iban": {"encrypt": True, "classification": "restricted"},
    }
}
MAX_ENTITIES = 1_000_000  # count bound of every HTTP phase (as ingest.py's default)
READ_BOUND_S = 60.0  # the read-back is bounded by --sample; this only cuts off a hang
DEK_TTL = 300.0


def schema_body(tables: list[str]) -> dict[str, Any]:
    return {"tables": {table: FIELD_POLICY for table in tables}}


# --- entities --------------------------------------------------------------------------------


class People:
    """Unique, fixed-size JSON entities with two sensitive fields (``ssn``, ``iban``). The text
    is canonical (sorted keys, no spaces) and does not depend on the table: the plain and the
    encrypted table get exactly the same entities."""

    def __init__(self, phase: str, size: int) -> None:
        self.phase = phase
        head = '{"iban":"%s","id":"%s","n":%d,"name":"person %d","pad":"'
        tail = '","phase":"' + phase + '","ssn":"%s"}'
        # Sized at seq 0; larger sequence numbers add at most 16 bytes (two 9-digit numbers).
        bare = len((head + tail) % (self.iban(0), self.pk(0), 0, 0, self.ssn(0)))
        digits = hashlib.sha256(b"themisdb crypto benchmark").hexdigest()
        pad_length = max(0, size - bare)
        pad = (digits * (pad_length // len(digits) + 1))[:pad_length]
        self._template = head + pad + tail

    def pk(self, seq: int) -> str:
        return f"{self.phase}-{seq:09d}"

    @staticmethod
    def seq_of(pk: str) -> int:
        return int(pk.rsplit("-", 1)[1])

    @staticmethod
    def ssn(seq: int) -> str:
        return f"{seq // 1_000_000 % 1000:03d}-{seq // 10_000 % 100:02d}-{seq % 10_000:04d}"

    @staticmethod
    def iban(seq: int) -> str:
        return f"DE{seq % 97:02d}{seq:018d}"

    def text(self, seq: int) -> str:
        return self._template % (self.iban(seq), self.pk(seq), seq, seq, self.ssn(seq))

    def entity(self, seq: int) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.text(seq))
        return value


def at_rest_problem(stored: dict[str, Any], written: dict[str, Any], encrypted: bool) -> str | None:
    """Why the stored form of ``written`` is wrong, or None: the sensitive fields must be
    ciphertext (not containing their plaintext) in an encrypted table and plaintext elsewhere;
    every other field is stored as written."""
    if stored.keys() != written.keys():
        return f"fields {sorted(stored)} stored, {sorted(written)} written"
    for name, value in stored.items():
        if encrypted and name in SENSITIVE:
            if not is_ciphertext(value) or str(written[name]) in value:
                return f"{name} is not encrypted at rest: {str(value)[:60]!r}"
        elif value != written[name]:
            return f"{name} stored as {str(value)[:60]!r}"
    return None


# --- part 1: over HTTP -----------------------------------------------------------------------


Acked = dict[str, list[int]]  # phase -> sequence numbers acknowledged with 200


def put_workload(table: str, people: People, acked: list[int]) -> Workload:
    def build(seq: int) -> tuple[str, str, bytes]:
        return "PUT", f"/entities/{table}:{people.pk(seq)}", people.text(seq).encode()

    def accepts(answer: Any, seq: int) -> bool:
        ok = (
            isinstance(answer, dict)
            and answer.get("key") == f"{table}:{people.pk(seq)}"
            and isinstance(answer.get("lsn"), int)
        )
        if ok:
            acked.append(seq)
        return ok

    return Workload(1, build, accepts)


def batch_workload(table: str, people: People, size: int, acked: list[int]) -> Workload:
    def build(first: int) -> tuple[str, str, bytes]:
        items = ",".join(
            f'{{"key":"{table}:{people.pk(s)}","blob":{people.text(s)}}}'
            for s in range(first, first + size)
        )
        return "POST", "/entities/_batch", f'{{"entities":[{items}]}}'.encode()

    def accepts(answer: Any, first: int) -> bool:
        ok = isinstance(answer, dict) and answer.get("written") == size
        if ok:
            acked.extend(range(first, first + size))
        return ok

    return Workload(size, build, accepts)


def workload(
    table: str, kind: Literal["put", "batch"], args: Args, acked: Acked
) -> Callable[[Entities], Workload]:
    """For ingest.http_phase, which hands over an ``Entities`` of the measured phase and one of
    its warm-up: only its phase name is used, the requests carry ``People`` of that phase."""

    def make(carrier: Entities) -> Workload:
        people = People(carrier.phase, args.entity_bytes)
        done = acked.setdefault(carrier.phase, [])
        if kind == "put":
            return put_workload(table, people, done)
        return batch_workload(table, people, args.batch, done)

    return make


def spread(values: list[int], count: int) -> list[int]:
    """``count`` evenly spaced members of ``values`` in order (all of them when fewer)."""
    ordered = sorted(values)
    if len(ordered) <= count:
        return ordered
    step = len(ordered) / count
    return [ordered[int(i * step)] for i in range(count)]


def sample(acked: Acked, count: int, size: int) -> list[tuple[People, int]]:
    """Up to ``count`` acknowledged entities, shared between the measured phases."""
    phases = [p for p in ("put", "batch") if acked.get(p)]
    picked: list[tuple[People, int]] = []
    for number, phase in enumerate(phases):
        share = count // len(phases) + (1 if number < count % len(phases) else 0)
        people = People(phase, size)
        picked += [(people, seq) for seq in spread(acked[phase], share)]
    return picked


async def read_back(
    server: Server, table: str, picked: list[tuple[People, int]], clients: int
) -> PhaseStats:
    """GET every sampled entity; the answer must be exactly what was written (decrypted)."""
    stats = PhaseStats(f"GET {table}")

    def build(index: int) -> tuple[str, str, bytes]:
        people, seq = picked[index]
        return "GET", f"/entities/{table}:{people.pk(seq)}", b""  # b"": Content-Length: 0

    def accepts(answer: Any, index: int) -> bool:
        people, seq = picked[index]
        expected = {"key": f"{table}:{people.pk(seq)}", "blob": people.entity(seq)}
        return bool(answer == expected)

    conns = [HttpConnection(server.http_port) for _ in range(max(1, min(clients, len(picked))))]
    try:
        await _run_clients(
            conns, Workload(1, build, accepts), stats, READ_BOUND_S, len(picked), server.process
        )
    finally:
        for conn in conns:
            conn.close()
    return stats


async def set_schema_over_http(server: Server) -> str | None:
    """PUT the encryption schema; None when the server took it, else what went wrong."""
    body = schema_body([ENC])
    conn = HttpConnection(server.http_port)
    try:
        status, payload = await conn.request(
            "PUT", "/config/encryption-schema", json.dumps(body).encode()
        )
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if status != 200 or not isinstance(answer, dict) or answer.get("tables") != body["tables"]:
        return f"HTTP {status}: {payload[:300].decode('utf-8', 'replace')}"
    return None


async def http_part(
    server: Server, args: Args
) -> tuple[dict[str, PhaseStats], dict[str, PhaseStats], dict[str, list[tuple[People, int]]]]:
    problem = await set_schema_over_http(server)
    if problem is not None:
        raise SystemExit(f"bench: PUT /config/encryption-schema failed: {problem}")
    acked: dict[str, Acked] = {PLAIN: {}, ENC: {}}
    phases: dict[str, PhaseStats] = {}
    ingest_args = args.for_ingest()
    kinds: tuple[tuple[Literal["put", "batch"], tuple[str, str]], ...] = (
        ("put", PUT_ROUTE),
        ("batch", BATCH_ROUTE),
    )
    for kind, route in kinds:
        for table in (PLAIN, ENC):
            label = "PUT" if kind == "put" else f"batch of {args.batch}"
            progress(f"{table}, {label}, {args.clients} clients ...")
            phases[f"{table}_{kind}"] = await http_phase(
                server,
                f"{table}, {label}",
                Entities(kind, args.entity_bytes),  # carries the phase name (see workload())
                workload(table, kind, args, acked[table]),
                route,
                ingest_args,
            )
    reads: dict[str, PhaseStats] = {}
    picked: dict[str, list[tuple[People, int]]] = {}
    for table in (PLAIN, ENC):
        picked[table] = sample(acked[table], args.sample, args.entity_bytes)
        progress(f"reading back {len(picked[table])} entities of {table} ...")
        reads[table] = await read_back(server, table, picked[table], args.clients)
    return phases, reads, picked


def inspect_at_rest(
    data_dir: Path, picked: dict[str, list[tuple[People, int]]], sync: Sync
) -> dict[str, Any]:
    """The stopped server's stored rows of the sampled entities, and its data keys."""
    storage = Storage(data_dir, sync=sync)
    try:
        tables: dict[str, Any] = {}
        failures: Counter[str] = Counter()
        examples: list[str] = []
        for table, entries in picked.items():
            sizes: list[int] = []
            good = 0
            for people, seq in entries:
                pk = people.pk(seq)
                stored = storage.get(table, pk)
                problem = (
                    "missing"
                    if stored is None
                    else at_rest_problem(stored, people.entity(seq), table == ENC)
                )
                if stored is not None:
                    sizes.append(len(encode_entity(stored).encode()))
                if problem is None:
                    good += 1
                else:
                    failures[f"at_rest_{table}"] += 1
                    if len(examples) < 5:
                        examples.append(f"{table}:{pk}: {problem}")
            tables[table] = {
                "rows": len(entries),
                "as_expected": good,
                "stored_bytes_mean": round(sum(sizes) / len(sizes), 1) if sizes else None,
            }
        keys = [(t, v) for t, v, _, _ in storage.deks()]
        deks = [{"table": t, "version": v} for t, v in keys]
        if [t for t, _ in keys] != [ENC]:
            failures["data_keys"] += 1
            examples.append(f"data keys {deks}, expected exactly one, of table {ENC}")
    finally:
        storage.close()
    return {
        "tables": tables,
        "data_keys": deks,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "failure_examples": examples,
    }


# --- part 2: in process ----------------------------------------------------------------------


@dataclass
class Scenario:
    """One in-process write + read-back run in a fresh data directory."""

    name: str
    tables: list[str]
    encrypted: bool
    entities: int = 0
    seal_s: float = 0.0
    write_s: float = 0.0
    elapsed: float = 0.0
    calls_writing: int = 0
    data_keys: int = 0
    read_entities: int = 0
    read_s: float = 0.0
    open_s: float = 0.0
    calls_reading: int = 0
    stored_bytes: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {detail}"[:300])

    def as_dict(self) -> dict[str, Any]:
        def rate(count: int, seconds: float) -> float | None:
            return round(count / seconds, 1) if seconds else None

        expected = len(self.tables) if self.encrypted else 0
        return {
            "tables": self.tables,
            "encrypted_fields": list(SENSITIVE) if self.encrypted else [],
            "entities": self.entities,
            "elapsed_s": round(self.elapsed, 3),
            "seal_s": round(self.seal_s, 3),
            "write_s": round(self.write_s, 3),
            "seal_entities_per_s": rate(self.entities, self.seal_s),
            "entities_per_s": rate(self.entities, self.elapsed),
            "data_keys": self.data_keys,
            "expected_data_keys": expected,
            "provider_calls_writing": self.calls_writing,
            "read_back": {
                "entities": self.read_entities,
                "read_s": round(self.read_s, 3),
                "decrypt_s": round(self.open_s, 3),
                "entities_per_s": rate(self.read_entities, self.read_s + self.open_s),
                "decrypt_entities_per_s": rate(self.read_entities, self.open_s),
                "provider_calls_after_forget": self.calls_reading,
            },
            "stored_bytes_mean": (
                round(sum(self.stored_bytes) / len(self.stored_bytes), 1)
                if self.stored_bytes
                else None
            ),
            "failed": self.failed,
            "failures": dict(self.errors),
            "failure_examples": self.examples,
        }


def run_scenario(base: Path, scenario: Scenario, args: Args) -> Scenario:
    directory = Path(tempfile.mkdtemp(prefix=f"inproc-{len(scenario.tables)}-", dir=base))
    storage = Storage(directory / "data", sync=args.sync)
    provider = LocalKeyProvider("file", directory / "keys", create=True)
    envelope = Envelope(provider, storage, ttl=DEK_TTL)
    try:
        db = Database(storage, envelope)
        if scenario.encrypted:
            db.set_schema(EncryptionSchema.model_validate(schema_body(scenario.tables)))
        _write(db, scenario, args)
        scenario.data_keys = len(storage.deks())
        expected = len(scenario.tables) if scenario.encrypted else 0
        if scenario.data_keys != expected:
            scenario.fail("data_keys", f"{scenario.data_keys} data keys, expected {expected}")
        if scenario.calls_writing != scenario.data_keys:
            scenario.fail(
                "provider_calls",
                f"{scenario.calls_writing} provider calls for {scenario.entities} writes, "
                f"expected one per data key ({scenario.data_keys})",
            )
        _read(db, scenario, args)
        if scenario.calls_reading != scenario.data_keys:
            scenario.fail(
                "provider_calls_after_forget",
                f"{scenario.calls_reading} provider calls reading {scenario.read_entities} "
                f"entities, expected one per data key ({scenario.data_keys})",
            )
    finally:
        storage.close()
        provider.close()
        shutil.rmtree(directory, ignore_errors=True)
    return scenario


def _write(db: Database, scenario: Scenario, args: Args) -> None:
    people = People("inproc", args.entity_bytes)
    tables = scenario.tables
    calls = db.envelope.provider_calls
    started = time.perf_counter()
    for first in range(0, args.writes, args.batch):
        seqs = range(first, min(first + args.batch, args.writes))
        entities = [(tables[s % len(tables)], people.pk(s), people.entity(s)) for s in seqs]
        sealed = time.perf_counter()
        try:
            ops = [db.put_op(table, pk, entity) for table, pk, entity in entities]
        except ThemisError as exc:
            scenario.fail("seal", f"{type(exc).__name__}: {exc}")
            continue
        written = time.perf_counter()
        try:
            lsns = db.storage.write(ops)
        except ThemisError as exc:
            scenario.fail("write", f"{type(exc).__name__}: {exc}")
            continue
        done = time.perf_counter()
        scenario.seal_s += written - sealed
        scenario.write_s += done - written
        if len(lsns) != len(ops) or any(lsn is None for lsn in lsns):
            scenario.fail("write", f"LSNs {lsns[:3]}... for {len(ops)} ops")
        else:
            scenario.entities += len(ops)
    scenario.elapsed = time.perf_counter() - started
    scenario.calls_writing = db.envelope.provider_calls - calls


def _read(db: Database, scenario: Scenario, args: Args) -> None:
    """Forget the cached data keys, then read every entity back and decrypt it."""
    db.envelope.forget()
    calls = db.envelope.provider_calls
    started = time.perf_counter()
    rows = [
        (table, pk, stored) for table in scenario.tables for pk, stored in db.storage.export(table)
    ]
    scenario.read_s = time.perf_counter() - started
    opened: list[dict[str, Any] | None] = []
    started = time.perf_counter()
    for table, pk, stored in rows:
        try:
            opened.append(db.present(table, pk, stored, pii_read=True))
        except ThemisError as exc:
            opened.append(None)
            scenario.fail("decrypt", f"{table}:{pk}: {type(exc).__name__}: {exc}")
    scenario.open_s = time.perf_counter() - started
    scenario.calls_reading = db.envelope.provider_calls - calls
    scenario.read_entities = len(rows)
    people = People("inproc", args.entity_bytes)
    seen: set[int] = set()
    for (table, pk, stored), entity in zip(rows, opened, strict=True):
        seq = people.seq_of(pk)
        seen.add(seq)
        written = people.entity(seq)
        scenario.stored_bytes.append(len(encode_entity(stored).encode()))
        if table != scenario.tables[seq % len(scenario.tables)]:
            scenario.fail("mismatch", f"{pk} found in table {table}")
        elif entity is not None and entity != written:
            scenario.fail("mismatch", f"{table}:{pk} read back differs from what was written")
        problem = at_rest_problem(stored, written, scenario.encrypted)
        if problem is not None:
            scenario.fail("at_rest", f"{table}:{pk}: {problem}")
    if len(rows) != scenario.entities or len(seen) != len(rows):
        scenario.fail(
            "row_count", f"{len(rows)} rows ({len(seen)} keys) read, {scenario.entities} written"
        )


def inprocess_part(base: Path, args: Args) -> dict[str, list[Scenario]]:
    """Every scenario ``--rounds`` times, the order reversed every other round (so that a
    drift or a disturbance does not always hit the same scenario); name -> its runs."""
    shapes = [(count, encrypted) for count in (1, 4) for encrypted in (False, True)]
    runs: dict[str, list[Scenario]] = {}
    for number in range(args.rounds):
        for count, encrypted in shapes if number % 2 == 0 else shapes[::-1]:
            prefix = ENC if encrypted else PLAIN
            tables = [prefix] if count == 1 else [f"{prefix}{i}" for i in range(count)]
            name = f"{prefix}, {count} table{'s' if count > 1 else ''}"
            progress(f"in process, round {number + 1}: {name}, {args.writes} writes ...")
            scenario = run_scenario(base, Scenario(name, tables, encrypted), args)
            runs.setdefault(name, []).append(scenario)
    return runs  # in the order of the first round: plain 1, enc 1, plain 4, enc 4


def summarize(runs: list[Scenario]) -> dict[str, Any]:
    """The best rate of each kind over the rounds; counts and failures of every round."""
    rounds = [s.as_dict() for s in runs]

    def best(*path: str) -> float | None:
        values = []
        for one in rounds:
            value: Any = one
            for key in path:
                value = value[key]
            if value is not None:
                values.append(float(value))
        return max(values, default=None)

    failures: Counter[str] = Counter()
    for s in runs:
        failures.update(s.errors)
    first = runs[0]
    return {
        "tables": first.tables,
        "encrypted_fields": list(SENSITIVE) if first.encrypted else [],
        "rounds": len(runs),
        "entities": [one["entities"] for one in rounds],
        "data_keys": [one["data_keys"] for one in rounds],
        "expected_data_keys": rounds[0]["expected_data_keys"],
        "provider_calls_writing": [one["provider_calls_writing"] for one in rounds],
        "provider_calls_after_forget": [
            one["read_back"]["provider_calls_after_forget"] for one in rounds
        ],
        "best": {
            "seal_entities_per_s": best("seal_entities_per_s"),
            "entities_per_s": best("entities_per_s"),
            "read_back_entities_per_s": best("read_back", "entities_per_s"),
            "decrypt_entities_per_s": best("read_back", "decrypt_entities_per_s"),
        },
        "stored_bytes_mean": rounds[0]["stored_bytes_mean"],
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "failure_examples": [e for s in runs for e in s.examples][:5],
        "per_round": rounds,
    }


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Args:
    seconds: float
    warmup: float
    clients: int
    batch: int
    sync: Sync
    entity_bytes: int
    sample: int
    writes: int
    rounds: int
    tmpdir: str | None
    json: bool

    def for_ingest(self) -> IngestArgs:
        return IngestArgs(
            seconds=self.seconds,
            warmup=self.warmup,
            clients=self.clients,
            batch=self.batch,
            sync=self.sync,
            entity_bytes=self.entity_bytes,
            max_entities=MAX_ENTITIES,
            tmpdir=self.tmpdir,
            json=self.json,
        )


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8.0, help="per HTTP phase (default 8)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each HTTP phase"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP connections")
    parser.add_argument(
        "--batch", type=int, default=100, help="entities per HTTP batch and per storage.write"
    )
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--entity-bytes", type=int, default=1024, help="JSON size of an entity")
    parser.add_argument(
        "--sample", type=int, default=400, help="entities of each table read back over HTTP"
    )
    parser.add_argument(
        "--writes", type=int, default=10_000, help="entities per in-process scenario"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of every in-process scenario (default 2)"
    )
    parser.add_argument("--tmpdir", help="where the temporary data directories go")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    ns = parser.parse_args(argv)
    if ns.seconds <= 0 or ns.warmup < 0 or ns.clients < 1 or ns.batch < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --clients and --batch >= 1")
    if ns.sample < 1 or ns.writes < 4 or ns.rounds < 1:
        parser.error("--sample and --rounds must be >= 1, --writes >= 4")
    return Args(
        seconds=ns.seconds,
        warmup=ns.warmup,
        clients=ns.clients,
        batch=ns.batch,
        sync=ns.sync,
        entity_bytes=ns.entity_bytes,
        sample=ns.sample,
        writes=ns.writes,
        rounds=ns.rounds,
        tmpdir=ns.tmpdir,
        json=ns.json,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def run(args: Args) -> dict[str, Any]:
    run_started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="themisdb-bench-crypto-", dir=args.tmpdir))
    try:
        progress("starting themisdb serve ...")
        with running_server(base, args.sync) as server:
            try:
                ready_s = server.wait_ready()
            except RuntimeError as exc:
                raise SystemExit(f"bench: {exc}\n--- server log ---\n{server.log_tail()}") from exc
            phases, reads, picked = asyncio.run(http_part(server, args))
            stopped = stop(server)
            log = server.log_problems()
            server_warmup_failures = server.warmup_failures
            warmup = {"failed": server.warmup_failures, "examples": server.warmup_examples}
        progress("inspecting the stored rows ...")
        at_rest = inspect_at_rest(base / "server-data", picked, args.sync)
        scenarios = inprocess_part(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    http = {key: stats.as_dict() for key, stats in phases.items()}
    read_back = {
        table: {
            "sampled": len(picked[table]),
            "matched": stats.requests_ok,
            "mismatched": stats.errors.get("unexpected_body", 0),
            **stats.as_dict(),
        }
        for table, stats in reads.items()
    }
    inproc = {name: summarize(runs) for name, runs in scenarios.items()}
    by_shape = {
        (len(runs[0].tables), runs[0].encrypted): inproc[name] for name, runs in scenarios.items()
    }

    def inproc_ratios(count: int) -> dict[str, float | None]:
        plain, enc = by_shape[(count, False)]["best"], by_shape[(count, True)]["best"]
        return {
            "seal": _ratio(enc["seal_entities_per_s"], plain["seal_entities_per_s"]),
            "end_to_end": _ratio(enc["entities_per_s"], plain["entities_per_s"]),
            "read_back": _ratio(enc["read_back_entities_per_s"], plain["read_back_entities_per_s"]),
            "decrypt": _ratio(enc["decrypt_entities_per_s"], plain["decrypt_entities_per_s"]),
        }

    failed = (
        sum(stats.failed for stats in phases.values())
        + sum(stats.failed for stats in reads.values())
        + server_warmup_failures
        + at_rest["failed"]
        + sum(s.failed for runs in scenarios.values() for s in runs)
    )
    return {
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "batch": args.batch,
            "sync": args.sync,
            "entity_bytes": len(People("put", args.entity_bytes).text(0).encode()),
            "encrypted_fields": {ENC: list(SENSITIVE)},
            "sample": args.sample,
            "writes": args.writes,
            "rounds": args.rounds,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "http": {
            **http,
            "ratios_enc_over_plain": {
                "put": _ratio(
                    http["enc_put"]["entities_per_s"], http["plain_put"]["entities_per_s"]
                ),
                "batch": _ratio(
                    http["enc_batch"]["entities_per_s"], http["plain_batch"]["entities_per_s"]
                ),
            },
            "read_back": read_back,
            "at_rest": at_rest,
            "server": {"ready_s": round(ready_s, 2), **stopped, "log": log, "warmup": warmup},
        },
        "in_process": {
            "scenarios": inproc,
            "provider_calls": {
                f"{count}_table{'s' if count > 1 else ''}": {
                    "writes": by_shape[(count, True)]["entities"],
                    "writing": by_shape[(count, True)]["provider_calls_writing"],
                    "data_keys": by_shape[(count, True)]["data_keys"],
                    "reading_after_forget": by_shape[(count, True)]["provider_calls_after_forget"],
                }
                for count in (1, 4)
            },
            "ratios_enc_over_plain": {
                f"{count}_table{'s' if count > 1 else ''}": inproc_ratios(count) for count in (1, 4)
            },
        },
        "failed": failed,
        "total_s": round(time.monotonic() - run_started, 1),
    }


def _counts(values: list[int]) -> str:
    """One number when every round agrees, else each round's, separated by slashes."""
    return str(values[0]) if len(set(values)) == 1 else "/".join(map(str, values))


def render(result: dict[str, Any]) -> str:
    cfg, machine, http = result["config"], result["machine"], result["http"]
    lines = [
        f"ThemisDB encryption: sync={cfg['sync']}, {cfg['clients']} clients, {cfg['seconds']:g} s "
        f"per HTTP phase (+{cfg['warmup_s']:g} s warm-up), {cfg['entity_bytes']} B entities, "
        f"table {ENC} encrypts {' and '.join(SENSITIVE)}, batches of {cfg['batch']}",
        f"machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"SQLite {machine['sqlite']}",
        "",
        "over HTTP (one themisdb serve, development mode, file key provider):",
        f"{'phase':<22}{'entities':>9}{'time s':>8}{'entities/s':>12}{'req/s':>9}"
        f"{'client p50/p99 ms':>19}{'server p50/p99 ms':>19}{'CPU srv/cli %':>15}"
        f"{'non-200':>9}{'errors':>8}",
    ]
    names = {
        "plain_put": f"{PLAIN}, PUT",
        "enc_put": f"{ENC}, PUT",
        "plain_batch": f"{PLAIN}, batch of {cfg['batch']}",
        "enc_batch": f"{ENC}, batch of {cfg['batch']}",
    }
    for key, name in names.items():
        p = http[key]
        client, server, cpu = (
            p["client_latency_ms"],
            p["server_latency_ms"],
            p["cpu_percent_of_one_core"],
        )
        lines.append(
            f"{name:<22}{p['entities']:>9}{p['elapsed_s']:>8.2f}{_fmt(p['entities_per_s']):>12}"
            f"{_fmt(p['requests_per_s']):>9}"
            f"{_fmt(client['p50']) + ' / ' + _fmt(client['p99']):>19}"
            f"{_fmt(server.get('p50')) + ' / ' + _fmt(server.get('p99')):>19}"
            f"{_fmt(cpu['server'], '.0f') + ' / ' + _fmt(cpu['client'], '.0f'):>15}"
            f"{p['non_200']:>9}{p['failed'] - p['non_200']:>8}"
        )
    ratios, rest, srv = http["ratios_enc_over_plain"], http["at_rest"], http["server"]
    lines.append(
        f"ratio {ENC}/{PLAIN} entities/s: PUT {_fmt(ratios['put'], '.3f')}, "
        f"batch {_fmt(ratios['batch'], '.3f')}"
    )
    for table, r in http["read_back"].items():
        lines.append(
            f"read back {table} (GET, decrypted): {r['matched']}/{r['sampled']} as written, "
            f"{r['mismatched']} mismatched, {r['failed'] - r['mismatched']} other failures"
        )
    for table, t in rest["tables"].items():
        what = f"{' and '.join(SENSITIVE)} ciphertext" if table == ENC else "all plaintext"
        lines.append(
            f"at rest {table} (the stopped server's rows of the sample): "
            f"{t['as_expected']}/{t['rows']} {what}; "
            f"{_fmt(t['stored_bytes_mean'])} B stored per entity"
        )
    lines.append(
        "data keys of the server: "
        + (", ".join(f"{d['table']} v{d['version']}" for d in rest["data_keys"]) or "none")
    )
    log = srv["log"]
    lines.append(
        f"server: ready in {srv['ready_s']} s; exit code {srv['exit_code']} "
        + (f"after SIGTERM ({srv['stop_s']} s)" if srv["sigterm_sent"] else "before SIGTERM")
        + "; log: "
        + (", ".join(f"{n} {k}" for k, n in sorted(log["counts"].items())) or "no warnings/errors")
    )
    lines += [f"  {example}" for example in log["examples"]]

    inproc = result["in_process"]
    lines += [
        "",
        f"in process (Storage + file provider + Envelope + Database, no server; {cfg['writes']} "
        f"writes per scenario in storage.write calls of {cfg['batch']} ops, sync={cfg['sync']}; "
        f"rates: best of {cfg['rounds']} round(s), counts: every round):",
        f"{'scenario':<18}{'writes':>7}{'seal ent/s':>12}{'end-to-end ent/s':>18}"
        f"{'DEKs':>6}{'provider calls':>16}{'read back ent/s':>17}{'decrypt ent/s':>15}"
        f"{'calls after forget':>20}{'stored B':>10}{'failed':>8}",
    ]
    for name, s in inproc["scenarios"].items():
        best = s["best"]
        lines.append(
            f"{name:<18}{_counts(s['entities']):>7}{_fmt(best['seal_entities_per_s']):>12}"
            f"{_fmt(best['entities_per_s']):>18}{_counts(s['data_keys']):>6}"
            f"{_counts(s['provider_calls_writing']):>16}"
            f"{_fmt(best['read_back_entities_per_s']):>17}"
            f"{_fmt(best['decrypt_entities_per_s']):>15}"
            f"{_counts(s['provider_calls_after_forget']):>20}{_fmt(s['stored_bytes_mean']):>10}"
            f"{s['failed']:>8}"
        )
    for key, calls in inproc["provider_calls"].items():
        lines.append(
            f"provider calls, {key.replace('_', ' ')}: {_counts(calls['writing'])} for "
            f"{_counts(calls['writes'])} writes, {_counts(calls['reading_after_forget'])} for "
            f"reading them all back after forget(); {_counts(calls['data_keys'])} data key(s)"
        )
    for key, r in inproc["ratios_enc_over_plain"].items():
        lines.append(
            f"ratio {ENC}/{PLAIN}, {key.replace('_', ' ')}: seal {_fmt(r['seal'], '.3f')}, "
            f"end to end {_fmt(r['end_to_end'], '.3f')}, read back {_fmt(r['read_back'], '.3f')} "
            f"(decrypt alone {_fmt(r['decrypt'], '.3f')})"
        )
    lines.append(
        "seal = Database.put_op (field encryption + canonical JSON); end to end = put_op + "
        "durable storage.write; read back = storage.export + Database.present (decryption)"
    )

    problems: list[str] = []
    for key, name in names.items():
        p = http[key]
        lines += [f"note in {name}: {note}" for note in p["notes"]]
        if p["failed"] or p["aborted"]:
            problems.append(
                f"FAILED in {name}: {p['failures']}" + (f"; {p['aborted']}" if p["aborted"] else "")
            )
            problems += [f"  {example}" for example in p["failure_examples"]]
        non_200 = {s: n for s, n in p["server_statuses"].items() if s != "200"}
        if non_200:
            problems.append(f"server-side non-200 in {name}: {non_200}")
    for table, r in http["read_back"].items():
        if r["failed"] or r["aborted"]:
            problems.append(f"FAILED reading back {table}: {r['failures']}")
            problems += [f"  {example}" for example in r["failure_examples"]]
    if srv["warmup"]["failed"]:
        problems.append(f"FAILED during warm-up: {srv['warmup']['failed']}")
        problems += [f"  {example}" for example in srv["warmup"]["examples"]]
    if rest["failed"]:
        problems.append(f"FAILED at rest: {rest['failures']}")
        problems += [f"  {example}" for example in rest["failure_examples"]]
    for name, s in inproc["scenarios"].items():
        if s["failed"]:
            problems.append(f"FAILED in process, {name}: {s['failures']}")
            problems += [f"  {example}" for example in s["failure_examples"]]
    lines += problems
    lines.append(f"failures in total: {result['failed']}; run took {result['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    ok = result["failed"] == 0 and result["http"]["server"]["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
