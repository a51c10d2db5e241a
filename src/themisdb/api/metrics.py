"""Prometheus metrics of one server process (its own registry, not the global one).

Label values come from fixed sets (route templates, rule ids, event names), never from user
input or secrets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from themisdb.audit import CATEGORIES, AuditBroker
from themisdb.posture import Report
from themisdb.replication import ReplicationNode
from themisdb.storage import LogRecord

# (category, event) pairs that exist from the start, so that dashboards and alerts see zeros.
SECURITY_EVENTS = (
    ("authentication", "auth_failure"),
    ("authentication", "malformed_token"),
    ("authentication", "session_expired"),
    ("authorization", "scope_denied"),
    ("security", "body_too_large"),
    ("security", "posture_violation"),
    ("security", "key_provider_error"),
    ("security", "integrity_failure"),
    ("security", "tls_handshake_failure"),
    ("security", "pii_rejected"),
    ("security", "pii_detected"),
    ("security", "rate_limit_exceeded"),
    ("security", "auth_lockout"),
    ("security", "replication_handshake_failure"),
    ("security", "replication_peer_refused"),
    ("security", "replication_stale_leader"),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.security_events = Counter(
            "themisdb_security_events",
            "Security-relevant events; a spike may indicate an intrusion attempt.",
            ["category", "event"],
            registry=self.registry,
        )
        for category, event in SECURITY_EVENTS:
            self.security_events.labels(category, event)
        self.unsafe_default = Gauge(
            "themisdb_unsafe_default",
            "1 while the unsafe default checked by this posture rule is active.",
            ["rule"],
            registry=self.registry,
        )
        self.requests = Counter(
            "themisdb_http_requests",
            "API requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "themisdb_http_request_duration_seconds",
            "API request latency by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def watch_audit(self, broker: AuditBroker) -> None:
        """Audit metrics: events by category, sink failures, spool depth, checkpoint age."""
        self.audit_events = Counter(
            "themisdb_audit_events",
            "Audit events written, by category.",
            ["category"],
            registry=self.registry,
        )
        for category in CATEGORIES:
            self.audit_events.labels(category)
        self.audit_sink_failures = Counter(
            "themisdb_audit_sink_failures",
            "Writes an audit sink could not take (spooled).",
            ["sink"],
            registry=self.registry,
        )
        spool = Gauge(
            "themisdb_audit_spool_depth",
            "Records waiting in a sink's spool.",
            ["sink"],
            registry=self.registry,
        )
        for name in broker.spool_depths():
            self.audit_sink_failures.labels(name)
            spool.labels(name).set_function(_depth_of(broker, name))
        age = Gauge(
            "themisdb_audit_last_checkpoint_age_seconds",
            "Seconds since the last signed audit checkpoint.",
            registry=self.registry,
        )
        age.set_function(broker.checkpoint_age)

    def watch_tls(self, expiry_seconds: Callable[[], float]) -> None:
        expiry = Gauge(
            "themisdb_tls_certificate_expiry_seconds",
            "Seconds until the served API certificate expires.",
            registry=self.registry,
        )
        expiry.set_function(expiry_seconds)
        self.tls_reloads = Counter(
            "themisdb_tls_reloads",
            "Certificate reload attempts by result.",
            ["result"],
            registry=self.registry,
        )
        for result in ("success", "rejected"):
            self.tls_reloads.labels(result)

    def watch_replication(self, node: ReplicationNode) -> None:
        """Role, epoch, lag per follower (leader) and of this follower, apply rate, reconnects."""
        self.registry.register(_ReplicationCollector(node))
        self.replication_applied = Counter(
            "themisdb_replication_applied_records",
            "Log records this follower applied (rate() is the apply rate).",
            registry=self.registry,
        )
        self.replication_reconnects = Counter(
            "themisdb_replication_reconnects",
            "Times this follower lost its leader stream and connected again.",
            registry=self.registry,
        )
        self.replication_delay = Histogram(
            "themisdb_replication_apply_delay_seconds",
            "Time from the leader's commit of a record to its apply here (both clocks: "
            "meaningful across hosts only with synchronised clocks).",
            registry=self.registry,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
        )

    def replication_applied_records(self, records: list[LogRecord]) -> None:
        now = time.time()
        self.replication_applied.inc(len(records))
        for record in records[:: max(1, len(records) // 16)]:  # a sample of each batch
            self.replication_delay.observe(max(0.0, now - record.ts))

    def audit_events_inc(self, category: str) -> None:
        self.audit_events.labels(category).inc()

    def audit_sink_failed(self, sink: str) -> None:
        self.audit_sink_failures.labels(sink).inc()

    def security_event(self, category: str, event: str, amount: int = 1) -> None:
        self.security_events.labels(category, event).inc(amount)

    def record_posture(self, report: Report) -> None:
        """Unsafe-default gauges, and the must-rules failing at startup as posture violations
        (production refuses to start with any; development runs with them)."""
        for finding in report.findings:
            if finding.rule.unsafe_default:
                self.unsafe_default.labels(finding.rule.id).set(
                    1 if finding in report.active_unsafe_defaults else 0
                )
        if report.blocking:
            self.security_event("security", "posture_violation", len(report.blocking))


def _depth_of(broker: AuditBroker, name: str) -> Callable[[], float]:
    return lambda: float(broker.spool_depths()[name])


class _ReplicationCollector(Collector):
    """Gauges read at scrape time; follower ids are validated names, at most 32 of them."""

    def __init__(self, node: ReplicationNode) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        status = self.node.status()
        role = GaugeMetricFamily(
            "themisdb_replication_role", "1 for this node's replication role.", labels=["role"]
        )
        for name in ("leader", "follower", "deposed"):
            role.add_metric([name], 1.0 if status["role"] == name else 0.0)
        yield role
        yield GaugeMetricFamily("themisdb_replication_epoch", "Leader epoch.", status["epoch"])
        yield GaugeMetricFamily(
            "themisdb_replication_last_lsn", "Last LSN in this node's log.", status["last_lsn"]
        )
        records = GaugeMetricFamily(
            "themisdb_replication_follower_lag_records",
            "Records each follower of this leader has not acknowledged.",
            labels=["follower"],
        )
        seconds = GaugeMetricFamily(
            "themisdb_replication_follower_lag_seconds",
            "Age of the oldest record each follower has not acknowledged.",
            labels=["follower"],
        )
        for follower in status["followers"]:
            records.add_metric([follower["follower_id"]], follower["lag_records"])
            seconds.add_metric([follower["follower_id"]], follower["lag_seconds"])
        yield records
        yield seconds
        following = status.get("following")
        if following is not None:
            yield GaugeMetricFamily(
                "themisdb_replication_lag_records",
                "Records this follower is behind its leader.",
                following["lag_records"],
            )
            yield GaugeMetricFamily(
                "themisdb_replication_lag_seconds",
                "Seconds this follower is behind its leader (on the leader's clock).",
                following["lag_seconds"],
            )
