"""Access control: principals and scopes, API keys, sessions, rate limits and lockout.

Nothing here knows about HTTP: ``themisdb.api.auth`` turns a request into a Principal with
these pieces, and ``themisdb.api.app`` applies the limits.
"""

from __future__ import annotations

from themisdb.access._apikeys import PREFIX as API_KEY_PREFIX
from themisdb.access._apikeys import ApiKey, ApiKeyStore
from themisdb.access._limits import Decision, Limits, Lockout, RateLimiter
from themisdb.access._principal import (
    ADMIN,
    ALL_SCOPES,
    ANONYMOUS,
    AUDIT_READ,
    AUTHENTICATED,
    DATA_READ,
    DATA_WRITE,
    KEYS_ADMIN,
    PII_READ,
    Clock,
    Principal,
)
from themisdb.access._sessions import PREFIX as SESSION_PREFIX
from themisdb.access._sessions import Session, SessionStore

__all__ = [
    "ADMIN",
    "ALL_SCOPES",
    "ANONYMOUS",
    "API_KEY_PREFIX",
    "AUDIT_READ",
    "AUTHENTICATED",
    "DATA_READ",
    "DATA_WRITE",
    "KEYS_ADMIN",
    "PII_READ",
    "SESSION_PREFIX",
    "ApiKey",
    "ApiKeyStore",
    "Clock",
    "Decision",
    "Limits",
    "Lockout",
    "Principal",
    "RateLimiter",
    "Session",
    "SessionStore",
]
