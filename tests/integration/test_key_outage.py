"""The integrator checklist's failover test, through the real server process: take the key
manager away mid-run; encrypted writes get 503 and nothing is written, nothing is ever encrypted
with a stub or file key instead; bring it back; writes succeed without a restart."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import run_cli, security_events, start_server

pytestmark = pytest.mark.integration

SCHEMA = {
    "tables": {"vault_or_hsm": {"fields": {"ssn": {"encrypt": True, "classification": "pii"}}}}
}


def _stored_keys(data: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{data / 'themis.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute('SELECT pk FROM "e_vault_or_hsm"')}
    finally:
        conn.close()


def _outage_run(
    env: dict[str, str],
    outage: Callable[[], contextlib.AbstractContextManager[None]],
    tmp_path: Path,
) -> None:
    env = {**env, "THEMIS_DATA_DIR": str(tmp_path / "data")}  # default DEK cache TTL: 300 s
    assert run_cli(["keys", "init"], env).returncode == 0
    server = start_server(env)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            assert api.put("/config/encryption-schema", json=SCHEMA).status_code == 200
            assert api.put("/entities/vault_or_hsm:before", json={"ssn": "1"}).status_code == 200
            ready = f"{server.internal_url}/health/ready"
            assert httpx.get(ready).status_code == 200
            before_events = security_events(server, "key_provider_error")
            with outage():
                # The monitor notices within about a second; reads of cached DEKs go on.
                deadline = time.monotonic() + 15
                while httpx.get(ready).status_code == 200 and time.monotonic() < deadline:
                    time.sleep(0.2)
                cached = api.get("/entities/vault_or_hsm:before")
                assert cached.status_code == 200
                assert cached.json()["blob"] == {"ssn": "1"}
                refused = api.put("/entities/vault_or_hsm:during", json={"ssn": "2"})
                assert refused.status_code == 503
                assert refused.json()["error"] == "key_provider_unavailable"
                batch = api.post(
                    "/entities/_batch",
                    json={"entities": [{"key": "vault_or_hsm:b1", "blob": {"ssn": "3"}}]},
                )
                assert batch.status_code == 503
                # A table without encrypted fields does not need the key manager.
                assert api.put("/entities/plain:during", json={"v": 1}).status_code == 200
                not_ready = httpx.get(ready)
                assert not_ready.status_code == 503
                assert not_ready.json()["checks"]["key_provider"] != "ok"
            assert security_events(server, "key_provider_error") >= before_events + 2
            deadline = time.monotonic() + 15
            while httpx.get(ready).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert httpx.get(ready).status_code == 200  # recovered, no restart
            recovered = api.put("/entities/vault_or_hsm:after", json={"ssn": "4"})
            assert recovered.status_code == 200, recovered.text
            assert api.get("/entities/vault_or_hsm:before").json()["blob"] == {"ssn": "1"}
        assert server.data_dir is not None
        assert _stored_keys(server.data_dir) == {"before", "after"}  # nothing from the outage
    finally:
        code, log = server.stop()
    assert code == 0
    assert "Traceback" not in log


def test_hsm_outage_rejects_writes_and_recovers(softhsm: Any, tmp_path: Path) -> None:
    env = {**softhsm.env(tmp_path), "THEMIS_HSM_KEY_LABEL": "outage-test"}

    @contextlib.contextmanager
    def away() -> Iterator[None]:
        softhsm.take_away()
        try:
            yield
        finally:
            softhsm.bring_back()

    _outage_run(env, away, tmp_path)


def test_vault_outage_rejects_writes_and_recovers(openbao: Any, tmp_path: Path) -> None:
    _outage_run(openbao.env(tmp_path), openbao.sealed, tmp_path)
