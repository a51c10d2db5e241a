"""Posture rules whose both outcomes need a real key manager: SoftHSM2 and OpenBao."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli, write_secret
from tests.unit.test_posture_rules import PROBED_IN_INTEGRATION
from themisdb.keys import open_provider
from themisdb.posture import RULES, Outcome, Status, default_probes, evaluate
from themisdb.settings import load_settings

pytestmark = pytest.mark.integration
BY_ID = {rule.id: rule for rule in RULES}


def outcome(rule_id: str, env: dict[str, str]) -> Outcome:
    report = evaluate(load_settings(env), default_probes(), rules=[BY_ID[rule_id]])
    return report.findings[0].outcome


def with_key(env: dict[str, str]) -> dict[str, str]:
    open_provider(load_settings(env), create=True).close()
    return env


def test_hsm_master_key_usable(softhsm: Any, tmp_path: Path) -> None:
    env = {**softhsm.env(tmp_path), "THEMIS_HSM_KEY_LABEL": "posture-probe"}
    missing = outcome("keys.master_key_usable", env)
    assert missing.status is Status.FAIL
    assert "keys init" in missing.detail
    ok = outcome("keys.master_key_usable", with_key(env))
    assert ok.status is Status.PASS, ok.detail
    assert "non-extractable" in ok.detail
    wrong_pin = {**env, "THEMIS_HSM_PIN_FILE": str(write_secret(tmp_path, "bad", "000000"))}
    refused = outcome("keys.master_key_usable", wrong_pin)
    assert refused.status is Status.FAIL
    assert "000000" not in refused.detail


def test_hsm_audit_signing_key_must_exist_in_the_token(softhsm: Any, tmp_path: Path) -> None:
    config = tmp_path / "themis.yaml"
    config.write_text("logging:\n  audit:\n    signing:\n      enabled: true\n")
    env = {
        **softhsm.env(tmp_path),
        "THEMIS_HSM_KEY_LABEL": "posture-audit",
        "THEMIS_CONFIG": str(config),
        "THEMIS_DATA_DIR": str(tmp_path / "data"),
    }
    missing = outcome("audit.signed_chain", with_key(env))
    assert missing.status is Status.FAIL
    assert "posture-audit-audit" in missing.detail
    assert "keys init" in missing.detail
    result = run_cli(["keys", "init"], env)
    assert result.returncode == 0, result.stderr
    assert "audit signing key posture-audit-audit is ready" in result.stdout
    ok = outcome("audit.signed_chain", env)
    assert ok.status is Status.PASS, ok.detail
    assert "inside the HSM" in ok.detail


def test_vault_master_key_usable_and_sealed(openbao: Any, tmp_path: Path) -> None:
    env = with_key(openbao.env(tmp_path))
    ok = outcome("keys.master_key_usable", env)
    assert ok.status is Status.PASS, ok.detail
    with openbao.sealed():
        sealed = outcome("keys.master_key_usable", env)
    assert sealed.status is Status.FAIL


def test_vault_token_rules_use_the_live_token(openbao: Any, tmp_path: Path) -> None:
    env = with_key(openbao.env(tmp_path))
    scoped = Path(env.pop("THEMIS_VAULT_TOKEN_FILE")).read_text().strip()
    static = {**env, "THEMIS_VAULT_TOKEN": scoped}
    short = outcome("keys.vault_token_short_lived", static)
    assert short.status is Status.PASS, short.detail
    assert "expires in" in short.detail
    assert outcome("keys.vault_not_root", static).status is Status.PASS
    root = {**env, "THEMIS_VAULT_TOKEN": openbao.root_token}
    forever = outcome("keys.vault_token_short_lived", root)
    assert forever.status is Status.FAIL
    assert "never expires" in forever.detail
    assert outcome("keys.vault_not_root", root).status is Status.FAIL
    for result in (short, forever):
        assert scoped not in result.detail
        assert openbao.root_token not in result.detail


def test_every_probed_rule_is_covered_here() -> None:
    assert {
        "keys.master_key_usable",
        "keys.vault_not_root",
        "audit.sink_reachable",
    } == PROBED_IN_INTEGRATION


def test_audit_sinks_are_asked_whether_they_answer(rsyslog: Any, tmp_path: Path) -> None:
    def with_outputs(*outputs: str) -> dict[str, str]:
        config = tmp_path / f"audit-{len(list(tmp_path.iterdir()))}.yaml"
        config.write_text("logging:\n  audit:\n    outputs:\n" + "".join(outputs))
        return {"THEMIS_CONFIG": str(config)}

    tcp = f"      - type: syslog\n        server: 127.0.0.1:{rsyslog.tcp_port}\n"
    tls = (
        f"      - type: syslog\n        server: 127.0.0.1:{rsyslog.tls_port}\n"
        f"        protocol: tls\n        ca_file: {rsyslog.ca_file}\n"
    )
    untrusted = f"      - type: syslog\n        server: 127.0.0.1:{rsyslog.tls_port}\n"
    untrusted += "        protocol: tls\n"  # the system CAs do not know the test CA
    dead = "      - type: syslog\n        server: 127.0.0.1:9\n"  # discard: nothing listens
    udp = f"      - type: syslog\n        server: 127.0.0.1:{rsyslog.udp_port}\n"
    udp += "        protocol: udp\n"

    up = outcome("audit.sink_reachable", with_outputs(tcp, tls))
    assert up.status is Status.PASS, up.detail
    down = outcome("audit.sink_reachable", with_outputs(tcp, dead))
    assert down.status is Status.FAIL
    assert "127.0.0.1:9" in down.detail
    assert str(rsyslog.tcp_port) not in down.detail
    refused = outcome("audit.sink_reachable", with_outputs(untrusted))
    assert refused.status is Status.FAIL
    assert "TLS handshake failed" in refused.detail
    assert outcome("audit.sink_reachable", with_outputs(udp)).status is Status.UNVERIFIED
    none = outcome("audit.sink_reachable", {})
    assert none.status is Status.NOT_APPLICABLE
