"""Ingest benchmark: a real ``themisdb serve`` process against the SQLite ceiling.

Run from the repository root (details in bench/README.md)::

    .venv/bin/python bench/ingest.py [--seconds 10] [--clients 32] [--batch 100]
                                     [--sync full|normal] [--json]

Phases, each bounded in time (``--seconds``) and in count (``--max-entities``):

1. sqlite, 1 row per commit: the stdlib ``sqlite3`` module writing the same entities into a
   WAL database with the same ``synchronous`` setting, one row per transaction.
2. sqlite, ``--batch`` rows per commit: the same, ``--batch`` rows per transaction.
3. HTTP PUT: ``--clients`` concurrent keep-alive connections, ``PUT /entities/bench:<pk>``.
4. HTTP batch: the same connections, ``POST /entities/_batch`` with ``--batch`` entities.

The HTTP phases are preceded by a short unmeasured warm-up. The client is a minimal asyncio
HTTP/1.1 client (one coroutine and one persistent connection per simulated client) so that the
client costs far less CPU than the server. Only 127.0.0.1 is ever contacted.

Latencies: "client" is the time from sending a request to having read its whole response, as
seen by the benchmark (what a caller on loopback experiences); "server" is the server's own
per-request histogram (``themisdb_http_request_duration_seconds`` from /metrics, diffed over
the phase and interpolated inside its buckets, like Prometheus' histogram_quantile).

Every failed request (non-200, transport error, unexpected response body) is counted and
reported; the exit status is 1 when there was any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import http.client
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prometheus_client.parser import text_string_to_metric_families

LOOPBACK = "127.0.0.1"
TABLE = "bench"
PUT_ROUTE = ("/entities/{key:path}", "PUT")  # route template and method as the server labels them
BATCH_ROUTE = ("/entities/_batch", "POST")
Sync = Literal["full", "normal"]


# --- entities --------------------------------------------------------------------------------


class Entities:
    """Unique, fixed-size JSON entities of one phase. The text is canonical (sorted keys, no
    spaces), i.e. exactly what the server stores, so the ceiling writes the same bytes."""

    def __init__(self, phase: str, size: int) -> None:
        self.phase = phase
        head = '{"id":"%s","n":%d,"name":"entity %d","pad":"'
        tail = '","phase":"' + phase + '"}'
        # Sized at seq 0; larger sequence numbers add at most 16 bytes (two 9-digit numbers).
        bare = len((head + tail) % (self.pk(0), 0, 0))
        digits = hashlib.sha256(b"themisdb ingest benchmark").hexdigest()
        pad_length = max(0, size - bare)
        pad = (digits * (pad_length // len(digits) + 1))[:pad_length]
        self._template = head + pad + tail

    def pk(self, seq: int) -> str:
        return f"{self.phase}-{seq:09d}"

    def text(self, seq: int) -> str:
        return self._template % (self.pk(seq), seq, seq)


# --- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted or not); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass
class PhaseStats:
    """What one phase did; updated by the workers as they go (one event loop, no locks)."""

    name: str
    entities: int = 0
    requests_ok: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    aborted: str | None = None
    notes: list[str] = field(default_factory=list)
    client_cpu: float | None = None  # seconds of CPU of this process during the phase
    server_cpu: float | None = None
    server_latency: dict[str, float | None] = field(default_factory=dict)
    server_statuses: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        example = f"{kind}: {detail}"[:300]
        if len(self.examples) < 5 and example not in self.examples:
            self.examples.append(example)

    def as_dict(self) -> dict[str, Any]:
        rate = self.entities / self.elapsed if self.elapsed else None
        requests = self.requests_ok / self.elapsed if self.elapsed else None
        return {
            "entities": self.entities,
            "requests_ok": self.requests_ok,
            "elapsed_s": round(self.elapsed, 3),
            "entities_per_s": None if rate is None else round(rate, 1),
            "requests_per_s": None if requests is None else round(requests, 1),
            "client_latency_ms": {
                "p50": ms(percentile(self.latencies, 0.50)),
                "p99": ms(percentile(self.latencies, 0.99)),
                "max": ms(max(self.latencies, default=None)),
                "requests": len(self.latencies),
            },
            "server_latency_ms": {k: ms(v) for k, v in self.server_latency.items()},
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_statuses": self.server_statuses,
            "non_200": sum(n for status, n in self.statuses.items() if status != 200),
            "failed": self.failed,
            "failures": dict(self.errors),
            "failure_examples": self.examples,
            "aborted": self.aborted,
            "notes": self.notes,
            "cpu_percent_of_one_core": {
                "server": cpu_percent(self.server_cpu, self.elapsed),
                "client": cpu_percent(self.client_cpu, self.elapsed),
            },
        }


def cpu_percent(cpu: float | None, elapsed: float) -> float | None:
    return None if cpu is None or not elapsed else round(100 * cpu / elapsed, 1)


def process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (Linux /proc), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Allocator:
    """Hands out sequence numbers until ``limit`` entities have been handed out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.next = 0

    def take(self, count: int) -> int | None:
        if self.next + count > self.limit:
            return None
        first = self.next
        self.next += count
        return first


# --- the SQLite ceiling ----------------------------------------------------------------------


def sqlite_ceiling(
    directory: Path, name: str, entities: Entities, *, rows: int, sync: Sync, args: Args
) -> PhaseStats:
    """Insert ``rows`` rows per transaction, single-threaded, until the time or count bound."""
    stats = PhaseStats(name)
    path = directory / f"{entities.phase}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {sync.upper()}")
        conn.execute("CREATE TABLE t(pk TEXT PRIMARY KEY, body TEXT NOT NULL)")  # as the server
        alloc = Allocator(args.max_entities)
        cpu_before = time.process_time()
        started = time.monotonic()
        deadline = started + args.seconds
        while time.monotonic() < deadline:
            first = alloc.take(rows)
            if first is None:
                break
            batch = [(entities.pk(s), entities.text(s)) for s in range(first, first + rows)]
            begun = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t(pk, body) VALUES (?, ?)", batch)
            conn.execute("COMMIT")
            stats.latencies.append(time.perf_counter() - begun)
            stats.entities += rows
            stats.requests_ok += 1
        stats.elapsed = time.monotonic() - started
        stats.client_cpu = time.process_time() - cpu_before
        (count,) = conn.execute("SELECT count(*) FROM t").fetchone()
        if count != stats.entities:
            stats.fail("row_count", f"{count} rows in the table, {stats.entities} inserted")
    finally:
        conn.close()
    for leftover in directory.glob(f"{entities.phase}.db*"):
        leftover.unlink()
    return stats


# --- a minimal HTTP/1.1 client ---------------------------------------------------------------


class HttpConnection:
    """One persistent HTTP/1.1 connection to 127.0.0.1:``port``. Reads responses framed by
    Content-Length or chunked encoding (or by close); reconnects after a close or an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(LOOPBACK, self.port)
        reader, writer = self._streams
        head = f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            # Head and body in one write: no Nagle/delayed-ACK stall on the client's side.
            writer.write(head.encode("ascii") + b"\r\n" + (body or b""))
            await writer.drain()
            status, headers = await self._read_head(reader)
            payload, closes = await self._read_body(reader, headers)
        except BaseException:
            self.close()
            raise
        if closes or "close" in headers.get("connection", "").lower():
            self.close()
        return status, payload

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        while True:
            lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
            status = int(rest[:3])
            if status >= 200:  # skip 1xx interim responses
                break
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                headers[key] = (
                    f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
                )
        return status, headers

    @staticmethod
    async def _read_body(
        reader: asyncio.StreamReader, headers: dict[str, str]
    ) -> tuple[bytes, bool]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                        pass
                    return b"".join(chunks), False
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"])), False
        return await reader.read(), True  # framed by the end of the connection

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


@dataclass(frozen=True)
class Workload:
    """How to turn sequence numbers into requests and check their answers."""

    per_request: int
    build: Callable[[int], tuple[str, str, bytes]]  # first seq -> (method, path, body)
    accepts: Callable[[Any, int], bool]  # parsed 200 body, first seq -> is it the right answer


def single_put(entities: Entities) -> Workload:
    def build(seq: int) -> tuple[str, str, bytes]:
        return "PUT", f"/entities/{TABLE}:{entities.pk(seq)}", entities.text(seq).encode()

    def accepts(answer: Any, seq: int) -> bool:
        return (
            isinstance(answer, dict)
            and answer.get("key") == f"{TABLE}:{entities.pk(seq)}"
            and isinstance(answer.get("lsn"), int)
        )

    return Workload(1, build, accepts)


def batch_post(entities: Entities, size: int) -> Workload:
    def build(first: int) -> tuple[str, str, bytes]:
        items = ",".join(
            f'{{"key":"{TABLE}:{entities.pk(s)}","blob":{entities.text(s)}}}'
            for s in range(first, first + size)
        )
        return "POST", "/entities/_batch", f'{{"entities":[{items}]}}'.encode()

    def accepts(answer: Any, first: int) -> bool:
        return isinstance(answer, dict) and answer.get("written") == size

    return Workload(size, build, accepts)


async def _client(
    conn: HttpConnection,
    work: Workload,
    stats: PhaseStats,
    alloc: Allocator,
    deadline: float,
    server: subprocess.Popen[bytes],
) -> None:
    while time.monotonic() < deadline and stats.aborted is None:
        first = alloc.take(work.per_request)
        if first is None:
            return
        method, path, body = work.build(first)
        begun = time.perf_counter()
        try:
            status, payload = await conn.request(method, path, body)
        except TRANSPORT_ERRORS as exc:
            stats.fail(type(exc).__name__, str(exc))
            if server.poll() is not None:
                stats.aborted = f"the server exited with {server.returncode}"
            await asyncio.sleep(0.05)
            continue
        stats.latencies.append(time.perf_counter() - begun)
        stats.statuses[status] += 1
        if status != 200:
            stats.fail(f"http_{status}", payload[:200].decode("utf-8", "replace"))
            continue
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = None
        if not work.accepts(answer, first):
            stats.fail("unexpected_body", payload[:200].decode("utf-8", "replace"))
            continue
        stats.entities += work.per_request
        stats.requests_ok += 1


async def _run_clients(
    conns: list[HttpConnection],
    work: Workload,
    stats: PhaseStats,
    seconds: float,
    limit: int,
    server: subprocess.Popen[bytes],
) -> None:
    alloc = Allocator(limit)
    started = time.monotonic()
    deadline = started + seconds
    try:
        # Requests in flight at the deadline finish and count; a hung one is cut off here.
        async with asyncio.timeout(seconds + 60):
            await asyncio.gather(
                *(_client(conn, work, stats, alloc, deadline, server) for conn in conns)
            )
    except TimeoutError:
        stats.fail("timeout", "requests still unanswered 60 s after the end of the phase")
    stats.elapsed = time.monotonic() - started


async def http_phase(
    server: Server,
    name: str,
    entities: Entities,
    make: Callable[[Entities], Workload],
    route: tuple[str, str],
    args: Args,
) -> PhaseStats:
    """Warm up (unmeasured, keys of their own), then measure ``make`` over fresh keys."""
    conns = [HttpConnection(server.http_port) for _ in range(args.clients)]
    try:
        if args.warmup > 0:
            warm = Entities(f"warm-{entities.phase}", args.entity_bytes)
            warm_stats = PhaseStats(f"{name} (warm-up)")
            await _run_clients(
                conns, make(warm), warm_stats, args.warmup, args.max_entities, server.process
            )
            if warm_stats.failed:
                server.warmup_failures += warm_stats.failed
                server.warmup_examples += warm_stats.examples
        stats = PhaseStats(name)
        before = await asyncio.to_thread(server.scrape, stats)
        server_cpu = process_cpu(server.process.pid)
        client_cpu = time.process_time()
        await _run_clients(
            conns, make(entities), stats, args.seconds, args.max_entities, server.process
        )
        stats.client_cpu = time.process_time() - client_cpu
        server_cpu_after = process_cpu(server.process.pid)
        if server_cpu is not None and server_cpu_after is not None:
            stats.server_cpu = server_cpu_after - server_cpu
        after = await asyncio.to_thread(server.scrape, stats) if stats.aborted is None else None
        if before is not None and after is not None:
            stats.server_latency, stats.server_statuses = server_side(before, after, *route)
    finally:
        for conn in conns:
            conn.close()
    return stats


async def idle_round_trip(port: int, count: int = 20) -> tuple[list[float], Counter[str]]:
    """Sequential GET / on one keep-alive connection: the per-request floor of the transport.
    Returns the times of the 200 answers and a count of every other outcome."""
    conn = HttpConnection(port)
    times: list[float] = []
    failures: Counter[str] = Counter()
    try:
        for _ in range(count):
            begun = time.perf_counter()
            try:
                status, _ = await conn.request("GET", "/")
            except TRANSPORT_ERRORS as exc:
                failures[type(exc).__name__] += 1
                continue
            if status == 200:
                times.append(time.perf_counter() - begun)
            else:
                failures[f"http_{status}"] += 1
    finally:
        conn.close()
    return times, failures


# --- the server's own metrics ----------------------------------------------------------------


@dataclass
class Scrape:
    buckets: dict[tuple[str, str], dict[float, float]]  # (route, method) -> le -> cumulative
    requests: dict[tuple[str, str, str], float]  # (route, method, status) -> count


def parse_metrics(text: str) -> Scrape:
    buckets: dict[tuple[str, str], dict[float, float]] = {}
    requests: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "themisdb_http_request_duration_seconds_bucket":
                key = (labels["route"], labels["method"])  # summed over the status label
                per_le = buckets.setdefault(key, {})
                le = float(labels["le"])
                per_le[le] = per_le.get(le, 0.0) + sample.value
            elif sample.name == "themisdb_http_requests_total":
                requests[(labels["route"], labels["method"], labels["status"])] = sample.value
    return Scrape(buckets, requests)


def histogram_quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: linear interpolation inside the bucket holding the q-quantile."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the largest finite bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


def server_side(
    before: Scrape, after: Scrape, route: str, method: str
) -> tuple[dict[str, float | None], dict[str, int]]:
    """The phase's server-side latency quantiles and status counts (after - before)."""
    old = before.buckets.get((route, method), {})
    new = after.buckets.get((route, method), {})
    cumulative = sorted((le, new[le] - old.get(le, 0.0)) for le in new)
    latency = {
        "p50": histogram_quantile(0.50, cumulative),
        "p99": histogram_quantile(0.99, cumulative),
    }
    statuses = {
        status: int(count - before.requests.get((r, m, status), 0.0))
        for (r, m, status), count in after.requests.items()
        if (r, m) == (route, method) and count - before.requests.get((r, m, status), 0.0) > 0
    }
    return latency, statuses


# --- the server process ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A ``themisdb serve`` subprocess on free loopback ports with a fresh data directory."""

    process: subprocess.Popen[bytes]
    http_port: int
    health_port: int
    log_path: Path
    warmup_failures: int = 0
    warmup_examples: list[str] = field(default_factory=list)

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        conn = http.client.HTTPConnection(LOOPBACK, self.health_port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def scrape(self, stats: PhaseStats) -> Scrape | None:
        """The server's metrics; None (noted in ``stats``) when they cannot be had: they are
        a bonus, the phase's numbers do not depend on them."""
        try:
            status, text = self.get("/metrics")
            if status == 200:
                return parse_metrics(text)
            problem = f"GET /metrics answered {status}"
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            problem = f"GET /metrics failed: {type(exc).__name__}: {exc}"
        stats.notes.append(problem)
        return None

    def wait_ready(self, timeout: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/health/ready", timeout=2)[0] == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"the server was not ready within {timeout} s")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_problems(self) -> dict[str, Any]:
        """Lines of the server's log that are warnings, errors or tracebacks."""
        counts: Counter[str] = Counter()
        examples: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            kind = next(
                (k for k in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback") if k in line), None
            )
            if kind is not None:
                counts[kind.strip().lower()] += 1
                if len(examples) < 5:
                    examples.append(line[:300])
        return {"counts": dict(counts), "examples": examples}


@contextlib.contextmanager
def running_server(base: Path, sync: Sync) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THEMIS_")}
    http_port, health_port = free_port(), free_port()
    while health_port == http_port:
        health_port = free_port()
    env.update(
        {
            "THEMIS_DATA_DIR": str(base / "server-data"),
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
    log_path = base / "server.log"
    # The server logs a line per request: to a file, never to a pipe nobody drains.
    with log_path.open("wb") as log:
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


def stop(server: Server, timeout: float = 60) -> dict[str, Any]:
    """SIGTERM, then wait for the graceful exit (queued writes, WAL checkpoint)."""
    started = time.monotonic()
    signalled = server.process.poll() is None
    if signalled:
        server.process.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None  # running_server() kills it
    return {
        "exit_code": code,
        "sigterm_sent": signalled,
        "stop_s": round(time.monotonic() - started, 2),
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
    max_entities: int
    tmpdir: str | None
    json: bool


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each HTTP phase"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP connections")
    parser.add_argument("--batch", type=int, default=100, help="entities per batch/transaction")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--entity-bytes", type=int, default=1024, help="JSON size of an entity")
    parser.add_argument(
        "--max-entities",
        type=int,
        default=1_000_000,
        help="count bound of every phase (default 1000000)",
    )
    parser.add_argument("--tmpdir", help="where the temporary data directories go")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    ns = parser.parse_args(argv)
    if ns.seconds <= 0 or ns.warmup < 0 or ns.clients < 1 or ns.batch < 1:
        parser.error("--seconds must be > 0, --warmup >= 0, --clients and --batch >= 1")
    if ns.max_entities < ns.batch:
        parser.error("--max-entities must be at least --batch")
    return Args(
        seconds=ns.seconds,
        warmup=ns.warmup,
        clients=ns.clients,
        batch=ns.batch,
        sync=ns.sync,
        entity_bytes=ns.entity_bytes,
        max_entities=ns.max_entities,
        tmpdir=ns.tmpdir,
        json=ns.json,
    )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def http_phases(
    server: Server, args: Args
) -> tuple[list[PhaseStats], tuple[list[float], Counter[str]]]:
    progress("idle round trip ...")
    round_trips = await idle_round_trip(server.http_port)
    progress(f"HTTP PUT, {args.clients} clients ...")
    single = await http_phase(
        server,
        "HTTP PUT, 1 entity",
        Entities("put", args.entity_bytes),
        single_put,
        PUT_ROUTE,
        args,
    )
    progress(f"HTTP batch of {args.batch}, {args.clients} clients ...")
    batch = await http_phase(
        server,
        f"HTTP batch, {args.batch} entities",
        Entities("batch", args.entity_bytes),
        lambda e: batch_post(e, args.batch),
        BATCH_ROUTE,
        args,
    )
    return [single, batch], round_trips


def run(args: Args) -> dict[str, Any]:
    run_started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="themisdb-bench-", dir=args.tmpdir))
    try:
        progress(f"sqlite ceiling, 1 row per commit (synchronous={args.sync.upper()}) ...")
        one = sqlite_ceiling(
            base,
            "sqlite, 1 row per commit",
            Entities("c1", args.entity_bytes),
            rows=1,
            sync=args.sync,
            args=args,
        )
        progress(f"sqlite ceiling, {args.batch} rows per commit ...")
        many = sqlite_ceiling(
            base,
            f"sqlite, {args.batch} rows per commit",
            Entities("cn", args.entity_bytes),
            rows=args.batch,
            sync=args.sync,
            args=args,
        )
        progress("starting themisdb serve ...")
        with running_server(base, args.sync) as server:
            try:
                ready_s = server.wait_ready()
            except RuntimeError as exc:
                raise SystemExit(f"bench: {exc}\n--- server log ---\n{server.log_tail()}") from exc
            (single, batch), (round_trips, probe_failures) = asyncio.run(http_phases(server, args))
            stopped = stop(server)
            problems = server.log_problems()
            warmup = {"failed": server.warmup_failures, "examples": server.warmup_examples}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    phases = [one, many, single, batch]
    rates = {p.name: (p.entities / p.elapsed if p.elapsed else 0.0) for p in phases}

    def ratio(a: PhaseStats, b: PhaseStats) -> float | None:
        return round(rates[a.name] / rates[b.name], 4) if rates[b.name] else None

    return {
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "batch": args.batch,
            "sync": args.sync,
            "entity_bytes": len(Entities("put", args.entity_bytes).text(0).encode()),
            "max_entities": args.max_entities,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        },
        "sqlite_one_row_per_commit": one.as_dict(),
        "sqlite_batched": many.as_dict(),
        "http_put": single.as_dict(),
        "http_batch": batch.as_dict(),
        "ratios": {
            "http_put_over_sqlite_one_row_per_commit": ratio(single, one),
            "http_batch_over_sqlite_batched": ratio(batch, many),
        },
        "idle_round_trip_ms": {
            "p50": ms(percentile(round_trips, 0.5)),
            "min": ms(min(round_trips, default=None)),
            "requests": len(round_trips),
            "failures": dict(probe_failures),
        },
        "server": {"ready_s": round(ready_s, 2), **stopped, "log": problems, "warmup": warmup},
        "failed": sum(p.failed for p in phases)
        + server.warmup_failures
        + sum(probe_failures.values()),
        "total_s": round(time.monotonic() - run_started, 1),
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def render(result: dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    lines = [
        f"ThemisDB ingest: sync={cfg['sync']}, {cfg['clients']} clients, {cfg['seconds']:g} s "
        f"per phase (at most {cfg['max_entities']} entities), {cfg['entity_bytes']} B entities, "
        f"batches of {cfg['batch']}",
        f"machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"SQLite {machine['sqlite']}",
        "",
        f"{'phase':<28}{'entities':>9}{'time s':>8}{'entities/s':>12}{'req/s':>9}"
        f"{'client p50/p99 ms':>19}{'server p50/p99 ms':>19}{'CPU srv/cli %':>15}"
        f"{'non-200':>9}{'errors':>8}",
    ]
    names = {
        "sqlite_one_row_per_commit": "sqlite, 1 row per commit",
        "sqlite_batched": f"sqlite, {cfg['batch']} rows per commit",
        "http_put": "HTTP PUT, 1 entity",
        "http_batch": f"HTTP batch, {cfg['batch']} entities",
    }
    for key, name in names.items():
        p = result[key]
        client, server, cpu = (
            p["client_latency_ms"],
            p["server_latency_ms"],
            p["cpu_percent_of_one_core"],
        )
        lines.append(
            f"{name:<28}{p['entities']:>9}{p['elapsed_s']:>8.2f}{_fmt(p['entities_per_s']):>12}"
            f"{_fmt(p['requests_per_s']):>9}"
            f"{_fmt(client['p50']) + ' / ' + _fmt(client['p99']):>19}"
            f"{_fmt(server.get('p50')) + ' / ' + _fmt(server.get('p99')):>19}"
            f"{_fmt(cpu['server'], '.0f') + ' / ' + _fmt(cpu['client'], '.0f'):>15}"
            f"{p['non_200'] if key.startswith('http') else '-':>9}"
            f"{p['failed'] - p['non_200']:>8}"
        )
    ratios, rtt, srv = result["ratios"], result["idle_round_trip_ms"], result["server"]
    lines += [
        "",
        f"ratio HTTP PUT / sqlite 1 row per commit:    "
        f"{_fmt(ratios['http_put_over_sqlite_one_row_per_commit'], '.3f')}",
        f"ratio HTTP batch / sqlite {cfg['batch']} rows per commit: "
        f"{_fmt(ratios['http_batch_over_sqlite_batched'], '.3f')}",
        f"idle keep-alive round trip (GET /, 1 connection, {rtt['requests']} requests): "
        f"p50 {_fmt(rtt['p50'], '.2f')} ms, min {_fmt(rtt['min'], '.2f')} ms"
        + (f"; FAILED: {rtt['failures']}" if rtt["failures"] else ""),
    ]
    if rtt["p50"] is not None and rtt["p50"] > 20:
        lines.append(
            "  note: ~40 ms per idle round trip on loopback is the signature of Nagle's algorithm "
            "meeting delayed ACKs (likely TCP_NODELAY not set on the server's sockets); it caps "
            "each connection at ~25 requests/s"
        )
    log = srv["log"]
    lines.append(
        f"server: ready in {srv['ready_s']} s; exit code {srv['exit_code']} "
        + (f"after SIGTERM ({srv['stop_s']} s)" if srv["sigterm_sent"] else "before SIGTERM")
        + "; log: "
        + (", ".join(f"{n} {k}" for k, n in sorted(log["counts"].items())) or "no warnings/errors")
    )
    lines += [f"  {example}" for example in log["examples"]]
    lines.append(
        "latency: client = send to last response byte at the benchmark (sqlite: BEGIN to COMMIT); "
        "server = the server's own histogram (bucket-interpolated)"
    )
    for key, name in names.items():
        p = result[key]
        if key.startswith("http"):
            lines.append(f"HTTP statuses in {name}: {p['statuses'] or 'none'}")
        lines += [f"note in {name}: {note}" for note in p["notes"]]
        if p["failed"] or p["aborted"]:
            lines.append(
                f"FAILED in {name}: {p['failures']}" + (f"; {p['aborted']}" if p["aborted"] else "")
            )
            lines += [f"  {example}" for example in p["failure_examples"]]
        non_200 = {s: n for s, n in p["server_statuses"].items() if s != "200"}
        if non_200:
            lines.append(f"server-side non-200 in {name}: {non_200}")
    if srv["warmup"]["failed"]:
        lines.append(f"FAILED during warm-up: {srv['warmup']['failed']}")
        lines += [f"  {example}" for example in srv["warmup"]["examples"]]
    lines.append(f"failed requests in total: {result['failed']}; run took {result['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else render(result))
    ok = result["failed"] == 0 and result["server"]["exit_code"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
