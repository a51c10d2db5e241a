"""Settings: every spec variable, validation naming the variable, secrets that never print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.helpers import REPO, SPEC
from themisdb.errors import ConfigError
from themisdb.settings import (
    SECRET_FILE_VARIABLES,
    FileOutput,
    SyslogOutput,
    load_settings,
    read_env_file,
    secret_variables,
    variable_fields,
)

SECRET = "s3cr3t-Value-that-must-never-print"


def spec_variables() -> set[str]:
    return set(re.findall(r"THEMIS_[A-Z0-9_]+[A-Z0-9]", SPEC.read_text()))


def test_every_spec_variable_is_recognised_under_its_exact_name() -> None:
    names = spec_variables()
    assert len(names) >= 20  # the regex really read the spec
    assert names - set(variable_fields()) == set()


def test_secret_file_variants_exist_for_the_four_secrets() -> None:
    assert set(SECRET_FILE_VARIABLES) >= {
        "THEMIS_TOKEN_ADMIN",
        "THEMIS_VAULT_TOKEN",
        "THEMIS_HSM_PIN",
        "THEMIS_PKI_KEY_PASSPHRASE",
    }
    assert set(SECRET_FILE_VARIABLES) <= set(secret_variables())


def test_defaults() -> None:
    s = load_settings({})
    assert (s.http_bind_address, s.http_port) == ("127.0.0.1", 8765)
    assert (s.health_bind_address, s.health_port) == ("127.0.0.1", 9090)
    assert s.data_dir == "./data"
    assert s.production is False
    assert s.token_admin is None


def test_binding_variables() -> None:
    s = load_settings(
        {
            "THEMIS_HTTP_BIND_ADDRESS": "0.0.0.0",
            "THEMIS_HTTP_PORT": "18000",
            "THEMIS_HEALTH_BIND_ADDRESS": "10.0.0.5",
            "THEMIS_HEALTH_PORT": "19000",
            "THEMIS_DATA_DIR": "/var/lib/themisdb",
        }
    )
    assert (s.http_bind_address, s.http_port) == ("0.0.0.0", 18000)
    assert (s.health_bind_address, s.health_port) == ("10.0.0.5", 19000)
    assert s.data_dir == "/var/lib/themisdb"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("THEMIS_HSM_SESSION_POOL", "abc"),
        ("THEMIS_HSM_SESSION_POOL", "0"),
        ("THEMIS_PRODUCTION_MODE", "maybe"),
        ("THEMIS_HTTP_PORT", "70000"),
        ("THEMIS_TLS_MIN_VERSION", "1.1"),
        ("THEMIS_ROLE", "primary"),
        ("THEMIS_VAULT_ADDR", "vault.example.com:8200"),
        ("THEMIS_KEY_ROTATION_DAYS", "-1"),
    ],
)
def test_invalid_value_is_an_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    assert variable in str(info.value)
    assert repr(value) in str(info.value)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "THEMIS_HSM_SESSION_POOL": "abc",
                "THEMIS_PRODUCTION_MODE": "maybe",
                "THEMIS_HSM_PIN_FILE": str(tmp_path / "missing"),
            }
        )
    text = info.value.render()
    for name in ("THEMIS_HSM_SESSION_POOL", "THEMIS_PRODUCTION_MODE", "THEMIS_HSM_PIN_FILE"):
        assert name in text
    assert len(info.value.problems) == 3


# Variables that are valid only together with another.
COMPANIONS = {
    "THEMIS_TOKEN_ADMIN_PREVIOUS": {"THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL": "2030-01-01T00:00:00Z"}
}


@pytest.mark.parametrize("variable", SECRET_FILE_VARIABLES)
def test_file_variant_reads_the_secret(tmp_path: Path, variable: str) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    s = load_settings({f"{variable}_FILE": str(path), **COMPANIONS.get(variable, {})})
    secret = s.secret(variable)
    assert secret is not None
    assert secret.get_secret_value() == SECRET  # one trailing newline stripped
    assert s.secret_sources[variable].kind == "file"


@pytest.mark.parametrize("variable", SECRET_FILE_VARIABLES)
def test_missing_secret_file_names_the_variable(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError, match=rf"{variable}_FILE: file .* does not exist"):
        load_settings({f"{variable}_FILE": str(tmp_path / "nope")})


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_text("\n")
    with pytest.raises(ConfigError, match=r"THEMIS_TOKEN_ADMIN_FILE: file .* is empty"):
        load_settings({"THEMIS_TOKEN_ADMIN_FILE": str(path)})


def test_value_and_file_together_are_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(SECRET)
    with pytest.raises(ConfigError, match="both set") as info:
        load_settings({"THEMIS_TOKEN_ADMIN": SECRET, "THEMIS_TOKEN_ADMIN_FILE": str(path)})
    assert SECRET not in info.value.render()


def test_secrets_never_print(tmp_path: Path) -> None:
    s = load_settings(
        {
            "THEMIS_TOKEN_ADMIN": SECRET,
            "THEMIS_VAULT_TOKEN": SECRET + "v",
            "THEMIS_HSM_PIN": SECRET + "p",
            "THEMIS_PKI_KEY_PASSPHRASE": SECRET + "k",
        }
    )
    for text in (str(s), repr(s), s.model_dump_json(), str(s.model_dump())):
        assert SECRET not in text
    assert isinstance(s.token_admin, SecretStr)


def test_secret_in_yaml_with_wrong_shape_does_not_echo(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"THEMIS_TOKEN_ADMIN: [{SECRET}]\n")
    with pytest.raises(ConfigError) as info:
        load_settings({}, config_file=str(config))
    assert SECRET not in info.value.render()
    assert "THEMIS_TOKEN_ADMIN" in info.value.render()


# The spec's block with its indentation (the spec's text copy lost the leading spaces).
SPEC_AUDIT_BLOCK = """\
logging:
  audit:
    enabled: true
    outputs:
      - type: syslog # RFC 5424
        server: siem.example.com:514
        protocol: tcp
      - type: file
        path: /var/log/themisdb/audit.log
        rotation:
          max_size: 100MB
          max_age: 90
    signing:
      enabled: true # ECDSA-signed audit chain
      algorithm: ECDSA-P256
"""


def _spec_audit_block() -> str:
    """SPEC_AUDIT_BLOCK, after checking that it is the spec's block line for line."""
    spec_lines = [line.strip() for line in SPEC.read_text().splitlines()]
    start = spec_lines.index("logging:")
    ours = [line.strip() for line in SPEC_AUDIT_BLOCK.splitlines()]
    theirs = spec_lines[start : start + len(ours)]
    theirs[-1] = theirs[-1][: len("algorithm: ECDSA-P256")]  # the copy runs on into prose
    assert ours == theirs
    return SPEC_AUDIT_BLOCK


def test_spec_logging_audit_block_parses_as_written(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("# config.yaml\n" + _spec_audit_block())
    audit = load_settings({}, config_file=str(config)).audit
    assert audit.enabled is True
    syslog, file_output = audit.outputs
    assert isinstance(syslog, SyslogOutput)
    assert (syslog.server, syslog.protocol) == ("siem.example.com:514", "tcp")
    assert syslog.address == ("siem.example.com", 514)
    assert isinstance(file_output, FileOutput)
    assert file_output.path == "/var/log/themisdb/audit.log"
    assert file_output.rotation.max_size == 100 * 1000 * 1000
    assert file_output.rotation.max_age == 90
    assert audit.signing.enabled is True
    assert audit.signing.algorithm == "ECDSA-P256"
    assert audit.external_outputs == (syslog,)


def test_environment_overrides_yaml(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("THEMIS_HTTP_PORT: 9999\nTHEMIS_PII_STRICT: true\n")
    s = load_settings({"THEMIS_HTTP_PORT": "8888"}, config_file=str(config))
    assert s.http_port == 8888
    assert s.pii_strict is True
    assert s.config_file == str(config)


def test_config_file_from_themis_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("THEMIS_HTTP_PORT: 9999\n")
    assert load_settings({"THEMIS_CONFIG": str(config)}).http_port == 9999


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("THEMIS_PRODUCTON_MODE: 1\n", "did you mean THEMIS_PRODUCTION_MODE"),
        ("logging: {audit: {outputs: [{type: syslog, server: nope}]}}\n", "host:port"),
        ("logging: {audit: {outputs: [{type: s3}]}}\n", "logging.audit.outputs[0]"),
        ("logging: {audit: {signing: {algorithm: RSA}}}\n", "logging.audit.signing.algorithm"),
        ("key: [unclosed\n", "not valid YAML at line"),
        ("- a list\n", "mapping at the top level"),
    ],
)
def test_bad_yaml_is_a_clear_error(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings({}, config_file=str(config))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings({}, config_file=str(tmp_path / "absent.yaml"))


@pytest.mark.parametrize(
    ("env", "production"),
    [
        ({}, False),
        ({"THEMIS_PRODUCTION_MODE": "1"}, True),
        ({"THEMIS_PRODUCTION_MODE": "0"}, False),
        ({"THEMIS_ENVIRONMENT": "production"}, True),
        ({"THEMIS_ENVIRONMENT": "Production "}, True),
        ({"THEMIS_ENVIRONMENT": "staging"}, True),
        ({"THEMIS_ENVIRONMENT": "development"}, False),
        ({"THEMIS_PRODUCTION_MODE": ""}, False),
    ],
)
def test_any_production_signal_enforces(env: dict[str, str], production: bool) -> None:
    assert load_settings(env).production is production


def test_presence_of_must_be_absent_variables_is_kept() -> None:
    assert load_settings({}).allow_hsm_stub is None
    assert load_settings({"THEMIS_ALLOW_HSM_STUB": "0"}).allow_hsm_stub is False
    assert load_settings({"THEMIS_ALLOW_HSM_STUB": "1"}).allow_hsm_stub is True


def test_unknown_variables_are_collected() -> None:
    s = load_settings({"THEMIS_PII_STRIKT": "1", "OTHER": "x"})
    assert s.unknown_variables == ("THEMIS_PII_STRIKT",)


def test_settings_are_frozen() -> None:
    s = load_settings({})
    with pytest.raises(ValueError, match="frozen"):
        s.http_port = 1


def test_env_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "prod.env"
    path.write_text(
        "# comment\nexport THEMIS_PRODUCTION_MODE=1\nTHEMIS_ENVIRONMENT='production'\n"
        'THEMIS_HTTP_PORT="8000" \nTHEMIS_DATA_DIR=/d # trailing comment\n\n'
    )
    assert read_env_file(str(path)) == {
        "THEMIS_PRODUCTION_MODE": "1",
        "THEMIS_ENVIRONMENT": "production",
        "THEMIS_HTTP_PORT": "8000",
        "THEMIS_DATA_DIR": "/d",
    }
    path.write_text("not a line\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_env_file(str(path))


def test_every_variable_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = [name for name in variable_fields() if f"`{name}`" not in doc]
    missing += [f"{n}_FILE" for n in SECRET_FILE_VARIABLES if f"`{n}_FILE`" not in doc]
    assert missing == []


def test_previous_admin_token_needs_a_deadline_with_an_offset() -> None:
    with pytest.raises(ConfigError, match="needs THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL") as info:
        load_settings({"THEMIS_TOKEN_ADMIN_PREVIOUS": SECRET})
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match=r"THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL.*timezone"):
        load_settings(
            {
                "THEMIS_TOKEN_ADMIN_PREVIOUS": SECRET,
                "THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL": "2030-01-01T00:00:00",
            }
        )
    s = load_settings(
        {
            "THEMIS_TOKEN_ADMIN_PREVIOUS": SECRET,
            "THEMIS_TOKEN_ADMIN_PREVIOUS_UNTIL": "2030-01-01T02:00:00+02:00",
        }
    )
    assert s.token_admin_previous_until is not None
    assert s.token_admin_previous_until.timestamp() == 1893456000
