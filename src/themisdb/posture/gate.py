"""The startup gate of ``themisdb serve``: banner in development, refusal in production."""

from __future__ import annotations

from dataclasses import dataclass

from themisdb.posture._model import Report
from themisdb.posture.render import banner, refusal, unknown_variable_lines, warning_lines


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    message: str  # for stderr; never contains a secret (rules describe, they do not echo)


def startup_gate(report: Report) -> GateDecision:
    """Production: refuse while any must-rule fails, naming all of them. Development: allow,
    showing every active unsafe default."""
    warnings = [f"warning: {line}" for line in warning_lines(report)]
    if report.production:
        if report.blocking:
            return GateDecision(False, "\n".join([refusal(report), *warnings]))
        head = "themisdb: production mode: every required item of the production checklist holds"
        return GateDecision(True, "\n".join([head, *warnings]))
    # Recommendations are production advice; in development only unknown variables are warned.
    notes = [f"warning: {line}" for line in unknown_variable_lines(report)]
    text = banner(report.active_unsafe_defaults, len(report.blocking))
    return GateDecision(True, "\n".join([text, *notes]))
