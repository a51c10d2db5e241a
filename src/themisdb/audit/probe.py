"""The posture probe that asks each syslog/SIEM output whether it answers now."""

from __future__ import annotations

from themisdb.audit._sink import SinkError
from themisdb.audit.syslog import SyslogSink
from themisdb.posture.probes import AUDIT_SINKS
from themisdb.settings import Settings


class AuditSinkProbe:
    """For each ``type: syslog`` output: None when it takes a connection (tls: a verified
    handshake; udp: nothing can be verified, so "udp"), else what failed. Nothing is sent: a
    made-up record would be a false entry in the SIEM (``SyslogSink.test_write``)."""

    kind = AUDIT_SINKS

    def run(self, settings: Settings) -> dict[str, str | None]:
        results: dict[str, str | None] = {}
        for output in settings.audit.external_outputs if settings.audit.enabled else ():
            if output.protocol == "udp":
                results[output.server] = "udp"
                continue
            try:
                sink = SyslogSink.from_output(output)
            except SinkError as exc:
                results[output.server] = str(exc)
                continue
            try:
                sink.test_write()
                results[output.server] = None
            except SinkError as exc:
                results[output.server] = str(exc)
            finally:
                sink.close()
        return results
