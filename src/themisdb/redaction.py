"""The PII engine at run time: loading and reloading the pattern file, the strict policy,
redaction of log records and audit resources.

``THEMIS_PII_FORCE_INIT_FAIL`` makes initialisation fail on purpose (a test hook the
production gate refuses): in strict mode every write is then refused (fail closed) and
``/health/ready`` fails; outside strict mode writes go on, unscanned, with a warning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from themisdb.crypto.schema import SENSITIVE
from themisdb.errors import ConfigError, ThemisError, Unprocessable
from themisdb.pii import DEFAULT_PATTERNS, PiiEngine
from themisdb.settings import Settings

WARN_EVERY = 60.0  # seconds between warnings of PII in plain fields, per table
_log = logging.getLogger("themisdb.pii")


class PiiUnavailable(ThemisError):
    """Strict mode and no working PII engine: writes are refused (fail closed)."""


class PiiRuntime:
    def __init__(
        self,
        settings: Settings,
        *,
        on_detected: Callable[[str, list[tuple[str, str]]], None] = lambda table, found: None,
    ) -> None:
        self.strict = settings.pii_strict
        self.path = Path(settings.pii_patterns) if settings.pii_patterns else DEFAULT_PATTERNS
        self._force_fail = bool(settings.pii_force_init_fail)
        self._on_detected = on_detected
        self._lock = threading.Lock()
        self._warned: dict[str, tuple[float, int]] = {}  # table -> (last warning, since then)
        self.engine: PiiEngine | None = None
        self.error: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            if self._force_fail:
                raise ConfigError("THEMIS_PII_FORCE_INIT_FAIL is set")
            self.engine = PiiEngine.load(self.path)
            self.error = None
        except ConfigError as exc:
            self.engine, self.error = None, str(exc)
            _log.error("PII engine unavailable: %s", exc)

    def reload(self) -> bool:
        """SIGHUP: a broken new pattern file is rejected and the old patterns stay."""
        with self._lock:
            try:
                if self._force_fail:
                    raise ConfigError("THEMIS_PII_FORCE_INIT_FAIL is set")
                engine = PiiEngine.load(self.path)
            except ConfigError as exc:
                _log.error("PII patterns NOT reloaded, the previous ones stay in force: %s", exc)
                return False
            self.engine, self.error = engine, None
            _log.info("PII patterns reloaded from %s", self.path)
            return True

    @property
    def healthy(self) -> bool:
        return self.engine is not None or not self.strict

    # --- writes ---------------------------------------------------------------------------------

    def check_write(
        self, table: str, pk: str, entity: dict[str, Any], encrypted: frozenset[str]
    ) -> None:
        """Strict mode: refuse detected PII in a field that is not encrypted, or in the
        primary key (stored and logged in clear), with 422 naming the field and the PII type,
        never the value. Otherwise: report it and go on."""
        engine = self.engine
        if engine is None:
            if self.strict:
                raise PiiUnavailable("the PII engine is unavailable")
            return
        plain = {k: v for k, v in entity.items() if k not in encrypted}
        found = [("(primary key)", f.type) for f in engine.find(pk)]
        found += engine.scan_value(plain)  # paths come with PII in keys already redacted
        found = [(path, kind) for path, kind in found if engine.patterns[kind] in SENSITIVE]
        if not found:
            return
        self._on_detected(table, found)
        where = ", ".join(f"{path} ({kind})" for path, kind in found[:10])
        if self.strict:
            raise Unprocessable(
                f"PII in fields that are not encrypted: {where}; encrypt these fields "
                "(PUT /config/encryption-schema) or remove the data",
                code="pii_unencrypted_field",
            )
        self._warn(table, where)

    def _warn(self, table: str, where: str) -> None:
        """The redacted warning, at most once a minute per table: a bulk load of such
        entities must not turn into a log line per write (each is counted in the metrics)."""
        now = time.monotonic()
        with self._lock:
            last, quiet = self._warned.get(table, (-WARN_EVERY, 0))
            if now - last < WARN_EVERY:
                self._warned[table] = (last, quiet + 1)
                return
            self._warned[table] = (now, 0)
        more = f" (and {quiet} more such write(s) in the last minute)" if quiet else ""
        _log.warning(
            "PII stored in fields that are not encrypted: table %s: %s%s", table, where, more
        )

    # --- redaction ------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        engine = self.engine
        return engine.redact(text) if engine is not None else text

    def redact_value(self, value: Any, classes: frozenset[str] | None = None) -> Any:
        """Strings anywhere in a JSON-like value (object keys too), redacted: every pattern
        for audit events; only ``classes`` (pii, restricted) for query results."""
        engine = self.engine
        if engine is None:
            return value
        if isinstance(value, str):
            return engine.redact(value, classes)
        if isinstance(value, dict):
            return {
                engine.redact(str(k), classes): self.redact_value(v, classes)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact_value(v, classes) for v in value]
        return value

    def mask_result(self, entity: dict[str, Any]) -> dict[str, Any]:
        """A result for a caller without scope pii:read: detected pii and restricted values
        masked in every field (fields classified by schema are masked before this)."""
        masked: dict[str, Any] = self.redact_value(entity, SENSITIVE)
        return masked


class RedactingFilter(logging.Filter):
    """Redacts PII from every record that reaches the handler it is attached to (ours,
    uvicorn's, grpc's: they all propagate to the root handlers)."""

    def __init__(self, runtime: PiiRuntime) -> None:
        super().__init__()
        self.runtime = runtime

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "pii_safe", False):
            return True  # our own configuration lines (bind addresses are not personal data)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = self.runtime.redact(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self.runtime.redact(text), None
        return True


def install_log_redaction(runtime: PiiRuntime) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(runtime))
