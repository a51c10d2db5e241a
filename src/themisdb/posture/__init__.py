"""Security posture: one table of rules (rules.RULES), evaluated into findings.

The startup gate, ``themisdb check``, the admin posture endpoint, metrics and
docs/CHECKLISTS/pre_deployment.md are all views of the same table.
"""

from themisdb.posture import render
from themisdb.posture._evaluate import evaluate
from themisdb.posture._model import (
    Context,
    Finding,
    Outcome,
    Probe,
    ProbeKind,
    ProbeUnavailable,
    Report,
    Rule,
    Severity,
    Status,
)
from themisdb.posture._token import generate_token, token_weakness
from themisdb.posture.gate import GateDecision, startup_gate
from themisdb.posture.probes import default_probes
from themisdb.posture.rules import RULES

__all__ = [
    "RULES",
    "Context",
    "Finding",
    "GateDecision",
    "Outcome",
    "Probe",
    "ProbeKind",
    "ProbeUnavailable",
    "Report",
    "Rule",
    "Severity",
    "Status",
    "default_probes",
    "evaluate",
    "generate_token",
    "render",
    "startup_gate",
    "token_weakness",
]
