"""PII detection, redaction and data classification (spec: "PII and Data Classification").

The patterns live in ``config/security/pii_patterns.yaml`` (``DEFAULT_PATTERNS``); the policy
that names every one of them is ``docs/security/PII_REDACTION_POLICY.md``. The detector uses
RE2 (google-re2): linear time on any input, see :mod:`themisdb.pii._engine` for the bound.
"""

from __future__ import annotations

from themisdb.pii._engine import (
    CLASSIFICATIONS,
    DEFAULT_PATTERNS,
    POLICY_DOC,
    Classification,
    Finding,
    Pattern,
    PiiEngine,
    Redaction,
    check_pattern_file,
)

__all__ = [
    "CLASSIFICATIONS",
    "DEFAULT_PATTERNS",
    "POLICY_DOC",
    "Classification",
    "Finding",
    "Pattern",
    "PiiEngine",
    "Redaction",
    "check_pattern_file",
]
