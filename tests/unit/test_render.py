"""Views of the rule table: the committed checklist, JSON, the banner and the refusal."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import REPO, hardened_env
from themisdb.posture import RULES, default_probes, evaluate, render, startup_gate
from themisdb.settings import load_settings


def test_committed_pre_deployment_checklist_is_current() -> None:
    committed = (REPO / "docs" / "CHECKLISTS" / "pre_deployment.md").read_text()
    assert committed == render.catalogue_markdown(RULES), "run `make check-docs`"


def test_checklist_names_every_rule() -> None:
    text = render.catalogue_markdown(RULES)
    for rule in RULES:
        assert f"`{rule.id}`" in text


def test_json_report_has_every_rule_with_status() -> None:
    document = json.loads(render.as_json(evaluate(load_settings({}), default_probes())))
    assert document["mode"] == "development"
    assert document["production_ready"] is False
    assert [r["id"] for r in document["rules"]] == [rule.id for rule in RULES]
    statuses = {r["id"]: r["status"] for r in document["rules"]}
    assert statuses["auth.admin_token"] == "fail"
    assert statuses["debug.pki"] == "pass"


def test_development_banner_lists_each_active_unsafe_default_with_its_variable() -> None:
    env = {"THEMIS_DEBUG_PKI": "/tmp/k", "THEMIS_ALLOW_HSM_STUB": "1", "THEMIS_PII_STRIKT": "1"}
    decision = startup_gate(evaluate(load_settings(env), default_probes()))
    assert decision.allowed
    lines = decision.message.splitlines()
    for default, variable in [
        ("Admin API token is not required", "THEMIS_TOKEN_ADMIN"),
        ("HSM stub provider is used", "THEMIS_ALLOW_HSM_STUB"),
        ("PII strict mode is off", "THEMIS_PII_STRICT"),
        ("Auto-download of LLM models is enabled", "THEMIS_DISABLE_AUTO_DOWNLOAD"),
        ("PKI debug logging is permitted", "THEMIS_DEBUG_PKI"),
        ("API is served over plain HTTP", "THEMIS_PKI_CERTIFICATE"),
    ]:
        assert any(default in line and variable in line for line in lines), default
    assert "Debug encryption dumps" not in decision.message  # not active: not shown
    assert "did you mean THEMIS_PII_STRICT?" in decision.message


def test_production_refusal_lists_all_failures(hsm_env: dict[str, str], tmp_path: Path) -> None:
    env = hardened_env(tmp_path, hsm_env)
    env.update({"THEMIS_PII_STRICT": "0", "THEMIS_DEBUG_ENC_DIR": "/tmp/d"})
    decision = startup_gate(evaluate(load_settings(env), default_probes()))
    assert not decision.allowed
    assert "2 requirement(s)" in decision.message
    assert "pii.strict" in decision.message
    assert "debug.enc_dir" in decision.message
