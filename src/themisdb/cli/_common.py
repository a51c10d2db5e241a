"""Helpers every ``themisdb`` command shares: settings from the environment, failing with an
exit code, and calls to the running server's admin API."""

from __future__ import annotations

import json
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any, NoReturn

import click

from themisdb.errors import EX_CONFIG, EX_UNAVAILABLE, ConfigError
from themisdb.settings import Settings, environ_snapshot, load_settings, read_env_file


def fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def settings(config: str | None, env_file: str | None = None) -> Settings:
    try:
        environ = read_env_file(env_file) if env_file else environ_snapshot()
        return load_settings(environ, config_file=config)
    except ConfigError as exc:
        fail(exc.render(), EX_CONFIG)


def admin_call(
    settings: Settings, method: str, path: str, body: dict[str, object] | None = None
) -> dict[str, Any]:
    """Call the running server's admin API (tokens and TLS as configured)."""
    host = settings.http_bind_address
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    tls = bool(settings.pki_certificate)
    if tls and settings.service_hostname:
        host = settings.service_hostname
    url = f"{'https' if tls else 'http'}://{host}:{settings.http_port}{path}"
    headers = {"Content-Type": "application/json"}
    if settings.token_admin is not None:
        headers["Authorization"] = f"Bearer {settings.token_admin.get_secret_value()}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    context = None
    if tls:
        context = ssl.create_default_context(cafile=settings.tls_ca or settings.pki_certificate)
    try:
        with urllib.request.urlopen(request, context=context, timeout=120) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        fail(f"themisdb: the server refused: {exc.code} {message}", 1)
    except (urllib.error.URLError, OSError) as exc:
        fail(f"themisdb: cannot reach the server at {url}: {exc}", EX_UNAVAILABLE)
