"""Audit events of the real server process: what is recorded, GET /api/audit, the signed chain
at shutdown, and block mode (nothing happens that is not audited)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, metric_value, run_cli, start_server
from themisdb.audit import Signer
from themisdb.posture import generate_token

pytestmark = pytest.mark.integration

ADMIN, READONLY = generate_token(), generate_token()


def _config(directory: Path, *, block: bool) -> dict[str, str]:
    log = directory / "audit" / "audit.log"
    config = directory / "themis.yaml"
    config.write_text(
        "logging:\n  audit:\n    outputs:\n      - type: file\n"
        f"        path: {log}\n"
        "    signing:\n      enabled: true\n      checkpoint_every: 50\n"
        f"    on_failure: {'block' if block else 'spool'}\n"
    )
    key = directory / "audit-key.pem"
    Signer.create(key)
    return {
        "THEMIS_CONFIG": str(config),
        "THEMIS_AUDIT_SIGNING_KEY_FILE": str(key),
        "THEMIS_DATA_DIR": str(directory / "data"),
        "THEMIS_TOKEN_ADMIN": ADMIN,
        "THEMIS_TOKEN_READONLY": READONLY,
        "THEMIS_NODE_ID": "node-a",
    }


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    directory = tmp_path_factory.mktemp("audited")
    env = _config(directory, block=False)
    server = start_server(env)
    yield server, directory
    if server.process.poll() is None:
        server.stop()


def _client(server: ServerProcess, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def _events(server: ServerProcess, **filters: str) -> list[dict[str, object]]:
    with _client(server, ADMIN) as admin:
        response = admin.get("/api/audit", params=filters)
    assert response.status_code == 200, response.text
    events: list[dict[str, object]] = response.json()["events"]
    return events


def test_requests_are_audited_with_actor_resource_and_outcome(
    audited: tuple[ServerProcess, Path],
) -> None:
    server, _ = audited
    secret_value = "do-not-log-this-value-4711"
    with _client(server, ADMIN) as admin:
        put = admin.put("/entities/people:ada", json={"note": secret_value})
        assert put.status_code == 200
        request_id = put.headers["x-request-id"]
        assert admin.get("/entities/people:ada").status_code == 200
    wrong = generate_token()
    with _client(server, wrong) as intruder:
        assert intruder.get("/entities/people:ada").status_code == 401
    with _client(server, READONLY) as reader:
        assert (
            reader.post("/index/create", json={"table": "people", "column": "x"}).status_code == 403
        )
        assert reader.get("/api/audit").status_code == 403  # audit:read is not data:read

    mine = [e for e in _events(server) if e["request_id"] == request_id]
    assert [(e["category"], e["action"], e["outcome"]) for e in mine] == [
        ("authentication", "authenticate", "success"),
        ("authorization", "authorize", "granted"),
        ("data_access", "write", "success"),
    ]
    write = mine[2]
    assert write["resource"] == {"table": "people", "key": "ada"}
    assert str(write["actor"]).startswith("admin:token:")
    assert write["node"] == "node-a"
    assert write["source"] == "127.0.0.1"
    failures = _events(server, category="authentication", outcome="failure")
    assert failures
    assert failures[-1]["reason"] == "invalid_token"
    denied = _events(server, category="authorization", outcome="denied")
    assert denied[-1]["reason"] == "insufficient_scope"
    everything = json.dumps(_events(server, limit="10000"))
    assert secret_value not in everything  # keys and counts, never values
    assert ADMIN not in everything
    assert wrong not in everything


def test_audit_export_as_ndjson_and_csv(audited: tuple[ServerProcess, Path]) -> None:
    server, _ = audited
    with _client(server, ADMIN) as admin:
        ndjson = admin.get("/api/audit/export", params={"category": "data_access"})
        as_csv = admin.get("/api/audit/export", params={"format": "csv"})
        assert admin.get("/api/audit/export", params={"format": "xml"}).status_code == 422
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert lines
    assert {e["category"] for e in lines} == {"data_access"}
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert rows[0]["seq"] == "1"
    assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1))


def test_shutdown_signs_the_chain_and_it_verifies(audited: tuple[ServerProcess, Path]) -> None:
    server, directory = audited
    code, _ = server.stop()
    assert code == 0
    key = directory / "audit-key.pem"
    public = directory / "audit-public.pem"
    env = {
        "THEMIS_CONFIG": str(directory / "themis.yaml"),
        "THEMIS_AUDIT_SIGNING_KEY_FILE": str(key),
    }
    exported = run_cli(["audit", "public-key"], env)
    assert exported.returncode == 0
    public.write_text(exported.stdout)
    files = sorted((directory / "audit").glob("audit.log*"))
    result = run_cli(["audit", "verify", *map(str, files), "--public-key", str(public)], {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact" in result.stdout
    last = json.loads(files[-1].read_text().splitlines()[-1])
    assert last["type"] == "checkpoint"  # the final checkpoint at shutdown


def _immutable(path: Path, on: bool) -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "this test needs root (chattr), as CI runs: a file open for append cannot "
            "be made unwritable otherwise"
        )
    subprocess.run(["chattr", "+i" if on else "-i", str(path)], check=True)


def test_block_mode_refuses_requests_while_no_sink_can_write(tmp_path: Path) -> None:
    env = _config(tmp_path, block=True)
    server = start_server(env)
    log = tmp_path / "audit" / "audit.log"
    ready = f"{server.internal_url}/health/ready"
    try:
        with _client(server, ADMIN) as admin:
            assert admin.put("/entities/blocked:before", json={"v": 1}).status_code == 200
            _immutable(log, True)
            try:
                # The very first write after the failure is refused before it acts: its
                # admission is written first, that write fails (and is spooled, not lost).
                refused = admin.put("/entities/blocked:during", json={"v": 2})
                assert refused.status_code == 503
                assert refused.json()["error"] == "audit_unavailable"
                assert httpx.get(ready).json()["checks"]["audit"] != "ok"
            finally:
                _immutable(log, False)
            deadline = time.monotonic() + 20
            while httpx.get(ready).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert httpx.get(ready).status_code == 200  # the spool was replayed
            assert admin.put("/entities/blocked:after", json={"v": 3}).status_code == 200
            assert admin.get("/entities/blocked:during").status_code == 404  # no effect
    finally:
        code, output = server.stop()
    assert code == 0
    assert "Traceback" not in output
    key = tmp_path / "audit-public.pem"
    key.write_text(Signer.load(tmp_path / "audit-key.pem").public_pem())
    files = sorted((tmp_path / "audit").glob("audit.log*"))
    verified = run_cli(["audit", "verify", *map(str, files), "--public-key", str(key)], {})
    assert verified.returncode == 0, verified.stdout + verified.stderr  # nothing lost, in order


def test_sighup_reopens_the_file_after_an_external_rotation(tmp_path: Path) -> None:
    """logrotate's way: the file is renamed, the server gets SIGHUP and writes a new one. The
    chain continues across both files; the audit metrics count what was written."""
    env = _config(tmp_path, block=False)
    server = start_server(env)
    log = tmp_path / "audit" / "audit.log"
    moved = tmp_path / "audit" / "rotated-by-logrotate.log"
    try:
        with _client(server, ADMIN) as admin:
            assert admin.put("/entities/rot:a", json={"v": 1}).status_code == 200
            os.replace(log, moved)
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not log.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert admin.put("/entities/rot:b", json={"v": 2}).status_code == 200
        assert '"key":"b"' not in moved.read_text()  # nothing after the rename went there
        assert '"key":"b"' in log.read_text()
        assert '"key":"a"' in moved.read_text()
        written = metric_value(
            server.internal_url, "themisdb_audit_events_total", category="data_access"
        )
        assert written >= 2
        age = metric_value(server.internal_url, "themisdb_audit_last_checkpoint_age_seconds")
        assert 0 <= age < 120
    finally:
        code, _ = server.stop()
    assert code == 0
    public = tmp_path / "audit-public.pem"
    public.write_text(Signer.load(tmp_path / "audit-key.pem").public_pem())
    result = run_cli(["audit", "verify", str(moved), str(log), "--public-key", str(public)], {})
    assert result.returncode == 0, result.stdout + result.stderr
