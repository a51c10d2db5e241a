"""PII through the real server process: strict mode, fail-closed initialisation, reload, and no
raw PII in any log line or audit record."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, start_server
from themisdb.pii import DEFAULT_PATTERNS

pytestmark = pytest.mark.integration

SSN, EMAIL, CARD = "078-05-1120", "alice.liddell@example.org", "4111 1111 1111 1111"
IBAN = "DE89370400440532013000"
SCHEMA = {"tables": {"customers": {"fields": {"ssn": {"encrypt": True, "classification": "pii"}}}}}


def _server(tmp_path: Path, **extra: str) -> ServerProcess:
    patterns = tmp_path / "pii_patterns.yaml"
    shutil.copy(DEFAULT_PATTERNS, patterns)
    return start_server(
        {"THEMIS_DATA_DIR": str(tmp_path / "data"), "THEMIS_PII_PATTERNS": str(patterns), **extra}
    )


def _audit_config(tmp_path: Path) -> tuple[Path, Path]:
    audit_log = tmp_path / "audit.log"
    config = tmp_path / "themis.yaml"
    config.write_text(
        f"logging:\n  audit:\n    outputs:\n      - type: file\n        path: {audit_log}\n"
    )
    return config, audit_log


def _pii_rejections(server: ServerProcess) -> float:
    metrics = httpx.get(f"{server.internal_url}/metrics").text
    line = 'themisdb_security_events_total{category="security",event="pii_rejected"}'
    return sum(float(row.rsplit(" ", 1)[1]) for row in metrics.splitlines() if row.startswith(line))


def test_strict_mode_matrix(tmp_path: Path) -> None:
    config, audit_log = _audit_config(tmp_path)
    server = _server(tmp_path, THEMIS_PII_STRICT="1", THEMIS_CONFIG=str(config))
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            assert api.put("/config/encryption-schema", json=SCHEMA).status_code == 200
            encrypted = api.put("/entities/customers:1", json={"ssn": SSN, "name": "Ann"})
            assert encrypted.status_code == 200
            plain = api.put("/entities/customers:2", json={"note": f"ssn {SSN}", "name": "Bo"})
            assert plain.status_code == 422
            body = plain.json()
            assert body["error"] == "pii_unencrypted_field"
            assert "note" in body["message"]
            assert "SSN" in body["message"]
            assert SSN not in plain.text
            assert api.get("/entities/customers:2").status_code == 404
            batch = api.post(
                "/entities/_batch",
                json={
                    "entities": [
                        {"key": "customers:3", "blob": {"name": "Cy"}},
                        {"key": "customers:4", "blob": {"contact": EMAIL}},
                        {"key": "customers:5", "blob": {"name": "Di"}},
                    ]
                },
            )
            assert batch.status_code == 422
            for pk in (3, 4, 5):
                assert api.get(f"/entities/customers:{pk}").status_code == 404
            # The primary key is stored and logged in clear: PII there is refused too.
            keyed = api.put(f"/entities/customers:{EMAIL}", json={"name": "Ed"})
            assert keyed.status_code == 422
            assert "primary key" in keyed.json()["message"]
            assert EMAIL not in keyed.text
            assert api.get("/export/customers").text.count("\n") == 1  # only customers:1
        assert _pii_rejections(server) == 3
    finally:
        server.stop()
    audit = audit_log.read_text()
    assert audit.count('"pii.rejected"') == 3
    assert SSN not in audit
    assert EMAIL not in audit


def test_outside_strict_mode_pii_is_accepted_counted_and_logged_redacted(tmp_path: Path) -> None:
    server = _server(tmp_path)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            assert api.put("/entities/notes:1", json={"text": f"mail {EMAIL}"}).status_code == 200
    finally:
        _, log = server.stop()
    assert "PII stored in fields that are not encrypted" in log
    assert EMAIL not in log


def test_no_raw_pii_in_logs_metrics_or_audit(tmp_path: Path) -> None:
    config, audit_log = _audit_config(tmp_path)
    server = _server(tmp_path, THEMIS_CONFIG=str(config), THEMIS_TOKEN_ADMIN="x" * 10 + EMAIL)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            bad = {"Authorization": f"Bearer {EMAIL}"}
            ok = {"Authorization": f"Bearer {'x' * 10 + EMAIL}"}
            api.get("/entities/people:x", headers=bad)  # a bad token that is PII
            api.put(f"/entities/people:{EMAIL}", json={"card": CARD, "iban": IBAN}, headers=ok)
            api.get(f"/entities/people:{EMAIL}", headers=ok)
            api.post(
                "/query",
                json={"table": "people", "predicates": [{"column": "iban", "value": IBAN}]},
                headers=ok,
            )
            api.put(
                f"/entities/people:{SSN}",
                content=b"{not json " + SSN.encode(),
                headers={**ok, "content-type": "application/json"},
            )
            api.delete(f"/entities/people:{EMAIL}", headers=ok)
        metrics = httpx.get(f"{server.internal_url}/metrics").text
    finally:
        _, log = server.stop()
    assert "pii_detected" in metrics
    everything = log + audit_log.read_text() + metrics
    assert "data_access" in everything  # the audit log was written
    for value in (SSN, EMAIL, CARD, CARD.replace(" ", ""), IBAN):
        assert value not in everything, value


def test_force_init_fail_refuses_writes_in_strict_mode(tmp_path: Path) -> None:
    server = _server(tmp_path, THEMIS_PII_STRICT="1", THEMIS_PII_FORCE_INIT_FAIL="1")
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            refused = api.put("/entities/t:1", json={"v": 1})
            assert refused.status_code == 503
            assert refused.json()["error"] == "pii_engine_unavailable"
        ready = httpx.get(f"{server.internal_url}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["pii"] != "ok"
    finally:
        server.stop()


def test_a_broken_pattern_file_is_rejected_on_reload(tmp_path: Path) -> None:
    server = _server(tmp_path, THEMIS_PII_STRICT="1")
    try:
        assert httpx.get(f"{server.internal_url}/health/live").status_code == 200
        (tmp_path / "pii_patterns.yaml").write_text(
            "version: 1\npatterns: [{name: X, regex: '(']\n"
        )
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "PII patterns NOT reloaded" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "PII patterns NOT reloaded" in server.output()
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            still = api.put("/entities/t:1", json={"contact": EMAIL})
            assert still.status_code == 422  # the old patterns are in force
    finally:
        server.stop()


def test_results_mask_detected_pii_without_scope_pii_read(tmp_path: Path) -> None:
    admin, reader = "a" * 40, "r" * 40
    server = _server(tmp_path, THEMIS_TOKEN_ADMIN=admin, THEMIS_TOKEN_ANALYST=reader)
    entity = {"note": f"call about card {CARD}", "site": "https://example.org/a", "n": 1}
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as api:
            as_admin = {"Authorization": f"Bearer {admin}"}
            as_reader = {"Authorization": f"Bearer {reader}"}
            assert api.put("/entities/tickets:1", json=entity, headers=as_admin).status_code == 200
            assert api.get("/entities/tickets:1", headers=as_admin).json()["blob"] == entity
            shown = [
                api.get("/entities/tickets:1", headers=as_reader).json()["blob"],
                api.post(
                    "/query",
                    json={"table": "tickets", "return": "entities"},
                    headers=as_reader,
                ).json()["entities"][0]["blob"],
            ]
            exported = api.get("/export/tickets", headers=as_reader).text
    finally:
        server.stop()
    for blob in shown:
        assert blob["note"] == "call about card **** **** **** 1111"
        assert blob["site"] == entity["site"]  # confidential: returned as stored
        assert blob["n"] == 1
    assert "**** **** **** 1111" in exported
    assert CARD not in exported
