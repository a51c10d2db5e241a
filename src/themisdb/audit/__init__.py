"""Audit logging: five categories of events, a signed hash chain, file and syslog sinks."""

from themisdb.audit._sink import AuditRecord, Sink, SinkError
from themisdb.audit.broker import CATEGORIES, AuditBroker, record_from_line
from themisdb.audit.chain import Signer, Verdict, load_public_key, verify, verify_lines
from themisdb.audit.file import FileSink

__all__ = [
    "CATEGORIES",
    "AuditBroker",
    "AuditRecord",
    "FileSink",
    "Signer",
    "Sink",
    "SinkError",
    "Verdict",
    "load_public_key",
    "record_from_line",
    "verify",
    "verify_lines",
]
