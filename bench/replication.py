"""Replication benchmark: a leader and a follower, two real ``themisdb serve`` processes.

Run from the repository root (details in bench/README.md)::

    .venv/bin/python bench/replication.py [--records 100000] [--rate 500] [--seconds 20]
                                          [--sync full|normal] [--plaintext] [--json]

1. catch-up: the leader alone takes ``--records`` entities, then the follower starts; its
   ``/admin/replication`` is polled every 50 ms until it has applied the leader's last LSN.
2. steady state: paced single PUTs at ``--rate`` for ``--seconds``; both nodes' replication
   status sampled every 100 ms, apply delay from the follower's /metrics histogram.
3. consistency: SIGTERM to both; the entity table's rows hashed in both ``themis.db`` files.

Replication runs over mTLS with a CA made here (``--plaintext``: without). Only 127.0.0.1 is
contacted. Exit status 1 on any failed request, a mismatch, or an unclean exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import http.client
import ipaddress
import itertools
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ingest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ingest import LOOPBACK, HttpConnection, PhaseStats, ms, percentile, process_cpu
from prometheus_client.parser import text_string_to_metric_families

ROWS_SQL = 'SELECT pk, body FROM "e_bench" ORDER BY pk'  # the table of the keys bench:<pk>
DELAY = "themisdb_replication_apply_delay_seconds"
APPLIED = "themisdb_replication_applied_records_total"
PCT = {"p50": 0.5, "p99": 0.99, "max": 1.0}
PEM = serialization.Encoding.PEM
Args = argparse.Namespace  # the options of parse_args()


# --- certificates ----------------------------------------------------------------------------


def make_pki(directory: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """A replication CA ("ca"), and per node a certificate ("<name>.crt": SAN its name and
    127.0.0.1, serverAuth + clientAuth) and key ("<name>.key", mode 0600); 20 days."""
    directory.mkdir(mode=0o700)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "themisdb-bench-wal-ca")])
    paths = {"ca": directory / "wal-ca.crt"}

    def issue(path: Path, subject: x509.Name, key: Any, *extra: x509.ExtensionType) -> None:
        ca = not extra  # a node: digitalSignature; the CA: keyCertSign and cRLSign
        usage = x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=20))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(PEM))

    issue(paths["ca"], ca_name, ca_key)
    usage = x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        crt, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        paths |= {f"{name}.crt": crt, f"{name}.key": key_path}
        sans = [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issue(crt, subject, key, aki, x509.SubjectAlternativeName(sans), usage)
        pem = key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with os.fdopen(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(pem)
    return paths


# --- the nodes -------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    server: ingest.Server
    wal_port: int
    started: float = field(default_factory=time.monotonic)  # when the process was started

    def status(self, timeout: float = 5) -> dict[str, Any]:
        """``GET /admin/replication`` on the API port; raises on a non-200 answer."""
        conn = http.client.HTTPConnection(LOOPBACK, self.server.http_port, timeout=timeout)
        try:
            conn.request("GET", "/admin/replication")
            response = conn.getresponse()
            if response.status != 200:
                raise ValueError(f"GET /admin/replication answered {response.status}")
            document: dict[str, Any] = json.loads(response.read())
            return document
        finally:
            conn.close()

    def metrics(self) -> tuple[dict[float, float], float]:
        """The apply-delay histogram (le -> cumulative count) and the applied-records total."""
        status, text = self.server.get("/metrics")
        if status != 200:
            raise ValueError(f"GET /metrics answered {status}")
        buckets, applied = {}, 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == f"{DELAY}_bucket":
                    buckets[float(sample.labels["le"])] = sample.value
                elif sample.name == APPLIED:
                    applied = sample.value
        return buckets, applied

    def cpu(self) -> float | None:
        return process_cpu(self.server.process.pid)


@contextlib.contextmanager
def running_node(
    base: Path, name: str, args: Args, pki: dict[str, Path] | None, leader: Node | None
) -> Iterator[Node]:
    """Start ``name``: a follower of ``leader`` or, without one, the leader. Killed on the way
    out if it still runs. Environment: ours without any THEMIS_*, then the node's."""
    ports: list[int] = []
    while len(ports) < 3:  # distinct
        ports += {ingest.free_port()} - set(ports)
    http_port, health_port, wal_port = ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
    env |= {
        "THEMIS_DATA_DIR": str(base / name),
        "THEMIS_HTTP_PORT": str(http_port),
        "THEMIS_HEALTH_PORT": str(health_port),
        "THEMIS_HTTP_BIND_ADDRESS": LOOPBACK,
        "THEMIS_HEALTH_BIND_ADDRESS": LOOPBACK,
        "THEMIS_RATE_LIMIT_RPS": "1000000",
        "THEMIS_RATE_LIMIT_BURST": "1000000",
        "THEMIS_SYNC": args.sync,
        "THEMIS_NODE_ID": name,
        "THEMIS_WAL_GRPC_HOST": LOOPBACK,
        "THEMIS_WAL_GRPC_PORT": str(wal_port),
        "THEMIS_ROLE": "leader" if leader is None else "follower",
    }
    if leader is not None:
        env["THEMIS_REPLICATE_FROM"] = f"{LOOPBACK}:{leader.wal_port}"
    if pki is not None:
        env |= {
            "THEMIS_WAL_GRPC_ENABLE_MTLS": "1",
            "THEMIS_WAL_GRPC_REQUIRE_CLIENT_CERT": "1",
            "THEMIS_WAL_GRPC_CERT_PATH": str(pki[f"{name}.crt"]),
            "THEMIS_WAL_GRPC_KEY_PATH": str(pki[f"{name}.key"]),
            "THEMIS_WAL_GRPC_CA_CERT_PATH": str(pki["ca"]),
        }
    log_path = base / f"{name}.log"
    with log_path.open("wb") as log:  # a line per request: to a file, not to a pipe
        process = subprocess.Popen(
            [sys.executable, "-m", "themisdb", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Node(name, ingest.Server(process, http_port, health_port, log_path), wal_port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def cpu_percent(nodes: tuple[Node, ...], before: list[float | None], elapsed: float) -> Any:
    """Each node's CPU since ``before`` (its CPU seconds then), in % of one core."""
    now = [node.cpu() for node in nodes]
    used = [None if a is None or b is None else a - b for a, b in zip(now, before, strict=True)]
    return {n.name: ingest.cpu_percent(u, elapsed) for n, u in zip(nodes, used, strict=True)}


# --- the phases ------------------------------------------------------------------------------


async def load(leader: Node, args: Args) -> PhaseStats:
    """``--records`` entities in batches of ``--batch`` from ``--clients`` connections."""
    stats = PhaseStats("load")
    conns = [HttpConnection(leader.server.http_port) for _ in range(args.clients)]
    work = ingest.batch_post(ingest.Entities("load", args.entity_bytes), args.batch)
    try:
        proc = leader.server.process
        await ingest._run_clients(conns, work, stats, args.timeout, args.records, proc)
    finally:
        for conn in conns:
            conn.close()
    return stats


def catch_up(follower: Node, leader: Node, target: int, args: Args) -> dict[str, Any]:
    """Poll the follower from its process start, every 50 ms, until it has applied ``target``.
    Refused connections before its API listens are expected; failures after are counted."""
    first: tuple[float, int] | None = None  # the first answer
    moving: tuple[float, int] | None = None  # the first answer showing it applying
    errors: list[str] = []
    done: float | None = None
    cpu = [n.cpu() for n in (leader, follower)]
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and done is None:
        if follower.server.process.poll() is not None:
            raise RuntimeError(f"the follower exited with {follower.server.process.returncode}")
        now = time.monotonic()
        try:
            doc = follower.status(timeout=2)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if first is not None:
                errors.append(f"GET /admin/replication: {type(exc).__name__}: {exc}"[:200])
        else:
            applied = int((doc.get("following") or {}).get("applied_lsn", doc["last_lsn"]))
            first = first or (now, applied)
            if moving is None and (applied > first[1] or ((now, applied) == first and applied)):
                moving = (now, applied)
            done = now if applied >= target else None
        time.sleep(max(0.0, now + 0.05 - time.monotonic()))
    result: dict[str, Any] = {"target_lsn": target, "caught_up": done is not None}
    result |= {"poll_failures": len(errors), "failure_examples": errors[:5]}
    result["api_answered_s"] = first and round(first[0] - follower.started, 3)
    if done is not None:
        since = done - follower.started
        result["process_start_to_caught_up_s"] = round(since, 3)
        result["cpu_percent"] = cpu_percent((leader, follower), cpu, since)
        result["records_per_s_incl_startup"] = round(target / since, 1)
        if moving is not None and done > moving[0]:
            result |= {
                "first_move_s": round(moving[0] - follower.started, 3),
                "first_move_lsn": moving[1],
                "measured_s": round(done - moving[0], 3),
                "records_per_s": round((target - moving[1]) / (done - moving[0]), 1),
            }
    return result


@dataclass
class Steady:
    """``--rate`` x ``--seconds`` single PUTs on a fixed schedule (a PUT that cannot start on
    time starts late, the phase then lasts longer) from ``--writers`` connections; both
    nodes' replication status sampled every 100 ms meanwhile."""

    leader: Node
    follower: Node
    args: Args
    stats: PhaseStats = field(default_factory=lambda: PhaseStats("steady"))
    samples: list[tuple[dict[str, Any], ...]] = field(default_factory=list)  # (F, L, F)
    slip: list[float] = field(default_factory=list)  # how late each PUT started vs schedule
    slots: Iterator[int] = field(default_factory=itertools.count)
    started: float = 0.0
    writing: bool = True  # the sampler runs until the last PUT is answered

    async def writer(self, conn: HttpConnection, work: ingest.Workload) -> None:
        stats, deadline, slots = self.stats, self.started + self.args.seconds, self.slots
        while stats.aborted is None:
            slot = next(slots)
            due = self.started + slot / self.args.rate
            if due >= deadline:
                return
            await asyncio.sleep(due - time.monotonic())
            self.slip.append(time.monotonic() - due)
            method, path, body = work.build(slot)
            begun = time.perf_counter()
            try:
                status, payload = await conn.request(method, path, body)
            except ingest.TRANSPORT_ERRORS as exc:
                stats.fail(type(exc).__name__, str(exc))
                if self.leader.server.process.poll() is not None:
                    stats.aborted = "the leader exited"
                continue
            stats.latencies.append(time.perf_counter() - begun)
            stats.statuses[status] += 1
            if status != 200:
                stats.fail(f"http_{status}", payload[:200].decode("utf-8", "replace"))
            elif not work.accepts(json.loads(payload) if payload[:1] == b"{" else None, slot):
                stats.fail("unexpected_body", payload[:200].decode("utf-8", "replace"))
            else:
                stats.entities += 1

    async def sampler(self) -> None:
        """Follower, leader, follower, back to back: the leader's last LSN minus the follower's
        applied LSN read after it is a lower bound of the lag, read before it an upper bound."""
        follower, leader = (
            HttpConnection(n.server.http_port) for n in (self.follower, self.leader)
        )
        conns = [follower, leader, follower]
        try:
            while self.writing:
                tick, answers = time.monotonic(), []
                for conn in conns:
                    try:
                        status, payload = await conn.request("GET", "/admin/replication")
                    except ingest.TRANSPORT_ERRORS as exc:
                        self.stats.fail(f"status_{type(exc).__name__}", str(exc))
                        break
                    if status != 200:
                        self.stats.fail(f"status_http_{status}", payload[:200].decode())
                        break
                    answers.append(json.loads(payload))
                if len(answers) == 3 and "following" in answers[0]:
                    self.samples.append((answers[0], answers[1], answers[2]))
                await asyncio.sleep(tick + 0.1 - time.monotonic())
        finally:
            for conn in conns:
                conn.close()

    async def run(self) -> dict[str, Any]:
        work = ingest.single_put(ingest.Entities("steady", self.args.entity_bytes))
        conns = [HttpConnection(self.leader.server.http_port) for _ in range(self.args.writers)]
        nodes = (self.leader, self.follower)
        before = await asyncio.to_thread(self.follower.metrics)
        lsn_before = self.leader.status()["last_lsn"]
        cpu = [node.cpu() for node in nodes]
        self.started = time.monotonic()
        try:
            async with asyncio.timeout(self.args.seconds + 60):
                sampling = asyncio.create_task(self.sampler())
                await asyncio.gather(*(self.writer(c, work) for c in conns))
                self.stats.elapsed = time.monotonic() - self.started  # the last PUT answered
                self.writing = False
                await sampling
        except TimeoutError:
            self.stats.fail("timeout", "requests still unanswered 60 s after the end")
        finally:
            self.writing = False
            for conn in conns:
                conn.close()
        elapsed = self.stats.elapsed = self.stats.elapsed or time.monotonic() - self.started
        cpu_used = cpu_percent(nodes, cpu, elapsed)
        after = await asyncio.to_thread(self.follower.metrics)
        lsn_after = self.leader.status()["last_lsn"]
        delay = sorted((le, n - before[0].get(le, 0.0)) for le, n in after[0].items())
        own = [f["following"] for f, _, _ in self.samples]

        def behind(leader: dict[str, Any], follower: dict[str, Any]) -> float:
            return max(0.0, float(leader["last_lsn"] - follower["following"]["applied_lsn"]))

        series = {
            "lag_records": [float(s["lag_records"]) for s in own],
            "lag_seconds": [float(s["lag_seconds"]) for s in own],
            "leader_lsn_minus_applied_low": [behind(ld, f) for _, ld, f in self.samples],
            "leader_lsn_minus_applied_high": [behind(ld, f) for f, ld, _ in self.samples],
        }
        return {
            "achieved_writes_per_s": round(self.stats.entities / elapsed, 1),
            "leader_records_per_s": round((lsn_after - lsn_before) / elapsed, 1),
            "replicated_records_per_s": round((after[1] - before[1]) / elapsed, 1),
            "put_latency_ms": {q: ms(percentile(self.stats.latencies, v)) for q, v in PCT.items()},
            "schedule_slip_ms": {q: ms(percentile(self.slip, v)) for q, v in PCT.items()},
            **{k: {q: percentile(v, p) for q, p in PCT.items()} for k, v in series.items()},
            "lag_samples": len(self.samples),
            "states": sorted({s["state"] for s in own}),
            "apply_delay_ms_bucket_resolution": {
                "p50": ms(ingest.histogram_quantile(0.5, delay)),
                "p99": ms(ingest.histogram_quantile(0.99, delay)),
                "sampled_records": int(delay[-1][1]) if delay else 0,
            },
            "cpu_percent": cpu_used,
            "writes_ok": self.stats.entities,
            "failed": self.stats.failed,
            "failure_examples": self.stats.examples,
        }


def settle(follower: Node, leader: Node, timeout: float = 60) -> float | None:
    """Seconds until the follower has applied the leader's last LSN; None if it did not."""
    started, target = time.monotonic(), leader.status()["last_lsn"]
    while time.monotonic() - started < timeout:
        if follower.status()["following"]["applied_lsn"] >= target:
            return round(time.monotonic() - started, 3)
        time.sleep(0.05)
    return None


def table_digest(data_dir: Path) -> dict[str, Any]:
    """Rows and SHA-256 of (pk, stored body) in key order, from the database file itself."""
    conn = sqlite3.connect(f"file:{data_dir / 'themis.db'}?mode=ro", uri=True)
    digest, rows = hashlib.sha256(), 0
    try:
        for pk, body in conn.execute(ROWS_SQL):
            for part in (str(pk).encode(), body if isinstance(body, bytes) else str(body).encode()):
                digest.update(len(part).to_bytes(8, "big") + part)
            rows += 1
    finally:
        conn.close()
    return {"rows": rows, "sha256": digest.hexdigest()}


# --- the run ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--records", type=int, default=100_000, help="entities loaded before the follower starts")
    add("--entity-bytes", type=int, default=1024, help="JSON size of an entity")
    add("--batch", type=int, default=100, help="entities per POST /entities/_batch when loading")
    add("--clients", type=int, default=4, help="concurrent connections when loading")
    add("--rate", type=float, default=500.0, help="single PUTs per second in the steady phase")
    add("--seconds", type=float, default=20.0, help="length of the steady phase")
    add("--writers", type=int, default=32, help="connections sharing the paced PUTs")
    add("--sync", choices=("full", "normal"), default="full", help="THEMIS_SYNC of both nodes")
    add("--plaintext", action="store_true", help="replicate without mTLS (development only)")
    add("--timeout", type=float, default=300.0, help="bound of the load and of the catch-up")
    add("--tmpdir", help="where the temporary data directories go")
    add("--keep", action="store_true", help="keep the data directories and logs (path on stderr)")
    add("--json", action="store_true", help="print one JSON object instead")
    ns = parser.parse_args(argv)
    if ns.records < ns.batch or min(ns.batch, ns.clients, ns.writers) < 1:
        parser.error("--records must be at least --batch; --batch, --clients, --writers >= 1")
    if min(ns.rate, ns.seconds, ns.timeout) <= 0:
        parser.error("--rate, --seconds and --timeout must be > 0")
    return ns


def run(args: Args) -> dict[str, Any]:
    run_started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="themisdb-bench-repl-", dir=args.tmpdir))
    config = {k: v for k, v in vars(args).items() if k not in ("json", "tmpdir", "keep")}
    config["entity_bytes"] = len(ingest.Entities("load", args.entity_bytes).text(0).encode())
    machine = f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    result: dict[str, Any] = {
        "config": config,
        "machine": f"{machine}, SQLite {sqlite3.sqlite_version}",
    }
    result["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        pki = None if args.plaintext else make_pki(base / "pki", ("leader", "follower"))
        with contextlib.ExitStack() as stack:
            leader = stack.enter_context(running_node(base, "leader", args, pki, None))
            try:
                leader.server.wait_ready()
            except RuntimeError as exc:
                raise SystemExit(f"bench: leader: {exc}\n{leader.server.log_tail()}") from exc
            ingest.progress(f"loading {args.records} entities into the leader ...")
            loaded = asyncio.run(load(leader, args))
            target = leader.status()["last_lsn"]
            result["load"] = loaded.as_dict() | {"leader_last_lsn": target}
            ingest.progress(f"starting the follower, catching up to LSN {target} ...")
            follower = stack.enter_context(running_node(base, "follower", args, pki, leader))
            result["catch_up"] = catch_up(follower, leader, target, args)
            if result["catch_up"]["caught_up"]:
                ingest.progress(f"steady: {args.rate:g} PUT/s for {args.seconds:g} s ...")
                result["steady"] = asyncio.run(Steady(leader, follower, args).run())
                result["settle_s"] = settle(follower, leader)
            result["stop"] = {n.name: ingest.stop(n.server) for n in (follower, leader)}
            result["logs"] = {n.name: n.server.log_problems() for n in (leader, follower)}
        digests = {name: table_digest(base / name) for name in ("leader", "follower")}
    finally:
        if args.keep:
            ingest.progress(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    expected = loaded.entities + result.get("steady", {}).get("writes_ok", 0)
    match = digests["leader"] == digests["follower"] and digests["leader"]["rows"] == expected
    result["consistency"] = digests | {"match": match, "expected_rows": expected}
    steady_failed = result.get("steady", {}).get("failed", 0)
    result["failed"] = loaded.failed + result["catch_up"]["poll_failures"] + steady_failed
    result["total_s"] = round(time.monotonic() - run_started, 1)
    return result


def ok(result: dict[str, Any]) -> bool:
    return bool(
        result["failed"] == 0
        and result["consistency"]["match"]
        and result.get("settle_s") is not None
        and all(s["exit_code"] == 0 for s in result["stop"].values())
    )


def trio(d: dict[str, Any], spec: str) -> str:
    return " / ".join(ingest._fmt(d[k], spec) for k in PCT)


def render(result: dict[str, Any]) -> str:
    cfg, load, catch = result["config"], result["load"], result["catch_up"]
    lines = [
        f"ThemisDB replication, {result['date']}: {'plaintext' if cfg['plaintext'] else 'mTLS'}"
        f", sync={cfg['sync']}, {cfg['entity_bytes']} B entities",
        f"machine: {result['machine']}",
        f"load (leader alone): {load['entities']} entities, batches of {cfg['batch']}, "
        f"{cfg['clients']} clients: {load['elapsed_s']} s = {load['entities_per_s']}/s; "
        f"leader last LSN {load['leader_last_lsn']}",
    ]
    if catch["caught_up"]:
        lines += [
            f"catch-up to LSN {catch['target_lsn']}: {catch.get('records_per_s')} records/s "
            f"over {catch.get('measured_s')} s, from the first poll showing progress "
            f"({catch.get('first_move_s')} s after process start, at LSN "
            f"{catch.get('first_move_lsn')})",
            f"  process start -> caught up: {catch['process_start_to_caught_up_s']} s = "
            f"{catch['records_per_s_incl_startup']} records/s; API answered after "
            f"{catch['api_answered_s']} s; CPU % of one core {catch['cpu_percent']}",
        ]
    else:
        lines.append(f"catch-up to LSN {catch['target_lsn']}: NOT caught up within --timeout")
    if "steady" in result:
        st = result["steady"]
        delay = st["apply_delay_ms_bucket_resolution"]
        lines += [
            f"steady: target {cfg['rate']:g} PUT/s for {cfg['seconds']:g} s from {cfg['writers']}"
            f" connections: achieved {st['achieved_writes_per_s']} writes/s; leader "
            f"{st['leader_records_per_s']} records/s, follower applied "
            f"{st['replicated_records_per_s']} records/s",
            f"  PUT latency p50/p99/max ms: {trio(st['put_latency_ms'], '.1f')}; "
            f"start behind schedule p50/p99/max ms: {trio(st['schedule_slip_ms'], '.1f')}",
            f"  follower lag_records p50/p99/max: {trio(st['lag_records'], '.0f')}; "
            f"lag_seconds: {trio(st['lag_seconds'], '.3f')} ({st['lag_samples']} samples, "
            f"states {st['states']})",
            f"  leader last LSN - follower applied LSN p50/p99/max: low "
            f"{trio(st['leader_lsn_minus_applied_low'], '.0f')}, high "
            f"{trio(st['leader_lsn_minus_applied_high'], '.0f')}",
            f"  apply delay p50/p99 ms (histogram, bucket resolution): {delay['p50']} / "
            f"{delay['p99']} ({delay['sampled_records']} sampled records); CPU % of one core "
            f"{st['cpu_percent']}; caught up {result['settle_s']} s after the last write",
        ]
    cons = result["consistency"]
    lines.append(
        f"consistency after SIGTERM: leader {cons['leader']['rows']} rows, follower "
        f"{cons['follower']['rows']} (expected {cons['expected_rows']}); "
        f"match: {str(cons['match']).lower()}"
    )
    for name, stopped in result["stop"].items():
        log = result["logs"][name]
        counts = ", ".join(f"{n} {k}" for k, n in sorted(log["counts"].items()))
        lines.append(
            f"{name}: exit code {stopped['exit_code']} {stopped['stop_s']} s after SIGTERM; "
            f"log: {counts or 'no warnings/errors'}"
        )
        lines += [f"  {example}" for example in log["examples"][:2]]
    for phase in ("load", "catch_up", "steady"):
        lines += [f"FAILED: {e}" for e in result.get(phase, {}).get("failure_examples", [])]
    lines.append(f"failed requests: {result['failed']}; run took {result['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
