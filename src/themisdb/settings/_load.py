"""Build the one Settings object from an environment mapping and an optional YAML file.

Precedence: environment variables override the YAML file, which overrides the defaults. An
empty variable counts as unset (``-e VAR=`` in container tooling). Every problem is collected
and reported at once, each naming its variable; secret values are never echoed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from themisdb.errors import ConfigError
from themisdb.settings._model import (
    SECRET_FILE_VARIABLES,
    SecretSource,
    Settings,
    secret_variables,
    variable_fields,
)

_FILE_SUFFIX = "_FILE"
_NOT_VARIABLES = {"THEMIS_CONFIG"}  # meaningful only in the environment / on the command line


def load_settings(environ: Mapping[str, str], *, config_file: str | None = None) -> Settings:
    """Validate ``environ`` (and the YAML file it or ``config_file`` names) into Settings.

    Raises ConfigError listing every invalid or unreadable setting.
    """
    known = variable_fields()
    problems: list[str] = []
    raw: dict[str, Any] = {}
    sources: dict[str, SecretSource] = {}

    config_path = config_file or _non_empty(environ.get("THEMIS_CONFIG"))
    if config_path:
        raw.update(_read_yaml(config_path, known, problems, sources))
        raw["THEMIS_CONFIG"] = config_path

    env_values = {k: v for k, v in environ.items() if k.startswith("THEMIS_") and v.strip() != ""}
    for name, value in env_values.items():
        if name in known:
            raw[name] = value if name in secret_variables() else value.strip()
            if name in secret_variables():
                sources[name] = SecretSource("env")

    for name in SECRET_FILE_VARIABLES:
        file_var = name + _FILE_SUFFIX
        path = env_values.get(file_var) or raw.pop(file_var, None)
        if path is None:
            continue
        if name in raw:
            problems.append(f"{name} and {file_var} are both set: set only one")
            continue
        secret = _read_secret_file(file_var, str(path), problems)
        if secret is not None:
            raw[name] = secret
            sources[name] = SecretSource("file", str(path))

    unknown = sorted(
        n
        for n in env_values
        if n not in known and n.removesuffix(_FILE_SUFFIX) not in SECRET_FILE_VARIABLES
    )
    raw["_unknown_variables"] = tuple(unknown)
    raw["_secret_sources"] = sources

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(exc, raw))
        settings = None
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings


def suggest(name: str) -> str | None:
    """The known variable closest to a misspelt one, if any is close."""
    candidates = list(variable_fields()) + [v + _FILE_SUFFIX for v in SECRET_FILE_VARIABLES]
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.8)
    return match[0] if match else None


def read_env_file(path: str) -> dict[str, str]:
    """Parse a dotenv-style file (KEY=VALUE lines, # comments, optional quotes, `export`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: cannot read it ({exc.strerror})") from exc
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        stripped = stripped.removeprefix("export ").strip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            problems.append(f"--env-file {path}, line {number}: expected NAME=VALUE")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    if problems:
        raise ConfigError(problems)
    return values


def _non_empty(value: str | None) -> str | None:
    return value if value and value.strip() else None


def _read_yaml(
    path: str, known: Mapping[str, str], problems: list[str], sources: dict[str, SecretSource]
) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"config file {path}: cannot read it ({exc.strerror})")
        return {}
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(f"config file {path}: not valid YAML{where}")
        return {}
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(f"config file {path}: expected a mapping at the top level")
        return {}

    result: dict[str, Any] = {}
    for raw_key, value in document.items():
        key = str(raw_key)
        if key == "logging":
            if not isinstance(value, dict) or set(value) - {"audit"}:
                problems.append(f"config file {path}: 'logging' may only hold 'audit'")
            elif "audit" in value:
                result["logging.audit"] = value["audit"] if value["audit"] is not None else {}
        elif key in known and key not in _NOT_VARIABLES:
            if isinstance(value, (dict, list)):
                problems.append(f"config file {path}: {key} must be a single value")
                continue
            if value is None:
                continue
            result[key] = str(value).lower() if isinstance(value, bool) else str(value)
            if key in secret_variables():
                sources[key] = SecretSource("config", path)
        elif key.removesuffix(_FILE_SUFFIX) in SECRET_FILE_VARIABLES:
            result[key] = str(value)
        else:
            hint = suggest(key)
            problems.append(
                f"config file {path}: unknown key {key!r}"
                + (f" (did you mean {hint}?)" if hint else "")
            )
    return result


def _read_secret_file(variable: str, path: str, problems: list[str]) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read()
    except FileNotFoundError:
        problems.append(f"{variable}: file {path} does not exist")
        return None
    except OSError as exc:
        problems.append(f"{variable}: cannot read {path} ({exc.strerror or exc})")
        return None
    except UnicodeDecodeError:
        problems.append(f"{variable}: {path} is not UTF-8 text")
        return None
    # Secret files written by tools (echo, Vault agent, kubelet) may end in one newline.
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        problems.append(f"{variable}: file {path} is empty")
        return None
    return value


def _describe(exc: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    """Turn pydantic errors into lines that name the variable and never echo a secret."""
    secrets = set(secret_variables())
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error["loc"]
        head = str(loc[0]) if loc else "settings"
        path = head + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        if error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
            if not loc:  # a rule across settings: its message names the variables
                lines.append(message)
                continue
        value = raw.get(head) if len(loc) == 1 else None
        if value is not None and head not in secrets and isinstance(value, str):
            lines.append(f"{path}={value!r}: {message}")
        else:
            lines.append(f"{path}: {message}")
    return lines


def environ_snapshot() -> dict[str, str]:
    """A copy of the process environment: the one place ThemisDB reads os.environ."""
    return dict(os.environ)
