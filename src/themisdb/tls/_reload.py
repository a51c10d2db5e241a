"""Hot reload of the API certificate: on SIGHUP and when the files change.

The new pair is validated first, by the same posture rules that gate the start (in production
any failing one rejects it) and by loading it into a fresh context; only then is it loaded into
the live context. A bad pair is rejected with an error and the old one keeps serving
(PostgreSQL's rule).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from themisdb.errors import ConfigError
from themisdb.settings import Settings
from themisdb.tls._context import build_context, load_pair
from themisdb.tls._inspect import inspect_certificate

_log = logging.getLogger("themisdb.tls")
TLS_RULES = (
    "tls.certificate_configured",
    "tls.san_matches_hostname",
    "tls.certificate_key_strength",
    "tls.certificate_validity",
    "tls.key_file_private",
    "tls.certificate_chain",
)


class TlsReloader:
    def __init__(
        self,
        settings: Settings,
        context: ssl.SSLContext,
        *,
        on_result: Callable[[bool, str], None] = lambda ok, detail: None,
        interval: float = 2.0,
    ) -> None:
        assert settings.pki_certificate
        assert settings.pki_private_key
        self.settings = settings
        self.context = context
        self.certificate = settings.pki_certificate
        self.private_key = settings.pki_private_key
        self._on_result = on_result
        self._interval = interval
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self.not_after = self._not_after()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="themis-tls-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def expiry_seconds(self) -> float:
        return self.not_after - datetime.now(UTC).timestamp()

    def _files_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.certificate, self.private_key):
            try:
                st = os.stat(path)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0, 0))
        return tuple(stamps)

    def _not_after(self) -> float:
        facts = inspect_certificate(self.certificate)
        return facts.not_after.timestamp() if facts.not_after else 0.0

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            if self._files_stamp() != self._stamp:
                self.reload()

    def reload(self) -> bool:
        """Validate the pair on disk and, if good, serve it. True when it was loaded."""
        from themisdb.posture import RULES, default_probes, evaluate  # noqa: PLC0415 - cycle

        with self._lock:
            self._stamp = self._files_stamp()
            rules = [rule for rule in RULES if rule.id in TLS_RULES]
            report = evaluate(self.settings, default_probes(), rules=rules)
            failing = [f"{f.rule.id}: {f.outcome.detail}" for f in report.blocking]
            if failing and self.settings.production:
                return self._result(False, "; ".join(failing))
            try:
                build_context(self.settings, self.certificate, self.private_key)  # a dry run
                load_pair(self.context, self.settings, self.certificate, self.private_key)
            except ConfigError as exc:
                return self._result(False, str(exc))
            self.not_after = self._not_after()
            return self._result(True, "; ".join(failing) or "valid")

    def _result(self, ok: bool, detail: str) -> bool:
        if ok:
            _log.info("TLS certificate reloaded (%s)", detail)
        else:
            _log.error("TLS certificate NOT reloaded, the previous one keeps serving: %s", detail)
        self._on_result(ok, detail)
        return ok
