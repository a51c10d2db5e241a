"""``themisdb pii``: scan text for PII and check a pattern file.

Exit codes: 0 success (``scan``: whether or not anything was found; ``check``: no problem);
1 ``check`` found problems (listed on stderr); 78 (EX_CONFIG) the pattern file of ``scan`` is
unusable. Findings are reported as types and character offsets, never as the values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import BinaryIO

import click

from themisdb.errors import EX_CONFIG, ConfigError
from themisdb.pii._engine import DEFAULT_PATTERNS, POLICY_DOC, PiiEngine, check_pattern_file

_PATTERNS = click.option(
    "--patterns",
    "patterns_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_PATTERNS,
    envvar="THEMIS_PII_PATTERNS",
    show_default=True,
    show_envvar=True,
    help="pattern file",
)


@click.group("pii")
def pii() -> None:
    """Find and check PII patterns (config/security/pii_patterns.yaml)."""


@pii.command("scan")
@click.argument("file", type=click.File("rb"))
@_PATTERNS
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help='json: one object {"findings": [{"type", "start", "end"}, ...]}',
)
def scan(file: BinaryIO, patterns_path: Path, output_format: str) -> None:
    """Print the PII findings in FILE (- for standard input).

    FILE is read as UTF-8 (invalid bytes count as one character each, U+FFFD); offsets are
    character offsets into it, end exclusive. Values are never printed.
    """
    try:
        engine = PiiEngine.load(patterns_path)
    except ConfigError as exc:
        click.echo(exc.render(), err=True)
        sys.exit(EX_CONFIG)
    text = file.read().decode("utf-8", "replace")
    findings = engine.find(text)
    if output_format == "json":
        rows = [{"type": f.type, "start": f.start, "end": f.end} for f in findings]
        click.echo(json.dumps({"findings": rows}))
        return
    for f in findings:
        click.echo(f"{f.start}\t{f.end}\t{f.type}\t{engine.patterns[f.type]}")
    click.echo(f"{len(findings)} finding(s)", err=True)


@pii.command("check")
@click.argument(
    "file",
    required=False,
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="THEMIS_PII_PATTERNS",
)
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="policy document that must name every pattern "
    "[default: docs/security/PII_REDACTION_POLICY.md of this checkout, or of the working "
    "directory]",
)
@click.option("--no-policy", is_flag=True, help="skip the policy document rule")
def check(file: Path | None, policy: Path | None, no_policy: bool) -> None:
    """Validate a pattern file and the policy document rule.

    FILE defaults to THEMIS_PII_PATTERNS, else the shipped config/security/pii_patterns.yaml.
    Checks: the schema, every regex compiles in RE2, every example matches or does not as
    declared, and the policy document names every pattern.
    """
    path = file or DEFAULT_PATTERNS
    policy_doc: Path | None = None
    if not no_policy:
        policy_doc = (
            policy or POLICY_DOC or Path.cwd() / "docs" / "security" / "PII_REDACTION_POLICY.md"
        )
    problems = check_pattern_file(path, policy_doc)
    if problems:
        click.echo("\n".join([f"{path}: {len(problems)} problem(s):", *problems]), err=True)
        sys.exit(1)
    click.echo(f"{path}: ok" + ("" if policy_doc is None else f" (policy: {policy_doc})"))
