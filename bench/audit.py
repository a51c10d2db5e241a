"""Audit benchmark: what the signed audit chain costs, in process and over HTTP, in one run.

Run from the repository root (details in bench/README.md)::

    .venv/bin/python bench/audit.py [--seconds 5] [--inproc-seconds 2.5] [--rounds 2] [--json]

Part 1, in process (no server): ``AuditBroker`` + ``FileSink`` + ``Signer`` in a fresh
directory per scenario, one ``emit`` per event (what a server request emits: a data_access event
with a resource, an actor fingerprint, a request id), single-threaded, for ``--inproc-seconds``
or ``--max-events``, whichever comes first. Four scenarios, the same run:

    checkpoint every 1 event  x  fsync "always"     checkpoint every 1 event  x  fsync "never"
    checkpoint every 1,000    x  fsync "always"     checkpoint every 1,000    x  fsync "never"

"Every 1 event" signs an ECDSA P-256 checkpoint after each event (and writes it: with fsync
"always", two fsyncs per event). Each chain is then verified with ``themisdb.audit.verify``
(which must say intact, with exactly the events and checkpoints written) and the verification
speed is reported too.

Part 2, over HTTP: two real ``python -m themisdb serve`` processes (development mode, fresh data
directories, free loopback ports), one with ``logging: {audit: {enabled: false}}`` and one with
audit on (the default file sink under DATA_DIR/audit, ``signing: {enabled: true}``, the
development signing key). Both are started first; then single ``PUT /entities/bench:<pk>``
phases with ``--clients`` keep-alive connections run against them one at a time, in the order
off, on, on, off (``--rounds 2``; ABBA evens out drift), each after an unmeasured warm-up.
bench/ingest.py's client and phase code is reused (imported, not copied). Reported: PUT/s of
each phase and the ratio audit on / audit off over all rounds. After SIGTERM, the "on" server's
audit log is verified with its public key (it must be intact, ending in the shutdown
checkpoint) and the "off" server must not have written one.

Every failed request, failed verification or broken expectation is counted and reported; the
exit status is 1 when there was any, 0 otherwise. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ingest import (
    LOOPBACK,
    PUT_ROUTE,
    Entities,
    PhaseStats,
    Server,
    Sync,
    _fmt,
    free_port,
    http_phase,
    ms,
    percentile,
    progress,
    single_put,
    stop,
)
from ingest import Args as IngestArgs

from themisdb.audit import AuditBroker, FileSink, Signer, verify
from themisdb.audit.setup import DEFAULT_SIGNING_KEY
from themisdb.settings import FileOutput

Fsync = Literal["always", "never"]
SCENARIOS: tuple[tuple[int, Fsync], ...] = (
    (1, "always"),
    (1000, "always"),
    (1, "never"),
    (1000, "never"),
)
AUDIT_OFF_YAML = "logging:\n  audit:\n    enabled: false\n"
AUDIT_ON_YAML = "logging:\n  audit:\n    enabled: true\n    signing:\n      enabled: true\n"


# --- part 1: in process ------------------------------------------------------------------------


@dataclass
class InProcess:
    checkpoint_every: int
    fsync: Fsync
    events: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    checkpoints: int = 0
    file_bytes: int = 0
    files: int = 0
    verify_s: float = 0.0
    verify_message: str = ""
    failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"checkpoint every {self.checkpoint_every}, fsync {self.fsync}"

    def as_dict(self) -> dict[str, Any]:
        rate = self.events / self.elapsed if self.elapsed else None
        return {
            "checkpoint_every": self.checkpoint_every,
            "fsync": self.fsync,
            "events": self.events,
            "elapsed_s": round(self.elapsed, 3),
            "events_per_s": None if rate is None else round(rate, 1),
            "emit_latency_us": {
                "p50": _us(percentile(self.latencies, 0.50)),
                "p99": _us(percentile(self.latencies, 0.99)),
                "max": _us(max(self.latencies, default=None)),
            },
            "checkpoints": self.checkpoints,
            "file_bytes": self.file_bytes,
            "bytes_per_event": round(self.file_bytes / self.events, 1) if self.events else None,
            "files": self.files,
            "verify": {
                "message": self.verify_message,
                "elapsed_s": round(self.verify_s, 3),
                "events_per_s": round(self.events / self.verify_s, 1) if self.verify_s else None,
            },
            "failed": len(self.failures),
            "failures": self.failures,
        }


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 1)


def expected_checkpoints(events: int, every: int) -> int:
    """What the broker writes: one per ``every`` events, and one at close for a partial block."""
    return events // every + (1 if events % every else 0)


def in_process(base: Path, every: int, fsync: Fsync, args: Args) -> InProcess:
    result = InProcess(every, fsync)
    directory = base / f"inproc-{every}-{fsync}"
    directory.mkdir()
    signer = Signer.create(directory / DEFAULT_SIGNING_KEY)
    sink = FileSink(FileOutput(type="file", path=str(directory / "audit.log"), fsync=fsync))
    broker = AuditBroker(
        [sink],
        data_dir=directory,
        node="bench",
        signer=signer,
        block=False,
        checkpoint_every=every,
        checkpoint_seconds=3600,  # by count only: the scenarios differ in nothing else
    )
    broker.start()
    try:
        started = time.perf_counter()
        deadline = started + args.inproc_seconds
        while result.events < args.max_events:
            n = result.events + 1
            begun = time.perf_counter()
            broker.emit(
                "data_access",
                "entity.put",
                outcome="success",
                actor="admin:3f0c9a1b2c4d",
                source=LOOPBACK,
                resource={"table": "bench", "key": f"bench:put-{n:09d}"},
                request_id=f"{n:032x}",
            )
            ended = time.perf_counter()
            result.latencies.append(ended - begun)
            result.events = n
            if ended >= deadline:
                break
        result.elapsed = time.perf_counter() - started
    finally:
        broker.close()
    files = sink.files()
    result.files = len(files)
    result.file_bytes = sum(path.stat().st_size for path in files)
    begun = time.perf_counter()
    verdict = verify(files, signer.public_key)
    result.verify_s = time.perf_counter() - begun
    result.verify_message = verdict.message
    result.checkpoints = verdict.checkpoints
    if not verdict.ok:
        result.failures.append(f"verify: {verdict.message}")
    if verdict.events != result.events:
        result.failures.append(f"verify saw {verdict.events} events, {result.events} emitted")
    if verdict.checkpoints != expected_checkpoints(result.events, every):
        result.failures.append(
            f"{verdict.checkpoints} checkpoints, expected "
            f"{expected_checkpoints(result.events, every)}"
        )
    shutil.rmtree(directory, ignore_errors=True)
    return result


# --- part 2: over HTTP -------------------------------------------------------------------------


@contextlib.contextmanager
def configured_server(base: Path, name: str, config_yaml: str, sync: Sync) -> Iterator[Server]:
    """ingest.py's ``running_server`` with a YAML config file (``THEMIS_CONFIG``)."""
    directory = base / name
    directory.mkdir()
    config = directory / "themis.yaml"
    config.write_text(config_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
    http_port, health_port = free_port(), free_port()
    while health_port == http_port:
        health_port = free_port()
    env.update(
        {
            "THEMIS_CONFIG": str(config),
            "THEMIS_DATA_DIR": str(directory / "data"),
            "THEMIS_HTTP_PORT": str(http_port),
            "THEMIS_HEALTH_PORT": str(health_port),
            "THEMIS_HTTP_BIND_ADDRESS": LOOPBACK,
            "THEMIS_HEALTH_BIND_ADDRESS": LOOPBACK,
            "THEMIS_SYNC": sync,
            # All load comes from one address: the limiter runs (its cost is in the numbers)
            # but is set never to refuse it.
            "THEMIS_RATE_LIMIT_RPS": "1000000",
            "THEMIS_RATE_LIMIT_BURST": "1000000",
        }
    )
    log_path = directory / "server.log"
    with log_path.open("wb") as log:  # a file, never a pipe nobody drains
        process = subprocess.Popen(
            [sys.executable, "-m", "themisdb", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, http_port, health_port, log_path)
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def http_rounds(servers: dict[str, Server], args: Args) -> list[tuple[str, int, PhaseStats]]:
    order = [
        (kind, number + 1)
        for number in range(args.rounds)
        for kind in (("off", "on") if number % 2 == 0 else ("on", "off"))
    ]
    phases = []
    for kind, number in order:
        progress(f"HTTP PUT, audit {kind}, round {number}, {args.clients} clients ...")
        stats = await http_phase(
            servers[kind],
            f"audit {kind}, round {number}",
            Entities(f"{kind}{number}", args.entity_bytes),
            single_put,
            PUT_ROUTE,
            args.for_ingest(),
        )
        phases.append((kind, number, stats))
    return phases


def inspect_audit_log(data_dir: Path) -> dict[str, Any]:
    """Verify the "on" server's audit log with its own (development) signing key."""
    directory = data_dir / "audit"
    files = [*sorted(directory.glob("audit.log.*")), directory / "audit.log"]
    files = [path for path in files if path.exists()]
    result: dict[str, Any] = {"files": len(files), "failures": []}
    if not files:
        result["failures"].append(f"no audit log under {directory}")
        return result
    key = Signer.load(directory / DEFAULT_SIGNING_KEY).public_key
    begun = time.perf_counter()
    verdict = verify(files, key)
    result["verify_s"] = round(time.perf_counter() - begun, 3)
    result["verify"] = verdict.message
    result["events"], result["checkpoints"] = verdict.events, verdict.checkpoints
    result["bytes"] = sum(path.stat().st_size for path in files)
    kinds: Counter[str] = Counter()
    last: dict[str, Any] = {}
    for path in files:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                last = json.loads(line)
                if last.get("type") != "checkpoint":
                    kinds[f"{last['category']}/{last['action']}/{last['outcome']}"] += 1
    result["events_by_kind"] = dict(kinds.most_common())
    if not verdict.ok:
        result["failures"].append(f"audit log: {verdict.message}")
    if last.get("type") != "checkpoint":
        result["failures"].append("the audit log does not end with the shutdown checkpoint")
    return result


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Args:
    seconds: float
    warmup: float
    clients: int
    rounds: int
    inproc_seconds: float
    max_events: int
    sync: Sync
    entity_bytes: int
    tmpdir: str | None
    json: bool

    def for_ingest(self) -> IngestArgs:
        return IngestArgs(
            seconds=self.seconds,
            warmup=self.warmup,
            clients=self.clients,
            batch=1,
            sync=self.sync,
            entity_bytes=self.entity_bytes,
            max_entities=1_000_000,
            tmpdir=self.tmpdir,
            json=self.json,
        )


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="per HTTP phase (default 5)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each HTTP phase"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP connections")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="HTTP rounds; round 1 runs off then on, round 2 on then off, ... (default 2)",
    )
    parser.add_argument(
        "--inproc-seconds",
        type=float,
        default=2.5,
        help="length of every in-process scenario (default 2.5)",
    )
    parser.add_argument(
        "--max-events",
        type=int,
        default=200_000,
        help="count bound of every in-process scenario (default 200000)",
    )
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--entity-bytes", type=int, default=1024, help="JSON size of an entity")
    parser.add_argument("--tmpdir", help="where the temporary data directories go")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    ns = parser.parse_args(argv)
    if ns.seconds <= 0 or ns.warmup < 0 or ns.clients < 1 or ns.rounds < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --clients and --rounds >= 1")
    if ns.inproc_seconds <= 0 or ns.max_events < 1:
        parser.error("--inproc-seconds must be > 0 and --max-events >= 1")
    return Args(
        seconds=ns.seconds,
        warmup=ns.warmup,
        clients=ns.clients,
        rounds=ns.rounds,
        inproc_seconds=ns.inproc_seconds,
        max_events=ns.max_events,
        sync=ns.sync,
        entity_bytes=ns.entity_bytes,
        tmpdir=ns.tmpdir,
        json=ns.json,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def run(args: Args) -> dict[str, Any]:
    run_started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="themisdb-bench-audit-", dir=args.tmpdir))
    try:
        inproc: list[InProcess] = []
        for every, fsync in SCENARIOS:
            progress(f"in process: checkpoint every {every}, fsync {fsync} ...")
            inproc.append(in_process(base, every, fsync, args))
        progress("starting two themisdb serve processes (audit off, audit on) ...")
        with (
            configured_server(base, "off", AUDIT_OFF_YAML, args.sync) as off,
            configured_server(base, "on", AUDIT_ON_YAML, args.sync) as on,
        ):
            servers = {"off": off, "on": on}
            ready: dict[str, float] = {}
            for kind, server in servers.items():
                try:
                    ready[kind] = server.wait_ready()
                except RuntimeError as exc:
                    raise SystemExit(
                        f"bench: audit {kind}: {exc}\n--- server log ---\n{server.log_tail()}"
                    ) from exc
            phases = asyncio.run(http_rounds(servers, args))
            stopped = {kind: stop(server) for kind, server in servers.items()}
            logs = {kind: server.log_problems() for kind, server in servers.items()}
            warmups: dict[str, dict[str, Any]] = {
                kind: {"failed": s.warmup_failures, "examples": s.warmup_examples}
                for kind, s in servers.items()
            }
        audit_log = inspect_audit_log(base / "on" / "data")
        off_audit = base / "off" / "data" / "audit"
        off_files = sorted(str(p) for p in off_audit.rglob("*")) if off_audit.exists() else []
    finally:
        shutil.rmtree(base, ignore_errors=True)

    totals: dict[str, dict[str, float]] = {}
    for kind in ("off", "on"):
        mine = [stats for k, _, stats in phases if k == kind]
        entities = sum(s.entities for s in mine)
        elapsed = sum(s.elapsed for s in mine)
        latencies = [x for s in mine for x in s.latencies]
        totals[kind] = {
            "requests_ok": entities,
            "elapsed_s": round(elapsed, 3),
            "requests_per_s": round(entities / elapsed, 1) if elapsed else 0.0,
            "client_p50_ms": ms(percentile(latencies, 0.5)) or 0.0,
            "client_p99_ms": ms(percentile(latencies, 0.99)) or 0.0,
        }
    by_key = {(s.checkpoint_every, s.fsync): s.as_dict() for s in inproc}

    def rate(every: int, fsync: Fsync) -> float | None:
        value: float | None = by_key[(every, fsync)]["events_per_s"]
        return value

    problems: list[str] = list(audit_log["failures"])
    if off_files:
        problems.append(f"the audit-off server wrote audit files: {off_files[:3]}")
    for kind, result in stopped.items():
        if result["exit_code"] != 0:
            problems.append(f"the audit-{kind} server exited with {result['exit_code']}")
    failed = (
        sum(stats.failed for _, _, stats in phases)
        + sum(w["failed"] for w in warmups.values())
        + sum(len(s.failures) for s in inproc)
        + len(problems)
    )
    return {
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "rounds": args.rounds,
            "inproc_seconds": args.inproc_seconds,
            "max_events": args.max_events,
            "sync": args.sync,
            "entity_bytes": len(Entities("on1", args.entity_bytes).text(0).encode()),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "in_process": [s.as_dict() for s in inproc],
        "in_process_ratios": {
            "sign_every_event_over_every_1000": {
                fsync: _ratio(rate(1, fsync), rate(1000, fsync)) for fsync in ("always", "never")
            },
            "fsync_never_over_always": {
                str(every): _ratio(rate(every, "never"), rate(every, "always"))
                for every in (1, 1000)
            },
        },
        "http_put": [
            {"audit": kind, "round": number, **stats.as_dict()} for kind, number, stats in phases
        ],
        "http_put_totals": totals,
        "ratio_audit_on_over_off": _ratio(
            totals["on"]["requests_per_s"], totals["off"]["requests_per_s"]
        ),
        "audit_log_of_the_on_server": audit_log,
        "servers": {
            kind: {"ready_s": round(ready[kind], 2), **stopped[kind], "log": logs[kind]}
            for kind in ("off", "on")
        },
        "warmup": warmups,
        "problems": problems,
        "failed": failed,
        "total_s": round(time.monotonic() - run_started, 1),
    }


def render(result: dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    lines = [
        f"ThemisDB audit: in process {cfg['inproc_seconds']:g} s per scenario (at most "
        f"{cfg['max_events']} events); HTTP PUT, sync={cfg['sync']}, {cfg['clients']} clients, "
        f"{cfg['seconds']:g} s per phase, {cfg['rounds']} round(s), "
        f"{cfg['entity_bytes']} B entities",
        f"machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}",
        "",
        "in process: AuditBroker + FileSink, one emit per event, ECDSA P-256 checkpoints",
        f"{'checkpoint every':>16}{'fsync':>8}{'events':>9}{'time s':>8}{'events/s':>11}"
        f"{'emit p50/p99 us':>18}{'checkpoints':>13}{'B/event':>9}{'verify ev/s':>13}"
        f"{'errors':>8}",
    ]
    for s in result["in_process"]:
        latency = s["emit_latency_us"]
        lines.append(
            f"{s['checkpoint_every']:>16}{s['fsync']:>8}{s['events']:>9}{s['elapsed_s']:>8.2f}"
            f"{_fmt(s['events_per_s']):>11}"
            f"{_fmt(latency['p50']) + ' / ' + _fmt(latency['p99']):>18}"
            f"{s['checkpoints']:>13}{_fmt(s['bytes_per_event']):>9}"
            f"{_fmt(s['verify']['events_per_s'], '.0f'):>13}{s['failed']:>8}"
        )
    ratios = result["in_process_ratios"]
    every1 = ratios["sign_every_event_over_every_1000"]
    never = ratios["fsync_never_over_always"]
    lines += [
        f"ratio checkpoint every 1 / every 1000: fsync always {_fmt(every1['always'], '.3f')}, "
        f"fsync never {_fmt(every1['never'], '.3f')}",
        f"ratio fsync never / always: checkpoint every 1 {_fmt(never['1'], '.3f')}, "
        f"every 1000 {_fmt(never['1000'], '.3f')}",
        "",
        f"HTTP PUT, 1 entity, {cfg['clients']} clients, one server at a time",
        f"{'server':<11}{'round':>6}{'requests':>10}{'time s':>8}{'req/s':>9}"
        f"{'client p50/p99 ms':>19}{'server p50/p99 ms':>19}{'CPU srv/cli %':>15}"
        f"{'non-200':>9}{'errors':>8}",
    ]
    for p in result["http_put"]:
        client, server, cpu = (
            p["client_latency_ms"],
            p["server_latency_ms"],
            p["cpu_percent_of_one_core"],
        )
        lines.append(
            f"{'audit ' + p['audit']:<11}{p['round']:>6}{p['requests_ok']:>10}"
            f"{p['elapsed_s']:>8.2f}{_fmt(p['requests_per_s']):>9}"
            f"{_fmt(client['p50']) + ' / ' + _fmt(client['p99']):>19}"
            f"{_fmt(server.get('p50')) + ' / ' + _fmt(server.get('p99')):>19}"
            f"{_fmt(cpu['server'], '.0f') + ' / ' + _fmt(cpu['client'], '.0f'):>15}"
            f"{p['non_200']:>9}{p['failed'] - p['non_200']:>8}"
        )
    totals = result["http_put_totals"]
    lines += [
        f"all rounds: audit off {_fmt(totals['off']['requests_per_s'])} PUT/s "
        f"(p50 {_fmt(totals['off']['client_p50_ms'], '.2f')} ms), audit on "
        f"{_fmt(totals['on']['requests_per_s'])} PUT/s "
        f"(p50 {_fmt(totals['on']['client_p50_ms'], '.2f')} ms)",
        f"ratio audit on / off: {_fmt(result['ratio_audit_on_over_off'], '.3f')}",
    ]
    log = result["audit_log_of_the_on_server"]
    if "verify" in log:
        lines.append(
            f"audit log of the 'on' server: {log['files']} file(s), {log['bytes']} B, "
            f"verify: {log['verify']} ({log['verify_s']} s)"
        )
        kinds = ", ".join(f"{k} {n}" for k, n in log["events_by_kind"].items())
        lines.append(f"  events: {kinds}")
    for kind, srv in result["servers"].items():
        counts = ", ".join(f"{n} {k}" for k, n in sorted(srv["log"]["counts"].items()))
        lines.append(
            f"server audit {kind}: ready in {srv['ready_s']} s; exit code {srv['exit_code']} "
            + (f"after SIGTERM ({srv['stop_s']} s)" if srv["sigterm_sent"] else "before SIGTERM")
            + "; log: "
            + (counts or "no warnings/errors")
        )
        lines += [f"  {example}" for example in srv["log"]["examples"]]
    for s in result["in_process"]:
        if s["failures"]:
            lines.append(f"FAILED in process ({s['checkpoint_every']}, {s['fsync']}):")
            lines += [f"  {failure}" for failure in s["failures"]]
    for p in result["http_put"]:
        if p["failed"] or p["aborted"]:
            lines.append(
                f"FAILED in audit {p['audit']}, round {p['round']}: {p['failures']}"
                + (f"; {p['aborted']}" if p["aborted"] else "")
            )
            lines += [f"  {example}" for example in p["failure_examples"]]
        lines += [f"note in audit {p['audit']}, round {p['round']}: {n}" for n in p["notes"]]
    for kind, warm in result["warmup"].items():
        if warm["failed"]:
            lines.append(f"FAILED during the warm-up of audit {kind}: {warm['failed']}")
            lines += [f"  {example}" for example in warm["examples"]]
    lines += [f"FAILED: {problem}" for problem in result["problems"]]
    lines.append(f"failures in total: {result['failed']}; run took {result['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
