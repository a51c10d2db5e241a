"""The data API through the real server process over loopback."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ServerProcess, hardened_env, metric_value, start_server
from themisdb.api.routes import ROUTES
from themisdb.posture import generate_token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A development server with no admin token: the API is open (the spec's unsafe default)."""
    data = tmp_path_factory.mktemp("dev") / "data"
    server = start_server({"THEMIS_DATA_DIR": str(data), "THEMIS_MAX_BODY_BYTES": "65536"})
    yield server
    server.stop()


@pytest.fixture
def api(dev: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dev.base_url, timeout=30) as client:
        yield client


def events(server: ServerProcess, category: str, event: str) -> float:
    return metric_value(
        server.internal_url, "themisdb_security_events_total", category=category, event=event
    )


# --- CRUD --------------------------------------------------------------------------------------


def test_put_get_delete_roundtrip(api: httpx.Client) -> None:
    entity = {"name": "Ada", "langs": ["en", "fr"], "nested": {"n": 1.5}, "ok": True}
    put = api.put("/entities/crud:ada", json=entity)
    assert put.status_code == 200
    assert put.json()["key"] == "crud:ada"
    assert isinstance(put.json()["lsn"], int)
    assert api.get("/entities/crud:ada").json() == {"key": "crud:ada", "blob": entity}
    assert api.put("/entities/crud:ada", json={"name": "Ada L."}).status_code == 200
    assert api.get("/entities/crud:ada").json()["blob"] == {"name": "Ada L."}
    deleted = api.delete("/entities/crud:ada")
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    assert api.get("/entities/crud:ada").status_code == 404
    assert api.delete("/entities/crud:ada").status_code == 404


def test_upstream_post_shape_and_keys_with_slashes_and_colons(api: httpx.Client) -> None:
    response = api.post("/entities", json={"key": "docs:a/b:c", "blob": {"v": 1}})
    assert response.status_code == 200
    assert api.get("/entities/docs:a%2Fb:c").json()["blob"] == {"v": 1}
    assert api.get("/entities/docs:a/b:c").json()["blob"] == {"v": 1}


def test_batch_is_atomic(api: httpx.Client) -> None:
    good = [{"key": f"batch:{i}", "blob": {"i": i}} for i in range(5)]
    response = api.post("/entities/_batch", json={"entities": good})
    assert response.status_code == 200
    assert response.json()["written"] == 5
    bad = [{"key": f"batch2:{i}", "blob": {"i": i}} for i in range(5)]
    bad.insert(3, {"key": "batch2:bad", "blob": "not an object"})
    rejected = api.post("/entities/_batch", json={"entities": bad})
    assert rejected.status_code == 422
    assert "entities.3.blob" in rejected.json()["message"]
    bad_key = [*good[:2], {"key": "Bad Key", "blob": {}}]
    assert api.post("/entities/_batch", json={"entities": bad_key}).status_code == 422
    for i in range(5):
        assert api.get(f"/entities/batch2:{i}").status_code == 404  # nothing written


# --- queries, indexes, export ------------------------------------------------------------------


def _load_cities(api: httpx.Client, table: str) -> None:
    entities = [
        {"key": f"{table}:{i:03d}", "blob": {"city": ["Oslo", "Rome", "Lima"][i % 3], "age": i}}
        for i in range(60)
    ]
    assert api.post("/entities/_batch", json={"entities": entities}).status_code == 200


def test_query_without_and_with_index(api: httpx.Client) -> None:
    _load_cities(api, "qcity")
    body = {
        "table": "qcity",
        "predicates": [{"column": "city", "value": "Rome"}],
        "range": [
            {"column": "age", "gte": 10, "lte": 30, "includeLower": True, "includeUpper": False}
        ],
        "order_by": {"column": "age", "desc": True, "limit": 4},
        "return": "entities",
        "explain": True,
    }
    scan = api.post("/query", json=body).json()
    assert scan["explain"]["strategy"] == "scan"
    assert [e["blob"]["age"] for e in scan["entities"]] == [28, 25, 22, 19]
    created = api.post("/index/create", json={"table": "qcity", "column": "city"})
    assert created.status_code == 201
    indexed = api.post("/query", json=body).json()
    assert indexed["explain"]["strategy"] == "index"
    assert indexed["explain"]["indexes"] == ["city"]
    assert indexed["entities"] == scan["entities"]
    keys = api.post(
        "/query",
        json={
            "table": "qcity",
            "predicates": [{"column": "city", "value": "Lima"}],
            "return": "keys",
        },
    ).json()
    assert keys["count"] == 20
    assert keys["keys"][0] == "qcity:002"
    stats = api.get("/index/stats").json()["indexes"]
    assert {"table": "qcity", "column": "city", "entries": 60} in [
        {k: s[k] for k in ("table", "column", "entries")} for s in stats
    ]
    assert api.post("/index/create", json={"table": "qcity", "column": "city"}).status_code == 409
    assert api.post("/index/drop", json={"table": "qcity", "column": "city"}).status_code == 200
    assert api.post("/index/drop", json={"table": "qcity", "column": "city"}).status_code == 404


def test_export_streams_ndjson(api: httpx.Client) -> None:
    _load_cities(api, "exp")
    with api.stream("GET", "/export/exp") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 60
    assert lines[0] == {"key": "exp:000", "blob": {"city": "Oslo", "age": 0}}
    assert api.get("/export/nosuchtable").status_code == 404


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "PUT",
            "/entities/t:1",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        (
            "PUT",
            "/entities/t:1",
            {"content": b'{"x": NaN}', "headers": {"content-type": "application/json"}},
            400,
            "malformed_json",
        ),
        (
            "PUT",
            "/entities/t:1",
            {"content": b"[" * 100000, "headers": {"content-type": "application/json"}},
            413,
            "payload_too_large",
        ),
        (
            "PUT",
            "/entities/t:1",
            {"content": b"{}", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ("PUT", "/entities/t:1", {"json": [1, 2]}, 422, "invalid_body"),
        ("PUT", "/entities/T-1:1", {"json": {}}, 422, "invalid_table"),
        ("PUT", "/entities/nokey", {"json": {}}, 422, "invalid_key"),
        ("POST", "/entities", {"json": {"key": "t:1"}}, 422, "invalid_body"),
        (
            "POST",
            "/entities",
            {"json": {"key": "t:1", "blob": {}, "extra": 1}},
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/query",
            {"json": {"table": "t", "predicates": [{"column": "a", "value": {}}]}},
            422,
            "invalid_body",
        ),
        (
            "POST",
            "/query",
            {"json": {"table": "t", "predicates": [{"column": "a;drop", "value": 1}]}},
            422,
            "invalid_field",
        ),
        ("POST", "/query", {"json": {"table": "t", "return": "rows"}}, 422, "invalid_body"),
        ("GET", "/entities/t:missing", {}, 404, "entity_not_found"),
        ("GET", "/no/such/route", {}, 404, "not_found"),
        ("PATCH", "/entities/t:1", {}, 405, "method_not_allowed"),
    ],
)
def test_error_statuses(
    api: httpx.Client, method: str, path: str, kwargs: dict[str, object], status: int, code: str
) -> None:
    response = api.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    body = response.json()
    assert body["error"] == code
    assert "Traceback" not in body["message"]
    assert not re.search(r"/tmp|/work|/root|site-packages|\.py\b", body["message"])


def test_oversized_body_counts_a_security_event(api: httpx.Client, dev: ServerProcess) -> None:
    before = events(dev, "security", "body_too_large")
    big = {"pad": "x" * 70000}
    assert api.put("/entities/t:big", json=big).status_code == 413
    after = events(dev, "security", "body_too_large")
    assert after == before + 1
    assert api.get("/entities/t:big").status_code == 404


def test_openapi_describes_every_route_with_its_scope(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    for endpoint in ROUTES:
        path = endpoint.path.replace("{key:path}", "{key}")
        operation = document["paths"][path][endpoint.method.lower()]
        assert operation["x-required-scope"] == endpoint.scope
    assert "QueryIn" in document["components"]["schemas"]


# --- health and metrics ------------------------------------------------------------------------


def test_metrics_parse_and_carry_the_required_families(
    api: httpx.Client, dev: ServerProcess
) -> None:
    api.get("/entities/t:whatever")
    text = httpx.get(f"{dev.internal_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "themisdb_security_events" in families
    assert "themisdb_unsafe_default" in families
    assert "themisdb_http_requests" in families
    assert "themisdb_http_request_duration_seconds" in families
    gauges = {s.labels["rule"]: s.value for s in families["themisdb_unsafe_default"].samples}
    assert gauges["auth.admin_token"] == 1  # the dev server runs without a token
    assert gauges["debug.pki"] == 0
    routes = {s.labels["route"] for s in families["themisdb_http_requests"].samples}
    assert "/entities/{key:path}" in routes
    assert not any("whatever" in r for r in routes)  # label values never carry user input
    latency = {
        (x.labels["route"], x.labels["status"])
        for x in families["themisdb_http_request_duration_seconds"].samples
        if x.name.endswith("_count")
    }
    assert ("/entities/{key:path}", "404") in latency  # by route and status
    assert events(dev, "security", "posture_violation") > 0


def test_ready_turns_503_when_the_data_directory_is_unwritable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server({"THEMIS_DATA_DIR": str(data)})
    try:
        url = f"{server.internal_url}/health/ready"
        assert httpx.get(url).status_code == 200
        _make_unwritable(data)
        try:
            response = httpx.get(url)
            assert response.status_code == 503
            assert "not writable" in response.json()["checks"]["storage"]
        finally:
            _make_writable(data)
        assert httpx.get(url).status_code == 200
        assert httpx.get(f"{server.internal_url}/health/live").status_code == 200
    finally:
        server.stop()


def _make_unwritable(path: Path) -> None:
    # chmod does not stop root; the immutable attribute does (ext4, CAP_LINUX_IMMUTABLE).
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o500)


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o700)


# --- authentication matrix ---------------------------------------------------------------------

TOKENS = {"admin": generate_token(), "readonly": generate_token(), "analyst": generate_token()}


# The matrix presents wrong tokens on purpose, many times: the brute-force lockout would
# answer 429 (tests/integration/test_access.py proves it).
NO_LOCKOUT = {"THEMIS_AUTH_LOCKOUT_THRESHOLD": "0"}


@pytest.fixture(scope="module")
def prod(
    tmp_path_factory: pytest.TempPathFactory, hsm_env: dict[str, str]
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("prod")
    env = hardened_env(directory, hsm_env)
    del env["THEMIS_TOKEN_ADMIN_FILE"]
    env.update(
        {
            "THEMIS_TOKEN_ADMIN": TOKENS["admin"],
            "THEMIS_TOKEN_READONLY": TOKENS["readonly"],
            "THEMIS_TOKEN_ANALYST": TOKENS["analyst"],
            **NO_LOCKOUT,
        }
    )
    server = start_server(env)
    server.ca = ssl.create_default_context(  # type: ignore[attr-defined]
        cafile=env["THEMIS_PKI_CERTIFICATE"]
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dev_with_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("devtok") / "data"
    server = start_server(
        {
            "THEMIS_DATA_DIR": str(data),
            "THEMIS_TOKEN_ADMIN": TOKENS["admin"],
            "THEMIS_TOKEN_READONLY": TOKENS["readonly"],
            **NO_LOCKOUT,
        }
    )
    yield server
    server.stop()


def _client(server: ServerProcess, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify = getattr(server, "ca", True)
    base = server.base_url.replace("127.0.0.1", "localhost")
    return httpx.Client(base_url=base, headers=headers, verify=verify, timeout=30)


WRONG = generate_token()
# (credential, write status, read status, admin status)
MATRIX = [
    (None, 401, 401, 401),
    ("wrong", 401, 401, 401),
    ("readonly", 403, 200, 403),
    ("analyst", 403, 200, 403),
    ("admin", 200, 200, 200),
]


@pytest.mark.parametrize(("who", "write", "read", "admin"), MATRIX)
@pytest.mark.parametrize("mode", ["production", "development-with-token"])
def test_auth_matrix(
    request: pytest.FixtureRequest, mode: str, who: str | None, write: int, read: int, admin: int
) -> None:
    server = request.getfixturevalue("prod" if mode == "production" else "dev_with_token")
    token = WRONG if who == "wrong" else (TOKENS[who] if who else None)
    if mode != "production" and who == "analyst":
        token = WRONG  # not configured in that server: an unknown token
        write, read, admin = 401, 401, 401
    with _client(server, token) as client:
        assert client.put("/entities/auth:1", json={"v": 1}).status_code == write
        assert client.get("/entities/auth:1").status_code in (read, 404 if read == 200 else read)
        assert client.get("/admin/config").status_code == admin
        unauthorized = client.get("/index/stats")
        if read == 401:
            assert unauthorized.headers["www-authenticate"].startswith('Bearer realm="themis"')


def test_development_without_token_is_open(api: httpx.Client) -> None:
    assert api.put("/entities/open:1", json={"v": 1}).status_code == 200
    assert api.get("/admin/config").status_code == 200


def test_auth_failures_are_counted_and_never_echo_the_token(prod: ServerProcess) -> None:
    before = events(prod, "authentication", "auth_failure")
    with _client(prod, WRONG) as client:
        response = client.get("/index/stats")
    assert response.status_code == 401
    assert WRONG not in response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    with _client(prod, None) as client:
        malformed = client.get("/index/stats", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert malformed.json()["error"] == "malformed_token"
    after = events(prod, "authentication", "auth_failure")
    assert after == before + 1
    assert events(prod, "authentication", "malformed_token") >= 1


def test_scope_denial_is_counted(prod: ServerProcess) -> None:
    before = events(prod, "authorization", "scope_denied")
    with _client(prod, TOKENS["readonly"]) as client:
        assert client.post("/index/create", json={"table": "t", "column": "c"}).status_code == 403
    after = events(prod, "authorization", "scope_denied")
    assert after == before + 1


def test_admin_endpoints_redact_secrets(prod: ServerProcess) -> None:
    with _client(prod, TOKENS["admin"]) as client:
        config = client.get("/admin/config")
        posture = client.get("/admin/security/posture")
    assert config.status_code == 200
    for token in TOKENS.values():
        assert token not in config.text
        assert token not in posture.text
    assert config.json()["THEMIS_TOKEN_ADMIN"] == "**********"
    assert posture.json()["mode"] == "production"
    assert {r["id"] for r in posture.json()["rules"]} >= {"auth.admin_token", "pii.strict"}
