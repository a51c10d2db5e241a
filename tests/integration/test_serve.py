"""The real `themisdb serve` process: development banner, the production gate, clean stop."""

from __future__ import annotations

import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    ServerProcess,
    free_port,
    hardened_env,
    replication_env,
    run_cli,
    start_server,
    write_cert,
    write_secret,
)
from themisdb.posture import generate_token

pytestmark = pytest.mark.integration

Mutation = Callable[[dict[str, str], Path], None]


def _set(**values: str) -> Mutation:
    def apply(env: dict[str, str], tmp: Path) -> None:
        env.update(values)

    return apply


def _unset(*names: str) -> Mutation:
    def apply(env: dict[str, str], tmp: Path) -> None:
        for name in names:
            env.pop(name)

    return apply


def _weak_token(env: dict[str, str], tmp: Path) -> None:
    env["THEMIS_TOKEN_ADMIN_FILE"] = str(write_secret(tmp, "weak", "changeme"))


def _replication(**overrides: str) -> Mutation:
    def apply(env: dict[str, str], tmp: Path) -> None:
        env.update(replication_env(tmp, overrides=overrides))

    return apply


def _default_pin(env: dict[str, str], tmp: Path) -> None:
    env["THEMIS_HSM_PIN_FILE"] = str(write_secret(tmp, "default-pin", "1234"))


def _no_syslog(env: dict[str, str], tmp: Path) -> None:
    Path(env["THEMIS_CONFIG"]).write_text(
        "logging:\n  audit:\n    outputs:\n      - type: file\n        path: /tmp/a.log\n"
        "    signing:\n      enabled: true\n"
    )


def _secret_in_config(env: dict[str, str], tmp: Path) -> None:
    path = Path(env["THEMIS_CONFIG"])
    path.write_text(path.read_text() + "THEMIS_VAULT_TOKEN: hvs.in-a-config-map\n")


def _weak_cert(env: dict[str, str], tmp: Path) -> None:
    cert, key = write_cert(tmp, "weak", key="rsa-2048")
    env.update({"THEMIS_PKI_CERTIFICATE": str(cert), "THEMIS_PKI_PRIVATE_KEY": str(key)})


def _readable_key(env: dict[str, str], tmp: Path) -> None:
    Path(env["THEMIS_PKI_PRIVATE_KEY"]).chmod(0o644)


def _other_ca(env: dict[str, str], tmp: Path) -> None:
    env["THEMIS_TLS_CA"] = str(write_cert(tmp, "unrelated-ca", hostnames=("ca",))[0])


def _long_cert(env: dict[str, str], tmp: Path) -> None:
    cert, key = write_cert(tmp, "long", days=800)
    env.update({"THEMIS_PKI_CERTIFICATE": str(cert), "THEMIS_PKI_PRIVATE_KEY": str(key)})


# One production violation each: (rule id, variable the refusal must name, mutation).
VIOLATIONS: list[tuple[str, str, Mutation]] = [
    ("mode.production_flag", "THEMIS_PRODUCTION_MODE", _unset("THEMIS_PRODUCTION_MODE")),
    ("mode.environment", "THEMIS_ENVIRONMENT", _unset("THEMIS_ENVIRONMENT")),
    ("mode.environment", "THEMIS_ENVIRONMENT", _set(THEMIS_ENVIRONMENT="staging")),
    ("auth.admin_token", "THEMIS_TOKEN_ADMIN", _unset("THEMIS_TOKEN_ADMIN_FILE")),
    ("auth.admin_token", "THEMIS_TOKEN_ADMIN", _weak_token),
    ("auth.secondary_tokens", "THEMIS_TOKEN_READONLY", _set(THEMIS_TOKEN_READONLY="readonly")),
    (
        "auth.admin_token_previous",
        "THEMIS_TOKEN_ADMIN_PREVIOUS",
        _set(
            THEMIS_TOKEN_ADMIN_PREVIOUS=generate_token(),
            THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL="2099-01-01T00:00:00Z",
        ),
    ),
    ("keys.hsm_stub", "THEMIS_ALLOW_HSM_STUB", _set(THEMIS_ALLOW_HSM_STUB="0")),
    ("keys.key_manager", "THEMIS_HSM_ENABLED", _set(THEMIS_HSM_ENABLED="0")),
    ("keys.hsm_pin_injected", "THEMIS_HSM_PIN", _default_pin),
    ("keys.master_key_usable", "THEMIS_HSM_KEY_LABEL", _set(THEMIS_HSM_KEY_LABEL="no-such-key")),
    ("keys.rotation_schedule", "THEMIS_KEY_ROTATION_DAYS", _set(THEMIS_KEY_ROTATION_DAYS="0")),
    ("keys.dedicated_per_cluster", "THEMIS_CLUSTER_ID", _unset("THEMIS_CLUSTER_ID")),
    ("tls.certificate_configured", "THEMIS_PKI_CERTIFICATE", _unset("THEMIS_PKI_CERTIFICATE")),
    (
        "tls.san_matches_hostname",
        "THEMIS_SERVICE_HOSTNAME",
        _set(THEMIS_SERVICE_HOSTNAME="db.example.com"),
    ),
    ("tls.certificate_key_strength", "THEMIS_PKI_CERTIFICATE", _weak_cert),
    ("tls.certificate_validity", "THEMIS_PKI_CERTIFICATE", _long_cert),
    ("tls.key_file_private", "THEMIS_PKI_PRIVATE_KEY", _readable_key),
    ("tls.certificate_chain", "THEMIS_TLS_CA", _other_ca),
    ("wal.mtls", "THEMIS_WAL_GRPC_ENABLE_MTLS", _replication(THEMIS_WAL_GRPC_ENABLE_MTLS="0")),
    (
        "wal.certificates",
        "THEMIS_WAL_GRPC_CA_CERT_PATH",
        _replication(THEMIS_WAL_GRPC_CA_CERT_PATH="/nonexistent/ca.crt"),
    ),
    ("pii.strict", "THEMIS_PII_STRICT", _unset("THEMIS_PII_STRICT")),
    ("pii.force_init_fail", "THEMIS_PII_FORCE_INIT_FAIL", _set(THEMIS_PII_FORCE_INIT_FAIL="1")),
    ("downloads.disabled", "THEMIS_DISABLE_AUTO_DOWNLOAD", _set(THEMIS_DISABLE_AUTO_DOWNLOAD="0")),
    ("debug.enc_dir", "THEMIS_DEBUG_ENC_DIR", _set(THEMIS_DEBUG_ENC_DIR="/tmp/enc")),
    ("debug.pki", "THEMIS_DEBUG_PKI", _set(THEMIS_DEBUG_PKI="/tmp/keylog")),
    ("audit.external_sink", "logging.audit", _no_syslog),
    (
        "audit.signed_chain",
        "THEMIS_AUDIT_SIGNING_KEY_FILE",
        _unset("THEMIS_AUDIT_SIGNING_KEY_FILE"),
    ),
    ("secrets.injected_from_store", "THEMIS_VAULT_TOKEN", _secret_in_config),
]


# A default PIN is also refused by the real token: the key manager rule fails with it.
ALSO_FAILING = {"keys.hsm_pin_injected": ("keys.master_key_usable",)}


def test_every_pure_configuration_must_rule_is_in_the_matrix() -> None:
    from themisdb.posture import RULES, Severity

    needs_real_services = {
        "auth.admin_token_rotation",  # file age: covered by the unit matrix with real mtimes
        "keys.master_key_age",  # age recorded in the database: covered by the unit matrix
        "keys.vault_token_short_lived",  # needs Vault
        "process.pre_deployment_checklist",
        "process.monitor_security_events",
        "process.hsm_failover_test",
    }
    musts = {r.id for r in RULES if r.severity is Severity.MUST} - needs_real_services
    assert musts == {rule_id for rule_id, _, _ in VIOLATIONS}


@pytest.mark.parametrize(
    ("rule_id", "variable", "mutate"),
    VIOLATIONS,
    ids=[f"{v[0]}-{i}" for i, v in enumerate(VIOLATIONS)],
)
def test_production_refuses_each_violation(
    hsm_env: dict[str, str], tmp_path: Path, rule_id: str, variable: str, mutate: Mutation
) -> None:
    env = hardened_env(tmp_path, hsm_env)
    mutate(env, tmp_path)
    env = {k: v for k, v in env.items() if v != ""}
    if rule_id == "mode.production_flag":
        env["THEMIS_ENVIRONMENT"] = "production"  # still production: the other signal is on
    result = run_cli(["serve"], {**env, "THEMIS_HTTP_PORT": str(free_port())})
    assert result.returncode == 78, result.stderr
    assert "refusing to start in production mode" in result.stderr
    assert f"x {rule_id}:" in result.stderr
    assert variable in result.stderr
    also = ALSO_FAILING.get(rule_id, ())
    for other in also:
        assert f"x {other}:" in result.stderr
    # exactly this violation (and its unavoidable consequences), nothing else
    assert f"{1 + len(also)} requirement(s)" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_several_violations_are_all_listed(hsm_env: dict[str, str], tmp_path: Path) -> None:
    env = hardened_env(tmp_path, hsm_env)
    chosen = {"auth.admin_token", "pii.strict", "debug.enc_dir", "audit.external_sink"}
    for rule_id in chosen:
        next(m for r, _, m in VIOLATIONS if r == rule_id)(env, tmp_path)
    result = run_cli(["serve"], env)
    assert result.returncode == 78
    for rule_id in ("auth.admin_token", "pii.strict", "debug.enc_dir", "audit.external_sink"):
        assert f"x {rule_id}:" in result.stderr
    assert "4 requirement(s)" in result.stderr


def test_hsm_stub_with_production_mode_always_refuses(
    hsm_env: dict[str, str], tmp_path: Path
) -> None:
    env = hardened_env(tmp_path, hsm_env)
    env.update({"THEMIS_ALLOW_HSM_STUB": "1", "THEMIS_ENVIRONMENT": "development"})
    result = run_cli(["serve"], env)
    assert result.returncode == 78
    assert "x keys.hsm_stub:" in result.stderr


def test_invalid_configuration_exits_78_naming_the_variable(tmp_path: Path) -> None:
    result = run_cli(["serve"], {"THEMIS_HSM_SESSION_POOL": "abc"})
    assert result.returncode == 78
    assert "THEMIS_HSM_SESSION_POOL='abc'" in result.stderr
    assert "Traceback" not in result.stderr


def test_secret_values_never_reach_the_output(hsm_env: dict[str, str], tmp_path: Path) -> None:
    secret = "Zm9vYmFyLXRoaXMtaXMtYS1zZWNyZXQtdmFsdWUtMTIzNDU2"  # a secret that is also weak
    env = hardened_env(tmp_path, hsm_env)
    env["THEMIS_TOKEN_ADMIN_FILE"] = str(write_secret(tmp_path, "t", secret))
    env["THEMIS_HSM_PIN_FILE"] = str(write_secret(tmp_path, "p", "pin-" + secret))
    result = run_cli(["serve"], env)
    check = run_cli(["check", "--format", "json"], env)
    for output in (result.stdout, result.stderr, check.stdout, check.stderr):
        assert secret not in output


def _started(tmp_path: Path, env: dict[str, str], servers: list[ServerProcess]) -> ServerProcess:
    server = start_server({"THEMIS_DATA_DIR": str(tmp_path / "data"), **env})
    servers.append(server)
    return server


def test_development_start_shows_banner_serves_and_stops_cleanly(
    tmp_path: Path, cleanup_servers: list[ServerProcess]
) -> None:
    server = _started(tmp_path, {"THEMIS_DEBUG_ENC_DIR": str(tmp_path / "dump")}, cleanup_servers)
    assert httpx.get(f"{server.internal_url}/health/live").json() == {"status": "ok"}
    root = httpx.get(f"{server.base_url}/").json()
    assert root["mode"] == "development"
    missing = httpx.get(f"{server.base_url}/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
    code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert "DEVELOPMENT MODE" in err
    for default, variable in [
        ("Admin API token is not required", "THEMIS_TOKEN_ADMIN"),
        ("Mock/file-based key provider is used", "THEMIS_VAULT_ADDR"),
        ("PII strict mode is off", "THEMIS_PII_STRICT"),
        ("Auto-download of LLM models is enabled", "THEMIS_DISABLE_AUTO_DOWNLOAD"),
        ("Debug encryption dumps are permitted", "THEMIS_DEBUG_ENC_DIR"),
        ("API is served over plain HTTP", "THEMIS_PKI_CERTIFICATE"),
    ]:
        assert any(default in line and variable in line for line in err.splitlines()), default
    assert "HSM stub provider" not in err  # not active, not claimed
    assert "stopped" in err


def test_every_file_the_server_creates_is_private(
    tmp_path: Path, cleanup_servers: list[ServerProcess]
) -> None:
    server = _started(tmp_path, {}, cleanup_servers)
    assert (
        httpx.put(f"{server.base_url}/entities/t:a", json={"a": 1}).status_code == 200
    )  # the database, its WAL and the audit log exist now
    created = [p for p in (tmp_path / "data").rglob("*")]
    assert {p.name for p in created} >= {"themis.db", "themis.db-wal", "audit.log"}
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in created if p.stat().st_mode & 0o077}
    assert loose == {}
    server.stop()


def test_sigint_also_stops_cleanly(tmp_path: Path, cleanup_servers: list[ServerProcess]) -> None:
    server = _started(tmp_path, {}, cleanup_servers)
    code, _ = server.stop(signal.SIGINT)
    assert code == 0


def test_hardened_production_configuration_starts_and_serves_tls(
    tmp_path: Path, cleanup_servers: list[ServerProcess], softhsm: Any
) -> None:
    env = hardened_env(tmp_path, softhsm.env(tmp_path))
    missing = run_cli(["serve"], env)
    assert missing.returncode == 78  # production never creates a master key silently
    assert "keys init" in missing.stderr
    assert run_cli(["keys", "init"], env).returncode == 0
    server = _started(tmp_path, env, cleanup_servers)
    context = ssl.create_default_context(cafile=env["THEMIS_PKI_CERTIFICATE"])
    token = Path(env["THEMIS_TOKEN_ADMIN_FILE"]).read_text().strip()
    response = httpx.get(
        f"https://localhost:{server.http_port}/",
        headers={"Authorization": f"Bearer {token}"},
        verify=context,
    )
    assert response.json()["mode"] == "production"
    assert httpx.get(f"https://localhost:{server.http_port}/", verify=context).status_code == 401
    # Plain HTTP on the TLS port gets no answer from the API.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.http_port}/", timeout=5)
    code, err = server.stop()
    assert code == 0, err
    assert "every required item of the production checklist holds" in err
    assert "DEVELOPMENT MODE" not in err


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = run_cli(
            ["serve"],
            {
                "THEMIS_HTTP_PORT": str(port),
                "THEMIS_HEALTH_PORT": str(free_port()),
                "THEMIS_DATA_DIR": str(tmp_path / "d"),
            },
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for the API" in result.stderr
    assert "Traceback" not in result.stderr
