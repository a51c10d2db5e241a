"""Encryption at rest through the real server process (development mode, file provider)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import ServerProcess, run_cli, start_server
from themisdb.posture import generate_token

pytestmark = pytest.mark.integration

SCHEMA = {
    "tables": {
        "customers": {
            "fields": {
                "ssn": {"encrypt": True, "classification": "pii"},
                "iban": {"encrypt": True, "classification": "restricted"},
                "email": {"encrypt": False, "classification": "pii"},
            }
        }
    }
}
SECRETS = ["078-05-1120", "DE89370400440532013000", "719-21-0042"]
ADMIN, ANALYST = generate_token(), generate_token()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("enc") / "data"
    srv = start_server(
        {"THEMIS_DATA_DIR": str(data), "THEMIS_TOKEN_ADMIN": ADMIN, "THEMIS_TOKEN_ANALYST": ANALYST}
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as client:
        assert client.put("/config/encryption-schema", json=SCHEMA).status_code == 200
        yield client


def test_schema_round_trip_and_validation(admin: httpx.Client) -> None:
    document = admin.get("/config/encryption-schema").json()
    assert document["tables"]["customers"]["fields"]["ssn"] == {
        "encrypt": True,
        "classification": "pii",
    }
    bad = {
        "tables": {"customers": {"fields": {"x": {"encrypt": True, "classification": "secretish"}}}}
    }
    assert admin.put("/config/encryption-schema", json=bad).status_code == 422


def test_plaintext_never_reaches_the_database_files_or_the_log(
    admin: httpx.Client, server: ServerProcess
) -> None:
    for i, secret in enumerate(SECRETS):
        body = {"ssn": secret, "iban": secret + "-iban", "name": f"n{i}"}
        assert admin.put(f"/entities/customers:c{i}", json=body).status_code == 200
    assert admin.get("/entities/customers:c0").json()["blob"]["ssn"] == SECRETS[0]
    data = server.data_dir
    assert data is not None
    files = [p for p in data.iterdir() if p.name.startswith("themis.db")]
    assert any(p.name.endswith("-wal") for p in files)
    raw = b"".join(p.read_bytes() for p in files)
    assert b"n0" in raw  # the unencrypted field is there: the search does see the data
    for secret in SECRETS:
        assert secret.encode() not in raw
    conn = sqlite3.connect(f"file:{data / 'themis.db'}?mode=ro", uri=True)
    try:
        payloads = " ".join(str(row[0]) for row in conn.execute("SELECT payload FROM themis_log"))
    finally:
        conn.close()
    assert "$themis$enc$v" in payloads
    for secret in SECRETS:
        assert secret not in payloads


def test_encrypted_fields_cannot_be_queried_or_indexed(admin: httpx.Client) -> None:
    query = {"table": "customers", "predicates": [{"column": "ssn", "value": SECRETS[0]}]}
    response = admin.post("/query", json=query)
    assert response.status_code == 400
    assert response.json()["error"] == "encrypted_field"
    index = admin.post("/index/create", json={"table": "customers", "column": "ssn"})
    assert index.status_code == 400


def test_analyst_sees_classified_fields_masked(admin: httpx.Client, server: ServerProcess) -> None:
    admin.put(
        "/entities/customers:m1", json={"ssn": SECRETS[2], "email": "a@b.example", "name": "Mo"}
    )
    with httpx.Client(
        base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {ANALYST}"}
    ) as analyst:
        blob = analyst.get("/entities/customers:m1").json()["blob"]
        assert blob == {"ssn": "[redacted]", "email": "[redacted]", "name": "Mo"}
        exported = analyst.get("/export/customers").text
        assert SECRETS[2] not in exported
        assert "a@b.example" not in exported
        probe = analyst.post(
            "/query",
            json={
                "table": "customers",
                "predicates": [{"column": "email", "value": "a@b.example"}],
            },
        )
        assert probe.status_code == 403  # no comparison oracle on masked fields
    assert admin.get("/entities/customers:m1").json()["blob"]["ssn"] == SECRETS[2]


def test_rotation_and_reencrypt_through_the_cli(admin: httpx.Client, server: ServerProcess) -> None:
    admin.put("/entities/customers:r1", json={"ssn": "123-45-6789"})
    env = {
        "THEMIS_TOKEN_ADMIN": ADMIN,
        "THEMIS_HTTP_PORT": str(server.http_port),
        "THEMIS_DATA_DIR": str(server.data_dir),
    }
    before = admin.get("/keys").json()
    rotated = run_cli(["keys", "rotate"], env)
    assert rotated.returncode == 0, rotated.stderr
    after = admin.get("/keys").json()
    assert after["master_key"] != before["master_key"]
    assert after["master_key_since"] >= before["master_key_since"]  # the new version's age
    assert time.time() - after["master_key_since"] < 60
    assert all(d["wrapped_by"] == after["master_key"] for d in after["data_keys"])
    assert admin.get("/entities/customers:r1").json()["blob"]["ssn"] == "123-45-6789"
    reencrypted = run_cli(["keys", "reencrypt", "customers", "--page", "2"], env)
    assert reencrypted.returncode == 0, reencrypted.stderr
    assert "re-encrypted" in reencrypted.stdout
    status = run_cli(["keys", "status"], env)
    assert after["master_key"] in status.stdout
    assert "in use for 0.0 days" in status.stdout
    assert admin.get("/entities/customers:r1").json()["blob"]["ssn"] == "123-45-6789"
    data = server.data_dir
    assert data is not None
    conn = sqlite3.connect(f"file:{data / 'themis.db'}?mode=ro", uri=True)
    try:
        bodies = [row[0] for row in conn.execute('SELECT body FROM "e_customers"')]
    finally:
        conn.close()
    newest = after["master_key"]
    assert all(f"$themis$enc${newest}$" in body for body in bodies if "$themis$enc$" in body)


def test_wrong_token_for_keys_cli_is_a_clear_error(server: ServerProcess) -> None:
    result = run_cli(
        ["keys", "rotate"],
        {"THEMIS_TOKEN_ADMIN": generate_token(), "THEMIS_HTTP_PORT": str(server.http_port)},
    )
    assert result.returncode == 1
    assert "401" in result.stderr
    assert "Traceback" not in result.stderr
