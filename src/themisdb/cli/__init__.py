"""The ``themisdb`` command: serve, check, token, keys, audit, pii, replica.

This is the edge: the only place that reads the process environment and builds Settings.
Exit codes: 0 success; 1 failure (``check``: not production-ready); 69 the key manager is
unreachable (EX_UNAVAILABLE); 78 unusable configuration, missing master key or refused
production start (EX_CONFIG).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from themisdb import __version__
from themisdb.api.serve import serve as run_server
from themisdb.audit import load_public_key, verify
from themisdb.audit.setup import hsm_signer, signer_for
from themisdb.cli._common import admin_call as _admin_call
from themisdb.cli._common import fail as _fail
from themisdb.cli._common import settings as _settings
from themisdb.cli.replica import replica
from themisdb.errors import (
    EX_CONFIG,
    EX_UNAVAILABLE,
    ConfigError,
    KeyProviderUnavailable,
    MasterKeyMissing,
    ThemisError,
)
from themisdb.keys import open_provider
from themisdb.pii.cli import pii
from themisdb.posture import (
    RULES,
    default_probes,
    evaluate,
    generate_token,
    render,
    startup_gate,
)

_log = logging.getLogger("themisdb")


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
    # Every file the server creates (database, WAL, audit, keys, snapshots) is for its own
    # user only; SQLite would otherwise create the database 0644.
    os.umask(0o077)
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
    except (ConfigError, MasterKeyMissing) as exc:
        _fail(f"themisdb: {exc}", EX_CONFIG)
    except KeyProviderUnavailable as exc:
        _fail(f"themisdb: {exc}", EX_UNAVAILABLE)
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


@main.group()
def keys() -> None:
    """Master keys and data keys (encryption at rest)."""


@keys.command("init")
@click.pass_context
def keys_init(ctx: click.Context) -> None:
    """Create the master key in the configured key manager when it has none.

    In the HSM the key is generated inside the token, sensitive and non-extractable; in Vault
    it is a transit key that cannot be exported. Safe to run twice.
    """
    settings = _settings(ctx.obj["config"])
    try:
        provider = open_provider(settings, create=True)
    except KeyProviderUnavailable as exc:
        _fail(f"themisdb: {exc}", EX_UNAVAILABLE)
    except ThemisError as exc:
        _fail(f"themisdb: {exc}", EX_CONFIG)
    click.echo(f"{provider.name}: master key {provider.current_key_id()} is ready")
    provider.close()
    if settings.audit.signing.enabled and settings.hsm_enabled:
        signer = hsm_signer(settings, create=True)
        click.echo(
            f"pkcs11: audit signing key {settings.hsm_key_label}-audit is ready "
            f"(key id {signer.key_id})"
        )


@keys.command("status")
@click.pass_context
def keys_status(ctx: click.Context) -> None:
    """Show the master key version and every data key (asks the running server)."""
    document = _admin_call(_settings(ctx.obj["config"]), "GET", "/keys")
    now = time.time()
    since = document.get("master_key_since")
    age = f", in use for {(now - since) / 86400:.1f} days" if since is not None else ""
    click.echo(f"provider {document['provider']}, master key {document['master_key']}{age}")
    for dek in document["data_keys"]:
        age = (now - dek["created"]) / 86400
        click.echo(
            f"  {dek['table']}: data key v{dek['version']}, wrapped by {dek['wrapped_by']}, "
            f"{age:.1f} days old"
        )


@keys.command("rotate")
@click.pass_context
def keys_rotate(ctx: click.Context) -> None:
    """New master key version; every data key is rewrapped (asks the running server)."""
    document = _admin_call(_settings(ctx.obj["config"]), "POST", "/keys/rotate")
    click.echo(
        f"master key is now {document['master_key']}; "
        f"{document['rewrapped_data_keys']} data key(s) rewrapped"
    )


@keys.command("reencrypt")
@click.argument("table")
@click.option("--page", default=500, show_default=True, help="Entities per request.")
@click.pass_context
def keys_reencrypt(ctx: click.Context, table: str, page: int) -> None:
    """Rewrite TABLE's entities under its newest data key, with progress (resumable: each page
    is committed on its own)."""
    settings = _settings(ctx.obj["config"])
    after, rewritten = "", 0
    first = _admin_call(
        settings, "POST", "/keys/reencrypt", {"table": table, "after": after, "limit": page}
    )
    with click.progressbar(
        length=max(first["total"], 1), label=f"re-encrypting {table}", file=sys.stderr
    ) as bar:
        document = first
        while True:
            bar.update(document["processed"])
            rewritten += document["rewritten"]
            if document["done"]:
                break
            document = _admin_call(
                settings,
                "POST",
                "/keys/reencrypt",
                {"table": table, "after": document["last"], "limit": page},
            )
    click.echo(f"{table}: {rewritten} entit(y/ies) re-encrypted")


@keys.group("api")
def keys_api() -> None:
    """API keys of the running server: named, scoped, optionally limited to tables."""


@keys_api.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="Scope to grant (repeat): data:read, data:write, pii:read, audit:read, keys:admin, admin.",
)
@click.option("--table", "tables", multiple=True, help="Restrict the key to this table (repeat).")
@click.option("--expires-in", type=click.FloatRange(min=1), help="Seconds until it is refused.")
@click.pass_context
def keys_api_create(
    ctx: click.Context,
    name: str,
    scopes: tuple[str, ...],
    tables: tuple[str, ...],
    expires_in: float | None,
) -> None:
    """Create the API key NAME. Its token is printed once, on standard output, alone on the
    last line: store it now, the server keeps only its hash."""
    settings = _settings(ctx.obj["config"])
    body: dict[str, object] = {"name": name, "scopes": list(scopes)}
    if tables:
        body["tables"] = list(tables)
    if expires_in is not None:
        body["expires_in"] = expires_in
    created = _admin_call(settings, "POST", "/api/keys", body)
    click.echo(f"created API key {created['id']} ({created['name']})", err=True)
    click.echo(created["token"])


@keys_api.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.pass_context
def keys_api_list(ctx: click.Context, as_json: bool) -> None:
    """The server's API keys (never their secrets)."""
    listed = _admin_call(_settings(ctx.obj["config"]), "GET", "/api/keys")["keys"]
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    now = time.time()
    for key in listed:
        if key["revoked"] is not None:
            state = "revoked"
        elif key["expires"] is not None and key["expires"] <= now:
            state = "expired"
        else:
            state = "active"
        tables = ",".join(key["tables"]) if key["tables"] else "*"
        click.echo(f"{key['id']}  {state:<8} {key['name']}  {','.join(key['scopes'])}  {tables}")


@keys_api.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_api_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke the API key KEY_ID: refused from the next request on, with its sessions."""
    revoked = _admin_call(_settings(ctx.obj["config"]), "DELETE", f"/api/keys/{key_id}")
    click.echo(f"revoked API key {revoked['id']} ({revoked['name']})")


@main.group()
def audit() -> None:
    """The audit chain: verification and the verification key."""


@audit.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--public-key",
    "public_key",
    required=True,
    type=click.Path(dir_okay=False),
    help="PEM public key of the checkpoint signer (`themisdb audit public-key`).",
)
@click.option(
    "--live",
    is_flag=True,
    help="Accept events after the last checkpoint (a file the server still writes).",
)
def audit_verify(files: tuple[str, ...], public_key: str, live: bool) -> None:
    """Verify an audit chain spread over FILES (oldest first; rotated files, then the current).

    Exit 0 when intact; 1 naming the first bad seq when anything was modified, deleted,
    inserted, reordered or truncated after the last checkpoint, or signed by another key.
    """
    try:
        key = load_public_key(Path(public_key))
    except (OSError, ValueError) as exc:
        _fail(f"themisdb: --public-key {public_key}: not a PEM ECDSA public key ({exc})", 2)
    try:
        verdict = verify([Path(f) for f in files], key, live=live)
    except OSError as exc:
        _fail(f"themisdb: cannot read {exc.filename}: {exc.strerror}", 2)
    if verdict.ok:
        click.echo(verdict.message)
        return
    where = f" (first bad seq {verdict.first_bad_seq})" if verdict.first_bad_seq else ""
    _fail(f"TAMPERED{where}: {verdict.message}", 1)


@audit.command("public-key")
@click.pass_context
def audit_public_key(ctx: click.Context) -> None:
    """Print the PEM public key that verifies this server's audit checkpoints."""
    settings = _settings(ctx.obj["config"])
    try:
        signer = signer_for(settings)
    except ConfigError as exc:
        _fail(exc.render(), EX_CONFIG)
    if signer is None:
        _fail("themisdb: logging.audit.signing is not enabled", 1)
    click.echo(signer.public_pem(), nl=False)


main.add_command(pii)
main.add_command(replica)
