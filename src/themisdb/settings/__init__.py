"""Configuration: one frozen, validated Settings object built once at the edge."""

from themisdb.settings._load import environ_snapshot, load_settings, read_env_file, suggest
from themisdb.settings._model import (
    SECRET_FILE_VARIABLES,
    AuditConfig,
    FileOutput,
    SecretSource,
    Settings,
    SyslogOutput,
    secret_variables,
    variable_fields,
)

__all__ = [
    "SECRET_FILE_VARIABLES",
    "AuditConfig",
    "FileOutput",
    "SecretSource",
    "Settings",
    "SyslogOutput",
    "environ_snapshot",
    "load_settings",
    "read_env_file",
    "secret_variables",
    "suggest",
    "variable_fields",
]
