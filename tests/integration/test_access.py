"""Access control through the real server process: the scope matrix over every endpoint,
table restrictions, API keys and sessions, revocation, expiry, admin token rotation, rate
limits and the brute-force lockout."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess, metric_value, run_cli, start_server
from themisdb.access import ADMIN, ALL_SCOPES, AUTHENTICATED
from themisdb.api.routes import ROUTES
from themisdb.posture import generate_token

pytestmark = pytest.mark.integration

TOKENS = {"admin": generate_token(), "readonly": generate_token(), "analyst": generate_token()}
GRANTED = {  # what each static token may do, written out independently of the server's table
    "admin": set(ALL_SCOPES),
    "readonly": {"data:read", "pii:read"},
    "analyst": {"data:read"},
}


def _env(directory: Path, **extra: str) -> dict[str, str]:
    audit_log = directory / "audit.log"
    config = directory / "themis.yaml"
    config.write_text(
        f"logging:\n  audit:\n    outputs:\n      - type: file\n        path: {audit_log}\n"
    )
    return {
        "THEMIS_DATA_DIR": str(directory / "data"),
        "THEMIS_CONFIG": str(config),
        "THEMIS_TOKEN_ADMIN": TOKENS["admin"],
        "THEMIS_TOKEN_READONLY": TOKENS["readonly"],
        "THEMIS_TOKEN_ANALYST": TOKENS["analyst"],
        **extra,
    }


def _audit(directory: Path) -> list[dict[str, Any]]:
    lines = (directory / "audit.log").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type", "event") == "event"]


def _client(server: ServerProcess, token: str | None, source: str = "127.0.0.1") -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=server.base_url, headers=headers, transport=transport, timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    directory = tmp_path_factory.mktemp("access")
    server = start_server(_env(directory))
    yield server, directory
    server.stop()


def _create_key(server: ServerProcess, **body: Any) -> dict[str, Any]:
    with _client(server, TOKENS["admin"]) as admin:
        response = admin.post("/api/keys", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _session(server: ServerProcess, token: str) -> str:
    with _client(server, token) as client:
        response = client.post("/auth/sessions")
    assert response.status_code == 201, response.text
    session: str = response.json()["token"]
    return session


def _path(template: str) -> str:
    return (
        template.replace("{key:path}", "matrix:k1")
        .replace("{table}", "matrix")
        .replace("{id}", "000000000000")
    )


# What each endpoint must demand, written down apart from the scope table itself: the matrix
# below derives its expectations from ROUTES, so a wrongly declared scope (say, POST
# /keys/rotate as data:read) would pass it; this list does not follow such a change.
EXPECTED_SCOPES = {
    ("GET", "/"): AUTHENTICATED,
    ("GET", "/openapi.json"): AUTHENTICATED,
    ("POST", "/entities/_batch"): "data:write",
    ("POST", "/entities"): "data:write",
    ("PUT", "/entities/{key:path}"): "data:write",
    ("GET", "/entities/{key:path}"): "data:read",
    ("DELETE", "/entities/{key:path}"): "data:write",
    ("POST", "/query"): "data:read",
    ("POST", "/index/create"): "admin",
    ("POST", "/index/drop"): "admin",
    ("GET", "/index/stats"): "data:read",
    ("GET", "/export/{table}"): "data:read",
    ("GET", "/admin/security/posture"): "admin",
    ("GET", "/admin/replication"): "admin",
    ("POST", "/admin/replication/promote"): "admin",
    ("GET", "/admin/config"): "admin",
    ("GET", "/config/encryption-schema"): "admin",
    ("PUT", "/config/encryption-schema"): "admin",
    ("GET", "/keys"): "keys:admin",
    ("POST", "/keys/rotate"): "keys:admin",
    ("GET", "/api/audit"): "audit:read",
    ("GET", "/api/audit/export"): "audit:read",
    ("POST", "/keys/reencrypt"): "keys:admin",
    ("POST", "/api/keys"): "admin",
    ("GET", "/api/keys"): "admin",
    ("PATCH", "/api/keys/{id}"): "admin",
    ("DELETE", "/api/keys/{id}"): "admin",
    ("POST", "/auth/sessions"): AUTHENTICATED,
    ("GET", "/auth/sessions"): AUTHENTICATED,
    ("DELETE", "/auth/sessions/{id}"): AUTHENTICATED,
}


def test_every_endpoint_declares_a_known_scope() -> None:
    assert ROUTES
    for endpoint in ROUTES:
        assert endpoint.scope in ALL_SCOPES | {AUTHENTICATED}, endpoint.path
    declared = {(e.method, e.path): e.scope for e in ROUTES}
    assert declared == EXPECTED_SCOPES  # a new endpoint is added here, with its scope


def test_scope_matrix_over_every_endpoint(served: tuple[ServerProcess, Path]) -> None:
    server, _ = served
    credentials: dict[str, tuple[str, set[str]]] = {
        name: (TOKENS[name], scopes) for name, scopes in GRANTED.items()
    }
    for scope in sorted(ALL_SCOPES):
        key = _create_key(server, name=f"only-{scope.replace(':', '-')}", scopes=[scope])
        credentials[f"key {scope}"] = (key["token"], {scope})
    reader = credentials["key data:read"]
    credentials["session of key data:read"] = (_session(server, reader[0]), reader[1])
    failures = []
    for who, (token, granted) in credentials.items():
        with _client(server, token) as client:
            for endpoint in ROUTES:
                body: dict[str, Any] | None = (
                    {} if endpoint.method in ("POST", "PUT", "PATCH") else None
                )
                response = client.request(endpoint.method, _path(endpoint.path), json=body)
                allowed = endpoint.scope == AUTHENTICATED or bool({endpoint.scope, ADMIN} & granted)
                code = response.json().get("error") if response.status_code >= 400 else None
                refused = response.status_code == 401 or code == "insufficient_scope"
                if allowed and (refused or response.status_code >= 500):
                    failures.append(f"{who}: {endpoint.method} {endpoint.path}: {response.text}")
                if not allowed and (response.status_code, code) != (403, "insufficient_scope"):
                    failures.append(f"{who}: {endpoint.method} {endpoint.path} was allowed")
    assert failures == []
    with _client(server, None) as anonymous:
        for endpoint in ROUTES:
            response = anonymous.request(endpoint.method, _path(endpoint.path))
            assert response.status_code == 401, endpoint.path


def test_table_restriction_holds_for_every_data_path(served: tuple[ServerProcess, Path]) -> None:
    server, _ = served
    with _client(server, TOKENS["admin"]) as admin:
        assert admin.put("/entities/other:1", json={"v": 1}).status_code == 200
        assert (
            admin.post("/index/create", json={"table": "other", "column": "v"}).status_code == 201
        )
    token = _create_key(
        server, name="orders-only", scopes=["data:read", "data:write"], tables=["orders"]
    )["token"]
    with _client(server, token) as client:
        assert client.put("/entities/orders:1", json={"v": 1}).status_code == 200
        assert client.get("/entities/orders:1").status_code == 200
        refused = [
            client.put("/entities/other:2", json={"v": 2}),
            client.get("/entities/other:1"),
            client.delete("/entities/other:1"),
            client.post("/entities", json={"key": "other:3", "blob": {}}),
            client.post(
                "/entities/_batch",
                json={
                    "entities": [{"key": "orders:9", "blob": {}}, {"key": "other:9", "blob": {}}]
                },
            ),
            client.post("/query", json={"table": "other"}),
            client.get("/export/other"),
        ]
        for response in refused:
            assert (response.status_code, response.json()["error"]) == (403, "table_forbidden")
        assert client.post("/query", json={"table": "orders"}).json()["count"] == 1
        assert client.get("/export/orders").status_code == 200
        stats = client.get("/index/stats").json()["indexes"]
        assert all(i["table"] == "orders" for i in stats)
    with _client(server, TOKENS["admin"]) as admin:
        assert admin.get("/entities/orders:9").status_code == 404  # the batch wrote nothing
        assert admin.get("/entities/other:1").status_code == 200


def test_api_key_secret_is_shown_once_and_only_its_hash_is_stored(
    served: tuple[ServerProcess, Path],
) -> None:
    server, directory = served
    created = _create_key(server, name="once", scopes=["data:read"])
    secret = created["token"].split("_", 2)[2]
    with _client(server, TOKENS["admin"]) as admin:
        listed = admin.get("/api/keys").json()["keys"]
    assert created["id"] in {k["id"] for k in listed}
    assert secret not in json.dumps(listed)
    stored = b"".join(p.read_bytes() for p in (directory / "data").iterdir() if p.is_file())
    assert secret.encode() not in stored
    assert secret not in (directory / "audit.log").read_text()
    assert secret not in server.output()


def test_revocation_and_role_change_take_effect_on_the_next_request(
    served: tuple[ServerProcess, Path],
) -> None:
    server, directory = served
    created = _create_key(server, name="rotating", scopes=["data:read"])
    session = _session(server, created["token"])
    with _client(server, created["token"]) as client, _client(server, session) as via_session:
        assert client.put("/entities/rc:1", json={}).status_code == 403
        with _client(server, TOKENS["admin"]) as admin:
            changed = admin.patch(
                f"/api/keys/{created['id']}", json={"scopes": ["data:read", "data:write"]}
            )
            assert changed.status_code == 200
        assert client.put("/entities/rc:1", json={}).status_code == 200
        assert via_session.put("/entities/rc:2", json={}).status_code == 200
        with _client(server, TOKENS["admin"]) as admin:
            assert admin.delete(f"/api/keys/{created['id']}").status_code == 200
        refused = client.get("/entities/rc:1")
        assert (refused.status_code, refused.json()["error"]) == (401, "api_key_revoked")
        ended = via_session.get("/entities/rc:1")
        assert (ended.status_code, ended.json()["error"]) == (401, "session_revoked")
    events = _audit(directory)
    change = next(e for e in events if e["action"] == "role.change")
    assert change["category"] == "authorization"
    assert change["resource"]["scopes"] == {
        "before": ["data:read"],
        "after": ["data:read", "data:write"],
    }
    assert any(e["action"] == "api_key.revoke" for e in events)


def test_sessions_list_logout_and_ownership(served: tuple[ServerProcess, Path]) -> None:
    server, directory = served
    a = _create_key(server, name="owner-a", scopes=["data:read"])
    b = _create_key(server, name="owner-b", scopes=["data:read"])
    session_a = _session(server, a["token"])
    with _client(server, a["token"]) as client:
        mine = client.get("/auth/sessions").json()["sessions"]
        assert [s["owner"] for s in mine] == [f"key:{a['id']}"]
        session_id = mine[0]["id"]
    with _client(server, b["token"]) as other:
        assert other.delete(f"/auth/sessions/{session_id}").status_code == 404
        assert other.get("/auth/sessions").json()["sessions"] == []
    with _client(server, session_a) as client:
        assert client.get("/entities/none:1").status_code == 404
        made_again = client.post("/auth/sessions")
        assert made_again.status_code == 403
        assert client.delete(f"/auth/sessions/{session_id}").status_code == 200
        gone = client.get("/entities/none:1")
        assert (gone.status_code, gone.json()["error"]) == (401, "invalid_token")
    actions = [e["action"] for e in _audit(directory) if e["category"] == "authentication"]
    assert "session.create" in actions
    assert "session.logout" in actions


def test_session_idle_timeout_and_key_expiry(tmp_path: Path) -> None:
    server = start_server(_env(tmp_path, THEMIS_SESSION_IDLE_TIMEOUT="1"))
    try:
        key = _create_key(server, name="short", scopes=["data:read"], expires_in=2)
        session = _session(server, TOKENS["admin"])
        with _client(server, session) as client:
            assert client.get("/entities/x:1").status_code == 404
            time.sleep(1.3)
            expired = client.get("/entities/x:1")
            assert (expired.status_code, expired.json()["error"]) == (401, "session_expired")
        with _client(server, key["token"]) as client:
            time.sleep(max(0.0, key["expires"] - time.time()) + 0.2)
            refused = client.get("/entities/x:1")
            assert (refused.status_code, refused.json()["error"]) == (401, "api_key_expired")
        timeouts = [e for e in _audit(tmp_path) if e["action"] == "session.timeout"]
        assert timeouts
        assert timeouts[0]["category"] == "authentication"
    finally:
        server.stop()


def test_previous_admin_token_works_until_the_deadline(tmp_path: Path) -> None:
    previous = generate_token()
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    server = start_server(
        _env(
            tmp_path,
            THEMIS_TOKEN_ADMIN_PREVIOUS=previous,
            THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL=until.isoformat(),
        )
    )
    try:
        with _client(server, previous) as old, _client(server, TOKENS["admin"]) as new:
            assert old.get("/admin/config").status_code == 200
            assert new.get("/admin/config").status_code == 200
            time.sleep(max(0.0, until.timestamp() - time.time()) + 0.3)
            refused = old.get("/admin/config")
            assert (refused.status_code, refused.json()["error"]) == (401, "token_expired")
            assert new.get("/admin/config").status_code == 200
        actors = {e["actor"].split(":")[0] for e in _audit(tmp_path)}
        assert "admin-previous" in actors  # the audit tells who still uses the old token
        assert previous not in (tmp_path / "audit.log").read_text() + server.output()
    finally:
        server.stop()


def test_brute_force_locks_out_the_source_not_others(tmp_path: Path) -> None:
    server = start_server(_env(tmp_path, THEMIS_AUTH_LOCKOUT_THRESHOLD="3"))
    try:
        with _client(server, generate_token(), source="127.0.0.2") as attacker:
            codes = [attacker.get("/entities/x:1").status_code for _ in range(6)]
            assert codes[:3] == [401, 401, 401]
            locked = attacker.get("/entities/x:1")
            assert locked.status_code == 429
            assert locked.json()["error"] == "locked_out"
            assert int(locked.headers["retry-after"]) >= 1
        with _client(server, TOKENS["admin"], source="127.0.0.2") as same_source:
            assert same_source.get("/entities/x:1").status_code == 429  # the source is locked
        with _client(server, TOKENS["admin"], source="127.0.0.1") as other:
            assert other.get("/entities/x:1").status_code == 404  # another source still works
        assert (
            metric_value(
                server.internal_url, "themisdb_security_events_total", event="auth_lockout"
            )
            >= 1
        )
        lockouts = [e for e in _audit(tmp_path) if e["action"] == "auth.lockout"]
        assert lockouts
        assert lockouts[0]["source"] == "127.0.0.2"
        failures = [e for e in _audit(tmp_path) if e.get("reason") == "invalid_token"]
        assert len(failures) == 3
    finally:
        server.stop()


def test_rate_limit_answers_429_with_headers_and_spares_the_internal_listener(
    tmp_path: Path,
) -> None:
    server = start_server(_env(tmp_path, THEMIS_RATE_LIMIT_RPS="0.2", THEMIS_RATE_LIMIT_BURST="3"))
    try:
        with _client(server, TOKENS["admin"]) as client:
            allowed = [client.get("/entities/x:1") for _ in range(3)]
            assert [r.status_code for r in allowed] == [404, 404, 404]
            assert allowed[0].headers["x-ratelimit-limit"] == "3"
            assert [r.headers["x-ratelimit-remaining"] for r in allowed] == ["2", "1", "0"]
            limited = [client.get("/entities/x:1") for _ in range(3)]
        assert all(r.status_code == 429 for r in limited)
        assert limited[0].json()["error"] == "rate_limited"
        assert int(limited[0].headers["retry-after"]) >= 1
        assert limited[0].headers["x-ratelimit-remaining"] == "0"
        for _ in range(10):
            assert httpx.get(f"{server.internal_url}/health/live").status_code == 200
        assert (
            metric_value(
                server.internal_url, "themisdb_security_events_total", event="rate_limit_exceeded"
            )
            == 3
        )
        audited = [e for e in _audit(tmp_path) if e["action"] == "rate_limit.exceeded"]
        assert len(audited) == 1  # a run of refusals is audited once, counted every time
    finally:
        server.stop()


def test_keys_api_cli_against_the_running_server(served: tuple[ServerProcess, Path]) -> None:
    server, _ = served
    env = {
        "THEMIS_TOKEN_ADMIN": TOKENS["admin"],
        "THEMIS_HTTP_PORT": str(server.http_port),
    }
    created = run_cli(
        ["keys", "api", "create", "cli-key", "--scope", "data:read", "--table", "t1"], env
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("thk_")
    with _client(server, token) as client:
        assert client.get("/entities/t1:1").status_code == 404
    listed = run_cli(["keys", "api", "list"], env)
    assert "cli-key" in listed.stdout
    assert "active" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout
    key_id = token.split("_")[1]
    revoked = run_cli(["keys", "api", "revoke", key_id], env)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in run_cli(["keys", "api", "list"], env).stdout
    with _client(server, token) as client:
        assert client.get("/entities/t1:1").status_code == 401
    wrong = run_cli(["keys", "api", "create", "x", "--scope", "root"], env)
    assert wrong.returncode == 1
    assert "unknown: root" in wrong.stderr
