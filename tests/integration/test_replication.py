"""WAL replication through real server processes on loopback: mTLS between them (a test CA
made here), a shared key manager (the session's SoftHSM2 token), real SIGKILLs."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tests.helpers import (
    REPO,
    ServerProcess,
    free_port,
    hardened_env,
    metric_value,
    replication_env,
    run_cli,
    security_events,
    start_server,
    write_cert,
)
from themisdb.replication.v1 import wal_pb2, wal_pb2_grpc
from themisdb.storage._names import sql_table

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


@dataclass
class Pki:
    directory: Path
    ca: tuple[Path, Path]
    other_ca: tuple[Path, Path]

    def node(self, name: str, *, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
        return write_cert(
            self.directory, name, hostnames=(name, "127.0.0.1"), days=20, issuer=ca or self.ca
        )

    def credentials(self, name: str | None, *, ca: tuple[Path, Path] | None = None) -> Any:
        """Client credentials of a certificate ``name`` (None: no client certificate)."""
        root = self.ca[0].read_bytes()
        if name is None:
            return grpc.ssl_channel_credentials(root_certificates=root)
        cert, key = self.node(name, ca=ca)
        return grpc.ssl_channel_credentials(root, key.read_bytes(), cert.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    ca = write_cert(directory, "wal-ca", hostnames=("wal-ca",), days=20, ca=True)
    other = write_cert(directory, "other-ca", hostnames=("other-ca",), days=20, ca=True)
    return Pki(directory, ca, other)


@dataclass
class Node:
    name: str
    env: dict[str, str]
    server: ServerProcess | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def running(self) -> ServerProcess:
        assert self.server is not None, f"{self.name} is not running"
        return self.server

    @property
    def api(self) -> str:
        return self.running.base_url

    @property
    def internal(self) -> str:
        return self.running.internal_url

    @property
    def data_dir(self) -> Path:
        return Path(self.env["THEMIS_DATA_DIR"])

    @property
    def wal_target(self) -> str:
        return f"127.0.0.1:{self.env['THEMIS_WAL_GRPC_PORT']}"

    def status(self) -> dict[str, Any]:
        response = self.client.get(f"{self.api}/admin/replication")
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document


class Cluster:
    """Nodes of one test, each a real `themisdb serve`; killed at teardown whatever happens."""

    def __init__(self, tmp: Path, pki: Pki | None, key_manager: dict[str, str]) -> None:
        self.tmp, self.pki, self.key_manager = tmp, pki, key_manager
        self.nodes: dict[str, Node] = {}

    def add(self, name: str, role: str, *, follows: tuple[str, ...] = (), **extra: str) -> Node:
        env = {
            "THEMIS_ROLE": role,
            "THEMIS_NODE_ID": name,
            "THEMIS_DATA_DIR": str(self.tmp / name),
            "THEMIS_WAL_GRPC_PORT": str(free_port()),
            **self.key_manager,
        }
        if self.pki is not None:
            cert, key = self.pki.node(name)
            env |= {
                "THEMIS_WAL_GRPC_ENABLE_MTLS": "1",
                "THEMIS_WAL_GRPC_REQUIRE_CLIENT_CERT": "1",
                "THEMIS_WAL_GRPC_CERT_PATH": str(cert),
                "THEMIS_WAL_GRPC_KEY_PATH": str(key),
                "THEMIS_WAL_GRPC_CA_CERT_PATH": str(self.pki.ca[0]),
            }
        node = self.nodes[name] = Node(name, env)
        if follows:
            self.follow(node, *follows)
        env.update(extra)
        return node

    def follow(self, node: Node, *leaders: str) -> None:
        node.env["THEMIS_REPLICATE_FROM"] = ",".join(self.nodes[n].wal_target for n in leaders)

    def start(self, node: Node) -> Node:
        node.server = start_server(node.env)
        return node

    def stop(self, node: Node, sig: int = signal.SIGTERM) -> str:
        assert node.server is not None
        _, output = node.server.stop(sig)
        node.server = None
        return output

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.client.close()
            if node.server is not None and node.server.process.poll() is None:
                node.server.process.kill()
                node.server.process.wait(10)


@pytest.fixture
def cluster_factory(
    tmp_path: Path, hsm_env: dict[str, str]
) -> Iterator[Callable[[Pki | None], Cluster]]:
    made: list[Cluster] = []

    def make(pki: Pki | None) -> Cluster:
        made.append(Cluster(tmp_path, pki, hsm_env))
        return made[-1]

    yield make
    for cluster in made:
        cluster.kill_all()


def wait_until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def caught_up(follower: Node, lsn: int) -> bool:
    following = follower.status().get("following") or {}
    return bool(following.get("applied_lsn", 0) >= lsn)


def table_digests(data_dir: Path) -> dict[str, str]:
    """SHA-256 of each entity table's rows (pk, stored body, LSN) in key order, read from the
    database file itself, plus the wrapped data keys and the replicated metadata."""
    conn = sqlite3.connect(f"file:{data_dir / 'themis.db'}?mode=ro", uri=True)
    try:
        digests = {}
        for (name,) in conn.execute("SELECT name FROM themis_tables ORDER BY name"):
            digest = hashlib.sha256()
            query = f"SELECT pk, body, lsn FROM {sql_table(name)} ORDER BY pk"  # noqa: S608
            for row in conn.execute(query):
                digest.update(json.dumps(row).encode())
            digests[name] = digest.hexdigest()
        for label, sql in {
            "_deks": "SELECT tbl, version, wrapped FROM themis_deks ORDER BY tbl, version",
            "_meta": "SELECT key, value FROM themis_meta WHERE key LIKE 'user:%' ORDER BY key",
            "_indexes": "SELECT tbl, field FROM themis_indexes ORDER BY tbl, field",
        }.items():
            digests[label] = hashlib.sha256(
                json.dumps(conn.execute(sql).fetchall()).encode()
            ).hexdigest()
        return digests
    finally:
        conn.close()


def audit_actions(node: Node) -> list[dict[str, Any]]:
    path = node.data_dir / "audit" / "audit.log"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("action")]


def write_load(leader: Node, *, singles: int, batches: int, deletes: int, prefix: str) -> set[str]:
    """Writes through the leader's API from 8 threads: single PUTs, batches of 100, deletes.
    Returns the keys that exist afterwards (every write was acknowledged with 200)."""
    encrypted = {"ssn": "078-05-1120", "note": "plaintext-canary-" + prefix}

    def put(i: int) -> str:
        key = f"people:{prefix}-{i}"
        r = leader.client.put(f"{leader.api}/entities/{key}", json={"i": i, **encrypted})
        assert r.status_code == 200, r.text
        return key

    def batch(b: int) -> list[str]:
        keys = [f"orders:{prefix}-{b}-{j}" for j in range(100)]
        body = {"entities": [{"key": k, "blob": {"n": j, "b": b}} for j, k in enumerate(keys)]}
        r = leader.client.post(f"{leader.api}/entities/_batch", json=body)
        assert r.status_code == 200, r.text
        return keys

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        present = set(pool.map(put, range(singles)))
        for keys in pool.map(batch, range(batches)):
            present.update(keys)
        gone = [f"people:{prefix}-{i}" for i in range(deletes)]

        def delete(key: str) -> None:
            r = leader.client.delete(f"{leader.api}/entities/{key}")
            assert r.status_code == 200, r.text

        list(pool.map(delete, gone))
    return present - set(gone)


SCHEMA = {
    "tables": {
        "people": {
            "fields": {
                "ssn": {"encrypt": True, "classification": "pii"},
                "note": {"encrypt": True, "classification": "confidential"},
            }
        }
    }
}


def test_two_followers_converge_over_mtls_through_kill_and_restart(
    cluster_factory: Callable[[Pki | None], Cluster], pki: Pki
) -> None:
    cluster = cluster_factory(pki)
    leader = cluster.start(cluster.add("node-a", "leader"))
    f1 = cluster.start(cluster.add("node-b", "follower", follows=("node-a",)))
    f2 = cluster.start(cluster.add("node-c", "follower", follows=("node-a",)))
    r = leader.client.put(f"{leader.api}/config/encryption-schema", json=SCHEMA)
    assert r.status_code == 200, r.text
    leader.client.post(f"{leader.api}/index/create", json={"table": "orders", "column": "n"})

    # 10,000 writes: 4,000 single PUTs (with two encrypted fields), 50 batches of 100, and
    # 1,000 deletes; node-c is SIGKILLed in the middle and restarted later.
    present = write_load(leader, singles=2000, batches=25, deletes=500, prefix="one")
    mark = leader.status()["last_lsn"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        second = pool.submit(
            write_load, leader, singles=2000, batches=25, deletes=500, prefix="two"
        )
        # Killed while the second load streams to it: it has applied part of it, not all.
        wait_until("node-c applying the second load", lambda: caught_up(f2, mark + 300))
        cluster.stop(f2, signal.SIGKILL)
        assert not second.done()  # the stream was busy when it died
        present |= second.result()
    cluster.start(f2)
    last = leader.status()["last_lsn"]
    assert last >= 10_000
    wait_until(f"both followers at LSN {last}", lambda: caught_up(f1, last) and caught_up(f2, last))

    # Followers serve reads, decrypted with the same key manager, and refuse writes.
    key = sorted(k for k in present if k.startswith("people:"))[0]
    seen = f1.client.get(f"{f1.api}/entities/{key}").json()["blob"]
    assert seen["note"] == "plaintext-canary-one"
    refused = f1.client.put(f"{f1.api}/entities/people:x", json={"a": 1})
    assert (refused.status_code, refused.json()["error"]) == (409, "read_only_replica")
    ready = f2.client.get(f"{f2.internal}/health/ready")
    assert ready.status_code == 200
    assert ready.json()["replication"]["lag_records"] == 0
    leader_view = {f["follower_id"]: f for f in leader.status()["followers"]}
    assert set(leader_view) == {"node-b", "node-c"}
    shown = run_cli(["replica", "status"], f1.env | {"THEMIS_HTTP_PORT": str(f1.running.http_port)})
    assert shown.returncode == 0, shown.stderr
    assert "node-b: follower of epoch 1" in shown.stdout
    assert f"following {leader.wal_target}: streaming" in shown.stdout
    # Lag per follower on the leader, apply rate on the followers, as Prometheus metrics.
    wait_until(
        "acknowledged",
        lambda: (
            metric_value(
                leader.internal,
                "themisdb_replication_follower_lag_records",
                follower="node-b",
            )
            == 0
        ),
        timeout=10,
    )
    assert metric_value(f1.internal, "themisdb_replication_applied_records_total") >= last
    assert metric_value(f1.internal, "themisdb_replication_apply_delay_seconds_count") > 0

    for node in (leader, f1, f2):
        cluster.stop(node)
    digests = [table_digests(node.data_dir) for node in (leader, f1, f2)]
    assert digests[0] == digests[1] == digests[2]
    conn = sqlite3.connect(leader.data_dir / "themis.db")
    stored = {
        f"{t}:{pk}"
        for t in ("people", "orders")
        for (pk,) in conn.execute(f"SELECT pk FROM {sql_table(t)}")  # noqa: S608
    }
    conn.close()
    assert stored == present
    # Encrypted fields travelled and rest as ciphertext on the followers too.
    for node in (f1, f2):
        for path in node.data_dir.glob("themis.db*"):
            assert b"plaintext-canary" not in path.read_bytes(), path


def _status(target: str, credentials: Any) -> Any:
    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    with channel:
        stub = wal_pb2_grpc.WalStub(channel)  # type: ignore[no-untyped-call]
        return stub.Status(wal_pb2.StatusRequest(), timeout=5)


def test_mtls_leader_refuses_strangers_and_reports_them(
    cluster_factory: Callable[[Pki | None], Cluster], pki: Pki
) -> None:
    cluster = cluster_factory(pki)
    leader = cluster.start(
        cluster.add("node-a", "leader", THEMIS_WAL_GRPC_ALLOWED_PEERS="node-b,node-a")
    )
    assert _status(leader.wal_target, pki.credentials("node-b")).role == "leader"

    attempts = {
        "another CA": pki.credentials("node-b", ca=pki.other_ca),
        "no client certificate": pki.credentials(None),
        "plaintext": None,
        "not an allowed identity": pki.credentials("node-x"),
    }
    for what, credentials in attempts.items():
        with pytest.raises(grpc.RpcError) as refused:
            _status(leader.wal_target, credentials)
        # The connection is closed before gRPC speaks: the client sees no peer (and, when
        # it keeps retrying until its deadline, runs out of time), never an answer.
        assert refused.value.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }, what

    wait_until(
        "refusals counted",
        lambda: (
            security_events(leader.running, "replication_handshake_failure") >= 3
            and security_events(leader.running, "replication_peer_refused") >= 1
        ),
        timeout=10,
    )
    wait_until(
        "refusals audited",
        lambda: (
            {e["action"] for e in audit_actions(leader) if e["category"] == "security"}
            >= {"replication.handshake_failure", "replication.peer_not_allowed"}
        ),
        timeout=10,
    )
    reasons = " ".join(
        str(e["reason"]) for e in audit_actions(leader) if e["action"].startswith("replication.")
    )
    assert "not TLS" in reasons  # the plaintext client, named as such
    assert "node-x" in reasons  # the refused identity

    # An allowed peer may stream as itself, not as another follower (retention, lag and
    # snapshots are kept per follower id).
    node_b = pki.credentials("node-b")
    with grpc.secure_channel(leader.wal_target, node_b) as channel:
        stub = wal_pb2_grpc.WalStub(channel)  # type: ignore[no-untyped-call]
        request = wal_pb2.StreamRequest(follower_id="node-c", from_lsn=1)
        with pytest.raises(grpc.RpcError) as impostor:
            next(iter(stub.Stream(request, timeout=5)))
        assert impostor.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stream = stub.Stream(wal_pb2.StreamRequest(follower_id="node-b", from_lsn=1), timeout=5)
        assert next(iter(stream)).epoch == 1  # as itself it streams
        stream.cancel()
    wait_until(
        "the impostor audited",
        lambda: any(
            e["action"] == "replication.follower_id_refused" for e in audit_actions(leader)
        ),
        timeout=10,
    )


def test_a_node_id_its_certificate_does_not_name_refuses_to_start(
    cluster_factory: Callable[[Pki | None], Cluster], pki: Pki
) -> None:
    node = cluster_factory(pki).add("node-a", "leader", THEMIS_NODE_ID="someone-else")
    server = start_server(node.env, wait=False)
    assert server.process.wait(30) == 78
    assert "THEMIS_NODE_ID=someone-else is not a name of THEMIS_WAL_GRPC_CERT_PATH" in (
        server.output()
    )


def test_failover_promotes_a_follower_and_fences_the_old_leader(
    cluster_factory: Callable[[Pki | None], Cluster], pki: Pki
) -> None:
    cluster = cluster_factory(pki)
    a = cluster.add("node-a", "leader")
    b = cluster.add("node-b", "follower")
    c = cluster.add("node-c", "follower")
    cluster.follow(b, "node-a", "node-c")
    cluster.follow(c, "node-a", "node-b")
    for node in (a, b, c):
        cluster.start(node)

    # Writes race the leader's death: some are acknowledged, some fail.
    acknowledged: list[str] = []

    def writer() -> None:
        with httpx.Client(timeout=5) as client:
            for i in range(100_000):
                try:
                    r = client.put(f"{a.api}/entities/t:{i}", json={"i": i})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append(f"t:{i}")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(writer)
        wait_until("writes flowing", lambda: len(acknowledged) > 300)
        cluster.stop(a, signal.SIGKILL)
        running.result(timeout=30)

    def applied(node: Node) -> int:
        return int(node.status()["following"]["applied_lsn"])

    time.sleep(1.5)  # both followers have applied all they received
    new, other = (b, c) if applied(b) >= applied(c) else (c, b)
    promoted = run_cli(
        ["replica", "promote"], new.env | {"THEMIS_HTTP_PORT": str(new.running.http_port)}
    )
    assert promoted.returncode == 0, promoted.stderr
    assert "epoch 2" in promoted.stdout
    assert new.status()["role"] == "leader"

    # The other follower finds the new leader on its own and converges with it.
    r = new.client.put(f"{new.api}/entities/t:after", json={"after": True})
    assert r.status_code == 200, r.text
    last = new.status()["last_lsn"]
    wait_until("the other follower follows the new leader", lambda: caught_up(other, last))
    assert other.status()["following"]["leader"] == new.wal_target
    got = other.client.get(f"{other.api}/entities/t:after")
    assert got.status_code == 200
    internal = other.internal
    assert metric_value(internal, "themisdb_replication_reconnects_total") >= 1
    assert metric_value(internal, "themisdb_replication_epoch") == 2

    # No acknowledged write that reached the promoted follower is lost, on either node.
    received = {
        k for k in acknowledged if new.client.get(f"{new.api}/entities/{k}").status_code == 200
    }
    assert len(received) >= len(acknowledged) - 50  # all but the last moments' in flight
    for key in received:
        assert other.client.get(f"{other.api}/entities/{key}").status_code == 200, key

    # The old leader comes back believing it leads epoch 1. A follower that has seen epoch 2
    # tells it; it fences itself: no more writes, and the follower does not follow it.
    cluster.stop(other)
    cluster.follow(other, "node-a", new.name)
    cluster.start(a)
    cluster.start(other)
    wait_until("the stale leader fenced", lambda: a.status()["role"] == "deposed")
    stale = a.client.put(f"{a.api}/entities/t:stale", json={"x": 1})
    assert (stale.status_code, stale.json()["error"]) == (409, "stale_leader")
    assert security_events(a.running, "replication_stale_leader") == 1
    wait_until(
        "the follower streaming from the new leader",
        lambda: (
            (other.status()["following"]["leader"], other.status()["following"]["state"])
            == (new.wal_target, "streaming")
        ),
    )
    assert other.status()["epoch"] == 2
    r = new.client.put(f"{new.api}/entities/t:later", json={"later": True})
    assert r.status_code == 200
    wait_until("replicated", lambda: caught_up(other, new.status()["last_lsn"]))


def test_a_follower_behind_the_retained_log_is_reseeded(
    cluster_factory: Callable[[Pki | None], Cluster], pki: Pki
) -> None:
    cluster = cluster_factory(pki)
    leader = cluster.start(cluster.add("node-a", "leader", THEMIS_WAL_RETENTION="100"))
    follower = cluster.start(cluster.add("node-b", "follower", follows=("node-a",)))
    write_load(leader, singles=20, batches=0, deletes=0, prefix="early")
    wait_until("registered", lambda: caught_up(follower, leader.status()["last_lsn"]))
    cluster.stop(follower)
    write_load(leader, singles=400, batches=0, deletes=0, prefix="late")
    wait_until("pruned", lambda: leader.status()["first_lsn"] > 300, timeout=20)

    cluster.start(follower)
    internal = follower.internal
    wait_until("needs re-seeding", lambda: httpx.get(f"{internal}/health/ready").status_code == 503)
    assert "replica seed" in httpx.get(f"{internal}/health/ready").json()["checks"]["replication"]
    cluster.stop(follower)

    refused = run_cli(["replica", "seed"], follower.env)
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    seeded = run_cli(["replica", "seed", "--force"], follower.env)
    assert seeded.returncode == 0, seeded.stderr
    assert "seeded from" in seeded.stdout
    assert list(follower.data_dir.glob("themis.db.replaced-*"))  # the old copy is kept

    cluster.start(follower)
    write_load(leader, singles=10, batches=0, deletes=0, prefix="after")
    last = leader.status()["last_lsn"]
    wait_until("converged after the seed", lambda: caught_up(follower, last))
    assert httpx.get(f"{follower.internal}/health/ready").status_code == 200
    key = f"{follower.api}/entities/people:late-399"
    assert follower.client.get(key).status_code == 200


def test_plaintext_replication_works_in_development_with_the_banner_warning(
    cluster_factory: Callable[[Pki | None], Cluster],
) -> None:
    cluster = cluster_factory(None)
    leader = cluster.start(cluster.add("node-a", "leader"))
    follower = cluster.start(cluster.add("node-b", "follower", follows=("node-a",)))
    write_load(leader, singles=10, batches=1, deletes=2, prefix="dev")
    last = leader.status()["last_lsn"]
    wait_until("replicated", lambda: caught_up(follower, last))
    output = cluster.stop(leader)
    assert "WAL gRPC replication is plaintext" in output
    assert "THEMIS_WAL_GRPC_ENABLE_MTLS" in output


def test_mtls_misconfiguration_refuses_to_start(tmp_path: Path, pki: Pki) -> None:
    """Development too: with mTLS asked for, a broken setup never runs without replication."""
    foreign = pki.node("node-a", ca=pki.other_ca)
    env = replication_env(tmp_path) | {
        "THEMIS_DATA_DIR": str(tmp_path / "data"),
        "THEMIS_WAL_GRPC_PORT": str(free_port()),
        "THEMIS_WAL_GRPC_CERT_PATH": str(foreign[0]),
        "THEMIS_WAL_GRPC_KEY_PATH": str(foreign[1]),
        "THEMIS_WAL_GRPC_CA_CERT_PATH": str(pki.ca[0]),
    }
    server = start_server(env, wait=False)
    code = server.process.wait(30)
    output = server.output()
    assert code == 78, output
    assert "was not issued by THEMIS_WAL_GRPC_CA_CERT_PATH" in output


def test_production_refuses_replication_with_a_certificate_from_another_ca(
    tmp_path: Path, pki: Pki, hsm_env: dict[str, str]
) -> None:
    foreign = pki.node("node-a", ca=pki.other_ca)
    env = (
        hardened_env(tmp_path, hsm_env)
        | replication_env(tmp_path)
        | {
            "THEMIS_WAL_GRPC_CERT_PATH": str(foreign[0]),
            "THEMIS_WAL_GRPC_KEY_PATH": str(foreign[1]),
            "THEMIS_WAL_GRPC_CA_CERT_PATH": str(pki.ca[0]),
        }
    )
    server = start_server(env, wait=False)
    assert server.process.wait(30) == 78
    assert "wal.certificates" in server.output()
    assert "does not verify against THEMIS_WAL_GRPC_CA_CERT_PATH" in server.output()


def test_generated_grpc_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "scripts" / "proto.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    generated = REPO / "src" / "themisdb" / "replication" / "v1"
    for name in ("wal_pb2.py", "wal_pb2.pyi", "wal_pb2_grpc.py"):
        fresh = tmp_path / "themisdb" / "replication" / "v1" / name
        assert fresh.read_text() == (generated / name).read_text(), f"{name}: run `make proto`"
