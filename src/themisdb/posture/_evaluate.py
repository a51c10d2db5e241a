"""Evaluation of the rule table into a Report."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from themisdb.posture._model import (
    Context,
    Finding,
    Outcome,
    Probe,
    ProbeUnavailable,
    Report,
    Rule,
    failed,
    unverified,
)
from themisdb.posture.rules import RULES
from themisdb.settings import Settings

_log = logging.getLogger(__name__)


def evaluate(
    settings: Settings,
    probes: Iterable[Probe[Any]] = (),
    *,
    now: datetime | None = None,
    assume_production: bool = False,
    rules: Iterable[Rule] = RULES,
) -> Report:
    """Run every rule against ``settings``; with ``assume_production``, as if both production
    signals were set (what ``themisdb check --mode production`` asks)."""
    if assume_production:
        settings = settings.model_copy(
            update={"production_mode": True, "environment": "production"}
        )
    context = Context(
        settings=settings,
        now=now or datetime.now(UTC),
        probes={probe.kind.name: probe for probe in probes},
    )
    findings = [Finding(rule, _run(rule, context)) for rule in rules]
    return Report(
        findings=findings,
        production=settings.production,
        assumed_production=assume_production,
        unknown_variables=settings.unknown_variables,
    )


def _run(rule: Rule, context: Context) -> Outcome:
    try:
        return rule.check(context)
    except ProbeUnavailable as exc:
        return unverified(f"configuration looks right; not verified: {exc.kind.description}")
    except Exception:  # a broken check must fail closed, never crash the gate or pass silently
        _log.exception("posture check %s raised", rule.id)
        return failed("the check itself failed; see the server log")
