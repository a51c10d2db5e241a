"""`themisdb check` and `themisdb token generate` as a pipeline would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, hardened_env, run_cli

pytestmark = pytest.mark.integration


def test_hardened_environment_is_production_ready(hsm_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["check"], hardened_env(tmp_path, hsm_env))
    assert result.returncode == 0, result.stdout
    assert "[PASS]  must    auth.admin_token" in result.stdout
    assert ": production-ready" in result.stdout


def test_development_defaults_are_not_production_ready() -> None:
    result = run_cli(["check"], {})
    assert result.returncode == 1
    assert "[FAIL]  must    auth.admin_token" in result.stdout
    assert "NOT production-ready" in result.stdout


def test_json_format(tmp_path: Path) -> None:
    result = run_cli(["check", "--format", "json"], {"THEMIS_PII_STRICT": "1"})
    document = json.loads(result.stdout)
    assert result.returncode == 1
    rules = {r["id"]: r for r in document["rules"]}
    assert rules["pii.strict"]["status"] == "pass"
    assert rules["auth.admin_token"]["status"] == "fail"
    assert rules["auth.admin_token"]["remediation"]


def test_markdown_format() -> None:
    result = run_cli(["check", "--format", "markdown"], {})
    assert result.stdout.startswith("# ThemisDB security posture (development mode)")
    assert "| ❌ | must | `auth.admin_token`" in result.stdout


def test_env_file_and_mode_production(hsm_env: dict[str, str], tmp_path: Path) -> None:
    env = hardened_env(tmp_path, hsm_env)
    del env["THEMIS_PRODUCTION_MODE"], env["THEMIS_ENVIRONMENT"]
    env_file = tmp_path / "prod.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    # The process environment is ignored with --env-file.
    noise = {"THEMIS_DEBUG_PKI": "/tmp/x"}
    as_is = run_cli(["check", "--env-file", str(env_file)], noise)
    assert as_is.returncode == 1
    assert "[FAIL]  must    mode.production_flag" in as_is.stdout
    assumed = run_cli(["check", "--env-file", str(env_file), "--mode", "production"], noise)
    assert assumed.returncode == 0, assumed.stdout
    assert "evaluated as production" in assumed.stdout


def test_strict_turns_unverified_must_rules_into_failure(
    hsm_env: dict[str, str], tmp_path: Path
) -> None:
    env = hardened_env(tmp_path, hsm_env)
    env["THEMIS_HSM_PIN"] = Path(env["THEMIS_HSM_PIN_FILE"]).read_text().strip()
    del env["THEMIS_HSM_PIN_FILE"]
    assert run_cli(["check"], env).returncode == 0
    strict = run_cli(["check", "--strict"], env)
    assert strict.returncode == 1
    assert "[ ?? ]  must    keys.hsm_pin_injected" in strict.stdout


@pytest.mark.parametrize(
    "env",
    [{"THEMIS_PRODUCTION_MODE": "maybe"}, {"THEMIS_TOKEN_ADMIN_FILE": "/nonexistent/token"}],
)
def test_unusable_configuration_exits_78(env: dict[str, str]) -> None:
    result = run_cli(["check"], env)
    assert result.returncode == 78
    assert next(iter(env)) in result.stderr


def test_missing_env_file_exits_78(tmp_path: Path) -> None:
    result = run_cli(["check", "--env-file", str(tmp_path / "nope.env")], {})
    assert result.returncode == 78
    assert "--env-file" in result.stderr


def test_all_prints_the_committed_checklist() -> None:
    result = run_cli(["check", "--format", "markdown", "--all"], {"THEMIS_PII_STRICT": "1"})
    assert result.returncode == 0
    assert result.stdout == (REPO / "docs" / "CHECKLISTS" / "pre_deployment.md").read_text()


def test_token_generate_output_passes_the_token_rule(tmp_path: Path) -> None:
    token = run_cli(["token", "generate"], {}).stdout.strip()
    result = run_cli(["check", "--format", "json"], {"THEMIS_TOKEN_ADMIN": token})
    rules = {r["id"]: r for r in json.loads(result.stdout)["rules"]}
    assert rules["auth.admin_token"]["status"] == "pass"
