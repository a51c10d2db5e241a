"""The ``themisdb`` command: serve, check, token generate.

This is the edge: the only place that reads the process environment and builds Settings.
Exit codes: 0 success; 1 failure (``check``: not production-ready); 78 unusable configuration
or refused production start (EX_CONFIG).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import click

from themisdb import __version__
from themisdb.api.serve import serve as run_server
from themisdb.errors import EX_CONFIG, ConfigError, ThemisError
from themisdb.posture import (
    RULES,
    default_probes,
    evaluate,
    generate_token,
    render,
    startup_gate,
)
from themisdb.settings import Settings, environ_snapshot, load_settings, read_env_file

_log = logging.getLogger("themisdb")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _settings(config: str | None, env_file: str | None = None) -> Settings:
    try:
        environ = read_env_file(env_file) if env_file else environ_snapshot()
        return load_settings(environ, config_file=config)
    except ConfigError as exc:
        _fail(exc.render(), EX_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="themisdb")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar="THEMIS_CONFIG",
    help="YAML config file (also THEMIS_CONFIG). Environment variables override it.",
)
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """ThemisDB: a document database with a verifiable security posture."""
    ctx.obj = {"config": config}


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the server: the startup gate, then the API and the internal listener.

    Development mode (the default) prints every active unsafe default and starts. Production
    mode (THEMIS_PRODUCTION_MODE=1 or THEMIS_ENVIRONMENT=production) refuses to start, exit 78,
    while any required item of the production checklist fails, listing all of them.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings(ctx.obj["config"])
    report = evaluate(settings, default_probes())
    decision = startup_gate(report)
    click.echo(decision.message, err=True)
    if not decision.allowed:
        sys.exit(EX_CONFIG)
    try:
        Path(settings.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"THEMIS_DATA_DIR={settings.data_dir}: cannot create it ({exc.strerror})", EX_CONFIG)
    try:
        run_server(settings, report)
    except ThemisError as exc:
        _fail(f"themisdb: {exc}", 1)


@main.command()
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="Evaluate the variables of this dotenv file instead of the process environment.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
)
@click.option(
    "--mode",
    type=click.Choice(["auto", "production"]),
    default="auto",
    show_default=True,
    help="production: evaluate as if THEMIS_PRODUCTION_MODE=1 and THEMIS_ENVIRONMENT=production "
    "were set.",
)
@click.option(
    "--all",
    "catalogue",
    is_flag=True,
    help="Print every rule as an unevaluated checklist (the source of "
    "docs/CHECKLISTS/pre_deployment.md) instead of evaluating.",
)
@click.option(
    "--strict", is_flag=True, help="Count required rules that could not be verified as failures."
)
@click.pass_context
def check(
    ctx: click.Context,
    env_file: str | None,
    output_format: str,
    mode: str,
    catalogue: bool,
    strict: bool,
) -> None:
    """Preflight: evaluate the production checklist against this configuration.

    Exit 0 when production-ready, 1 when not, 78 when the configuration itself is unusable.
    """
    if catalogue:
        if output_format != "markdown":
            _fail("--all is a checklist document: use it with --format markdown", 2)
        click.echo(render.catalogue_markdown(RULES), nl=False)
        return
    settings = _settings(ctx.obj["config"], env_file)
    report = evaluate(settings, default_probes(), assume_production=mode == "production")
    text = {"text": render.as_text, "json": render.as_json, "markdown": render.as_markdown}[
        output_format
    ](report, strict=strict)
    click.echo(text)
    sys.exit(0 if report.production_ready(strict=strict) else 1)


@main.group()
def token() -> None:
    """Admin token helpers."""


@token.command("generate")
def token_generate() -> None:
    """Print a fresh admin token: 32 random bytes, base64."""
    click.echo(generate_token())
